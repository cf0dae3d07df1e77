//! Real processes on 127.0.0.1: the four components started from their built
//! binaries with fresh databases, killed and restarted on the same ports, and a
//! private PostgreSQL cluster the suite creates with the machine's `initdb` and
//! stops and starts at will.

use std::{
    collections::HashMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub const OPERATOR_PASSWORD: &str = "fault suite operator password";
pub const USER_PASSWORD: &str = "fault suite customer password";
const SERVICE_SECRET: &str = "fault-suite-account-secret";
const GATEWAY_SECRET: &str = "fault-suite-gateway-secret";

/// Short mode (`BANK_FAULTS_SHORT=1`, as CI runs it): fewer clients and requests.
pub fn short() -> bool {
    std::env::var("BANK_FAULTS_SHORT").is_ok_and(|value| value == "1")
}

/// Where the component binaries are: `BANK_BIN_DIR`, else the workspace's debug
/// target directory (`make test-faults` builds them first).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BANK_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// A port nothing listens on now, for a process to bind (and bind again after a
/// restart).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// One component: its binary, its environment, and the process while it runs.
pub struct Component {
    name: &'static str,
    env: Vec<(String, String)>,
    workdir: PathBuf,
    child: Option<Child>,
}

impl Component {
    fn start(&mut self) {
        let binary = bin_dir().join(format!("bank-{}", self.name));
        assert!(
            binary.exists(),
            "{} is missing: run `make test-faults` (it builds the binaries) or set BANK_BIN_DIR",
            binary.display()
        );
        let log = std::fs::File::create(self.workdir.join(format!("{}.log", self.name)))
            .expect("log file");
        let child = Command::new(binary)
            .current_dir(&self.workdir)
            .env_clear()
            .envs(std::env::var_os("PATH").map(|path| ("PATH", path)))
            .envs(
                self.env
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_str())),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the component");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no drain, whatever was in flight is cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The four components on fixed ports, each on its own database.
pub struct Bank {
    components: std::sync::Mutex<HashMap<&'static str, Component>>,
    pub gateway: String,
    pub operator_email: String,
    pub http: reqwest::Client,
    _workdir: tempfile::TempDir,
}

/// Database URLs for identity, ledger and account.
pub struct Databases {
    pub identity: String,
    pub ledger: String,
    pub account: String,
}

impl Databases {
    /// SQLite files in `dir`.
    pub fn sqlite(dir: &Path) -> Databases {
        let url = |name: &str| {
            format!(
                "sqlite://{}?mode=rwc",
                dir.join(format!("{name}.db")).display()
            )
        };
        Databases {
            identity: url("identity"),
            ledger: url("ledger"),
            account: url("account"),
        }
    }
}

impl Bank {
    /// Starts all four and waits until the gateway reports every service serving.
    pub async fn start(databases: impl FnOnce(&Path) -> Databases, extra: &[(&str, &str)]) -> Bank {
        let workdir = tempfile::tempdir().expect("work directory");
        let databases = databases(workdir.path());
        let port = |_: &str| free_port();
        let ports: HashMap<&str, u16> = [
            "identity",
            "ledger",
            "account",
            "gateway",
            "identity-admin",
            "ledger-admin",
            "account-admin",
        ]
        .into_iter()
        .map(|name| (name, port(name)))
        .collect();
        let addr = |name: &str| format!("127.0.0.1:{}", ports[name]);
        let endpoint = |name: &str| format!("http://{}", addr(name));
        let operator_email = format!("operator-{}@bank.test", uuid::Uuid::new_v4().simple());
        let keys = workdir.path().join("keys");
        let pairs = |list: &[(&str, String)]| -> Vec<(String, String)> {
            let mut env: Vec<(String, String)> = list
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect();
            env.push(("RUST_LOG".into(), "warn".into()));
            env.extend(
                extra
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
            );
            env
        };
        let environments: [(&'static str, Vec<(String, String)>); 4] = [
            (
                "identity",
                pairs(&[
                    ("IDENTITY_LISTEN_ADDR", addr("identity")),
                    ("IDENTITY_ADMIN_LISTEN_ADDR", addr("identity-admin")),
                    ("IDENTITY_DATABASE_URL", databases.identity.clone()),
                    ("IDENTITY_SIGNING_KEYS_DIR", keys.display().to_string()),
                    (
                        "IDENTITY_SERVICE_CLIENTS",
                        format!("account={SERVICE_SECRET},gateway={GATEWAY_SECRET}"),
                    ),
                    ("BANK_BOOTSTRAP_OPERATOR_EMAIL", operator_email.clone()),
                    ("BANK_BOOTSTRAP_OPERATOR_PASSWORD", OPERATOR_PASSWORD.into()),
                ]),
            ),
            (
                "ledger",
                pairs(&[
                    ("LEDGER_LISTEN_ADDR", addr("ledger")),
                    ("LEDGER_ADMIN_LISTEN_ADDR", addr("ledger-admin")),
                    ("LEDGER_DATABASE_URL", databases.ledger.clone()),
                    ("IDENTITY_ENDPOINT", endpoint("identity")),
                ]),
            ),
            (
                "account",
                pairs(&[
                    ("ACCOUNT_LISTEN_ADDR", addr("account")),
                    ("ACCOUNT_ADMIN_LISTEN_ADDR", addr("account-admin")),
                    ("ACCOUNT_DATABASE_URL", databases.account.clone()),
                    ("IDENTITY_ENDPOINT", endpoint("identity")),
                    ("LEDGER_ENDPOINT", endpoint("ledger")),
                    ("ACCOUNT_SERVICE_CLIENT_ID", "account".into()),
                    ("ACCOUNT_SERVICE_CLIENT_SECRET", SERVICE_SECRET.into()),
                    ("ACCOUNT_MAX_OPEN_PER_USER", "1000".into()),
                ]),
            ),
            (
                "gateway",
                pairs(&[
                    ("GATEWAY_LISTEN_ADDR", addr("gateway")),
                    ("IDENTITY_ENDPOINT", endpoint("identity")),
                    ("ACCOUNT_ENDPOINT", endpoint("account")),
                    ("LEDGER_ENDPOINT", endpoint("ledger")),
                    ("GATEWAY_RATE_LIMIT_PER_MINUTE", "100000000".into()),
                    ("GATEWAY_AUTH_RATE_LIMIT_PER_MINUTE", "100000000".into()),
                    ("GATEWAY_REQUEST_TIMEOUT_SECONDS", "5".into()),
                    ("GATEWAY_SERVICE_CLIENT_SECRET", GATEWAY_SECRET.into()),
                ]),
            ),
        ];
        let mut components = HashMap::new();
        for (name, env) in environments {
            let mut component = Component {
                name,
                env,
                workdir: workdir.path().to_path_buf(),
                child: None,
            };
            component.start();
            components.insert(name, component);
        }
        let bank = Bank {
            components: std::sync::Mutex::new(components),
            gateway: endpoint("gateway"),
            operator_email,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            _workdir: workdir,
        };
        assert!(
            bank.all_serving(Duration::from_secs(60)).await,
            "the bank did not become ready; logs in {}",
            bank._workdir.path().display()
        );
        bank
    }

    /// Waits until the gateway reports every service serving.
    pub async fn all_serving(&self, limit: Duration) -> bool {
        eventually(limit, || async {
            let Ok(response) = self
                .http
                .get(format!("{}/readyz", self.gateway))
                .send()
                .await
            else {
                return false;
            };
            let Ok(body) = response.json::<Value>().await else {
                return false;
            };
            ["identity", "account", "ledger"]
                .iter()
                .all(|name| body["services"][name] == "serving")
        })
        .await
    }

    /// Does `change` (kill, restart) to the component `name`.
    pub fn with_component(&self, name: &str, change: impl FnOnce(&mut Component)) {
        let mut components = self.components.lock().expect("components");
        change(components.get_mut(name).expect("component"));
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Value,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.gateway))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, path: &str, token: &str) -> Result<(u16, Value), reqwest::Error> {
        let response = self
            .http
            .get(format!("{}{path}", self.gateway))
            .bearer_auth(token)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// POSTs until an answer that is not a server error or a dropped connection,
    /// with the same key and body each time, as a careful client retries. Returns
    /// the final answer and every status seen before it.
    pub async fn post_until_answered(
        &self,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: Value,
        limit: Duration,
    ) -> ((u16, Value), Vec<u16>) {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            match self.post(path, Some(token), key, body.clone()).await {
                Ok((status, body)) if status < 500 => return ((status, body), seen),
                Ok((status, _)) => seen.push(status),
                Err(_) => seen.push(0),
            }
            assert!(Instant::now() < deadline, "{path} never answered: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let ((status, body), _) = self
            .post_until_answered(
                "/v1/auth/login",
                "",
                None,
                json!({"email": email, "password": password}),
                Duration::from_secs(30),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().expect("token").to_owned()
    }

    pub async fn operator(&self) -> String {
        self.login(&self.operator_email.clone(), OPERATOR_PASSWORD)
            .await
    }

    pub async fn customer(&self) -> String {
        let email = format!("customer-{}@bank.test", uuid::Uuid::new_v4().simple());
        let (status, body) = self
            .post(
                "/v1/auth/register",
                None,
                None,
                json!({"email": email, "password": USER_PASSWORD, "full_name": "Fault Customer"}),
            )
            .await
            .expect("register");
        assert_eq!(status, 201, "{body}");
        self.login(&email, USER_PASSWORD).await
    }

    pub async fn open_account(&self, token: &str) -> String {
        let ((status, body), _) = self
            .post_until_answered(
                "/v1/accounts",
                token,
                Some(&uuid::Uuid::new_v4().to_string()),
                json!({"currency": "EUR"}),
                Duration::from_secs(30),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }

    pub async fn deposit(&self, operator: &str, account: &str, amount: i64) {
        let ((status, body), _) = self
            .post_until_answered(
                "/v1/admin/deposits",
                operator,
                Some(&uuid::Uuid::new_v4().to_string()),
                json!({"account_id": account, "amount": amount, "currency": "EUR", "reference": "fault suite"}),
                Duration::from_secs(30),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// GETs until an answer that is not a server error or a dropped connection,
    /// as a careful client retries a read.
    pub async fn get_until_answered(&self, path: &str, token: &str) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.get(path, token).await {
                Ok((status, body)) if status < 500 => return (status, body),
                Ok(_) | Err(_) => {}
            }
            assert!(Instant::now() < deadline, "{path} never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn balance(&self, token: &str, account: &str) -> i64 {
        let (status, body) = self
            .get_until_answered(&format!("/v1/accounts/{account}/balance"), token)
            .await;
        assert_eq!(status, 200, "{body}");
        body["balance"].as_i64().expect("balance")
    }

    pub async fn verify(&self, operator: &str) -> Value {
        let (status, body) = self
            .get_until_answered("/v1/admin/ledger/verify", operator)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// A PostgreSQL cluster of the suite's own, in a temporary directory, made with
/// the machine's `initdb` and run with its `pg_ctl`.
pub struct PrivateCluster {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    as_root: bool,
    _dir: tempfile::TempDir,
}

impl PrivateCluster {
    /// The cluster, started, or `None` (said on stderr) when this machine has no
    /// PostgreSQL server binaries.
    pub fn create() -> Option<PrivateCluster> {
        let bin = std::env::var_os("BANK_PG_BIN_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                    .ok()?
                    .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
                    .filter(|bin| bin.join("initdb").exists())
                    .collect();
                versions.sort();
                versions.pop()
            });
        let Some(bin) = bin else {
            eprintln!(
                "skipped: no PostgreSQL server binaries (initdb, pg_ctl); set BANK_PG_BIN_DIR"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("cluster directory");
        let data = dir.path().join("data");
        // PostgreSQL refuses to run as root; there, the cluster belongs to the
        // machine's postgres user.
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| output.stdout.starts_with(b"0\n"));
        if as_root {
            let owned = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|status| status.success());
            assert!(
                owned,
                "cannot hand the cluster directory to the postgres user"
            );
        }
        let cluster = PrivateCluster {
            bin,
            data,
            port: free_port(),
            as_root,
            _dir: dir,
        };
        let initdb = cluster
            .command("initdb")
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&cluster.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(initdb.success(), "initdb failed");
        cluster.start();
        Some(cluster)
    }

    /// One of the server's programs, run as the user that owns the cluster.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        self.command("pg_ctl")
            .args(args)
            .arg("-D")
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    pub fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=on",
            self.port,
            self._dir.path().display()
        );
        let log = self._dir.path().join("postgres.log");
        assert!(
            self.pg_ctl(&[
                "start",
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "-l",
                &log.display().to_string()
            ]),
            "the private cluster did not start"
        );
    }

    /// Stops the server at once: clients are disconnected, nothing is served
    /// until [`PrivateCluster::start`].
    pub fn stop(&self) {
        assert!(
            self.pg_ctl(&["stop", "-w", "-m", "fast"]),
            "the private cluster did not stop"
        );
    }

    /// Restarts the cluster serving TLS with `cert` and `key` (copied into its
    /// data directory, owned by the server's user, as PostgreSQL requires).
    pub fn enable_tls(&self, cert: &Path, key: &Path) {
        self.stop();
        for (source, name) in [(cert, "server.crt"), (key, "server.key")] {
            let target = self.data.join(name);
            std::fs::copy(source, &target).expect("copy a TLS file");
            std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("TLS file permissions");
            if self.as_root {
                let owned = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&target)
                    .status()
                    .is_ok_and(|status| status.success());
                assert!(owned, "cannot hand {name} to the postgres user");
            }
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(
            &mut conf,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .expect("write postgresql.conf");
        self.start();
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates the three databases and returns their URLs.
    pub async fn databases(&self) -> Databases {
        use sea_orm::ConnectionTrait;
        let admin = sea_orm::Database::connect(self.url("postgres"))
            .await
            .expect("connect");
        for name in ["identity", "ledger", "account"] {
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create database");
        }
        admin.close().await.ok();
        Databases {
            identity: self.url("identity"),
            ledger: self.url("ledger"),
            account: self.url("account"),
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.pg_ctl(&["stop", "-w", "-m", "immediate"]);
    }
}
