//! Starts the bank's components inside the test process, each on a port the OS
//! chooses and on its own fresh database, and offers the clients and helpers the
//! tests share. Used by every crate's integration tests and the end-to-end suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use bank_identity::domain::{Backoff, LoginThrottle};
use bank_proto::{
    account::v1::account_service_client::AccountServiceClient,
    identity::v1::{self as identity, identity_service_client::IdentityServiceClient},
    ledger::v1::ledger_service_client::LedgerServiceClient,
};
use secrecy::SecretString;
use tokio::sync::watch;
use tonic::transport::Channel;

pub use bank_kit::db_test;

pub mod pki;
pub mod roles;

/// Password of the operator every stack bootstraps.
pub const OPERATOR_PASSWORD: &str = "operator password for tests";
/// Password every test user registers with.
pub const USER_PASSWORD: &str = "correct horse battery staple";
/// The account service's client secret at identity in a test stack.
pub const SERVICE_SECRET: &str = "account-service-secret-for-tests";
/// The gateway's client secret at identity in a test stack.
pub const GATEWAY_SERVICE_SECRET: &str = "gateway-service-secret-for-tests";

/// Which components to start. Identity always runs: every other one needs it.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub ledger: bool,
    pub account: bool,
    pub gateway: bool,
}

impl Parts {
    pub const IDENTITY: Parts = Parts {
        ledger: false,
        account: false,
        gateway: false,
    };
    pub const LEDGER: Parts = Parts {
        ledger: true,
        account: false,
        gateway: false,
    };
    pub const SERVICES: Parts = Parts {
        ledger: true,
        account: true,
        gateway: false,
    };
    pub const ALL: Parts = Parts {
        ledger: true,
        account: true,
        gateway: true,
    };
}

/// Running components. Dropping it asks them all to stop.
pub struct Stack {
    /// `http`, or `https` for a stack spawned with TLS.
    pub scheme: &'static str,
    /// How the stack's own clients connect (with a client certificate under TLS).
    pub connector: bank_kit::tls::Connector,
    /// A REST client that trusts the stack's CA under TLS.
    pub http: reqwest::Client,
    pub identity_addr: SocketAddr,
    pub ledger_addr: Option<SocketAddr>,
    pub account_addr: Option<SocketAddr>,
    pub gateway_addr: Option<SocketAddr>,
    /// Each service's admin port (`/livez`, `/readyz`, `/metrics`), by component.
    pub admin_addrs: HashMap<&'static str, SocketAddr>,
    pub operator_email: String,
    /// Database URLs by component, for tests that inspect storage directly.
    pub database_urls: HashMap<&'static str, String>,
    stop: watch::Sender<bool>,
    _keys: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

fn stopper(
    receiver: &watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut receiver = receiver.clone();
    async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    }
}

/// The login backoff of test stacks: the real counts, with delays far longer than
/// any test, so that no assertion depends on how fast the machine is.
pub const LOGIN_THROTTLE: LoginThrottle = LoginThrottle {
    per_client: Backoff {
        free_failures: 5,
        first_delay_seconds: 600,
        cap_seconds: 3_600,
        lockout_after: None,
    },
    per_account: Backoff {
        free_failures: 20,
        first_delay_seconds: 600,
        cap_seconds: 3_600,
        lockout_after: Some(bank_identity::domain::ACCOUNT_LOCKOUT_FAILURES),
    },
};

/// How many open accounts a customer of a test stack may hold.
pub const MAX_OPEN_ACCOUNTS: u32 = 12;

/// Starts identity and the requested parts on `urls`: identity on `urls[0]`,
/// ledger on `urls[1]`, account on `urls[2]`.
pub async fn spawn(urls: &[String], parts: Parts) -> Stack {
    spawn_with_owners(urls, None, parts).await
}

/// [`spawn`], each service running as the restricted role of its URL in `urls`
/// while its migrations run as the schema owner's URL at the same index of
/// `owner_urls` (PostgreSQL only).
pub async fn spawn_with_owners(
    urls: &[String],
    owner_urls: Option<&[String]>,
    parts: Parts,
) -> Stack {
    spawn_stack(urls, owner_urls, parts, None).await
}

