//! The bank's rules, with no IO: money and currencies, the table of error codes
//! and the trait that gives every domain error its code, and the ledger's posting
//! plans. This crate depends on no database, RPC or async runtime crate, so no
//! rule here can reach for one; the services' `store` modules read the facts a
//! rule needs and write what it decides, their `api` modules parse and map.

pub mod error;
pub mod idempotency;
pub mod ledger;
pub mod money;
pub mod principal;

pub use error::{DomainError, ErrorCode};

#[cfg(test)]
mod layering {
    /// The crate's promise, checked where a reviewer would look for it: none of
    /// the IO crates may become a dependency.
    #[test]
    fn the_domain_crate_depends_on_no_io_crate() {
        let manifest = include_str!("../Cargo.toml");
        for forbidden in [
            "tonic", "sqlx", "sea-orm", "tokio", "axum", "hyper", "reqwest", "redis",
        ] {
            let named = manifest
                .lines()
                .any(|line| line.trim_start().starts_with(forbidden));
            assert!(!named, "bank-domain must not depend on {forbidden}");
        }
    }
}
