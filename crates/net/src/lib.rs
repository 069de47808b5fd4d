//! Gust's listeners: the accept loop both servers (the data plane and the
//! control API) run, over plain TCP or TLS (rustls, certificates from PEM
//! files), with the guards every listener needs — a deadline for a
//! client's TLS handshake and request head (slowloris), a limit on the
//! size of a request head (a readable 431 past it), limits on the
//! connections held in all and per client address (below the process's
//! file descriptors; the idlest closed first) — and a graceful shutdown
//! that lets requests in flight finish. A connection may be upgraded (a
//! WebSocket): the service takes it over with `hyper::upgrade::on`, and it
//! no longer counts for the drain (whoever took it closes it).
//!
//! It owns no routes and no business logic: callers hand it a service per
//! connection. It must not depend on any other Gust crate.

mod conns;
mod guard;

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};

use crate::conns::{Admit, ConnTable, Full};
pub use crate::conns::{ConnectionLimits, backlog_warning, default_limits, fd_limit, somaxconn};
use crate::guard::Guarded;

/// Why TLS could not be set up; names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

/// A TLS server configuration, shared by every connection.
#[derive(Clone)]
pub struct Tls(tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Certificates {
                path: cert.display().to_string(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Certificates {
                path: cert.display().to_string(),
                reason: "it holds no certificate".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
            path: key.display().to_string(),
            reason: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}

/// How a listener serves.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// Time a client has to finish its TLS handshake, and then each request head.
    pub header_read_timeout: Duration,
    pub tls: Option<Tls>,
    /// Bytes a request's line and headers may take together; past it the
    /// client gets a 431 that says so, and the connection is closed.
    pub max_header_bytes: usize,
    /// Connections held at once, in all and per client address.
    pub connections: ConnectionLimits,
}

/// The default of [`ListenConfig::max_header_bytes`]: 64 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;

/// The connections still open when the accept loop stopped.
pub struct Drain {
    /// Tells every connection to finish its request and close.
    stop: watch::Sender<bool>,
    /// Ends when the last connection's sender is dropped.
    open: mpsc::Receiver<()>,
}

impl Drain {
    /// Waits for the connections to finish their requests, up to `limit`;
    /// false if some were still open then.
    pub async fn finish(mut self, limit: Duration) -> bool {
        let _ = self.stop.send(true);
        tokio::time::timeout(limit, self.open.recv()).await.is_ok()
    }
}

/// What a connection's task holds of the drain: the signal to stop, and a
/// sender whose drop says it is gone.
#[derive(Clone)]
struct Watcher {
    stop: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
}

type Table = Arc<Mutex<ConnTable<Arc<Notify>>>>;

fn lock(table: &Table) -> std::sync::MutexGuard<'_, ConnTable<Arc<Notify>>> {
    table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connection's place in its listener's table, given up when dropped.
pub(crate) struct Slot {
    table: Table,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let removed = lock(&self.table).remove(self.id);
        if let Some((_, true)) = removed {
            // Many connections came and went: give their buffers' memory back.
            tokio::task::spawn_blocking(trim_allocator);
        }
    }
}

/// Gives the allocator's free memory back to the system (glibc keeps the
/// pages of freed blocks otherwise: after many connections, or after the
/// scaler unloaded functions). Blocking: walks every arena.
pub fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free heap memory to the system.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, serving
/// each with a fresh service from `make_service`; then returns what is
/// left to drain.
///
/// A connection over the listener's limits (in all, or from its client's
/// address) makes room by closing the idlest connection under that
/// limit, one with no request in progress; when there is none, the new
/// connection is closed at once.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    config: ListenConfig,
    make_service: M,
    shutdown: impl Future<Output = ()>,
) -> Drain
where
    M: Fn() -> S,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (stop, stop_rx) = watch::channel(false);
    let (open, open_rx) = mpsc::channel(1);
    let watcher = Watcher {
        stop: stop_rx,
        _open: open,
    };
    let mut http = http1::Builder::new();
    let max_header_bytes = config.max_header_bytes.max(1);
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(max_header_bytes)
        .keep_alive(true);
    if max_header_bytes >= HYPER_MAX_BUF {
        http.max_buf_size(max_header_bytes + 1);
    }
    let table: Table = Arc::new(Mutex::new(ConnTable::new(config.connections)));
    let mut refused = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let close = Arc::new(Notify::new());
                let admitted = lock(&table).admit(peer.ip(), Instant::now(), close.clone());
                let id = match admitted {
                    Admit::Accept { id, evict } => {
                        if let Some(idlest) = evict {
                            idlest.notify_one();
                        }
                        id
                    }
                    Admit::Refuse(full) => {
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(
                                client = %peer.ip(),
                                limit = match full {
                                    Full::Listener => "connections per listener",
                                    Full::Address => "connections per client address",
                                },
                                refused,
                                "connection refused: the limit is reached and every connection under it is busy"
                            );
                        }
                        drop(stream);
                        continue;
                    }
                };
                let slot = Slot { table: table.clone(), id };
                let _ = stream.set_nodelay(true);
                let service = Tracked { inner: make_service(), table: table.clone(), id };
                let (http, watcher) = (http.clone(), watcher.clone());
                match &config.tls {
                    None => {
                        let io = Guarded::new(stream, max_header_bytes, slot);
                        tokio::spawn(connection(http, io, service, watcher, close));
                    }
                    Some(Tls(acceptor)) => {
                        let (acceptor, deadline) = (acceptor.clone(), config.header_read_timeout);
                        tokio::spawn(async move {
                            let handshake = tokio::time::timeout(deadline, acceptor.accept(stream));
                            let tls = tokio::select! {
                                done = handshake => done,
                                () = close.notified() => return,
                            };
                            match tls {
                                Ok(Ok(tls)) => {
                                    let io = Guarded::new(tls, max_header_bytes, slot);
                                    connection(http, io, service, watcher, close).await;
                                }
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(watcher);
    Drain {
        stop,
        open: open_rx,
    }
}

/// hyper's default read buffer limit (which bounds a head when no smaller
/// `max_header_size` does).
const HYPER_MAX_BUF: usize = 8192 + 4096 * 100;

async fn connection<I, S, B>(
    http: http1::Builder,
    io: Guarded<I>,
    service: Tracked<S>,
    watcher: Watcher,
    close: Arc<Notify>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Watcher { mut stop, _open } = watcher;
    let serving = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut serving = std::pin::pin!(serving);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = serving.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            // The server drains: the request in flight finishes, then the
            // connection closes.
            changed = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    serving.as_mut().graceful_shutdown();
                }
            }
            // Closed, idle, to make room for a new connection.
            () = close.notified() => return,
        }
    }
}

