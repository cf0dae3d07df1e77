//! TLS for every process: the gateway's HTTPS, each service's gRPC over TLS with
//! client certificates (mutual TLS), and the calls one process makes to another
//! over `https://`. All of it is rustls (TLS 1.2 and 1.3 only), configured by the
//! `BANK_TLS_*` variables, and every certificate, key and CA file is re-read when
//! it changes, so certificates rotate without a restart: each new connection
//! uses the newest configuration, connections already open keep theirs.
//!
//! Admin ports never use any of this: probes and scrapers speak plain HTTP.

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};

use crate::config::{ConfigError, Env};

/// How often certificate files are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub const CERT_FILE: &str = "BANK_TLS_CERT_FILE";
pub const KEY_FILE: &str = "BANK_TLS_KEY_FILE";
pub const CLIENT_CA_FILE: &str = "BANK_TLS_CLIENT_CA_FILE";
pub const CA_FILE: &str = "BANK_TLS_CA_FILE";

/// The TLS files of a process, as `BANK_TLS_*` name them. The default is
/// plaintext everywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain and key this process serves with, and presents as
    /// its client certificate when it calls another service.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Callers must present a certificate this CA issued.
    pub client_ca: Option<PathBuf>,
    /// The CA bundle that verifies the services this process calls on `https://`.
    pub ca: Option<PathBuf>,
}

impl TlsSettings {
    pub fn from_env(env: &Env) -> Result<TlsSettings, ConfigError> {
        let file = |name: &str| env.optional(name).map(PathBuf::from);
        let identity = match (file(CERT_FILE), file(KEY_FILE)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    KEY_FILE,
                    "is required with BANK_TLS_CERT_FILE",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    CERT_FILE,
                    "is required with BANK_TLS_KEY_FILE",
                ));
            }
        };
        let settings = TlsSettings {
            identity,
            client_ca: file(CLIENT_CA_FILE),
            ca: file(CA_FILE),
        };
        if settings.client_ca.is_some() && settings.identity.is_none() {
            return Err(ConfigError::new(
                CLIENT_CA_FILE,
                "asks for client certificates, which needs TLS: set BANK_TLS_CERT_FILE and BANK_TLS_KEY_FILE",
            ));
        }
        // Everything is read once now, so a bad file stops the process at start
        // with the variable that names it.
        if settings.identity.is_some() {
            server_config(&settings, &[])
                .map_err(|(variable, reason)| ConfigError::new(variable, reason))?;
        }
        client_config(&settings)
            .map_err(|(variable, reason)| ConfigError::new(variable, reason))?;
        Ok(settings)
    }

    /// Every file the settings name, to watch for changes.
    fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some((cert, key)) = &self.identity {
            files.push(cert.clone());
            files.push(key.clone());
        }
        files.extend(self.client_ca.iter().cloned());
        files.extend(self.ca.iter().cloned());
        files
    }
}

/// Why a configuration could not be built: the variable and the reason.
type LoadError = (&'static str, String);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(
    variable: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| {
            (
                variable,
                format!("cannot read certificates from {}: {error}", path.display()),
            )
        })?;
    if certificates.is_empty() {
        return Err((
            variable,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certificates)
}

fn roots(variable: &'static str, path: &Path) -> Result<RootCertStore, LoadError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(variable, path)? {
        roots
            .add(certificate)
            .map_err(|error| (variable, format!("{}: {error}", path.display())))?;
    }
    Ok(roots)
}

fn identity(
    settings: &TlsSettings,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, LoadError> {
    let Some((cert, key)) = &settings.identity else {
        return Ok(None);
    };
    let chain = certificates(CERT_FILE, cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
        (
            KEY_FILE,
            format!("cannot read a private key from {}: {error}", key.display()),
        )
    })?;
    Ok(Some((chain, key)))
}

