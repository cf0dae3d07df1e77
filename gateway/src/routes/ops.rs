//! Liveness, readiness and the OpenAPI document.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde::Serialize;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthView {
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = HealthView)))]
pub async fn healthz() -> Json<HealthView> {
    Json(HealthView {
        status: "ok".into(),
    })
}

/// The gateway's readiness and what it knows of each service it calls.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReadinessView {
    /// `ready`: the gateway can serve. Routes that need a service that is down
    /// answer 503 `unavailable` on their own; the others keep working.
    pub status: String,
    pub services: DownstreamStates,
}

/// Each service's gRPC health as the gateway last saw it: `serving`,
/// `not_serving` (it answers but cannot serve, e.g. its database is down) or
/// `unreachable`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DownstreamStates {
    pub identity: String,
    pub account: String,
    pub ledger: String,
}

/// How long a readiness answer is reused, so that probes and scrapers polling
/// `/readyz` never multiply into health checks against the services.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// How long one service's health check may take.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Readiness of the gateway itself: 200 while it can serve, with each
/// downstream's state in the body. One service being down never takes the
/// gateway out of rotation for the routes that do not need that service.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, body = ReadinessView)))]
pub async fn readyz(State(state): State<AppState>) -> Json<ReadinessView> {
    let channels = &state.health_channels;
    if let Some(states) = channels.recent(READINESS_TTL) {
        return Json(ReadinessView {
            status: "ready".into(),
            services: states,
        });
    }
    let (identity, account, ledger) = tokio::join!(
        downstream_state("identity", channels.identity.clone()),
        downstream_state("account", channels.account.clone()),
        downstream_state("ledger", channels.ledger.clone()),
    );
    let states = DownstreamStates {
        identity: identity.into(),
        account: account.into(),
        ledger: ledger.into(),
    };
    channels.remember(states.clone());
    Json(ReadinessView {
        status: "ready".into(),
        services: states,
    })
}

async fn downstream_state(name: &str, channel: tonic::transport::Channel) -> &'static str {
    let mut client = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(HEALTH_CHECK_TIMEOUT);
    let state = match client.check(request).await {
        Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => "serving",
        Ok(_) => "not_serving",
        Err(_) => "unreachable",
    };
    if state != "serving" {
        tracing::warn!(service = name, state, "downstream not serving");
    }
    state
}

struct BearerSecurity;

impl Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        document_common_problems(openapi);
        describe_every_response(openapi);
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The operations of a path, whatever their method.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.put.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Documents the problem responses any route can give, beside the ones each
/// handler names: malformed input, authentication, limits, and outages.
fn document_common_problems(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build()
    };
    for (path, item) in openapi.paths.paths.iter_mut() {
        let codes: &[(&str, &str)] = if path.starts_with("/v1/") {
            &[
                ("400", "Malformed request"),
                ("401", "Missing or invalid token"),
                ("403", "Not allowed"),
                ("404", "Not found"),
                ("409", "Conflict"),
                ("413", "Body over 64 KiB"),
                ("415", "Body is not JSON"),
                ("422", "Refused by a business rule"),
                ("429", "Rate limited; see Retry-After"),
                ("500", "Internal error"),
                ("503", "A service is unavailable"),
            ]
        } else {
            &[
                ("500", "Internal error"),
                ("503", "A service is unavailable"),
            ]
        };
        for operation in operations(item) {
            for (code, description) in codes {
                if !operation.responses.responses.contains_key(*code) {
                    operation
                        .responses
                        .responses
                        .insert((*code).to_owned(), problem(description).into());
                }
            }
        }
    }
}

/// OpenAPI requires a description on every response (one a handler did not
/// describe gets its status's reason phrase) and unique operation ids (each is
/// prefixed with its tag).
fn describe_every_response(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    for item in openapi.paths.paths.values_mut() {
        for operation in operations(item) {
            // Handler names repeat across tags (`accounts::get`, `transfers::get`);
            // operation ids must not.
            if let (Some(tag), Some(id)) = (
                operation.tags.as_ref().and_then(|tags| tags.first()),
                operation.operation_id.as_ref(),
            ) && !id.starts_with(&format!("{tag}_"))
            {
                operation.operation_id = Some(format!("{tag}_{id}"));
            }
            for (code, response) in operation.responses.responses.iter_mut() {
                if let RefOr::T(response) = response
                    && response.description.trim().is_empty()
                {
                    let reason = code
                        .parse::<u16>()
                        .ok()
                        .and_then(|code| StatusCode::from_u16(code).ok())
                        .and_then(|status| status.canonical_reason())
                        .unwrap_or("Response");
                    response.description = reason.to_owned();
                }
            }
        }
    }
}

/// The OpenAPI 3.1 description of every route.
#[derive(OpenApi)]
#[openapi(
    info(title = "Bank API", description = "REST edge of the core-banking backend. Amounts are integers in minor units."),
    paths(
        crate::routes::auth::register,
        crate::routes::auth::login,
        crate::routes::auth::refresh,
        crate::routes::auth::logout,
        crate::routes::auth::me,
        crate::routes::auth::change_password,
        crate::routes::auth::jwks,
        crate::routes::accounts::open,
        crate::routes::accounts::list,
        crate::routes::accounts::get,
        crate::routes::accounts::balance,
        crate::routes::accounts::transactions,
        crate::routes::accounts::holds,
        crate::routes::accounts::close,
        crate::routes::transfers::create,
        crate::routes::transfers::get,
        crate::routes::transfers::post_hold,
        crate::routes::transfers::void_hold,
        crate::routes::transfers::create_batch,
        crate::routes::admin::deposit,
        crate::routes::admin::withdraw,
        crate::routes::admin::freeze,
        crate::routes::admin::unfreeze,
        crate::routes::admin::reverse,
        crate::routes::admin::verify,
        healthz,
        readyz,
        openapi_json,
        crate::metrics::render,
    ),
    modifiers(&BearerSecurity)
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi_json() -> impl IntoResponse {
    (StatusCode::OK, Json(ApiDoc::openapi()))
}
