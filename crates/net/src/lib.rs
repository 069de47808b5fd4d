//! Gust's listeners: the accept loop both servers (the data plane and the
//! control API) run, over plain TCP or TLS (rustls, certificates from PEM
//! files), with the guards every listener needs — a deadline for a
//! client's TLS handshake and request head (slowloris), hyper's limits on
//! URL and header sizes — and a graceful shutdown that lets requests in
//! flight finish.
//!
//! It owns no routes and no business logic: callers hand it a service per
//! connection. It must not depend on any other Gust crate.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;

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
}

/// The connections still open when the accept loop stopped.
pub struct Drain(GracefulShutdown);

impl Drain {
    /// Waits for the connections to finish their requests, up to `limit`;
    /// false if some were still open then.
    pub async fn finish(self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.0.shutdown()).await.is_ok()
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, serving
/// each with a fresh service from `make_service`; then returns what is
/// left to drain.
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
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (http, service, watcher) = (http.clone(), make_service(), graceful.watcher());
                match &config.tls {
                    None => {
                        tokio::spawn(connection(http, TokioIo::new(stream), service, watcher));
                    }
                    Some(Tls(acceptor)) => {
                        let (acceptor, deadline) = (acceptor.clone(), config.header_read_timeout);
                        tokio::spawn(async move {
                            match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => connection(http, TokioIo::new(tls), service, watcher).await,
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
    Drain(graceful)
}

async fn connection<I, S, B>(http: http1::Builder, io: I, service: S, watcher: Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Err(e) = watcher.watch(http.serve_connection(io, service)).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
