//! A small REST client for the tests.

use bank_e2e::{OPERATOR_PASSWORD, Stack, USER_PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub struct Rest<'a> {
    pub stack: &'a Stack,
    pub http: reqwest::Client,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }
}

impl<'a> Rest<'a> {
    pub fn new(stack: &'a Stack) -> Rest<'a> {
        Rest {
            stack,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, self.stack.gateway_url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Value,
    ) -> Reply {
        self.call(Method::POST, path, token, key, Some(body)).await
    }

    /// Registers and logs in a new customer; returns (user id, access token).
    pub async fn customer(&self) -> (String, String) {
        let email = format!("rest-{}@bank.test", uuid::Uuid::new_v4().simple());
        let registered = self
            .post(
                "/v1/auth/register",
                None,
                None,
                json!({"email": email, "password": USER_PASSWORD, "full_name": "Rest User"}),
            )
            .await;
        assert_eq!(
            registered.status,
            StatusCode::CREATED,
            "{:?}",
            registered.body
        );
        let login = self.login(&email, USER_PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK);
        (
            registered.body["id"].as_str().unwrap().to_owned(),
            login.body["access_token"].as_str().unwrap().to_owned(),
        )
    }

    /// `POST /v1/auth/login` with `email` and `password`.
    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post(
            "/v1/auth/login",
            None,
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn operator_token(&self) -> String {
        let login = self
            .post(
                "/v1/auth/login",
                None,
                None,
                json!({"email": self.stack.operator_email, "password": OPERATOR_PASSWORD}),
            )
            .await;
        login.body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn open_account(&self, token: &str, currency: &str) -> String {
        let opened = self
            .post(
                "/v1/accounts",
                Some(token),
                None,
                json!({"currency": currency}),
            )
            .await;
        assert_eq!(opened.status, StatusCode::CREATED, "{:?}", opened.body);
        opened.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn deposit(&self, operator: &str, account_id: &str, amount: i64) {
        let key = uuid::Uuid::new_v4().to_string();
        let deposited = self
            .post("/v1/admin/deposits", Some(operator), Some(&key), json!({"account_id": account_id, "amount": amount, "currency": "EUR", "reference": "wire"}))
            .await;
        assert_eq!(
            deposited.status,
            StatusCode::CREATED,
            "{:?}",
            deposited.body
        );
    }

    pub async fn balance(&self, token: &str, account_id: &str) -> i64 {
        let reply = self
            .get(&format!("/v1/accounts/{account_id}/balance"), token)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        reply.body["balance"].as_i64().unwrap()
    }
}

/// Asserts the reply is a problem document with `status` and `code`, that names
/// its trace, and carries no internals.
pub fn assert_problem(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(reply.code(), code, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    for field in ["type", "title", "status", "detail", "code", "trace_id"] {
        assert!(
            reply.body.get(field).is_some(),
            "problem lacks {field}: {:?}",
            reply.body
        );
    }
    // The W3C trace id of the request (the request's own id travels apart, in
    // x-request-id).
    let trace_id = reply.body["trace_id"].as_str().unwrap();
    assert!(
        trace_id.len() == 32
            && trace_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{trace_id}"
    );
    assert!(reply.headers.contains_key("x-request-id"));
    let text = reply.body.to_string().to_lowercase();
    for leak in [
        "select ",
        "insert ",
        "sqlx",
        "src/",
        ".rs:",
        "panicked",
        "tonic",
        "transport error",
        "status {",
    ] {
        assert!(!text.contains(leak), "problem leaks {leak:?}: {text}");
    }
}

/// A port nothing listens on.
pub async fn closed_port() -> String {
    format!("http://{}", bank_e2e::unused_addr())
}

/// A gateway configuration whose services do not exist, with generous limits.
pub async fn offline_config() -> bank_gateway::Config {
    bank_gateway::Config {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        identity_endpoint: closed_port().await,
        account_endpoint: closed_port().await,
        ledger_endpoint: closed_port().await,
        cors_allowed_origins: Vec::new(),
        request_timeout: std::time::Duration::from_secs(5),
        redis_url: None,
        rate_limit_namespace: "bank-test".into(),
        api_quota: bank_gateway::rate_limit::Quota::per_minute(1_000),
        auth_quota: bank_gateway::rate_limit::Quota::per_minute(1_000),
        trusted_proxies: Default::default(),
        service_client_secret: None,
        tls: Default::default(),
        timeouts: bank_gateway::serve::Timeouts {
            header_read: bank_gateway::HEADER_READ_TIMEOUT,
            idle: bank_gateway::IDLE_TIMEOUT,
        },
    }
}

/// Starts a gateway with `config`; returns its base URL.
pub async fn start(config: &bank_gateway::Config) -> String {
    let gateway = bank_gateway::build(config).await.unwrap();
    let url = format!("http://{}", gateway.local_addr().unwrap());
    tokio::spawn(gateway.run_until_stopped(std::future::pending()));
    url
}
