//! One REST transfer's trace, exported over OTLP to a receiver in this process:
//! from the gateway's SERVER span, through its CLIENT call, the ledger's SERVER
//! span and the request's wait, to the commit group's span (linked to the wait)
//! and its SQL. A test binary of its own: it installs the process's global
//! subscriber, as the binaries do, with logs at `warn` (which must not silence
//! a single span).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::{sync::Mutex, time::Duration};

use bank_e2e::{Parts, spawn};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind},
};
use serde_json::json;

/// The trace of a balance read.
const READ_TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4737";

/// Keeps every span exported to it.
#[derive(Default)]
struct Receiver {
    spans: std::sync::Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            Value::StringValue(text) => text.clone(),
            Value::IntValue(number) => number.to_string(),
            Value::BoolValue(flag) => flag.to_string(),
            Value::DoubleValue(number) => number.to_string(),
            other => format!("{other:?}"),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rest_transfer_is_one_trace_from_the_gateway_through_the_ledger_into_its_sql() {
    let receiver = Receiver::default();
    let spans = std::sync::Arc::clone(&receiver.spans);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://{collector}");
    let env = bank_kit::config::Env::from_pairs([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("RUST_LOG", "warn"),
        ("BANK_LOG_FORMAT", "json"),
    ]);
    let telemetry =
        bank_kit::telemetry::init_as(&env, "bank-test", bank_kit::telemetry::Role::Edge).unwrap();

    let outcome = bank_kit::testing::run_with_databases(
        bank_kit::testing::Backend::Sqlite,
        3,
        |urls| async move {
            let stack = spawn(&urls, Parts::ALL).await;
            let rest = helpers::Rest::new(&stack);
            let operator = rest.operator_token().await;
            let (_, customer) = rest.customer().await;
            let from = rest.open_account(&customer, "EUR").await;
            let to = rest.open_account(&customer, "EUR").await;
            rest.deposit(&operator, &from, 1_000).await;

            // An outside client's trace is continued.
            let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
            let response = reqwest::Client::new()
                .post(stack.gateway_url("/v1/transfers"))
                .bearer_auth(&customer)
                .header("idempotency-key", "traced")
                .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
                .json(&json!({"from_account_id": from, "to_account_id": to, "amount": 25, "currency": "EUR"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), reqwest::StatusCode::CREATED);

            // A problem names the trace the request is part of.
            let refused = reqwest::Client::new()
                .post(stack.gateway_url("/v1/transfers"))
                .bearer_auth(&customer)
                .header("idempotency-key", "traced-too-much")
                .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
                .json(&json!({"from_account_id": from, "to_account_id": to, "amount": 1_000_000, "currency": "EUR"}))
                .send()
                .await
                .unwrap();
            assert_eq!(refused.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
            let problem: serde_json::Value = refused.json().await.unwrap();
            assert_eq!(problem["trace_id"], trace_id, "{problem}");

            // A read reaches its SQL in the request's own trace.
            let read = reqwest::Client::new()
                .get(stack.gateway_url(&format!("/v1/accounts/{from}/balance")))
                .bearer_auth(&customer)
                .header(
                    "traceparent",
                    format!("00-{READ_TRACE}-00f067aa0ba902b8-01"),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(read.status(), reqwest::StatusCode::OK);
        },
    );
    outcome.await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";

    // The batch exporter sends what ended; wait for the whole trace.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let trace = loop {
        telemetry.flush();
        let trace: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|span| hex(&span.trace_id) == trace_id)
            .cloned()
            .collect();
        let group = spans.lock().unwrap().iter().any(|span| {
            span.name == "ledger.commit_group"
                && span
                    .links
                    .iter()
                    .any(|link| hex(&link.trace_id) == trace_id)
        });
        let read =
            spans.lock().unwrap().iter().any(|span| {
                hex(&span.trace_id) == READ_TRACE && span.name == "SELECT ledger_accounts"
            });
        if group && read && trace.iter().any(|span| span.name == "POST /v1/transfers") {
            break trace;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the trace never arrived whole: {:#?}",
            spans
                .lock()
                .unwrap()
                .iter()
                .map(|span| &span.name)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let named = |name: &str| {
        trace
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no {name} span in {:#?}",
                    trace.iter().map(|span| &span.name).collect::<Vec<_>>()
                )
            })
    };

    let gateway = named("POST /v1/transfers");
    assert_eq!(gateway.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&gateway.parent_span_id),
        "00f067aa0ba902b7",
        "the client's span is the parent"
    );
    assert_eq!(
        attribute(gateway, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        attribute(gateway, "http.route").as_deref(),
        Some("/v1/transfers")
    );
    assert_eq!(
        attribute(gateway, "http.response.status_code").as_deref(),
        Some("201")
    );

    let call = named("bank.ledger.v1.LedgerService/CreateTransfer");
    let client = trace
        .iter()
        .find(|span| span.kind == SpanKind::Client as i32 && span.name == call.name)
        .expect("the gateway's call to the ledger is a CLIENT span");
    let server = trace
        .iter()
        .find(|span| span.kind == SpanKind::Server as i32 && span.name == call.name)
        .expect("the ledger's side is a SERVER span");
    assert_eq!(client.parent_span_id, gateway.span_id);
    assert_eq!(server.parent_span_id, client.span_id);
    for span in [client, server] {
        assert_eq!(attribute(span, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(
            attribute(span, "rpc.service").as_deref(),
            Some("bank.ledger.v1.LedgerService")
        );
        assert_eq!(
            attribute(span, "rpc.method").as_deref(),
            Some("CreateTransfer")
        );
        assert_eq!(
            attribute(span, "rpc.grpc.status_code").as_deref(),
            Some("0")
        );
    }

    // The request waits for its commit group; the group, one transaction for
    // many requests, is a trace of its own linked to each wait, down to its SQL.
    let wait = named("ledger.commit_wait");
    let all = spans.lock().unwrap().clone();
    let group = all
        .iter()
        .find(|span| {
            span.name == "ledger.commit_group"
                && span.links.iter().any(|link| link.span_id == wait.span_id)
        })
        .expect("a commit group links to the request's wait");
    let statements: Vec<&Span> = all
        .iter()
        .filter(|span| span.trace_id == group.trace_id && span.kind == SpanKind::Client as i32)
        .collect();
    assert!(
        statements
            .iter()
            .any(
                |span| attribute(span, "db.operation.name").as_deref() == Some("INSERT")
                    && attribute(span, "db.collection.name").as_deref() == Some("ledger_entries")
                    && attribute(span, "db.system").as_deref() == Some("sqlite")
            ),
        "{statements:#?}"
    );
    assert!(
        statements
            .iter()
            .any(|span| attribute(span, "db.operation.name").as_deref() == Some("COMMIT"))
    );
    assert!(statements.iter().any(|span| attribute(span, "db.collection.name").as_deref() == Some("ledger_accounts")));

    let read: Vec<&Span> = all
        .iter()
        .filter(|span| hex(&span.trace_id) == READ_TRACE)
        .collect();
    assert!(
        read.iter().any(|span| span.kind == SpanKind::Client as i32
            && attribute(span, "db.operation.name").as_deref() == Some("SELECT")
            && attribute(span, "db.collection.name").as_deref() == Some("ledger_accounts")),
        "{:#?}",
        read.iter().map(|span| &span.name).collect::<Vec<_>>()
    );
}
