//! Prometheus metrics: one recorder per process, rate, errors and duration per gRPC
//! method, and the text format served at `GET /metrics`. Every gRPC port also
//! answers plain HTTP/1.1 so that Prometheus can scrape it there.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tonic::service::Routes;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Upper bounds of the duration histograms, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide recorder once and returns its handle.
fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(DURATION_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// The `# HELP` line of every series any component exports.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "grpc_server_handled_total",
        "gRPC calls completed, by service, method and status code"
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "Time from a gRPC call's arrival to its answer"
    );
    describe_counter!(
        "http_requests_total",
        "REST requests answered by the gateway, by method, route template and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "Time from a REST request's arrival to its answer"
    );
    describe_gauge!(
        "db_pool_connections",
        "Database pool connections, idle or in use"
    );
    describe_gauge!(
        "db_pool_max_connections",
        "The most connections the database pool opens"
    );
    describe_counter!(
        "ledger_postings_total",
        "Postings committed, by kind and currency (replays not counted)"
    );
    describe_counter!(
        "ledger_postings_refused_total",
        "Postings refused, by kind and error code"
    );
    describe_counter!(
        "ledger_posted_minor_units_total",
        "Money moved by committed postings, in minor units, by kind and currency"
    );
    describe_counter!(
        "ledger_posting_replays_total",
        "Keyed requests answered from their request record, by kind"
    );
    describe_counter!(
        "ledger_holds_expired_total",
        "Holds whose expiry the sweep wrote"
    );
    describe_gauge!(
        "ledger_verify_mismatches",
        "Mismatches the latest background verification round found (0 when the ledger is consistent)"
    );
    describe_gauge!(
        "ledger_verify_last_success_timestamp_seconds",
        Unit::Seconds,
        "When the latest background verification round that found no mismatch ended, as Unix time"
    );
    describe_counter!(
        "ledger_verify_entries_checked_total",
        "Journal entries the background verification replayed"
    );
    describe_histogram!(
        "ledger_verify_seconds",
        Unit::Seconds,
        "Time one background verification round took, by scope (full or incremental)"
    );
    describe_histogram!(
        "ledger_commit_group_size",
        "Posting requests per commit group"
    );
    describe_histogram!(
        "ledger_commit_group_seconds",
        Unit::Seconds,
        "Time to write and commit one commit group, retries included"
    );
    describe_counter!(
        "ledger_commit_groups_unwritten_total",
        "Commit groups whose one guarded statement wrote nothing (a book or hold changed meanwhile, a key decided before, or a failure), and which then took the locked path"
    );
    describe_counter!(
        "ledger_commit_groups_total",
        "Commit groups committed, by path: known_books (one guarded statement on the books as last committed) or locked (the books locked and read first)"
    );
}

/// Makes sure the recorder exists before the first request.
pub fn install() {
    if handle().is_none() {
        tracing::warn!("metrics recorder could not be installed");
    }
}

/// Everything recorded so far, in the Prometheus text format.
pub async fn render() -> Response {
    let body = handle().map(PrometheusHandle::render).unwrap_or_default();
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Counts and times every call to `routes` (`grpc_server_handled_total` and
/// `grpc_server_handling_seconds`, by service, method and status code) and adds
/// `GET /metrics`. Over HTTP/1.1 only `GET /metrics` is served: gRPC needs HTTP/2,
/// and a browser page cannot reach the API through the scrape path. Every call
/// runs detached from its caller (see [`crate::detach`]), so it is counted with
/// the code it really ended with.
pub fn instrument(routes: Routes) -> Routes {
    install();
    let router = routes
        .into_axum_router()
        .layer(axum::middleware::from_fn(track))
        .route("/metrics", get(render))
        .layer(axum::middleware::from_fn(http2_only_detached));
    Routes::from(router)
}

/// Refuses what is neither HTTP/2 nor the scrape, and runs the rest detached
/// ([`crate::detach::detach_grpc`]): one layer, as each `from_fn` layer costs a
/// call a boxed future and a clone of the stack below it.
async fn http2_only_detached(request: Request, next: Next) -> Response {
    let scrape = request.method() == axum::http::Method::GET && request.uri().path() == "/metrics";
    if request.version() == axum::http::Version::HTTP_2 || scrape {
        crate::detach::detach_grpc(request, next).await
    } else {
        axum::http::StatusCode::NOT_FOUND.into_response()
    }
}

async fn track(request: Request, next: Next) -> Response {
    // Paths of services this server does not have all count as `unknown`.
    let served = request.extensions().get::<MatchedPath>().is_some();
    let mut call = Call {
        path: if served {
            request.uri().path().to_owned()
        } else {
            String::new()
        },
        started: Instant::now(),
        code: None,
    };
    let response = next.run(request).await;
    let code = grpc_code(&response);
    tracing::Span::current().record("rpc.grpc.status_code", code as i32);
    call.code = Some(code);
    response
}

/// One call being counted. Recorded when dropped, so that a call that never
/// produced its answer (its handler panicked) still counts, as `Cancelled`.
struct Call {
    path: String,
    started: Instant,
    code: Option<tonic::Code>,
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        let (service, method) = rpc_labels(&self.path, code);
        let labels = [
            ("grpc_service", service),
            ("grpc_method", method),
            ("grpc_code", format!("{code:?}")),
        ];
        metrics::counter!("grpc_server_handled_total", &labels).increment(1);
        metrics::histogram!("grpc_server_handling_seconds", &labels)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// The status of a call as its response head tells it: errors come as
/// trailers-only responses with `grpc-status` in the head; a head without it
/// starts a successful response.
fn grpc_code(response: &Response) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// Service and method of `/package.Service/Method`. Paths that name no method
/// this server has are all `unknown`, so callers cannot grow the label space.
fn rpc_labels(path: &str, code: tonic::Code) -> (String, String) {
    let parts = path
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .filter(|(service, method)| {
            code != tonic::Code::Unimplemented
                && !service.is_empty()
                && !method.is_empty()
                && !method.contains('/')
        });
    match parts {
        Some((service, method)) => (service.to_owned(), method.to_owned()),
        None => ("unknown".to_owned(), "unknown".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_get_their_own_labels() {
        assert_eq!(
            rpc_labels(
                "/bank.ledger.v1.LedgerService/GetBalance",
                tonic::Code::NotFound
            ),
            ("bank.ledger.v1.LedgerService".into(), "GetBalance".into())
        );
        let unknown = ("unknown".to_owned(), "unknown".to_owned());
        assert_eq!(
            rpc_labels(
                "/bank.ledger.v1.LedgerService/Nope",
                tonic::Code::Unimplemented
            ),
            unknown
        );
        assert_eq!(rpc_labels("/favicon.ico", tonic::Code::Ok), unknown);
        assert_eq!(rpc_labels("/a/b/c", tonic::Code::Ok), unknown);
    }
}
