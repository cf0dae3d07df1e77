//! The shared service kit: everything the identity, account and ledger services and
//! the gateway do the same way. Configuration parsing, telemetry, the gRPC server
//! shell (health, reflection, limits, graceful shutdown, per-method metrics),
//! database connection and migration, the error-code table, money types, and JWT
//! verification.

pub mod admin;
pub mod auth;
pub mod config;
pub mod db;
pub mod detach;
pub mod error;
pub mod grpc;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod probe;
pub mod telemetry;
pub mod testing;
pub mod time;
pub mod tls;

pub use bank_domain::{DomainError, ErrorCode, money};
pub use error::ServiceError;
