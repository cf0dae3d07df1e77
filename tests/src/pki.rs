//! Certificates for TLS tests, made on the spot: a CA and one certificate it
//! issued for 127.0.0.1 and localhost, good for serving and as a client
//! certificate, as every process of the bank uses its own.

use std::path::{Path, PathBuf};

use bank_kit::tls::TlsSettings;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA, a certificate and key it issued, as PEM files in a directory of their own.
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    /// A new CA named `name`, and a certificate it issued.
    pub fn new(name: &str) -> TestPki {
        let dir = tempfile::tempdir().expect("certificate directory");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params.self_signed(&ca_key).expect("CA certificate");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).expect("write CA");
        let pki = TestPki {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            issuer: Issuer::new(params, ca_key),
            ca,
            dir,
        };
        pki.issue(&pki.cert, &pki.key, "bank service");
        pki
    }

    /// Writes a new certificate for 127.0.0.1 and localhost, named `name` and
    /// issued by this CA, to `cert` and `key`.
    pub fn issue(&self, cert: &Path, key: &Path, name: &str) {
        let leaf_key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = params
            .signed_by(&leaf_key, &self.issuer)
            .expect("certificate");
        // Key first, then certificate: a watcher that reads between the two
        // writes sees a pair that does not match, and keeps the old one.
        std::fs::write(key, leaf_key.serialize_pem()).expect("write key");
        std::fs::write(cert, leaf.pem()).expect("write certificate");
    }

    /// A path in this PKI's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A service's settings: serve with the certificate, require client
    /// certificates from the CA, verify the services it calls with the CA.
    pub fn service_settings(&self) -> TlsSettings {
        TlsSettings {
            identity: Some((self.cert.clone(), self.key.clone())),
            client_ca: Some(self.ca.clone()),
            ca: Some(self.ca.clone()),
        }
    }

    /// The gateway's settings: HTTPS for anyone, mutual TLS to the services.
    pub fn gateway_settings(&self) -> TlsSettings {
        TlsSettings {
            client_ca: None,
            ..self.service_settings()
        }
    }

    /// A client's settings: verify with the CA, present the certificate.
    pub fn client_settings(&self) -> TlsSettings {
        TlsSettings {
            client_ca: None,
            ..self.service_settings()
        }
    }
}
