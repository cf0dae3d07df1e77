//! The ledger's gRPC API against a real identity service and a fresh database per
//! test, on SQLite and (with BANK_TEST_POSTGRES_URL) on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod groups;
mod helpers;
mod holds;
mod integrity;
mod lifecycle;
mod model;
mod postings;
mod security;
mod startup;