/// [`spawn`] with TLS everywhere: each service serves with `pki`'s certificate
/// and requires client certificates from its CA, the gateway serves HTTPS and
/// calls the services with mutual TLS, and the stack's clients do too.
pub async fn spawn_with_tls(urls: &[String], parts: Parts, pki: &pki::TestPki) -> Stack {
    spawn_stack(urls, None, parts, Some(pki)).await
}

async fn spawn_stack(
    urls: &[String],
    owner_urls: Option<&[String]>,
    parts: Parts,
    pki: Option<&pki::TestPki>,
) -> Stack {
    let scheme = if pki.is_some() { "https" } else { "http" };
    let service_tls = pki.map(pki::TestPki::service_settings).unwrap_or_default();
    let owner_url = |index: usize| owner_urls.map(|owners| owners[index].clone());
    let (stop, stop_receiver) = watch::channel(false);
    let keys = tempfile::tempdir().expect("key directory");
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let operator_email = format!("operator-{}@bank.test", uuid::Uuid::new_v4().simple());

    let mut identity_config = identity_config(
        urls[0].clone(),
        owner_url(0),
        keys.path(),
        Some(operator_email.clone()),
    );
    identity_config.tls = service_tls.clone();
    let identity = bank_identity::build(&identity_config)
        .await
        .expect("identity starts");
    let identity_addr = identity.local_addr().expect("identity address");
    let mut admin_addrs = HashMap::from([(
        "identity",
        identity.admin_addr().expect("identity admin address"),
    )]);
    tokio::spawn(identity.run_until_stopped(stopper(&stop_receiver)));
    let identity_endpoint = format!("{scheme}://{identity_addr}");
    let mut database_urls = HashMap::from([("identity", urls[0].clone())]);

    let mut ledger_addr = None;
    if parts.ledger {
        let config = bank_ledger::Config {
            listen_addr: any_port,
            admin_listen_addr: any_port,
            database_url: urls[1].clone(),
            migration_database_url: owner_url(1),
            identity_endpoint: identity_endpoint.clone(),
            tls: service_tls.clone(),
            reflection: true,
            verify_interval: Some(Duration::from_secs(1)),
        };
        let ledger = bank_ledger::build(&config).await.expect("ledger starts");
        ledger_addr = Some(ledger.local_addr().expect("ledger address"));
        admin_addrs.insert("ledger", ledger.admin_addr().expect("ledger admin address"));
        tokio::spawn(ledger.run_until_stopped(stopper(&stop_receiver)));
        database_urls.insert("ledger", urls[1].clone());
    }

    let mut account_addr = None;
    if parts.account {
        let config = bank_account::Config {
            listen_addr: any_port,
            admin_listen_addr: any_port,
            database_url: urls[2].clone(),
            migration_database_url: owner_url(2),
            identity_endpoint: identity_endpoint.clone(),
            ledger_endpoint: format!(
                "{scheme}://{}",
                ledger_addr.expect("account needs the ledger")
            ),
            service_client_id: "account".into(),
            service_client_secret: SecretString::from(SERVICE_SECRET),
            max_open_per_user: MAX_OPEN_ACCOUNTS,
            tls: service_tls.clone(),
            reflection: true,
        };
        let account = bank_account::build(&config).await.expect("account starts");
        account_addr = Some(account.local_addr().expect("account address"));
        admin_addrs.insert(
            "account",
            account.admin_addr().expect("account admin address"),
        );
        tokio::spawn(account.run_until_stopped(stopper(&stop_receiver)));
        database_urls.insert("account", urls[2].clone());
    }

    let mut gateway_addr = None;
    if parts.gateway {
        let config = bank_gateway::Config {
            listen_addr: any_port,
            identity_endpoint,
            account_endpoint: format!(
                "{scheme}://{}",
                account_addr.expect("gateway needs account")
            ),
            ledger_endpoint: format!(
                "{scheme}://{}",
                ledger_addr.expect("gateway needs the ledger")
            ),
            cors_allowed_origins: vec!["https://app.bank.test".parse().expect("origin")],
            request_timeout: std::time::Duration::from_secs(10),
            redis_url: None,
            rate_limit_namespace: "bank-test".into(),
            api_quota: bank_gateway::rate_limit::Quota::per_minute(1_000_000),
            auth_quota: bank_gateway::rate_limit::Quota::per_minute(1_000_000),
            trusted_proxies: Default::default(),
            service_client_secret: Some(SecretString::from(GATEWAY_SERVICE_SECRET)),
            tls: pki.map(pki::TestPki::gateway_settings).unwrap_or_default(),
            timeouts: bank_gateway::serve::Timeouts {
                header_read: bank_gateway::HEADER_READ_TIMEOUT,
                idle: bank_gateway::IDLE_TIMEOUT,
            },
        };
        let gateway = bank_gateway::build(&config).await.expect("gateway starts");
        gateway_addr = Some(gateway.local_addr().expect("gateway address"));
        tokio::spawn(gateway.run_until_stopped(stopper(&stop_receiver)));
    }

    let client_tls = pki.map(pki::TestPki::client_settings).unwrap_or_default();
    let mut http = reqwest::Client::builder();
    if let Some(pki) = pki {
        let ca = std::fs::read(&pki.ca).expect("CA file");
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"));
    }
    Stack {
        scheme,
        connector: bank_kit::tls::Connector::new(&client_tls).expect("client TLS"),
        http: http.build().expect("HTTP client"),
        identity_addr,
        ledger_addr,
        account_addr,
        gateway_addr,
        admin_addrs,
        operator_email,
        database_urls,
        stop,
        _keys: keys,
    }
}

