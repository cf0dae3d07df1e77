//! The REST clients' transport: one HTTP/1.1 keep-alive connection per client,
//! straight on hyper, with everything a request shares (its URI, host and
//! authorization) prepared once. A general-purpose client parses the URL, builds
//! a timer and searches its pool on every request, which on a two-core machine
//! is CPU taken from the system under test.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, StatusCode, Uri,
    header::{AUTHORIZATION, CONTENT_TYPE, HOST},
};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Why a request got no answer.
pub enum Failure {
    Timeout,
    Transport,
}

impl Failure {
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Transport => "transport",
        }
    }
}

/// Where requests go: a plain `http://host:port[/prefix]` target.
#[derive(Debug, Clone)]
pub struct Target {
    address: String,
    host: HeaderValue,
    prefix: String,
}

impl Target {
    pub fn parse(target: &str) -> Result<Target> {
        let uri: Uri = target
            .parse()
            .with_context(|| format!("--target {target:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--target must be an http:// URL (the REST clients speak plain HTTP/1.1)");
        }
        let Some(authority) = uri.authority() else {
            bail!("--target {target:?} names no host");
        };
        let port = authority.port_u16().unwrap_or(80);
        Ok(Target {
            address: format!("{}:{port}", authority.host()),
            host: HeaderValue::from_str(authority.as_str())
                .context("--target's host is not a valid header")?,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The URI of `path` under the target.
    pub fn uri(&self, path: &str) -> Result<Uri> {
        format!("{}{path}", self.prefix)
            .parse()
            .with_context(|| format!("{path:?} is not a valid path"))
    }
}

/// One client's connection, opened on first use and again after a failure.
pub struct Connection {
    target: Target,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    pub fn new(target: Target, authorization: Option<&str>, timeout: Duration) -> Result<Self> {
        let authorization = authorization
            .map(HeaderValue::from_str)
            .transpose()
            .context("the token is not a valid header")?;
        Ok(Connection {
            target,
            authorization,
            timeout,
            sender: None,
        })
    }

    /// POSTs a JSON `body` to `uri`, with an `Idempotency-Key` when `key` is
    /// given, and reads the whole answer, so the connection can carry the next
    /// request. A failure closes the connection: an HTTP/1.1 exchange cut short
    /// leaves nothing to reuse.
    pub async fn post(
        &mut self,
        uri: Uri,
        key: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(HOST, self.target.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        if let Some(key) = key {
            let key = HeaderValue::from_str(key).map_err(|_| Failure::Transport)?;
            headers.insert("idempotency-key", key);
        }
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => {
                self.sender = None;
                Err(Failure::Transport)
            }
            Err(_) => {
                self.sender = None;
                Err(Failure::Timeout)
            }
        }
    }

    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), Box<dyn std::error::Error + Send + Sync>> {
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            stale => stale.insert(connect(&self.target.address).await?),
        };
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

async fn connect(
    address: &str,
) -> Result<SendRequest<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the connection closes; the next request opens another.
        let _ = connection.await;
    });
    Ok(sender)
}