/// The server side, offering `alpn` (e.g. `h2`).
fn server_config(settings: &TlsSettings, alpn: &[&[u8]]) -> Result<ServerConfig, LoadError> {
    let (chain, key) = identity(settings)?.ok_or((CERT_FILE, "is not set".to_owned()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|error| (CERT_FILE, error.to_string()))?;
    let builder = match &settings.client_ca {
        Some(path) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(CLIENT_CA_FILE, path)?),
                provider(),
            )
            .build()
            .map_err(|error| (CLIENT_CA_FILE, error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|error| {
        (
            KEY_FILE,
            format!("the key does not fit the certificate: {error}"),
        )
    })?;
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}

/// The client side: verifies servers with `BANK_TLS_CA_FILE` and presents the
/// process's own certificate, if it has one. `None` without a CA file: the
/// process then calls no `https://` endpoint.
fn client_config(settings: &TlsSettings) -> Result<Option<ClientConfig>, LoadError> {
    let Some(ca) = &settings.ca else {
        return Ok(None);
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|error| (CA_FILE, error.to_string()))?
        .with_root_certificates(roots(CA_FILE, ca)?);
    let mut config = match identity(settings)? {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|error| {
            (
                KEY_FILE,
                format!("the key does not fit the certificate: {error}"),
            )
        })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(config))
}

/// When each watched file was last modified, and how long it was.
fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|file| {
            std::fs::metadata(file)
                .ok()
                .and_then(|meta| Some((meta.modified().ok()?, meta.len())))
        })
        .collect()
}

/// A configuration rebuilt from its files whenever one of them changes. A
/// rebuild that fails (a half-written file, a key that does not match yet)
/// keeps the previous configuration and is tried again at the next change.
struct Reloading<T> {
    current: RwLock<Arc<T>>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    fn new(
        first: T,
        files: Vec<PathBuf>,
        what: &'static str,
        build: impl Fn() -> Result<T, LoadError> + Send + 'static,
    ) -> Arc<Reloading<T>> {
        let reloading = Arc::new(Reloading {
            current: RwLock::new(Arc::new(first)),
        });
        let weak = Arc::downgrade(&reloading);
        tokio::spawn(async move {
            let mut seen = stamps(&files);
            loop {
                tokio::time::sleep(RELOAD_INTERVAL).await;
                let Some(reloading) = weak.upgrade() else {
                    return;
                };
                let now = stamps(&files);
                if now == seen {
                    continue;
                }
                seen = now;
                match build() {
                    Ok(config) => {
                        if let Ok(mut current) = reloading.current.write() {
                            *current = Arc::new(config);
                        }
                        tracing::info!(what, "TLS files changed: new connections use them");
                    }
                    Err((variable, reason)) => {
                        tracing::warn!(
                            what,
                            variable,
                            reason,
                            "TLS files changed but cannot be used; the previous ones stay"
                        );
                    }
                }
            }
        });
        reloading
    }

    fn current(&self) -> Arc<T> {
        match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

/// Accepts TLS connections with the newest server configuration.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<Reloading<ServerConfig>>,
}

impl ServerTls {
    /// The server side of `settings`, offering `alpn`; `None` for plaintext.
    /// Call it inside a Tokio runtime (the files are watched from a task).
    pub fn new(
        settings: &TlsSettings,
        alpn: &'static [&'static [u8]],
    ) -> anyhow::Result<Option<ServerTls>> {
        if settings.identity.is_none() {
            return Ok(None);
        }
        let build = {
            let settings = settings.clone();
            move || server_config(&settings, alpn)
        };
        let first =
            build().map_err(|(variable, reason)| anyhow::anyhow!("{variable}: {reason}"))?;
        Ok(Some(ServerTls {
            config: Reloading::new(first, settings.files(), "server", build),
        }))
    }

