//! The REST contract, against the real services on fresh databases: routes,
//! status codes, problem bodies, limits and headers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aborts;
mod contract;
mod document;
mod edge;
mod helpers;
mod holds;
mod limits;
mod readiness;
mod revocation;
mod roles;
mod schemathesis;
mod startup;
mod tls;
