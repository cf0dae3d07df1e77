//! The edge's own behaviour: authentication, body limits, media types, headers,
//! CORS, discovery documents, health, and opaque failures.

use bank_e2e::{Parts, db_test, spawn};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Rest, assert_problem, offline_config, start};

db_test!(
    malformed_requests_get_precise_problems,
    databases = 3,
    malformed_requests
);
async fn malformed_requests(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let (_, alice) = rest.customer().await;

    let anonymous = rest
        .call(Method::GET, "/v1/accounts", None, None, None)
        .await;
    assert_problem(&anonymous, StatusCode::UNAUTHORIZED, "unauthenticated");
    let forged = rest
        .get("/v1/me", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
        .await;
    assert_problem(&forged, StatusCode::UNAUTHORIZED, "unauthenticated");

    let plain_text = rest
        .http
        .post(stack.gateway_url("/v1/accounts"))
        .bearer_auth(&alice)
        .header("content-type", "text/plain")
        .body("currency=EUR")
        .send()
        .await
        .unwrap();
    assert_eq!(plain_text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: serde_json::Value = plain_text.json().await.unwrap();
    assert_eq!(body["code"], "unsupported_media_type");

    let broken = rest
        .http
        .post(stack.gateway_url("/v1/accounts"))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{\"currency\":")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), StatusCode::BAD_REQUEST);

    let huge =
        json!({"email": "x@example.com", "password": "p".repeat(70 * 1024), "full_name": "x"});
    let too_large = rest.post("/v1/auth/register", None, None, huge).await;
    assert_problem(
        &too_large,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    let missing_field = rest
        .post(
            "/v1/accounts",
            Some(&alice),
            None,
            json!({"nickname": "no currency"}),
        )
        .await;
    assert_problem(&missing_field, StatusCode::BAD_REQUEST, "invalid_argument");
    let bad_id = rest.get("/v1/accounts/not-a-uuid", &alice).await;
    assert_problem(&bad_id, StatusCode::BAD_REQUEST, "invalid_argument");
    let bad_page = rest
        .get(
            "/v1/accounts/00000000-0000-0000-0000-000000000000/transactions?page_size=abc",
            &alice,
        )
        .await;
    assert_problem(&bad_page, StatusCode::BAD_REQUEST, "invalid_argument");
    for key in ["a b", "tab\there", &"k".repeat(129)] {
        let transfer = rest
            .post(
                "/v1/transfers",
                Some(&alice),
                Some(key),
                json!({"from_account_id": "00000000-0000-0000-0000-000000000000",
                       "to_account_id": "00000000-0000-0000-0000-000000000001",
                       "amount": 1, "currency": "EUR"}),
            )
            .await;
        assert_problem(&transfer, StatusCode::BAD_REQUEST, "invalid_argument");
        assert!(
            transfer.body["detail"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{key:?}: {:?}",
            transfer.body
        );
    }
    let no_route = rest.get("/v1/nothing-here", &alice).await;
    assert_problem(&no_route, StatusCode::NOT_FOUND, "not_found");
    let accounts = rest.get("/v1/accounts", &alice).await;
    assert_eq!(
        accounts.body["accounts"],
        json!([]),
        "nothing was created by the refused requests"
    );
}

db_test!(
    responses_carry_security_headers_and_cors_follows_the_allowlist,
    databases = 3,
    headers_and_cors
);
async fn headers_and_cors(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let http = reqwest::Client::new();

    let health = http
        .get(stack.gateway_url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let headers = health.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(
        headers["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    assert_eq!(
        headers["x-request-id"], "abc-123",
        "a sane client request id is kept"
    );

    let preflight = |origin: &'static str| {
        http.request(Method::OPTIONS, stack.gateway_url("/v1/transfers"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let allowed = preflight("https://app.bank.test").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.bank.test"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

db_test!(
    discovery_and_health_documents_are_served,
    databases = 3,
    discovery
);
async fn discovery(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let http = reqwest::Client::new();

    let ready = http.get(stack.gateway_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"status": "ready", "services": {"identity": "serving", "account": "serving", "ledger": "serving"}})
    );

    let jwks: serde_json::Value = http
        .get(stack.gateway_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert!(key["kid"].as_str().is_some_and(|kid| !kid.is_empty()));

    let metrics = http
        .get(stack.gateway_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(
        metrics.contains("route=\"/readyz\""),
        "requests are labelled by route template: {metrics}"
    );

    let openapi: serde_json::Value = http
        .get(stack.gateway_url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    let not_found = &openapi["paths"]["/v1/accounts/{id}"]["get"]["responses"]["404"]["content"];
    assert!(
        not_found.get("application/problem+json").is_some(),
        "errors are documented as problem documents: {not_found}"
    );
    for path in [
        "/v1/auth/register",
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/auth/logout",
        "/v1/me",
        "/v1/me/password",
        "/v1/accounts",
        "/v1/accounts/{id}",
        "/v1/accounts/{id}/balance",
        "/v1/accounts/{id}/transactions",
        "/v1/accounts/{id}/close",
        "/v1/transfers",
        "/v1/transfers/{id}",
        "/v1/admin/deposits",
        "/v1/admin/withdrawals",
        "/v1/admin/accounts/{id}/freeze",
        "/v1/admin/accounts/{id}/unfreeze",
        "/v1/admin/transfers/{id}/reverse",
        "/v1/admin/ledger/verify",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/.well-known/jwks.json",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    // What the gateway enforces is documented, so generated clients and fuzzers
    // know the bounds.
    for (path, method) in [
        ("/v1/transfers", "post"),
        ("/v1/admin/deposits", "post"),
        ("/v1/admin/withdrawals", "post"),
        ("/v1/admin/transfers/{id}/reverse", "post"),
    ] {
        let parameters = openapi["paths"][path][method]["parameters"]
            .as_array()
            .unwrap();
        let key = parameters
            .iter()
            .find(|parameter| parameter["name"] == "Idempotency-Key")
            .unwrap_or_else(|| panic!("{path} documents no Idempotency-Key"));
        assert_eq!(key["in"], "header");
        assert_eq!(key["required"], true);
        assert_eq!(key["schema"]["minLength"], 1, "{path}");
        assert_eq!(key["schema"]["maxLength"], 128, "{path}");
        assert_eq!(key["schema"]["pattern"], "^[\\x21-\\x7E]{1,128}$", "{path}");
    }
    let page_size = openapi["paths"]["/v1/accounts/{id}/transactions"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|parameter| parameter["name"] == "page_size")
        .unwrap()
        .clone();
    assert_eq!(page_size["schema"]["minimum"], 1);
    assert_eq!(page_size["schema"]["maximum"], 100);
}

#[tokio::test]
async fn unreachable_services_give_opaque_unavailable_problems() {
    let url = start(&offline_config().await).await;
    let http = reqwest::Client::new();

    let register = http
        .post(format!("{url}/v1/auth/register"))
        .json(&json!({"email": "a@example.com", "password": bank_e2e::USER_PASSWORD, "full_name": "A"}))
        .send()
        .await
        .unwrap();
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();

    assert_eq!(register.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = register.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(
        body["detail"], "Service unavailable",
        "no transport detail leaks: {body}"
    );
    // The gateway itself can serve; what it cannot reach is in the body.
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        ready,
        json!({"status": "ready", "services": {"identity": "unreachable", "account": "unreachable", "ledger": "unreachable"}})
    );
}

db_test!(
    every_error_is_a_problem_document,
    databases = 3,
    errors_are_problems
);
async fn errors_are_problems(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let operator = rest.operator_token().await;

    let oversized_reversal = rest
        .http
        .post(stack.gateway_url("/v1/admin/transfers/00000000-0000-0000-0000-000000000000/reverse"))
        .bearer_auth(&operator)
        .header("idempotency-key", "r")
        .header("content-type", "application/json")
        .body(format!("{{\"reason\":\"{}\"}}", "x".repeat(70 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized_reversal.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        oversized_reversal.headers()["content-type"],
        "application/problem+json"
    );

    let bad_utf8_path = rest.get("/v1/accounts/%FF%FE", &operator).await;
    assert_problem(&bad_utf8_path, StatusCode::BAD_REQUEST, "invalid_argument");

    let wrong_type = rest
        .post(
            "/v1/transfers",
            Some(&operator),
            Some("k"),
            json!("just a string"),
        )
        .await;
    assert_problem(&wrong_type, StatusCode::BAD_REQUEST, "invalid_argument");
    assert!(
        !wrong_type.body.to_string().contains("TransferBody"),
        "{:?}",
        wrong_type.body
    );
}

#[tokio::test]
async fn undeclared_methods_are_405_problems_naming_the_allowed_ones() {
    let url = start(&offline_config().await).await;

    let response = reqwest::Client::new()
        .delete(format!("{url}/healthz"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        response.headers()["allow"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(response.headers().contains_key("x-request-id"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
}

/// A stand-in for identity that records the `grpc-timeout` of each login and
/// answers every call NOT_FOUND.
async fn recording_identity() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::{Router, http::HeaderMap, response::IntoResponse};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = std::sync::Arc::clone(&seen);
    let router = Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
        let recorder = std::sync::Arc::clone(&recorder);
        async move {
            let timeout = headers
                .get("grpc-timeout")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if uri.path().ends_with("/Login") {
                recorder.lock().unwrap().push(timeout);
            }
            tonic::Status::not_found("no such user")
                .into_http::<axum::body::Body>()
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, seen)
}

/// `grpc-timeout` as a duration: digits and one unit letter.
fn grpc_timeout(raw: &str) -> Option<std::time::Duration> {
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[tokio::test]
async fn the_request_deadline_travels_to_the_services_as_the_grpc_deadline() {
    let (identity, seen) = recording_identity().await;
    let mut config = offline_config().await;
    config.identity_endpoint = identity;
    config.request_timeout = std::time::Duration::from_secs(3);
    let url = start(&config).await;

    let login = reqwest::Client::new()
        .post(format!("{url}/v1/auth/login"))
        .json(&json!({"email": "a@example.com", "password": "wrong password here"}))
        .send()
        .await
        .unwrap();

    assert_eq!(login.status(), StatusCode::NOT_FOUND);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let carried = grpc_timeout(&seen[0]).unwrap_or_else(|| panic!("no grpc-timeout: {seen:?}"));
    assert!(
        carried > std::time::Duration::ZERO && carried <= std::time::Duration::from_secs(3),
        "{carried:?}"
    );
}

db_test!(
    a_body_field_the_route_does_not_define_is_refused_and_named,
    databases = 3,
    strict_bodies
);
async fn strict_bodies(urls: Vec<String>) {
    let stack = bank_e2e::spawn(&urls, bank_e2e::Parts::ALL).await;
    let rest = crate::helpers::Rest::new(&stack);
    let operator = rest.operator_token().await;
    let (_, token) = rest.customer().await;
    let from = rest.open_account(&token, "EUR").await;
    let to = rest.open_account(&token, "EUR").await;
    rest.deposit(&operator, &from, 1_000).await;

    // A client that misspells `amount` must not get a transfer of something else.
    let misspelled = rest
        .post(
            "/v1/transfers",
            Some(&token),
            Some("strict-1"),
            serde_json::json!({"from_account_id": from, "to_account_id": to, "amount": 5, "amout": 500, "currency": "EUR"}),
        )
        .await;
    crate::helpers::assert_problem(
        &misspelled,
        reqwest::StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    assert!(
        misspelled.body["detail"]
            .as_str()
            .unwrap()
            .contains("`amout`"),
        "{:?}",
        misspelled.body
    );
    assert_eq!(rest.balance(&token, &to).await, 0, "nothing moved");

    for (path, key, body) in [
        (
            "/v1/auth/login",
            None,
            serde_json::json!({"email": "a@b.test", "password": "x", "remember": true}),
        ),
        (
            "/v1/accounts",
            None,
            serde_json::json!({"currency": "EUR", "owner_id": "someone"}),
        ),
        (
            "/v1/admin/deposits",
            Some("strict-2"),
            serde_json::json!({"account_id": from, "amount": 1, "currency": "EUR", "reference": "r", "fee": 0}),
        ),
    ] {
        let token = if path.starts_with("/v1/admin") {
            &operator
        } else {
            &token
        };
        let reply = rest.post(path, Some(token), key, body).await;
        crate::helpers::assert_problem(
            &reply,
            reqwest::StatusCode::BAD_REQUEST,
            "invalid_argument",
        );
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap()
                .contains("unknown field"),
            "{path}: {:?}",
            reply.body
        );
    }

    // The document says so.
    let openapi: serde_json::Value = rest
        .http
        .get(stack.gateway_url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for schema in [
        "TransferBody",
        "OpenAccountBody",
        "LoginBody",
        "MoneyMovementBody",
    ] {
        assert_eq!(
            openapi["components"]["schemas"][schema]["additionalProperties"], false,
            "{schema}"
        );
    }
}

#[tokio::test]
async fn invented_methods_and_paths_never_grow_the_metrics() {
    let url = crate::helpers::start(&crate::helpers::offline_config().await).await;
    let http = reqwest::Client::new();
    for index in 0..200 {
        let method = reqwest::Method::from_bytes(format!("X{index}FLOOD").as_bytes()).unwrap();
        http.request(method, format!("{url}/healthz"))
            .send()
            .await
            .unwrap();
        http.get(format!("{url}/flood/{index}/{}", uuid::Uuid::new_v4()))
            .send()
            .await
            .unwrap();
    }
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    assert!(
        !metrics.contains("FLOOD"),
        "an invented method became a label"
    );
    assert!(!metrics.contains("/flood/"), "a raw path became a label");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    // Every method label is one of a fixed few, whatever ran in this process.
    let allowed = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other",
    ];
    // (`method` exactly: the services' `grpc_method` labels, in this process too
    // when every test shares one, name RPCs.)
    for series in metrics.lines().filter(|line| line.starts_with("http_")) {
        for label in series.split(['{', ',']).skip(1) {
            if let Some(value) = label.strip_prefix("method=\"") {
                let value = value.split('"').next().unwrap_or_default();
                assert!(allowed.contains(&value), "method label {value:?}");
            }
        }
    }
}

db_test!(
    the_jwks_document_is_served_from_a_short_cache,
    databases = 3,
    jwks_cached
);
/// The variants of [`jwks_cached`] one at a time: a process's services share one
/// metrics registry, so two stacks counting identity's `GetJwks` calls at once
/// would each see the other's fetch.
static JWKS_COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn jwks_cached(urls: Vec<String>) {
    let _alone = JWKS_COUNTING.lock().await;
    let stack = spawn(&urls, Parts::ALL).await;
    // Every other reader of the key set (the token verifiers of the gateway,
    // the account service and the ledger) fetches it on its first token, so a
    // customer's account is opened first: what is counted after is the
    // document's own cache alone.
    let rest = Rest::new(&stack);
    let (_, token) = rest.customer().await;
    rest.open_account(&token, "EUR").await;
    let identity_admin = stack.admin_addrs["identity"];
    let fetches = |text: String| {
        bank_e2e::sample(
            &text,
            "grpc_server_handled_total",
            &[("grpc_method", "GetJwks")],
        )
    };
    let before = fetches(bank_e2e::scrape(identity_admin).await);

    let http = reqwest::Client::new();
    for _ in 0..20 {
        let document: serde_json::Value = http
            .get(stack.gateway_url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(!document["keys"].as_array().unwrap().is_empty());
    }

    // One fetch for the first request, none for the 19 after it. Other tests
    // of the same process (`cargo test`) count in the same registry: a stack
    // starting meanwhile fetches the key set once per verifier (three) and may
    // ask its gateway for the document once, so up to four more may show;
    // without the cache there would be 20.
    let fetched = fetches(bank_e2e::scrape(identity_admin).await) - before;
    assert!(
        (1.0..=5.0).contains(&fetched),
        "20 requests, {fetched} fetches from identity"
    );
}

db_test!(
    weak_passwords_are_refused_over_rest,
    databases = 3,
    weak_passwords
);
async fn weak_passwords(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let rest = Rest::new(&stack);
    let email = "dana.weak@bank.test";
    for weak in ["password1234", "qwertyuiop123", email, "ﬁﬁﬁﬁﬁﬁ"] {
        let reply = rest
            .post(
                "/v1/auth/register",
                None,
                None,
                json!({"email": email, "password": weak, "full_name": "Dana Weak"}),
            )
            .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_argument");
    }
    let (_, token) = rest.customer().await;
    let change = rest
        .post(
            "/v1/me/password",
            Some(&token),
            None,
            json!({"current_password": bank_e2e::USER_PASSWORD, "new_password": "iloveyou2024!"}),
        )
        .await;
    assert_problem(&change, StatusCode::BAD_REQUEST, "invalid_argument");
    assert!(
        change.body["detail"]
            .as_str()
            .unwrap()
            .contains("too easy to guess")
    );
}

db_test!(
    the_openapi_document_is_valid_openapi,
    databases = 3,
    openapi_valid
);
async fn openapi_valid(urls: Vec<String>) {
    let stack = spawn(&urls, Parts::ALL).await;
    let text = reqwest::get(stack.gateway_url("/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let document: serde_json::Value = serde_json::from_str(&text).unwrap();

    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (code, response) in operation["responses"].as_object().unwrap() {
                let described = response["description"]
                    .as_str()
                    .is_some_and(|text| !text.is_empty());
                assert!(
                    described || response.get("$ref").is_some(),
                    "{method} {path} {code}: no description"
                );
            }
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap();
                if parameter["in"] == "path" {
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: {name} is not in the path"
                    );
                    assert_eq!(parameter["required"], true, "{method} {path}: {name}");
                }
            }
        }
    }
    let page_size = &document["paths"]["/v1/accounts/{id}/transactions"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|parameter| parameter["name"] == "page_size")
        .cloned()
        .unwrap();
    assert_eq!(page_size["in"], "query");

    // The ecosystem's validator, where it is installed (CI installs it).
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    match std::process::Command::new("openapi-spec-validator")
        .arg(file.path())
        .output()
    {
        Ok(output) => assert!(
            output.status.success(),
            "openapi-spec-validator: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(_) => eprintln!(
            "openapi-spec-validator is not installed (pip install openapi-spec-validator): skipped"
        ),
    }
}

/// Without an exporter the gateway records no spans, yet every problem names a
/// W3C trace: the client's `traceparent`'s when it sent a well-formed one, a
/// fresh one per request otherwise.
#[tokio::test]
async fn problems_name_the_callers_trace_or_a_fresh_one() {
    let url = start(&offline_config().await).await;
    let client = reqwest::Client::new();
    let trace_of = |traceparent: Option<&'static str>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut request = client.get(format!("{url}/v1/accounts"));
            if let Some(traceparent) = traceparent {
                request = request.header("traceparent", traceparent);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            let body: serde_json::Value = response.json().await.unwrap();
            body["trace_id"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(
        trace_of(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ))
        .await,
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let fresh = [
        trace_of(None).await,
        trace_of(None).await,
        trace_of(Some(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ))
        .await,
    ];
    for trace_id in &fresh {
        assert!(
            trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{trace_id}"
        );
        assert_ne!(trace_id, "00000000000000000000000000000000");
    }
    assert_ne!(fresh[0], fresh[1]);
}