    /// Completes the handshake on `stream`, within [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}

/// Connects to other services: plain TCP for `http://`, TLS with the newest
/// client configuration for `https://`. Every socket sets TCP_NODELAY.
#[derive(Clone, Default)]
pub struct Connector {
    tls: Option<Arc<Reloading<ClientConfig>>>,
}

impl Connector {
    /// The client side of `settings`. Call it inside a Tokio runtime.
    pub fn new(settings: &TlsSettings) -> anyhow::Result<Connector> {
        let build = {
            let settings = settings.clone();
            move || client_config(&settings)
        };
        let first =
            build().map_err(|(variable, reason)| anyhow::anyhow!("{variable}: {reason}"))?;
        Ok(Connector {
            tls: first.map(|first| {
                Reloading::new(first, settings.files(), "client", move || {
                    build()?.ok_or((CA_FILE, "is no longer set".to_owned()))
                })
            }),
        })
    }

    /// Whether `https://` endpoints can be called.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    async fn connect(self, uri: http::Uri) -> io::Result<Stream> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "endpoint without a host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        if !https {
            return Ok(Stream::Plain(tcp));
        }
        let config = self.tls.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "an https:// endpoint needs BANK_TLS_CA_FILE",
            )
        })?;
        let name = ServerName::try_from(host)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        let connector = tokio_rustls::TlsConnector::from(config.current());
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(Stream::ClientTls(Box::new(tls)))
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            connector
                .connect(uri)
                .await
                .map(hyper_util::rt::TokioIo::new)
        })
    }
}

/// A connection, in either direction, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::ServerTls(tls) => tls.get_ref().0,
            Stream::ClientTls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::ServerTls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Stream::ClientTls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::ServerTls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Stream::ClientTls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::ServerTls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
            Stream::ClientTls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::ServerTls(tls) => tls.is_write_vectored(),
            Stream::ClientTls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::ServerTls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Stream::ClientTls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::ServerTls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Stream::ClientTls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Stream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.tcp().local_addr().ok(),
            remote_addr: self.tcp().peer_addr().ok(),
        }
    }
}

/// The connections `listener` accepts, each through the TLS handshake when
/// `tls` is set; a failed handshake is logged and dropped, never handed on, and
/// never holds up the connections behind it.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
) -> impl futures::Stream<Item = io::Result<Stream>> + Send + 'static {
    let (sender, receiver) = tokio::sync::mpsc::channel::<io::Result<Stream>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: wait a moment, go on.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            let sender = sender.clone();
            match &tls {
                None => {
                    if sender.send(Ok(Stream::Plain(tcp))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls.accept(tcp).await {
                            Ok(stream) => {
                                let _ = sender.send(Ok(Stream::ServerTls(Box::new(stream)))).await;
                            }
                            Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variable_of(pairs: &[(&str, &str)]) -> Option<String> {
        TlsSettings::from_env(&Env::from_pairs(pairs.iter().copied()))
            .err()
            .map(|error| error.variable)
    }

    #[test]
    fn no_variables_mean_plaintext() {
        let settings = TlsSettings::from_env(&Env::from_pairs([]));
        assert_eq!(settings.ok(), Some(TlsSettings::default()));
    }

    #[test]
    fn bad_tls_settings_name_their_variable() {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap_or_else(|error| panic!("{error}"));
        let garbage = garbage.to_str().unwrap_or_default();
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().unwrap_or_default();

        assert_eq!(variable_of(&[(CERT_FILE, garbage)]), Some(KEY_FILE.into()));
        assert_eq!(variable_of(&[(KEY_FILE, garbage)]), Some(CERT_FILE.into()));
        assert_eq!(
            variable_of(&[(CERT_FILE, missing), (KEY_FILE, missing)]),
            Some(CERT_FILE.into())
        );
        assert_eq!(
            variable_of(&[(CERT_FILE, garbage), (KEY_FILE, garbage)]),
            Some(CERT_FILE.into())
        );
        assert_eq!(
            variable_of(&[(CLIENT_CA_FILE, garbage)]),
            Some(CLIENT_CA_FILE.into())
        );
        assert_eq!(variable_of(&[(CA_FILE, missing)]), Some(CA_FILE.into()));
    }
}
