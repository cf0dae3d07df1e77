//! Password hashing with Argon2id at the OWASP parameters (the crate's defaults:
//! m = 19 MiB, t = 2, p = 1). Hashing runs on a few threads of its own, one per
//! core, behind a semaphore of the same size, so a login storm queues instead of
//! starving every other request of CPU. Each thread owns the 19 MiB of Argon2
//! blocks it hashes in, allocated once: memory stays at one hash's worth per core
//! however many logins come, where allocating per hash on the runtime's blocking
//! pool left that much behind in many allocator arenas (hundreds of MiB after a
//! login storm).

use std::sync::{Arc, Mutex, mpsc};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::phc::{Output, ParamsString, Salt},
};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::domain::IdentityError;

/// Work for a hashing thread, given that thread's Argon2 memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

#[derive(Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    jobs: mpsc::Sender<Job>,
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
        let dummy_hash = hash_now(
            &mut vec![Block::default(); Params::default().block_count()],
            &uuid::Uuid::new_v4().to_string(),
        )?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..workers {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || hashing_worker(&queue))
                .map_err(|error| IdentityError::Hashing(error.to_string()))?;
        }
        Ok(PasswordHasherPool {
            permits: Arc::new(Semaphore::new(workers)),
            jobs,
            dummy_hash: Arc::new(dummy_hash),
        })
    }

    pub async fn hash(&self, password: &str) -> Result<String, IdentityError> {
        let password = password.to_owned();
        self.run(move |memory| hash_now(memory, &password)).await?
    }

    pub async fn verify(&self, password: &str, stored: &str) -> Result<Verified, IdentityError> {
        let password = password.to_owned();
        let stored = stored.to_owned();
        self.run(move |memory| verify_now(memory, &password, &stored))
            .await
    }

    /// Spends the same work as a real verification, for unknown users.
    pub async fn verify_dummy(&self, password: &str) -> Result<(), IdentityError> {
        self.verify(password, &self.dummy_hash.clone())
            .await
            .map(|_| ())
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, IdentityError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|error| IdentityError::Hashing(error.to_string()))?;
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |memory: &mut Vec<Block>| {
                // The caller may have gone away; the work is done either way.
                let _ = done.send(work(memory));
            }))
            .map_err(|_| IdentityError::Hashing("the hashing threads stopped".into()))?;
        result
            .await
            .map_err(|_| IdentityError::Hashing("a hashing thread stopped".into()))
    }
}

/// Runs hashing jobs until every pool handle is gone.
fn hashing_worker(queue: &Mutex<mpsc::Receiver<Job>>) {
    let mut memory = vec![Block::default(); Params::default().block_count()];
    loop {
        let job = match queue.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            // A job that panics loses its answer, never the thread.
            Ok(job) => drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                || job(&mut memory),
            ))),
            Err(_) => return,
        }
    }
}

/// Argon2id at the current parameters, in `memory`, as a PHC string.
fn hash_now(memory: &mut Vec<Block>, password: &str) -> Result<String, IdentityError> {
    let failed = |error: &dyn std::fmt::Display| IdentityError::Hashing(error.to_string());
    let params = Params::default();
    let salt: [u8; 16] = rand::random();
    let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
    hash_into(
        memory,
        &params,
        Version::V0x13,
        password,
        &salt,
        &mut output,
    )
    .map_err(|error| failed(&error))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|error| failed(&error))?,
        salt: Some(Salt::new(&salt).map_err(|error| failed(&error))?),
        hash: Some(Output::new(&output).map_err(|error| failed(&error))?),
    };
    Ok(hash.to_string())
}

/// Argon2id with `params` into `output`, in `memory` (grown if `params` ask for
/// more than it holds, as a stored hash with stronger parameters may).
fn hash_into(
    memory: &mut Vec<Block>,
    params: &Params,
    version: Version,
    password: &str,
    salt: &[u8],
    output: &mut [u8],
) -> Result<(), argon2::Error> {
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    Argon2::new(Algorithm::Argon2id, version, params.clone()).hash_password_into_with_memory(
        password.as_bytes(),
        salt,
        output,
        &mut memory[..blocks],
    )
}

fn verify_now(memory: &mut Vec<Block>, password: &str, stored: &str) -> Verified {
    let refused = Verified {
        matches: false,
        needs_rehash: false,
    };
    let Ok(parsed) = PasswordHash::new(stored) else {
        return refused;
    };
    let (Ok(params), Some(salt), Some(expected)) =
        (Params::try_from(&parsed), parsed.salt, parsed.hash)
    else {
        return refused;
    };
    let version = parsed
        .version
        .map_or(Ok(Version::V0x13), Version::try_from)
        .unwrap_or(Version::V0x13);
    if parsed.algorithm.as_str() != "argon2id" {
        return refused;
    }
    let mut output = vec![0u8; expected.len()];
    let matches = hash_into(
        memory,
        &params,
        version,
        password,
        salt.as_ref(),
        &mut output,
    )
    .is_ok()
        && bool::from(output.as_slice().ct_eq(expected.as_bytes()));
    let current = Params::default();
    let needs_rehash = params.m_cost() != current.m_cost()
        || params.t_cost() != current.t_cost()
        || params.p_cost() != current.p_cost();
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
    async fn hashes_made_by_the_argon2_crate_verify_and_ours_verify_there() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let theirs = Argon2::default()
            .hash_password(b"correct horse battery")
            .unwrap_or_else(|error| panic!("{error}"))
            .to_string();
        let pool = PasswordHasherPool::new().unwrap_or_else(|error| panic!("{error}"));
        let verified = pool
            .verify("correct horse battery", &theirs)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(verified.matches && !verified.needs_rehash);

        let ours = pool
            .hash("correct horse battery")
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let parsed = PasswordHash::new(&ours).unwrap_or_else(|error| panic!("{error}"));
        assert!(
            Argon2::default()
                .verify_password(b"correct horse battery", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"wrong horse battery", &parsed)
                .is_err()
        );
    }

    #[tokio::test]
    async fn hashes_with_old_parameters_ask_for_a_rehash() {
        use argon2::PasswordHasher;
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
