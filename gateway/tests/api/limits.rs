//! Rate limits, in process and in Redis (with BANK_TEST_REDIS_URL, where two
//! gateway replicas must share one bucket). The gateways here point at services
//! that do not exist: an allowed request answers 503, a limited one 429.

use bank_gateway::{
    client::TrustedProxies,
    rate_limit::{Decision, Quota, RateLimiter},
};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{closed_port, offline_config, start};

const REDIS_URL_VAR: &str = "BANK_TEST_REDIS_URL";

/// The test Redis, or `None` (said on stderr) when the variable is not set.
fn test_redis_url() -> Option<String> {
    let url = std::env::var(REDIS_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty());
    if url.is_none() {
        eprintln!("{REDIS_URL_VAR} is not set: Redis variant not run");
    }
    url
}

/// Starts a gateway allowing one auth request per minute per client.
async fn gateway(redis_url: Option<String>, namespace: &str) -> String {
    gateway_behind(redis_url, namespace, TrustedProxies::default()).await
}

async fn gateway_behind(
    redis_url: Option<String>,
    namespace: &str,
    trusted_proxies: TrustedProxies,
) -> String {
    let config = bank_gateway::Config {
        redis_url,
        rate_limit_namespace: namespace.to_owned(),
        auth_quota: Quota {
            per_minute: 1,
            burst: 1,
        },
        trusted_proxies,
        ..offline_config().await
    };
    start(&config).await
}

