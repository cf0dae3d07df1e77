//! The gateway's HTTP server: HTTP/1.1 and HTTP/2 (over TLS when configured) on
//! hyper's own connection builder, which, unlike `axum::serve`, lets the gateway
//! bound how long a client may take: to finish its TLS handshake, to send a
//! request head, and to leave a connection idle. Slow or silent clients cannot
//! hold connections open. Shutdown stops accepting, lets requests in flight
//! finish, and closes idle connections at once.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use bank_kit::tls::{ServerTls, Stream};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, time::Instant};
use tower::ServiceExt;

use crate::MAX_CLIENT_STREAMS;

/// How long clients may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To send a request head, and to start the next one on an HTTP/1.1
    /// connection; also for a new connection's first bytes.
    pub header_read: Duration,
    /// With no request open on a connection that has served one.
    pub idle: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    timeouts: Timeouts,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CLIENT_STREAMS)
        .max_pending_accept_reset_streams(Some(MAX_CLIENT_STREAMS as usize))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Each connection holds a clone; when all are dropped, every connection ended.
    let (alive, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: wait a moment, go on.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses go out as soon as they are written: with Nagle's algorithm a
        // response written in two parts would wait for the client's delayed ACK.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a client connection");
        }
        let connection = ClientConnection {
            builder: builder.clone(),
            tls: tls.clone(),
            router: router.clone(),
            timeouts,
            peer,
            stopped: stopped.clone(),
            _alive: alive.clone(),
        };
        tokio::spawn(connection.run(tcp));
    }
    drop(listener);
    stop.send_replace(true);
    drop(alive);
    all_ended.recv().await;
}

/// One client's connection and what it needs to be served.
struct ClientConnection {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<ServerTls>,
    router: Router,
    timeouts: Timeouts,
    peer: SocketAddr,
    stopped: tokio::sync::watch::Receiver<bool>,
    _alive: tokio::sync::mpsc::Sender<()>,
}

impl ClientConnection {
    async fn run(mut self, tcp: tokio::net::TcpStream) {
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(tls) => match tls.accept(tcp).await {
                Ok(stream) => Stream::ServerTls(Box::new(stream)),
                Err(error) => {
                    tracing::debug!(peer = %self.peer, %error, "TLS handshake failed");
                    return;
                }
            },
        };
        let activity = Activity::new(self.timeouts);
        let service = {
            let activity = activity.clone();
            let router = self.router.clone();
            let peer = self.peer;
            tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let guard = activity.start();
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move {
                    let response = router.oneshot(request).await;
                    drop(guard);
                    response
                }
            })
        };
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        tokio::pin!(connection);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(peer = %self.peer, %error, "client connection ended");
                    }
                    return;
                }
                () = activity.idle(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = self.stopped.wait_for(|stopped| *stopped), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Clone)]
struct Activity(Arc<ActivityState>);

struct ActivityState {
    timeouts: Timeouts,
    in_flight: AtomicUsize,
    served_any: AtomicBool,
    last: Mutex<Instant>,
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<ActivityState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut last) = self.0.last.lock() {
            *last = Instant::now();
        }
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new(timeouts: Timeouts) -> Activity {
        Activity(Arc::new(ActivityState {
            timeouts,
            in_flight: AtomicUsize::new(0),
            served_any: AtomicBool::new(false),
            last: Mutex::new(Instant::now()),
        }))
    }

    fn start(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        self.0.served_any.store(true, Ordering::Release);
        InFlight(Arc::clone(&self.0))
    }

    /// Completes once no request has been in flight for the idle timeout, or,
    /// before the first request, for as long as a request head may take.
    async fn idle(&self) {
        loop {
            let limit = if self.0.served_any.load(Ordering::Acquire) {
                self.0.timeouts.idle
            } else {
                self.0.timeouts.header_read
            };
            let last = self
                .0
                .last
                .lock()
                .map_or_else(|_| Instant::now(), |last| *last);
            let deadline = last + limit;
            if Instant::now() >= deadline && self.0.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            let wake = if Instant::now() >= deadline {
                // Busy past the deadline: look again a little later.
                Instant::now() + limit / 4
            } else {
                deadline
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}
