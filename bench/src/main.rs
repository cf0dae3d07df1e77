//! `bank-loadgen`: the load generator of `make bench`.
//!
//! ```text
//! bank-loadgen <scenario> [--flag value]...
//! ```
//!
//! Scenarios:
//!
//! - `rest-transfer`: `POST /v1/transfers` through the gateway, HTTP/1.1 keep-alive,
//!   one connection per client, a unique `Idempotency-Key` per request.
//! - `rest-deposit`: `POST /v1/admin/deposits` with an operator token.
//! - `grpc-transfer`: the ledger's `CreateTransfer` directly over gRPC, the clients
//!   sharing a few HTTP/2 connections (`--connections`).
//! - `login-storm`: `POST /v1/auth/login` in a loop, meant to run alongside a
//!   transfer run.
//!
//! Closed loop by default: `--clients` clients, each sending its next request as soon
//! as the previous one is answered, for `--warmup` then `--duration` seconds. With
//! `--rate R` the loop is open: request `i` is due at `start + i / R` whatever the
//! state of earlier requests, the clients take due requests in turn, and latency is
//! measured from the due time, so a stalled server shows up in the percentiles
//! instead of slowing the load down (no coordinated omission). Requests due during
//! the warmup are sent but not counted.
//!
//! At the end one JSON line goes to stdout:
//! `{"scenario":..,"mode":..,"clients":n,"ok":n,"errors":n,"error_codes":{..},"seconds":..,"rate":..,"p50_ms":..,"p99_ms":..,"p999_ms":..}`.
//! `rate` is successful requests per second; the percentiles are of successful
//! requests. Any answer that is not a success is an error, counted by the problem's
//! `code` (REST), the `bank-error-code` metadata (gRPC), else `http_<status>`,
//! `grpc_<code>`, `timeout` or `transport`.
//!
//! Every flag can also come from the environment (`--accounts-file` is
//! `LOADGEN_ACCOUNTS_FILE`); flags win.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use bank_proto::ledger::v1::{CreateTransferRequest, ledger_service_client::LedgerServiceClient};
use hdrhistogram::Histogram;
use http::Uri;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

mod rest;

const USAGE: &str = "\
usage: bank-loadgen <rest-transfer|rest-hold-post|rest-deposit|grpc-transfer|login-storm> [flags]

  rest-hold-post: each request places a hold and then posts it (two calls).

  --target URL         gateway base URL (REST) or ledger endpoint (gRPC)
                       [default http://127.0.0.1:8080, gRPC http://127.0.0.1:50053]
  --token TOKEN        bearer token (customer for transfers, operator for deposits)
  --accounts A,B,...   account ids, comma- or whitespace-separated
  --accounts-file F    the same, from a file
  --hot                always the first two accounts (first one for deposits)
                       instead of a uniform random pair of distinct accounts
  --amount N           minor units per request [1]
  --currency CCY       [EUR]
  --clients N          concurrent clients [16]
  --duration S         measured seconds [20]
  --warmup S           seconds before measuring [3]
  --rate R             open loop at R requests/s (default: closed loop)
  --connections N      HTTP/2 connections shared by the gRPC clients [4]
  --email E            login-storm: the user's email
  --password P         login-storm: the user's password
  --timeout S          per-request timeout in seconds [30]

Each flag may also be given as LOADGEN_<FLAG> in the environment, e.g. LOADGEN_TOKEN.
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    RestTransfer,
    /// A hold placed, then posted: one completed pair counts as one transfer.
    RestHoldPost,
    RestDeposit,
    GrpcTransfer,
    LoginStorm,
}