async fn login_forwarded_for(
    http: &reqwest::Client,
    base: &str,
    forwarded_for: &str,
) -> reqwest::Response {
    http.post(format!("{base}/v1/auth/login"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"email": "a@example.com", "password": "whatever password"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let behind_proxy = gateway_behind(
        None,
        "bank-test",
        TrustedProxies::parse("127.0.0.1").unwrap(),
    )
    .await;
    let exposed = gateway(None, "bank-test").await;
    let http = reqwest::Client::new();

    let first_client = login_forwarded_for(&http, &behind_proxy, "198.51.100.1").await;
    let second_client = login_forwarded_for(&http, &behind_proxy, "198.51.100.2").await;
    let first_again = login_forwarded_for(&http, &behind_proxy, "198.51.100.1").await;
    assert_eq!(first_client.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second_client.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_limited(first_again).await;

    // Without trusted proxies a forged header does not buy a fresh bucket.
    let forged_one = login_forwarded_for(&http, &exposed, "198.51.100.3").await;
    let forged_two = login_forwarded_for(&http, &exposed, "198.51.100.4").await;
    assert_eq!(forged_one.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_limited(forged_two).await;
}

async fn login(http: &reqwest::Client, base: &str) -> reqwest::Response {
    http.post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": "a@example.com", "password": "whatever password"}))
        .send()
        .await
        .unwrap()
}

async fn assert_limited(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
}

#[tokio::test]
async fn auth_routes_are_rate_limited_per_client() {
    let base = gateway(None, "bank-test").await;
    let http = reqwest::Client::new();

    let first = login(&http, &base).await;
    let second = login(&http, &base).await;
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();

    assert_eq!(
        first.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "allowed through to the (absent) service"
    );
    assert_limited(second).await;
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "health checks are not limited"
    );
}

#[tokio::test]
#[ignore = "needs BANK_TEST_REDIS_URL; make test runs it when that is set"]
async fn buckets_are_shared_by_gateway_replicas_with_redis() {
    let Some(redis_url) = test_redis_url() else {
        return;
    };
    let namespace = format!("bank-test-{}", uuid::Uuid::new_v4().simple());
    let replica_a = gateway(Some(redis_url.clone()), &namespace).await;
    let replica_b = gateway(Some(redis_url), &namespace).await;
    let http = reqwest::Client::new();

    let first = login(&http, &replica_a).await;
    let second = login(&http, &replica_b).await;

    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_limited(second).await;
}

/// The shared decision itself, with Redis errors surfacing instead of falling
/// back to per-replica buckets (which would hide a broken script or connection).
#[tokio::test]
#[ignore = "needs BANK_TEST_REDIS_URL; make test runs it when that is set"]
async fn limiters_decide_together_without_falling_back_with_redis() {
    let Some(redis_url) = test_redis_url() else {
        return;
    };
    let namespace = format!("bank-test-{}", uuid::Uuid::new_v4().simple());
    let replica_a = RateLimiter::redis(&redis_url, &namespace, &Default::default())
        .await
        .unwrap();
    let replica_b = RateLimiter::redis(&redis_url, &namespace, &Default::default())
        .await
        .unwrap();
    let quota = Quota {
        per_minute: 2,
        burst: 2,
    };

    let decisions = [
        replica_a.check_shared("auth:198.51.100.1", quota).await,
        replica_b.check_shared("auth:198.51.100.1", quota).await,
        replica_a.check_shared("auth:198.51.100.1", quota).await,
        replica_b.check_shared("auth:198.51.100.2", quota).await,
    ]
    .map(|decision| decision.expect("Redis answers"));

    assert_eq!(decisions[0], Some(Decision::Allowed));
    assert_eq!(decisions[1], Some(Decision::Allowed));
    let Some(Decision::Limited { retry_after }) = decisions[2] else {
        panic!("the third request of a burst of two is limited: {decisions:?}");
    };
    assert!(
        retry_after > std::time::Duration::ZERO
            && retry_after <= std::time::Duration::from_secs(30)
    );
    assert_eq!(decisions[3], Some(Decision::Allowed), "another client");
}

#[tokio::test]
async fn an_unreachable_redis_stops_the_gateway_at_start() {
    let config = bank_gateway::Config {
        redis_url: Some(closed_port().await.replace("http://", "redis://")),
        ..offline_config().await
    };
    let error = bank_gateway::build(&config)
        .await
        .err()
        .expect("start must fail");
    assert!(error.to_string().starts_with("REDIS_URL:"), "{error}");
}

/// A gateway whose clients get `header_read` to send a request head and `idle`
/// between requests.
async fn impatient_gateway(header_read: Duration, idle: Duration) -> std::net::SocketAddr {
    let mut config = offline_config().await;
    config.timeouts = bank_gateway::serve::Timeouts { header_read, idle };
    let url = start(&config).await;
    url.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the gateway closes the connection; answers how long that took.
async fn closed_within(stream: &mut tokio::net::TcpStream, bound: Duration) -> Duration {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(bound, stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("still open after {bound:?}"));
        if matches!(read, Ok(0) | Err(_)) {
            return started.elapsed();
        }
    }
}

#[tokio::test]
async fn slow_silent_and_idle_clients_are_disconnected() {
    use tokio::io::AsyncWriteExt;
    let gateway = impatient_gateway(Duration::from_secs(1), Duration::from_secs(2)).await;
    let bound = Duration::from_secs(8);

    let mut slow = tokio::net::TcpStream::connect(gateway).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: bank\r\nX-Slow: ")
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(gateway).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: bank\r\n\r\n")
        .await
        .unwrap();

    assert!(closed_within(&mut slow, bound).await >= Duration::from_millis(900));
    closed_within(&mut silent, bound).await;
    closed_within(&mut idle, bound).await;

    let healthz = reqwest::get(format!("http://{gateway}/healthz"))
        .await
        .unwrap();
    assert_eq!(
        healthz.status(),
        StatusCode::OK,
        "others are served meanwhile"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let gateway = impatient_gateway(Duration::from_secs(1), Duration::from_secs(2)).await;
    let tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{gateway}/healthz"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), StatusCode::OK);

    let ended = tokio::time::timeout(Duration::from_secs(8), connection).await;
    assert!(ended.is_ok(), "the idle connection is still open");
}
