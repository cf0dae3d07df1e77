//! The account service's gRPC API, with identity and the ledger running beside it,
//! each on a fresh database, on SQLite and (with BANK_TEST_POSTGRES_URL) on
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agreement;
mod lifecycle;
mod startup;
