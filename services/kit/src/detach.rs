//! Requests that finish what they started. Every server here (the gateway's
//! router and each service's gRPC routes) runs each request's handler in a task of
//! its own, so a caller that goes away, or a deadline that stops waiting for the
//! answer, never drops a handler half-way: a database transaction is never left
//! open on a pooled connection (sqlx's `begin` is not cancel-safe), a service call
//! in flight is never reset (a reset stream counts against the HTTP/2 connection
//! every other caller shares), and the work a retry will find is complete.
//!
//! A handler therefore runs until it answers. What bounds it is what bounds any
//! handler: the database's acquire and statement timeouts and the deadline its own
//! calls carry.

use axum::{extract::Request, middleware::Next, response::Response};

use crate::telemetry::{self, TRACE_ID};

/// Middleware running the rest of the stack in a task of its own. A panic there
/// becomes `on_panic`'s answer instead of a dropped connection.
pub async fn detach_with(request: Request, next: Next, on_panic: fn() -> Response) -> Response {
    detach(next.run(request), on_panic).await
}

/// Runs `handler`, the rest of a request's stack, in a task of its own, for a
/// middleware that does its own work around it (see [`detach_with`]).
pub async fn detach(
    handler: impl std::future::Future<Output = Response> + Send + 'static,
    on_panic: fn() -> Response,
) -> Response {
    // The task goes on in the request's span, so what it does joins the trace,
    // and with its trace id, so the calls it makes carry that on.
    let span = tracing::Span::current();
    let handler = tracing::Instrument::instrument(handler, span);
    let task = match TRACE_ID.try_with(Clone::clone) {
        Ok(trace_id) => tokio::spawn(TRACE_ID.scope(trace_id, handler)),
        Err(_) => tokio::spawn(handler),
    };
    match task.await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(%error, "a request handler failed");
            on_panic()
        }
    }
}

/// [`detach_with`] for gRPC routes: a panic answers `internal`. Where no spans
/// are recorded, the caller's `traceparent` names the handler's trace, so a
/// service's own calls (account to ledger) pass the gateway's trace id on.
pub async fn detach_grpc(request: Request, next: Next) -> Response {
    if !telemetry::recording_spans()
        && let Some(trace_id) = telemetry::traceparent_trace_id(request.headers())
    {
        return TRACE_ID
            .scope(trace_id, detach_with(request, next, grpc_internal))
            .await;
    }
    detach_with(request, next, grpc_internal).await
}

fn grpc_internal() -> Response {
    let status: tonic::Status = crate::ServiceError::new(
        crate::ErrorCode::Internal,
        crate::ErrorCode::Internal.title(),
    )
    .into();
    status.into_http()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{Router, body::Body, routing::get};
    use tokio::sync::{Notify, oneshot};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_handler_whose_caller_left_runs_to_its_end() {
        let release = Arc::new(Notify::new());
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        // The handler takes both ends out at its start, so a handler dropped half-way
        // drops `done` unsent.
        let senders = Arc::new(Mutex::new(Some((started_tx, done_tx))));
        let handler = {
            let release = Arc::clone(&release);
            move || async move {
                let Some((started, done)) = senders.lock().ok().and_then(|mut slot| slot.take())
                else {
                    return "called twice";
                };
                started.send(()).ok();
                release.notified().await;
                done.send(()).ok();
                "done"
            }
        };
        let router = Router::new()
            .route("/slow", get(handler))
            .layer(axum::middleware::from_fn(detach_grpc));

        let call = tokio::spawn(router.oneshot(get_request("/slow")));
        started_rx.await.ok();
        // The caller goes away while the handler waits.
        call.abort();
        let _ = call.await;
        release.notify_one();

        assert!(
            done_rx.await.is_ok(),
            "the handler was dropped with its caller"
        );
    }

    fn get_request(path: &str) -> Request {
        Request::get(path).body(Body::empty()).unwrap_or_default()
    }

    #[tokio::test]
    async fn without_recorded_spans_the_handler_carries_the_callers_trace_id() {
        async fn trace_id() -> String {
            TRACE_ID
                .try_with(Clone::clone)
                .unwrap_or_else(|_| "none".to_owned())
        }
        let router = Router::new()
            .route("/trace", get(trace_id))
            .layer(axum::middleware::from_fn(detach_grpc));
        let answer = |request: Request| {
            let router = router.clone();
            async move {
                let response = router
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|never| match never {});
                let body = axum::body::to_bytes(response.into_body(), 1024)
                    .await
                    .unwrap_or_default();
                String::from_utf8_lossy(&body).into_owned()
            }
        };
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let mut traced = get_request("/trace");
        traced.headers_mut().insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
        );
        assert_eq!(answer(traced).await, id);
        assert_eq!(answer(get_request("/trace")).await, "none");
        // A trace id the task already had (the gateway's) goes into the handler.
        let scoped = TRACE_ID.scope(id.to_owned(), answer(get_request("/trace")));
        assert_eq!(scoped.await, id);
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal() {
        async fn panics() -> &'static str {
            panic!("boom")
        }
        let router = Router::new()
            .route("/panic", get(panics))
            .layer(axum::middleware::from_fn(detach_grpc));
        let response = router
            .oneshot(get_request("/panic"))
            .await
            .unwrap_or_else(|never| match never {});
        assert_eq!(
            response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok()),
            Some("13")
        );
    }
}