/// Identity's configuration in a test stack; `operator_email` names the
/// operator to bootstrap, if any.
pub fn identity_config(
    database_url: String,
    migration_database_url: Option<String>,
    signing_keys_dir: &std::path::Path,
    operator_email: Option<String>,
) -> bank_identity::Config {
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("address");
    bank_identity::Config {
        listen_addr: any_port,
        admin_listen_addr: any_port,
        database_url,
        migration_database_url,
        signing_keys_dir: signing_keys_dir.to_path_buf(),
        bootstrap_operator: operator_email.map(|email| bank_identity::BootstrapOperator {
            email,
            password: SecretString::from(OPERATOR_PASSWORD),
        }),
        service_clients: HashMap::from([
            ("account".to_owned(), SecretString::from(SERVICE_SECRET)),
            (
                "gateway".to_owned(),
                SecretString::from(GATEWAY_SERVICE_SECRET),
            ),
        ]),
        session_idle_timeout: chrono::Duration::minutes(30),
        session_absolute_lifetime: chrono::Duration::hours(12),
        login_throttle: LOGIN_THROTTLE,
        tls: Default::default(),
        reflection: true,
    }
}

impl Stack {
    /// Starts another identity replica on this stack's identity database and
    /// signing keys, stopped with the stack, and answers its address.
    pub async fn identity_replica(&self) -> SocketAddr {
        let config = identity_config(
            self.database_urls["identity"].clone(),
            None,
            self._keys.path(),
            None,
        );
        let replica = bank_identity::build(&config)
            .await
            .expect("identity replica starts");
        let addr = replica.local_addr().expect("replica address");
        tokio::spawn(replica.run_until_stopped(stopper(&self.stop.subscribe())));
        addr
    }

    /// A client of the identity replica at `addr`.
    pub async fn identity_at(&self, addr: SocketAddr) -> IdentityServiceClient<Channel> {
        IdentityServiceClient::new(self.channel(addr).await)
    }

    /// A channel to the service at `addr`, as the stack's clients connect.
    pub async fn channel(&self, addr: SocketAddr) -> Channel {
        bank_kit::grpc::channel(
            "test",
            &format!("{}://{addr}", self.scheme),
            &self.connector,
            Duration::from_secs(30),
        )
        .expect("channel")
    }
}

