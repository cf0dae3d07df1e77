//! Reading configuration from the environment, once, at start. Each process owns a
//! typed config struct; this module gives it a snapshot of the environment (with
//! `.env` applied) and parsers that name the offending variable on failure.

use std::{collections::HashMap, net::SocketAddr, str::FromStr};

use secrecy::SecretString;

/// A variable that is present but unusable. Printed as one line at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}: {reason}")]
pub struct ConfigError {
    pub variable: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(variable: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            variable: variable.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A snapshot of the environment variables a process is configured by.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment, after applying `.env` from the working directory
    /// (not its parents) if one exists. Variables already set win over `.env`.
    pub fn from_process() -> Env {
        // A missing `.env` is the normal case; a malformed one is reported at start.
        if let Err(error) = dotenvy::from_path(".env")
            && !error.not_found()
        {
            eprintln!("invalid configuration: .env: {error}");
            std::process::exit(2);
        }
        Env {
            vars: std::env::vars().collect(),
        }
    }

    /// An environment made of the given pairs, for tests.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
        }
    }

    /// The variable's value; unset and empty both count as absent.
    pub fn optional(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    pub fn parse<T: FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|error| ConfigError::new(name, format!("cannot parse {raw:?}: {error}"))),
        }
    }

    pub fn socket_addr(&self, name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.string(name, default);
        raw.parse().map_err(|_| {
            ConfigError::new(
                name,
                format!("{raw:?} is not an address like 127.0.0.1:8080"),
            )
        })
    }

    /// An `http://` or `https://` endpoint of another service.
    pub fn endpoint(&self, name: &str, default: &str) -> Result<String, ConfigError> {
        let raw = self.string(name, default);
        let valid = (raw.starts_with("http://") || raw.starts_with("https://"))
            && raw
                .parse::<http::Uri>()
                .is_ok_and(|uri| uri.host().is_some());
        if valid {
            Ok(raw)
        } else {
            Err(ConfigError::new(
                name,
                format!("{raw:?} is not an http:// or https:// URL"),
            ))
        }
    }

    /// A `sqlite://` or `postgres://` database URL.
    pub fn database_url(&self, name: &str, default: &str) -> Result<String, ConfigError> {
        let raw = self.string(name, default);
        let known = ["sqlite:", "postgres://", "postgresql://"];
        if known.iter().any(|prefix| raw.starts_with(prefix)) {
            Ok(raw)
        } else {
            Err(ConfigError::new(
                name,
                "must start with sqlite: or postgres:// (value not shown)",
            ))
        }
    }

    /// The URL the migrations run with, as the schema's owner, when the service
    /// itself runs as a restricted role. PostgreSQL only: SQLite has no roles.
    pub fn migration_database_url(
        &self,
        name: &str,
        database_url: &str,
    ) -> Result<Option<String>, ConfigError> {
        let Some(raw) = self.optional(name) else {
            return Ok(None);
        };
        let postgres =
            |url: &str| url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !postgres(&raw) {
            return Err(ConfigError::new(
                name,
                "must start with postgres:// (value not shown)",
            ));
        }
        if !postgres(database_url) {
            return Err(ConfigError::new(
                name,
                "is for PostgreSQL only: SQLite has no roles, so the service migrates its own file",
            ));
        }
        Ok(Some(raw))
    }

    pub fn secret(&self, name: &str) -> Option<SecretString> {
        self.optional(name).map(SecretString::from)
    }
}

/// Prints why the process could not start (the database, the listen address or
/// a key directory named by its variable) as one line and exits non-zero. For
/// `main` only.
pub fn exit_on_start_failure(error: &anyhow::Error) -> ! {
    let line = format!("cannot start: {error:#}").replace(['\n', '\r'], " ");
    eprintln!("{line}");
    std::process::exit(1)
}

/// Prints a configuration error as one line and exits non-zero. For `main` only.
pub fn exit_with(error: &ConfigError) -> ! {
    eprintln!("{error}");
    std::process::exit(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let env = Env::from_pairs([("EMPTY", "  ")]);
        assert_eq!(env.string("EMPTY", "x"), "x");
        assert_eq!(env.string("UNSET", "y"), "y");
    }

    #[test]
    fn bad_address_names_the_variable() {
        let env = Env::from_pairs([("LISTEN", "not-an-address")]);
        let error = env.socket_addr("LISTEN", "127.0.0.1:1").err();
        assert!(error.is_some_and(|error| {
            error
                .to_string()
                .starts_with("invalid configuration: LISTEN:")
        }));
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        let env = Env::from_pairs([
            ("GOOD", "http://127.0.0.1:50051"),
            ("BAD", "127.0.0.1:50051"),
        ]);
        assert!(env.endpoint("GOOD", "").is_ok());
        assert!(env.endpoint("BAD", "").is_err());
    }

    #[test]
    fn database_url_errors_do_not_echo_the_value() {
        let env = Env::from_pairs([("DB", "mysql://user:hunter2@host/db")]);
        let error = env
            .database_url("DB", "")
            .err()
            .map(|error| error.to_string());
        assert!(error.is_some_and(|text| text.contains("DB") && !text.contains("hunter2")));
    }

    #[test]
    fn a_migration_url_is_for_postgresql_only() {
        let owner = "postgres://owner:hunter2@db/ledger";
        let env = Env::from_pairs([("MIGRATE", owner)]);
        assert_eq!(
            env.migration_database_url("MIGRATE", "postgres://ledger@db/ledger")
                .ok(),
            Some(Some(owner.to_owned()))
        );
        let on_sqlite = env
            .migration_database_url("MIGRATE", "sqlite://var/ledger.db")
            .err();
        assert_eq!(
            on_sqlite.map(|error| error.variable),
            Some("MIGRATE".to_owned())
        );
        let not_postgres = Env::from_pairs([("MIGRATE", "mysql://owner:hunter2@db/x")])
            .migration_database_url("MIGRATE", "postgres://ledger@db/ledger")
            .err()
            .map(|error| error.to_string());
        assert!(not_postgres.is_some_and(|text| !text.contains("hunter2")));
        assert_eq!(
            Env::from_pairs([("OTHER", "x")])
                .migration_database_url("MIGRATE", "sqlite://var/ledger.db")
                .ok(),
            Some(None)
        );
    }
}