impl Scenario {
    fn parse(name: &str) -> Result<Scenario> {
        Ok(match name {
            "rest-transfer" => Scenario::RestTransfer,
            "rest-hold-post" => Scenario::RestHoldPost,
            "rest-deposit" => Scenario::RestDeposit,
            "grpc-transfer" => Scenario::GrpcTransfer,
            "login-storm" => Scenario::LoginStorm,
            other => bail!("unknown scenario {other:?}\n\n{USAGE}"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::RestTransfer => "rest-transfer",
            Scenario::RestHoldPost => "rest-hold-post",
            Scenario::RestDeposit => "rest-deposit",
            Scenario::GrpcTransfer => "grpc-transfer",
            Scenario::LoginStorm => "login-storm",
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    scenario: Scenario,
    target: String,
    token: String,
    accounts: Vec<String>,
    hot: bool,
    amount: i64,
    currency: String,
    clients: usize,
    duration: Duration,
    warmup: Duration,
    rate: Option<f64>,
    connections: usize,
    email: String,
    password: String,
    timeout: Duration,
}

/// `--key value` flags, with `LOADGEN_KEY` environment variables as fallback.
struct Flags {
    given: BTreeMap<String, String>,
}

const VALUE_FLAGS: &[&str] = &[
    "target",
    "token",
    "accounts",
    "accounts-file",
    "amount",
    "currency",
    "clients",
    "duration",
    "warmup",
    "rate",
    "connections",
    "email",
    "password",
    "timeout",
];

impl Flags {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Flags> {
        let mut given = BTreeMap::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(name) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?}\n\n{USAGE}");
            };
            let (name, inline) = match name.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (name, None),
            };
            if name == "hot" {
                given.insert("hot".to_owned(), inline.unwrap_or_else(|| "1".to_owned()));
                continue;
            }
            if !VALUE_FLAGS.contains(&name) {
                bail!("unknown flag --{name}\n\n{USAGE}");
            }
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .ok_or_else(|| anyhow!("--{name} needs a value"))?,
            };
            given.insert(name.to_owned(), value);
        }
        Ok(Flags { given })
    }

    fn get(&self, name: &str) -> Option<String> {
        if let Some(value) = self.given.get(name) {
            return Some(value.clone());
        }
        let variable = format!("LOADGEN_{}", name.replace('-', "_").to_ascii_uppercase());
        std::env::var(&variable)
            .ok()
            .filter(|value| !value.trim().is_empty())
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|error| anyhow!("--{name} {raw:?}: {error}")),
        }
    }

    fn seconds(&self, name: &str, default: f64) -> Result<Duration> {
        let seconds: f64 = self.parsed(name, default)?;
        if !seconds.is_finite() || seconds < 0.0 {
            bail!("--{name} must be a non-negative number of seconds");
        }
        Ok(Duration::from_secs_f64(seconds))
    }
}

impl Options {
    fn from_args(mut args: impl Iterator<Item = String>) -> Result<Options> {
        let first = args.next().ok_or_else(|| anyhow!("{USAGE}"))?;
        if first == "--help" || first == "-h" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let scenario = Scenario::parse(&first)?;
        let flags = Flags::parse(args)?;

        let mut accounts_text = flags.get("accounts").unwrap_or_default();
        if let Some(file) = flags.get("accounts-file") {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
            accounts_text.push('\n');
            accounts_text.push_str(&text);
        }
        let accounts: Vec<String> = accounts_text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect();

        let default_target = match scenario {
            Scenario::GrpcTransfer => "http://127.0.0.1:50053",
            _ => "http://127.0.0.1:8080",
        };
        let rate = match flags.get("rate") {
            None => None,
            Some(_) => {
                let rate: f64 = flags.parsed("rate", 0.0)?;
                if !rate.is_finite() || rate <= 0.0 {
                    bail!("--rate must be a positive number of requests per second");
                }
                Some(rate)
            }
        };
        let hot = match flags.get("hot").as_deref().map(str::trim) {
            None | Some("" | "0" | "false" | "no") => false,
            Some(_) => true,
        };
        let options = Options {
            scenario,
            target: flags
                .get("target")
                .unwrap_or_else(|| default_target.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            token: flags.get("token").unwrap_or_default().trim().to_owned(),
            accounts,
            hot,
            amount: flags.parsed("amount", 1)?,
            currency: flags.get("currency").unwrap_or_else(|| "EUR".to_owned()),
            clients: flags.parsed("clients", 16)?,
            duration: flags.seconds("duration", 20.0)?,
            warmup: flags.seconds("warmup", 3.0)?,
            rate,
            connections: flags.parsed("connections", 4)?,
            email: flags.get("email").unwrap_or_default(),
            password: flags.get("password").unwrap_or_default(),
            timeout: flags.seconds("timeout", 30.0)?,
        };
        options.validate()?;
        Ok(options)
    }

    fn validate(&self) -> Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.amount <= 0 {
            bail!("--amount must be positive");
        }
        match self.scenario {
            Scenario::RestTransfer | Scenario::RestHoldPost | Scenario::GrpcTransfer => {
                if self.accounts.len() < 2 {
                    bail!("transfers need at least two accounts (--accounts or --accounts-file)");
                }
                if self.token.is_empty() {
                    bail!("transfers need --token");
                }
            }
            Scenario::RestDeposit => {
                if self.accounts.is_empty() {
                    bail!("deposits need at least one account (--accounts or --accounts-file)");
                }
                if self.token.is_empty() {
                    bail!("deposits need an operator --token");
                }
            }
            Scenario::LoginStorm => {
                if self.email.is_empty() || self.password.is_empty() {
                    bail!("login-storm needs --email and --password");
                }
            }
        }
        Ok(())
    }
}

