//! Identity's gRPC API against a fresh database per test, on SQLite and (with
//! BANK_TEST_POSTGRES_URL) on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod credentials;
mod sessions;
mod startup;
