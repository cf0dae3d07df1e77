//! `healthcheck`: the probe every binary carries, for container images that have
//! no shell and no curl. `bank-<component> healthcheck` reads the component's own
//! environment, calls its listener on this host and exits 0 when it serves, 1
//! (with the reason on stderr) when it does not:
//!
//! - the gRPC services: `grpc.health.v1.Health/Check` with tonic-health's client,
//!   healthy on `SERVING` (a service whose database is down answers `NOT_SERVING`);
//! - the gateway: `GET /readyz`, healthy on a 2xx answer.
//!
//! With `BANK_TLS_CERT_FILE` set the listener speaks TLS, so the probe does too:
//! it verifies the listener against `BANK_TLS_CA_FILE` under the name
//! `localhost` (which certificates for in-pod probes carry) and presents the
//! process's own certificate, as a listener that requires client certificates
//! asks.

use std::{net::SocketAddr, time::Duration};

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    config::Env,
    tls::{Connector, TlsSettings},
};

/// The argument that turns a binary into its own probe.
pub const SUBCOMMAND: &str = "healthcheck";

/// How long the whole probe may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the process was started as `<binary> healthcheck`.
pub fn requested() -> bool {
    std::env::args().nth(1).as_deref() == Some(SUBCOMMAND)
}

/// Where a listener bound to `listen` is reached from this host: a wildcard
/// address is reached on loopback, and a TLS listener by the name `localhost`.
pub fn local_url(listen: SocketAddr, tls: bool) -> String {
    let port = listen.port();
    if tls {
        return format!("https://localhost:{port}");
    }
    let host = match listen {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => "127.0.0.1".to_owned(),
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => "[::1]".to_owned(),
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    };
    format!("http://{host}:{port}")
}

/// The channel to the listener named by `listen_variable` (its default
/// `default`), plain or TLS as the process's `BANK_TLS_*` say.
fn local_channel(
    env: &Env,
    listen_variable: &str,
    default: &str,
) -> Result<(tonic::transport::Channel, String), String> {
    let listen = env
        .socket_addr(listen_variable, default)
        .map_err(|error| error.to_string())?;
    let settings = TlsSettings::from_env(env).map_err(|error| error.to_string())?;
    let url = local_url(listen, settings.identity.is_some());
    let connector = Connector::new(&settings).map_err(|error| error.to_string())?;
    let channel = crate::grpc::channel(listen_variable, &url, &connector, TIMEOUT)
        .map_err(|error| error.to_string())?;
    Ok((channel, url))
}

/// Whether the gRPC service listening at `listen_variable` reports `SERVING`.
pub async fn grpc_serving(env: &Env, listen_variable: &str, default: &str) -> Result<(), String> {
    let (channel, url) = local_channel(env, listen_variable, default)?;
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    let answer = tokio::time::timeout(TIMEOUT, check)
        .await
        .map_err(|_| format!("{url}: no answer within {TIMEOUT:?}"))?
        .map_err(|status| format!("{url}: {}", status.message()))?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        status => Err(format!("{url}: {}", status.as_str_name())),
    }
}

/// Whether the HTTP listener at `listen_variable` answers `GET path` with 2xx.
pub async fn http_ready(
    env: &Env,
    listen_variable: &str,
    default: &str,
    path: &str,
) -> Result<(), String> {
    let (channel, url) = local_channel(env, listen_variable, default)?;
    let request = http::Request::get(format!("{url}{path}"))
        .body(tonic::body::Body::empty())
        .map_err(|error| error.to_string())?;
    let answer = tokio::time::timeout(TIMEOUT, tower::ServiceExt::oneshot(channel, request))
        .await
        .map_err(|_| format!("{url}{path}: no answer within {TIMEOUT:?}"))?
        .map_err(|error| format!("{url}{path}: {error}"))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url}{path}: {}", answer.status()))
    }
}

/// Ends the probe: exit 0 when healthy, 1 with the reason on stderr.
pub fn finish(result: Result<(), String>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(reason) => {
            eprintln!("unhealthy: {reason}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::local_url;

    #[test]
    fn wildcard_listeners_are_probed_on_loopback_and_tls_by_name() {
        let url = |addr: &str, tls| {
            local_url(addr.parse().unwrap_or_else(|error| panic!("{error}")), tls)
        };
        assert_eq!(url("0.0.0.0:50051", false), "http://127.0.0.1:50051");
        assert_eq!(url("[::]:8080", false), "http://[::1]:8080");
        assert_eq!(url("10.0.0.7:50053", false), "http://10.0.0.7:50053");
        assert_eq!(url("0.0.0.0:50051", true), "https://localhost:50051");
    }
}