/// splitmix64: small, fast and good enough to pick accounts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        // n is small (an account list), so the modulo bias is negligible.
        (self.next() % n as u64) as usize
    }
}

/// What every client of a run shares.
struct Plan {
    options: Options,
    /// The accounts and the currency as JSON strings, for the request bodies.
    json_accounts: Vec<String>,
    json_currency: String,
    /// Unique per process, so keys never repeat across runs on the same databases.
    run_id: String,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    next_ticket: AtomicU64,
}

impl Plan {
    /// Indexes of (from, to) in the account list.
    fn pair(&self, rng: &mut Rng) -> (usize, usize) {
        let n = self.options.accounts.len();
        if self.options.hot {
            // The same two rows every time; the direction alternates at random so
            // neither balance drains.
            return if rng.next() & 1 == 0 { (0, 1) } else { (1, 0) };
        }
        let from = rng.below(n);
        let mut to = rng.below(n - 1);
        if to >= from {
            to += 1;
        }
        (from, to)
    }

    /// A transfer's body, or a hold's when `pending`.
    fn transfer_body(&self, from: usize, to: usize, pending: bool) -> Vec<u8> {
        let pending = if pending { ",\"pending\":true" } else { "" };
        format!(
            "{{\"from_account_id\":{},\"to_account_id\":{},\"amount\":{},\"currency\":{},\"description\":\"bench\"{pending}}}",
            self.json_accounts[from], self.json_accounts[to], self.options.amount, self.json_currency,
        )
        .into_bytes()
    }

    fn deposit_body(&self, account: usize) -> Vec<u8> {
        format!(
            "{{\"account_id\":{},\"amount\":{},\"currency\":{},\"reference\":\"bench\"}}",
            self.json_accounts[account], self.options.amount, self.json_currency,
        )
        .into_bytes()
    }

    fn deposit_account(&self, rng: &mut Rng) -> usize {
        if self.options.hot {
            0
        } else {
            rng.below(self.options.accounts.len())
        }
    }
}

enum Outcome {
    Ok,
    Error(String),
}

/// One client's connection to the system under test.
enum Driver {
    Rest {
        connection: rest::Connection,
        target: rest::Target,
        /// The scenario's endpoint.
        uri: Uri,
    },
    Grpc {
        client: LedgerServiceClient<Channel>,
        authorization: MetadataValue<Ascii>,
    },
}

impl Driver {
    async fn call(&mut self, plan: &Plan, rng: &mut Rng, key: &str) -> Outcome {
        let options = &plan.options;
        match self {
            Driver::Rest {
                connection,
                target,
                uri,
            } => {
                let body = match options.scenario {
                    Scenario::RestHoldPost => {
                        let (from, to) = plan.pair(rng);
                        let hold = plan.transfer_body(from, to, true);
                        let placed = match send(connection, uri.clone(), Some(key), hold).await {
                            Ok(body) => body,
                            Err(outcome) => return outcome,
                        };
                        let Some(id) = serde_json::from_slice::<serde_json::Value>(&placed)
                            .ok()
                            .and_then(|hold| {
                                hold.get("id").and_then(|id| id.as_str()).map(str::to_owned)
                            })
                        else {
                            return Outcome::Error("hold_without_id".to_owned());
                        };
                        let Ok(post_uri) = target.uri(&format!("/v1/transfers/{id}/post")) else {
                            return Outcome::Error("hold_without_id".to_owned());
                        };
                        let post_key = format!("{key}-post");
                        return match send(connection, post_uri, Some(&post_key), b"{}".to_vec())
                            .await
                        {
                            Ok(_) => Outcome::Ok,
                            Err(outcome) => outcome,
                        };
                    }
                    Scenario::RestTransfer => {
                        let (from, to) = plan.pair(rng);
                        plan.transfer_body(from, to, false)
                    }
                    Scenario::RestDeposit => plan.deposit_body(plan.deposit_account(rng)),
                    Scenario::LoginStorm => serde_json::json!({
                        "email": options.email,
                        "password": options.password,
                    })
                    .to_string()
                    .into_bytes(),
                    Scenario::GrpcTransfer => return Outcome::Error("driver_mismatch".to_owned()),
                };
                let key = (options.scenario != Scenario::LoginStorm).then_some(key);
                match send(connection, uri.clone(), key, body).await {
                    Ok(_) => Outcome::Ok,
                    Err(outcome) => outcome,
                }
            }
            Driver::Grpc {
                client,
                authorization,
            } => {
                let (from, to) = plan.pair(rng);
                let mut request = tonic::Request::new(CreateTransferRequest {
                    from_account_id: options.accounts[from].clone(),
                    to_account_id: options.accounts[to].clone(),
                    amount_minor: options.amount,
                    currency: options.currency.clone(),
                    description: "bench".to_owned(),
                    idempotency_key: key.to_owned(),
                    ..Default::default()
                });
                request
                    .metadata_mut()
                    .insert("authorization", authorization.clone());
                request.set_timeout(options.timeout);
                match client.create_transfer(request).await {
                    Ok(_) => Outcome::Ok,
                    Err(status) => {
                        let code = status
                            .metadata()
                            .get("bank-error-code")
                            .and_then(|value| value.to_str().ok())
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("grpc_{:?}", status.code()));
                        Outcome::Error(code)
                    }
                }
            }
        }
    }
}

