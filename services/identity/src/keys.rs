//! Signing keys for access tokens. Ed25519 keys are PKCS#8 PEM files in one
//! directory: every key there is published in the JWKS, and the newest (by file
//! name) signs. Rotation is adding a newer file, waiting for caches to pick it up,
//! then removing the old one once its tokens have expired. In the embedded mode a
//! first key is generated on start and written with owner-only permissions.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};
use bank_proto::identity::v1::Jwk;
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};

use crate::domain::IdentityError;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read signing keys in {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("signing key {path} is not a PKCS#8 Ed25519 PEM file")]
    Malformed { path: String },
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    public_x: String,
}

/// The published key set and the key that signs.
pub struct KeyRing {
    /// Sorted by file name; the last one signs.
    keys: Vec<SigningKey>,
}

impl KeyRing {
    /// Loads every `*.pem` key in `dir`, generating a first one if there is none.
    pub fn load_or_generate(dir: &Path) -> Result<KeyRing, KeyError> {
        let io = |error: std::io::Error| KeyError::Io {
            path: dir.display().to_string(),
            reason: error.to_string(),
        };
        if !dir.exists() {
            // Owner-only whatever the umask; an existing directory (a mounted
            // Secret, read-only) is left as it is.
            bank_kit::db::private_dir_builder()
                .create(dir)
                .map_err(io)?;
        }
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "pem"))
            .collect();
        if paths.is_empty() {
            paths.push(generate(dir)?);
        }
        paths.sort();
        let keys = paths
            .iter()
            .map(|path| load(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeyRing { keys })
    }

    /// The public keys, as a JSON Web Key Set.
    pub fn jwks(&self) -> Vec<Jwk> {
        self.keys
            .iter()
            .map(|key| Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: key.public_x.clone(),
                kid: key.kid.clone(),
                alg: "EdDSA".into(),
                r#use: "sig".into(),
            })
            .collect()
    }

    /// Signs `claims` with the newest key, naming it in the `kid` header.
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> Result<String, IdentityError> {
        let key = self
            .keys
            .last()
            .ok_or_else(|| IdentityError::Signing("no signing key".into()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|error| IdentityError::Signing(error.to_string()))
    }
}

fn generate(dir: &Path) -> Result<PathBuf, KeyError> {
    let path = dir.join(format!(
        "{}.pem",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let malformed = || KeyError::Malformed {
        path: path.display().to_string(),
    };
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| malformed())?;
    let body = STANDARD.encode(document.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    write_private(&path, pem.as_bytes()).map_err(|error| KeyError::Io {
        path: path.display().to_string(),
        reason: error.to_string(),
    })?;
    tracing::info!(path = %path.display(), "generated a new signing key");
    Ok(path)
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    fs::write(path, contents)
}

fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let malformed = || KeyError::Malformed {
        path: path.display().to_string(),
    };
    let pem = fs::read_to_string(path).map_err(|error| KeyError::Io {
        path: path.display().to_string(),
        reason: error.to_string(),
    })?;
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(body.trim()).map_err(|_| malformed())?;
    let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| malformed())?;
    let public = pair.public_key().as_ref().to_vec();
    let kid = hex::encode(&Sha256::digest(&public)[..12]);
    Ok(SigningKey {
        kid,
        encoding: EncodingKey::from_ed_der(&der),
        public_x: URL_SAFE_NO_PAD.encode(public),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bank_kit::auth::{AUDIENCE, Claims, ISSUER, TokenVerifier};

    /// A key ring generated in a directory of its own, kept alive with it.
    fn fresh_ring() -> (tempfile::TempDir, KeyRing) {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let ring = KeyRing::load_or_generate(dir.path()).unwrap_or_else(|error| panic!("{error}"));
        (dir, ring)
    }

    #[cfg(unix)]
    #[test]
    fn a_new_key_directory_and_its_key_are_readable_by_the_owner_alone() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let dir = root.path().join("keys");
        KeyRing::load_or_generate(&dir).unwrap_or_else(|error| panic!("{error}"));
        let mode = |path: &Path| {
            fs::metadata(path)
                .map(|metadata| metadata.permissions().mode() & 0o777)
                .unwrap_or_default()
        };
        assert_eq!(mode(&dir), 0o700);
        let keys: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(keys.len(), 1);
        assert_eq!(mode(&keys[0]), 0o600);
    }

    /// An access token's claims for `user-1`, valid for `lifetime` seconds.
    fn claims_of_user_1(lifetime: i64, roles: Vec<String>) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "user-1".into(),
            exp: now + lifetime,
            nbf: now,
            iat: now,
            jti: "j".into(),
            roles,
            typ: "access".into(),
            sid: Some("session-1".into()),
        }
    }

    #[tokio::test]
    async fn a_generated_key_signs_tokens_its_jwks_verifies() {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let ring = KeyRing::load_or_generate(dir.path()).unwrap_or_else(|error| panic!("{error}"));
        let claims = claims_of_user_1(60, vec!["customer".into()]);
        let token = ring.sign(&claims).unwrap_or_else(|error| panic!("{error}"));
        let verifier = TokenVerifier::fixed(&ring.jwks());
        let principal = verifier
            .verify(&token)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(principal.user_id(), Some("user-1"));

        let reloaded =
            KeyRing::load_or_generate(dir.path()).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            reloaded.jwks(),
            ring.jwks(),
            "the persisted key is reused, not regenerated"
        );
    }

    #[tokio::test]
    async fn tokens_signed_by_an_unknown_key_are_rejected() {
        let (_dir_a, ring_a) = fresh_ring();
        let (_dir_b, ring_b) = fresh_ring();
        let claims = claims_of_user_1(60, vec![]);
        let token = ring_b
            .sign(&claims)
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(
            TokenVerifier::fixed(&ring_a.jwks())
                .verify(&token)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_verified_token_stops_verifying_once_its_key_is_withdrawn() {
        let (_dir_a, ring_a) = fresh_ring();
        let (_dir_b, ring_b) = fresh_ring();
        let claims = claims_of_user_1(600, vec![]);
        let token = ring_a
            .sign(&claims)
            .unwrap_or_else(|error| panic!("{error}"));
        let verifier = TokenVerifier::fixed(&ring_a.jwks());
        for _ in 0..2 {
            assert!(
                verifier.verify(&token).await.is_ok(),
                "verified, then cached"
            );
        }

        verifier.replace_keys(&ring_b.jwks());

        assert!(
            verifier.verify(&token).await.is_err(),
            "the cache does not outlive the key"
        );
    }
}
