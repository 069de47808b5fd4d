//! TLS to brokers and databases: one client configuration for every kind
//! (rustls with ring, the public roots Gust's guests also trust, and a
//! source's own CA beside them), so a broker on a private CA is reached
//! without trusting the machine's certificate store.
//!
//! Certificates are always checked. PostgreSQL's `sslmode=verify-ca` checks
//! the chain and not the host name (a database whose certificate names
//! another host, as self-signed ones often do), and so trusts the source's
//! CA alone: with the public roots, anyone's certificate from a public CA
//! would pass. There is no mode that encrypts without checking.

use std::hash::{BuildHasher as _, Hasher as _};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_rustls::client::TlsStream;

use crate::SourceError;

/// What the server's certificate must prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// A chain to a trusted root, for the host name connected to.
    Full,
    /// A chain to a trusted root, whatever name it holds.
    ChainOnly,
}

/// The public roots (with `public`) and the certificates of `ca` (PEM).
fn roots(ca: Option<&str>, public: bool) -> Result<RootCertStore, SourceError> {
    let mut roots = if public {
        RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
    } else {
        RootCertStore::empty()
    };
    if let Some(pem) = ca {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert
                .map_err(|e| SourceError::Config(format!("`ca` is not PEM certificates: {e}")))?;
            roots.add(cert).map_err(|e| {
                SourceError::Config(format!("`ca` holds a certificate rustls refuses: {e}"))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(SourceError::Config("`ca` holds no certificate".into()));
        }
    }
    Ok(roots)
}

/// A client configuration checking servers as `check` says, against the
/// public roots and `ca`.
pub(crate) fn client_config(
    ca: Option<&str>,
    check: Check,
) -> Result<rustls::ClientConfig, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if check == Check::ChainOnly && ca.is_none() {
        return Err(SourceError::Config(
            "sslmode=verify-ca checks the certificate against the source's own CA: give it with --ca-file (`ca` in gust.toml), or use verify-full".into(),
        ));
    }
    let roots = Arc::new(roots(ca, check == Check::Full)?);
    let tls = |e: rustls::Error| SourceError::Config(format!("TLS: {e}"));
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls)?;
    let config = match check {
        Check::Full => builder.with_root_certificates(roots).with_no_client_auth(),
        Check::ChainOnly => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| SourceError::Config(format!("TLS: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// The web PKI's checks but the name's: rustls checks the chain (and its
/// validity, usage and revocation data) before the name, so a name error
/// means everything else held.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The TLS handshake over `stream`, for `host`, within 5 s.
pub(crate) async fn handshake(
    stream: TcpStream,
    host: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, SourceError> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| SourceError::Config(format!("`{host}`: {e}")))?;
    tokio::time::timeout(
        HANDSHAKE,
        tokio_rustls::TlsConnector::from(config).connect(name, stream),
    )
    .await
    .map_err(|_| SourceError::Broker(format!("{host}: the TLS handshake did not finish")))?
    .map_err(|e| {
        let hint = if e.to_string().contains("certificate") {
            " (a certificate from a private CA needs that CA: --ca-file, or `ca` in gust.toml)"
        } else {
            ""
        };
        SourceError::Broker(format!("{host}: TLS: {e}{hint}"))
    })
}

const HANDSHAKE: Duration = Duration::from_secs(5);

/// TCP to `host:port`, then TLS.
async fn dial(
    host: &str,
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, SourceError> {
    let stream = tokio::time::timeout(HANDSHAKE, TcpStream::connect((host, port)))
        .await
        .map_err(|_| SourceError::Broker(format!("{host}:{port} did not answer")))?
        .map_err(|e| SourceError::Broker(format!("{host}:{port}: {e}")))?;
    let _ = stream.set_nodelay(true);
    handshake(stream, host, config).await
}

/// A local endpoint each connection to which is carried over TLS to
/// `host:port`: TLS for client libraries that speak only plain streams
/// (rumqttc and lapin, whose own TLS features bring a rustls-webpki with
/// open advisories, or a PKCS#12 stack of 34 crates). Closed when dropped.
///
/// [`Tunnel::unix`] is a socket in a directory only this process's user may
/// enter. [`Tunnel::loopback`] is a port on 127.0.0.1 that takes one
/// connection: another local process that took it first would get a TLS
/// connection to the broker without the source's credentials (which it
/// could open itself), and the source would fail and start again.
pub(crate) struct Tunnel {
    dir: Option<PathBuf>,
    task: tokio::task::JoinHandle<()>,
}

/// The broker a [`Tunnel`] carries to.
type Target = (String, u16, Arc<rustls::ClientConfig>);

impl Tunnel {
    /// A tunnel on a loopback port, for one connection: the port.
    pub(crate) async fn loopback(
        host: &str,
        port: u16,
        config: rustls::ClientConfig,
    ) -> Result<(Tunnel, u16), SourceError> {
        let (first, _target) = Self::first(host, port, config).await?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(io)?;
        let local = listener.local_addr().map_err(io)?.port();
        // One connection, the client's (it makes one per tunnel): the port
        // closes once it is taken.
        let task = tokio::spawn(async move {
            if let Ok((mut plain, _)) = listener.accept().await {
                drop(listener);
                let _ = plain.set_nodelay(true);
                let mut secure = first;
                let _ = tokio::io::copy_bidirectional(&mut plain, &mut secure).await;
            }
        });
        Ok((Tunnel { dir: None, task }, local))
    }

    /// A tunnel on a Unix socket, for any number of connections: its path.
    pub(crate) async fn unix(
        host: &str,
        port: u16,
        config: rustls::ClientConfig,
    ) -> Result<(Tunnel, PathBuf), SourceError> {
        let (first, target) = Self::first(host, port, config).await?;
        // A name nobody can guess ahead (SipHash keyed from the OS's
        // randomness), so nobody can make the directory first.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let dir =
            std::env::temp_dir().join(format!("gust-tls-{}-{random:016x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        let socket = dir.join("broker.sock");
        let listener = match UnixListener::bind(&socket) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io(e));
            }
        };
        let task = tokio::spawn(async move {
            // The first connection takes the stream already checked.
            let mut first = Some(first);
            while let Ok((mut plain, _)) = listener.accept().await {
                let ready = first.take();
                let target = target.clone();
                tokio::spawn(async move {
                    let secure = match ready {
                        Some(secure) => Ok(secure),
                        None => dial(&target.0, target.1, target.2).await,
                    };
                    match secure {
                        Ok(mut secure) => {
                            let _ = tokio::io::copy_bidirectional(&mut plain, &mut secure).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "a TLS tunnel could not reach its broker");
                        }
                    }
                });
            }
        });
        Ok((
            Tunnel {
                dir: Some(dir),
                task,
            },
            socket,
        ))
    }

    /// The first connection to the broker, made now so that a refused
    /// certificate is said with its reason, not as a closed connection.
    async fn first(
        host: &str,
        port: u16,
        config: rustls::ClientConfig,
    ) -> Result<(TlsStream<TcpStream>, Target), SourceError> {
        let config = Arc::new(config);
        let first = dial(host, port, config.clone()).await?;
        Ok((first, (host.to_string(), port, config)))
    }
}

fn io(e: std::io::Error) -> SourceError {
    SourceError::Broker(format!("a TLS tunnel: {e}"))
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_that_is_not_a_certificate_is_refused_with_why() {
        let e = client_config(Some("hello"), Check::Full).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(client_config(Some(bad), Check::Full).is_err());
        // verify-ca trusts the source's CA alone, so it needs one.
        let e = client_config(None, Check::ChainOnly).unwrap_err();
        assert!(e.to_string().contains("--ca-file"), "{e}");
        assert!(client_config(None, Check::Full).is_ok());
    }
}