/// What one client saw during the measured window.
struct Tally {
    ok: u64,
    errors: u64,
    error_codes: BTreeMap<String, u64>,
    /// Latency of successful requests, in microseconds.
    latency: Histogram<u64>,
    last_done: Option<Instant>,
}

impl Tally {
    fn new() -> Result<Tally> {
        Ok(Tally {
            ok: 0,
            errors: 0,
            error_codes: BTreeMap::new(),
            // 1 µs to 10 min, three significant digits.
            latency: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            last_done: None,
        })
    }

    fn merge(&mut self, other: Tally) -> Result<()> {
        self.ok += other.ok;
        self.errors += other.errors;
        for (code, count) in other.error_codes {
            *self.error_codes.entry(code).or_default() += count;
        }
        self.latency.add(&other.latency)?;
        self.last_done = self.last_done.max(other.last_done);
        Ok(())
    }
}

async fn client_loop(
    plan: Arc<Plan>,
    mut driver: Driver,
    index: usize,
    seed: u64,
) -> Result<Tally> {
    let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut tally = Tally::new()?;
    let mut key = String::with_capacity(64);
    let mut sequence: u64 = 0;
    loop {
        let due = match plan.options.rate {
            None => {
                let now = Instant::now();
                if now >= plan.end {
                    break;
                }
                now
            }
            Some(rate) => {
                let ticket = plan.next_ticket.fetch_add(1, Ordering::Relaxed);
                let due = plan.start + Duration::from_secs_f64(ticket as f64 / rate);
                if due >= plan.end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
        };
        key.clear();
        write!(key, "{}-{index}-{sequence}", plan.run_id)?;
        sequence += 1;
        let outcome = driver.call(&plan, &mut rng, &key).await;
        let done = Instant::now();
        if due < plan.measure_from {
            continue;
        }
        tally.last_done = Some(done);
        match outcome {
            Outcome::Ok => {
                tally.ok += 1;
                let micros =
                    u64::try_from(done.duration_since(due).as_micros()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(micros.max(1));
            }
            Outcome::Error(code) => {
                tally.errors += 1;
                *tally.error_codes.entry(code).or_default() += 1;
            }
        }
    }
    Ok(tally)
}

async fn drivers(options: &Options) -> Result<Vec<Driver>> {
    let mut drivers = Vec::with_capacity(options.clients);
    match options.scenario {
        Scenario::GrpcTransfer => {
            let authorization: MetadataValue<Ascii> = format!("Bearer {}", options.token)
                .parse()
                .context("the token is not valid metadata")?;
            let mut channels = Vec::with_capacity(options.connections);
            for _ in 0..options.connections.min(options.clients) {
                let channel = Endpoint::from_shared(options.target.clone())
                    .context("--target is not a valid endpoint")?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(options.timeout)
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {}", options.target))?;
                channels.push(channel);
            }
            for index in 0..options.clients {
                let channel = channels[index % channels.len()].clone();
                drivers.push(Driver::Grpc {
                    client: LedgerServiceClient::new(channel),
                    authorization: authorization.clone(),
                });
            }
        }
        Scenario::RestTransfer
        | Scenario::RestHoldPost
        | Scenario::RestDeposit
        | Scenario::LoginStorm => {
            let path = match options.scenario {
                Scenario::RestTransfer | Scenario::RestHoldPost => "/v1/transfers",
                Scenario::RestDeposit => "/v1/admin/deposits",
                _ => "/v1/auth/login",
            };
            let target = rest::Target::parse(&options.target)?;
            let uri = target.uri(path)?;
            let authorization = (options.scenario != Scenario::LoginStorm)
                .then(|| format!("Bearer {}", options.token));
            for _ in 0..options.clients {
                // A connection of its own per simulated user, kept alive.
                drivers.push(Driver::Rest {
                    connection: rest::Connection::new(
                        target.clone(),
                        authorization.as_deref(),
                        options.timeout,
                    )?,
                    target: target.clone(),
                    uri: uri.clone(),
                });
            }
        }
    }
    Ok(drivers)
}

/// One REST call: the body of a success, or the outcome of a failure (the
/// problem's code, or the transport's).
async fn send(
    connection: &mut rest::Connection,
    uri: Uri,
    key: Option<&str>,
    body: Vec<u8>,
) -> Result<bytes::Bytes, Outcome> {
    let (status, body) = connection
        .post(uri, key, body)
        .await
        .map_err(|failure| Outcome::Error(failure.code().to_owned()))?;
    if status.is_success() {
        return Ok(body);
    }
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|problem| {
            problem
                .get("code")
                .and_then(|code| code.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("http_{}", status.as_u16()));
    Err(Outcome::Error(code))
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

fn json_number(value: Option<f64>) -> String {
    match value {
        Some(value) if value.is_finite() => format!("{value:.3}"),
        _ => "null".to_owned(),
    }
}

fn report(options: &Options, tally: &Tally, seconds: f64) -> String {
    let codes = tally
        .error_codes
        .iter()
        .map(|(code, count)| format!("{}:{count}", json_string(code)))
        .collect::<Vec<_>>()
        .join(",");
    let quantile = |q: f64| {
        (!tally.latency.is_empty()).then(|| tally.latency.value_at_quantile(q) as f64 / 1000.0)
    };
    let mode = match options.rate {
        None => "closed".to_owned(),
        Some(rate) => format!("open@{rate}"),
    };
    format!(
        "{{\"scenario\":{},\"mode\":{},\"clients\":{},\"ok\":{},\"errors\":{},\"error_codes\":{{{codes}}},\"seconds\":{},\"rate\":{},\"p50_ms\":{},\"p99_ms\":{},\"p999_ms\":{}}}",
        json_string(options.scenario.name()),
        json_string(&mode),
        options.clients,
        tally.ok,
        tally.errors,
        json_number(Some(seconds)),
        json_number((seconds > 0.0).then(|| tally.ok as f64 / seconds)),
        json_number(quantile(0.50)),
        json_number(quantile(0.99)),
        json_number(quantile(0.999)),
    )
}

async fn run(options: Options) -> Result<String> {
    let drivers = drivers(&options).await?;
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let seed = clock ^ u64::from(std::process::id()).rotate_left(32);
    let run_id = format!("lg{:x}", Rng(seed).next());
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let plan = Arc::new(Plan {
        end: measure_from + options.duration,
        json_accounts: options.accounts.iter().map(|id| json_string(id)).collect(),
        json_currency: json_string(&options.currency),
        options,
        run_id,
        start,
        measure_from,
        next_ticket: AtomicU64::new(0),
    });
    let tasks: Vec<_> = drivers
        .into_iter()
        .enumerate()
        .map(|(index, driver)| tokio::spawn(client_loop(plan.clone(), driver, index, seed)))
        .collect();
    let mut total = Tally::new()?;
    for task in tasks {
        total.merge(task.await??)?;
    }
    // Until the last counted answer: requests still in flight at the end count.
    let seconds = total
        .last_done
        .map_or(plan.options.duration, |done| {
            done.saturating_duration_since(plan.measure_from)
                .max(plan.options.duration)
        })
        .as_secs_f64();
    Ok(report(&plan.options, &total, seconds))
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = Options::from_args(std::env::args().skip(1))?;
    let line = run(options).await?;
    println!("{line}");
    Ok(())
}