/// A request carrying `token` as its bearer token.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub user_id: String,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl Stack {
    pub async fn identity(&self) -> IdentityServiceClient<Channel> {
        IdentityServiceClient::new(self.channel(self.identity_addr).await)
    }

    pub async fn ledger(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(
            self.channel(self.ledger_addr.expect("ledger running"))
                .await,
        )
    }

    pub async fn account(&self) -> AccountServiceClient<Channel> {
        AccountServiceClient::new(
            self.channel(self.account_addr.expect("account running"))
                .await,
        )
    }

    pub fn gateway_url(&self, path: &str) -> String {
        format!(
            "{}://{}{path}",
            self.scheme,
            self.gateway_addr.expect("gateway running")
        )
    }

    /// Registers a fresh customer and logs them in.
    pub async fn customer(&self) -> TestUser {
        let email = format!("user-{}@bank.test", uuid::Uuid::new_v4().simple());
        let mut identity = self.identity().await;
        let user = identity
            .register(identity::RegisterRequest {
                email: email.clone(),
                password: USER_PASSWORD.into(),
                full_name: "Test User".into(),
            })
            .await
            .expect("register")
            .into_inner()
            .user
            .expect("user");
        let tokens = self.login(&email, USER_PASSWORD).await;
        TestUser {
            user_id: user.user_id,
            email,
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
        }
    }

    /// Logs the bootstrapped operator in.
    pub async fn operator(&self) -> TestUser {
        let tokens = self.login(&self.operator_email, OPERATOR_PASSWORD).await;
        let me = self
            .identity()
            .await
            .get_current_user(authed(
                &tokens.access_token,
                identity::GetCurrentUserRequest {},
            ))
            .await
            .expect("me")
            .into_inner()
            .user
            .expect("user");
        TestUser {
            user_id: me.user_id,
            email: self.operator_email.clone(),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> identity::TokenPair {
        self.identity()
            .await
            .login(identity::LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .tokens
            .expect("tokens")
    }

    /// A token for the gateway's principal, with which it vouches for the
    /// client addresses it reports to identity.
    pub async fn gateway_service_token(&self) -> String {
        self.identity()
            .await
            .issue_service_token(identity::IssueServiceTokenRequest {
                client_id: "gateway".into(),
                client_secret: GATEWAY_SERVICE_SECRET.into(),
            })
            .await
            .expect("service token")
            .into_inner()
            .access_token
    }

    /// A token for the account service's principal, as the account service gets.
    pub async fn account_service_token(&self) -> String {
        self.identity()
            .await
            .issue_service_token(identity::IssueServiceTokenRequest {
                client_id: "account".into(),
                client_secret: SERVICE_SECRET.into(),
            })
            .await
            .expect("service token")
            .into_inner()
            .access_token
    }
}

/// Runs a service binary that is expected to refuse to start, in an empty working
/// directory (no `.env`, no `var/`) with only `vars` (and `PATH`) in its
/// environment, and returns what it printed on stderr. A
/// binary that starts anyway is killed after a minute and fails the test rather
/// than hanging it.
pub fn failed_start(binary: &str, vars: &[(&str, &str)]) -> String {
    let workdir = tempfile::tempdir().expect("temporary working directory");
    let child = std::process::Command::new(binary)
        .current_dir(workdir.path())
        .env_clear()
        .envs(std::env::var_os("PATH").map(|path| ("PATH", path)))
        .envs(vars.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = finished.recv_timeout(Duration::from_secs(60)).is_err();
        if timed_out {
            std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .ok();
        }
        timed_out
    });
    let output = child.wait_with_output().expect("wait for the binary");
    done.send(()).ok();
    let timed_out = watchdog.join().unwrap_or(true);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!timed_out, "{binary} started with {vars:?}: {stderr}");
    assert!(!output.status.success(), "{binary} exited 0 with {vars:?}");
    stderr
}

/// An address on loopback nothing listens on.
pub fn unused_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").to_string()
}

/// Runs `binary healthcheck` in an empty working directory with only `vars`
/// (and `PATH`) in its environment, off the async runtime; returns whether it
/// found the component healthy, and what it printed on stderr.
pub async fn healthcheck(binary: &str, vars: &[(&str, &str)]) -> (bool, String) {
    let workdir = tempfile::tempdir().expect("temporary working directory");
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("healthcheck")
        .current_dir(workdir.path())
        .env_clear()
        .envs(std::env::var_os("PATH").map(|path| ("PATH", path)))
        .envs(vars.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the probe ends on its own")
        .expect("run the probe");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The Prometheus text a component serves at `GET /metrics` (gRPC ports answer
/// it over plain HTTP/1.1).
pub async fn scrape(addr: SocketAddr) -> String {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics answer");
    assert!(response.status().is_success(), "{}", response.status());
    response.text().await.expect("metrics text")
}

/// The value of the sample of `name` whose labels include all of `labels`; 0
/// when there is none (a counter never incremented is not rendered).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(key, wanted)| rest.contains(&format!("{key}=\"{wanted}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