/// A connection's service: marks the connection busy from a request's
/// start until its response is written (or abandoned).
struct Tracked<S> {
    inner: S,
    table: Table,
    id: u64,
}

/// A request in progress on a connection; it is idle again when this drops.
struct Busy {
    table: Table,
    id: u64,
}

impl Busy {
    fn new(table: &Table, id: u64) -> Self {
        lock(table).busy(id);
        Self {
            table: table.clone(),
            id,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        lock(&self.table).done(self.id, Instant::now());
    }
}

impl<S, B> hyper::service::Service<hyper::Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    type Response = hyper::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let busy = Busy::new(&self.table, self.id);
        let answer = self.inner.call(request);
        let (table, id) = (self.table.clone(), self.id);
        Box::pin(async move {
            let response = answer.await?;
            if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                // Upgraded: whoever took the socket holds it until it
                // closes (its slot drops), so it stays busy, never the
                // idlest to close for room, and counts against the caps.
                lock(&table).busy(id);
            }
            Ok(response.map(|body| TrackedBody {
                inner: Box::pin(body),
                _busy: busy,
            }))
        })
    }
}

/// A response body that keeps its connection busy until it is dropped
/// (written to the end, or abandoned).
struct TrackedBody<B> {
    inner: Pin<Box<B>>,
    _busy: Busy,
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.get_mut().inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
