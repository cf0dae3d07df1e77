//! Password hashing with Argon2id at the OWASP parameters (the crate's defaults:
//! m = 19 MiB, t = 2, p = 1). Hashing runs on the blocking pool behind a semaphore
//! sized to the machine, so a login storm queues instead of starving every other
//! request of CPU.

use std::sync::Arc;

use argon2::{Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

use crate::domain::IdentityError;

#[derive(Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified against when the user does not
    /// exist so that unknown emails take as long as wrong passwords.
    dummy_hash: Arc<String>,
}

/// The result of checking a password.
pub struct Verified {
    pub matches: bool,
    /// The stored hash uses other parameters than the current ones and should be
    /// replaced now that the password is known.
    pub needs_rehash: bool,
}

impl PasswordHasherPool {
    pub fn new() -> Result<PasswordHasherPool, IdentityError> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let dummy_hash = hash_now(&uuid::Uuid::new_v4().to_string())?;
        Ok(PasswordHasherPool {
            permits: Arc::new(Semaphore::new(workers)),
            dummy_hash: Arc::new(dummy_hash),
        })
    }

    pub async fn hash(&self, password: &str) -> Result<String, IdentityError> {
        let password = password.to_owned();
        self.run(move || hash_now(&password)).await?
    }

    pub async fn verify(&self, password: &str, stored: &str) -> Result<Verified, IdentityError> {
        let password = password.to_owned();
        let stored = stored.to_owned();
        self.run(move || verify_now(&password, &stored)).await
    }

    /// Spends the same work as a real verification, for unknown users.
    pub async fn verify_dummy(&self, password: &str) -> Result<(), IdentityError> {
        self.verify(password, &self.dummy_hash.clone())
            .await
            .map(|_| ())
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, IdentityError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|error| IdentityError::Hashing(error.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|error| IdentityError::Hashing(error.to_string()))
    }
}

fn hash_now(password: &str) -> Result<String, IdentityError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|error| IdentityError::Hashing(error.to_string()))
}

fn verify_now(password: &str, stored: &str) -> Verified {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verified {
            matches: false,
            needs_rehash: false,
        };
    };
    let matches = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    let current = Params::default();
    let needs_rehash = parsed.algorithm.as_str() != "argon2id"
        || Params::try_from(&parsed).map_or(true, |params| {
            params.m_cost() != current.m_cost()
                || params.t_cost() != current.t_cost()
                || params.p_cost() != current.p_cost()
        });
    Verified {
        matches,
        needs_rehash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let pool = PasswordHasherPool::new().unwrap_or_else(|error| panic!("{error}"));
        let hash = pool
            .hash("correct horse battery")
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let right = pool
            .verify("correct horse battery", &hash)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(right.matches);
        assert!(!right.needs_rehash);
        let wrong = pool
            .verify("wrong horse battery", &hash)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(!wrong.matches);
    }

    #[tokio::test]
    async fn hashes_with_old_parameters_ask_for_a_rehash() {
        let weak = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap_or_else(|error| panic!("{error}")),
        )
        .hash_password(b"correct horse battery")
        .unwrap_or_else(|error| panic!("{error}"))
        .to_string();
        let pool = PasswordHasherPool::new().unwrap_or_else(|error| panic!("{error}"));
        let verified = pool
            .verify("correct horse battery", &weak)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(verified.matches && verified.needs_rehash);
    }
}
