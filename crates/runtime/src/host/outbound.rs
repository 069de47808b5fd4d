//! How a guest's outgoing `wasi:http` request leaves the node.
//!
//! **Where it may go.** A request is checked twice. Before any lookup, its
//! host must be on the function's allow-list and must not name an internal
//! address by itself (`localhost`, `127.0.0.1`, `0x7f000001`, `[::1]` …),
//! or be a host an admin granted ([`Limits::allows_host`]). Then its host
//! is resolved once, here, and every address is judged
//! ([`Limits::allows_address`], over `gust_core::address`, the IANA
//! special-purpose registries): special-purpose addresses (loopback,
//! private, link-local, NAT64/6to4/IPv4-mapped forms of them …) are
//! dropped unless granted, and the connection is made to one of the
//! addresses that passed, never to the name. So there is no second lookup
//! whose answer could differ (DNS rebinding), and a name pointing at this
//! machine is refused however it is listed. This holds for every request,
//! not only for hosts allowed by `*`.
//!
//! **Redirects.** Neither `wasi:http` nor this client follows them: a
//! redirect is an answer the guest sees, and the next hop is a new request
//! through this same path, checked again.
//!
//! **How many at once.** Each request holds an outbound slot from the
//! moment it is sent until its connection closes (the answer read or
//! dropped): at most [`PER_INVOCATION`] per invocation and [`PER_TENANT`]
//! per tenant on the node. Past either, the request fails at once with
//! `connection-limit-reached`. Calls to other functions
//! (`http://gust.internal/…`) do not leave the process and take no slot:
//! admission bounds them.
//!
//! **The connection.** TCP to the vetted address, TLS through rustls with
//! the ring provider and the webpki roots (the name as written is the
//! server name), then one HTTP/1.1 exchange per connection. The guest's
//! request options bound the lookup and connection, the wait for the
//! answer's head, and each wait between body frames; without them, the
//! function's own timeout does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gust_core::{Limits, TenantId};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Outbound requests one invocation may have open at once.
pub(crate) const PER_INVOCATION: usize = 32;
/// Outbound requests one tenant's invocations may have open at once on
/// this node, all together.
pub(crate) const PER_TENANT: usize = 256;

/// Whether `host` (as in a request's URI) is the in-process host for
/// calls to other functions: `gust.internal` in any case, with or without
/// a trailing dot. It is never looked up in DNS.
pub(crate) fn is_local_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case(crate::invoke::LOCAL_HOST)
}

/// The node's count of open outbound requests per tenant.
pub(crate) struct OutboundSlots {
    per_invocation: usize,
    per_tenant: usize,
    tenants: Mutex<HashMap<TenantId, usize>>,
}

/// Which cap a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SlotsFull {
    #[error("the invocation already has {0} outbound requests open")]
    Invocation(usize),
    #[error("the tenant already has {0} outbound requests open on this node")]
    Tenant(usize),
}

impl OutboundSlots {
    pub fn new(per_invocation: usize, per_tenant: usize) -> Self {
        Self {
            per_invocation,
            per_tenant,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one slot of `tenant` and of the invocation counting in
    /// `open`, or says which is full.
    pub fn take(
        self: &Arc<Self>,
        tenant: &TenantId,
        open: &Arc<AtomicUsize>,
    ) -> Result<Slot, SlotsFull> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < self.per_invocation).then_some(n + 1)
        })
        .map_err(|_| SlotsFull::Invocation(self.per_invocation))?;
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let count = tenants.entry(tenant.clone()).or_insert(0);
        if *count >= self.per_tenant {
            drop(tenants);
            open.fetch_sub(1, Ordering::AcqRel);
            return Err(SlotsFull::Tenant(self.per_tenant));
        }
        *count += 1;
        Ok(Slot {
            slots: self.clone(),
            tenant: tenant.clone(),
            open: open.clone(),
        })
    }

    #[cfg(test)]
    fn open_for(&self, tenant: &TenantId) -> usize {
        let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        tenants.get(tenant).copied().unwrap_or(0)
    }
}

/// One open outbound request; its slots are given back when it is dropped.
pub(crate) struct Slot {
    slots: Arc<OutboundSlots>,
    tenant: TenantId,
    open: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        let mut tenants = self.slots.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = tenants.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                tenants.remove(&self.tenant);
            }
        }
    }
}

/// What [`send`] hands back: the answer, and the connection's remaining
/// work (its body), which holds the slot until it ends.
pub(crate) type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// Sends `request` as the module documentation says: resolve once, keep
/// the addresses `limits` allows, connect to one of them. `slot` is held
/// until the connection closes.
pub(crate) async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    limits: Arc<Limits>,
    slot: Slot,
) -> Result<Sent, Error> {
    let uri = request.uri();
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_string();
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let fallback = Duration::from_millis(limits.timeout_ms);
    let options = options.unwrap_or_default();
    let connect_timeout = options.connect_timeout.unwrap_or(fallback);
    let first_byte_timeout = options.first_byte_timeout.unwrap_or(fallback);
    let between_bytes = options.between_bytes_timeout.unwrap_or(fallback);
    let deadline = Instant::now() + connect_timeout;

    let addresses = resolve(&host, port, deadline).await?;
    let vetted: Vec<SocketAddr> = addresses
        .iter()
        .copied()
        .filter(|a| limits.allows_address(&host, a.ip()))
        .collect();
    if vetted.is_empty() {
        tracing::debug!(%host, ?addresses, "outbound request refused: internal addresses only");
        return Err(Error::HttpRequestDenied);
    }
    let tcp = connect(&vetted, deadline).await?;
    let io: Box<dyn Io> = if https {
        let name = server_name(&host)?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?);
        match tokio::time::timeout_at(deadline, tls.connect(name, tcp)).await {
            Ok(Ok(stream)) => Box::new(stream),
            Ok(Err(e)) => return Err(Error::Tls(e)),
            Err(_) => return Err(Error::ConnectionTimeout),
        }
    } else {
        Box::new(tcp)
    };
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await?;

    // The request line carries the path only (the host is in `Host`).
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;

    // The connection is driven while the answer's head is awaited; it may
    // end first (the server closed), then the answer says why.
    let mut connection = Box::pin(connection);
    let mut connection_done = false;
    let exchange = tokio::time::timeout(first_byte_timeout, sender.send_request(request));
    let mut exchange = std::pin::pin!(exchange);
    let response = loop {
        tokio::select! {
            answer = &mut exchange => break answer,
            ended = &mut connection, if !connection_done => {
                connection_done = true;
                ended?;
            }
        }
    };
    let response = response
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::from)?;
    let response = response.map(|incoming| {
        Paced {
            inner: incoming,
            gap: between_bytes,
            timer: Box::pin(tokio::time::sleep(between_bytes)),
        }
        .boxed_unsync()
    });
    let rest = async move {
        let _slot = slot;
        if !connection_done {
            connection.await.map_err(|e| {
                if e.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    Error::from(e)
                }
            })?;
        }
        Ok(())
    };
    Ok((response, Box::new(rest)))
}

/// The addresses `host` stands for: itself when it is an IP address in any
/// form, else what one lookup answers.
async fn resolve(host: &str, port: u16, deadline: Instant) -> Result<Vec<SocketAddr>, Error> {
    if let Some(ip) = gust_core::address::parse_ip_host(host) {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
        Err(_) => Err(Error::DnsTimeout),
        Ok(Err(e)) => Err(Error::DnsError {
            rcode: Some(e.to_string()),
            info_code: None,
        }),
        Ok(Ok(found)) => {
            let found: Vec<SocketAddr> = found.collect();
            if found.is_empty() {
                Err(Error::DestinationNotFound)
            } else {
                Ok(found)
            }
        }
    }
}

/// Connects to the first of `addresses` that accepts before `deadline`.
async fn connect(addresses: &[SocketAddr], deadline: Instant) -> Result<TcpStream, Error> {
    let mut last = None;
    for address in addresses {
        match tokio::time::timeout_at(deadline, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(e),
            Err(_) => return Err(Error::ConnectionTimeout),
        }
    }
    Err(last.map_or(Error::DestinationUnavailable, Error::Connect))
}

fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, Error> {
    use rustls::pki_types::ServerName;
    if let Some(ip) = gust_core::address::parse_ip_host(host) {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_string();
    ServerName::try_from(name).map_err(|_| Error::HttpRequestUriInvalid)
}

/// The TLS client settings every outbound connection shares.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(|e| Error::InternalError(Some(format!("TLS client configuration: {e}"))))
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An answer's body that fails with `connection-read-timeout` when no
/// frame comes within `gap` of the last one.
struct Paced {
    inner: hyper::body::Incoming,
    gap: Duration,
    timer: Pin<Box<Sleep>>,
}

impl http_body::Body for Paced {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now() + this.gap;
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if e.is_timeout() => {
                Poll::Ready(Some(Err(Error::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    #[test]
    fn the_local_host_is_matched_in_any_case_and_with_a_trailing_dot() {
        for host in [
            "gust.internal",
            "GUST.INTERNAL",
            "Gust.Internal.",
            "gust.internal.",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "gust.internal.example",
            "xgust.internal",
            "gust.internal..",
            "api.gust.internal",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }

    #[test]
    fn slots_are_capped_per_invocation_and_per_tenant_and_given_back() {
        let slots = Arc::new(OutboundSlots::new(2, 3));
        let (a, b) = (tenant("a"), tenant("b"));
        let one = Arc::new(AtomicUsize::new(0));
        let two = Arc::new(AtomicUsize::new(0));
        let s1 = slots.take(&a, &one).unwrap();
        let s2 = slots.take(&a, &one).unwrap();
        assert_eq!(slots.take(&a, &one).err(), Some(SlotsFull::Invocation(2)));
        let s3 = slots.take(&a, &two).unwrap();
        // The tenant's three are open: its other invocation is refused…
        assert_eq!(slots.take(&a, &two).err(), Some(SlotsFull::Tenant(3)));
        // …and the refusal took nothing.
        assert_eq!(two.load(Ordering::Acquire), 1);
        assert_eq!(slots.open_for(&a), 3);
        // Another tenant is not affected.
        let other = Arc::new(AtomicUsize::new(0));
        let b1 = slots.take(&b, &other).unwrap();
        drop(s1);
        let s4 = slots.take(&a, &one).unwrap();
        drop((s2, s3, s4, b1));
        assert_eq!(slots.open_for(&a), 0);
        assert_eq!(one.load(Ordering::Acquire), 0);
        assert!(slots.tenants.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn names_and_addresses_that_lead_here_are_refused_before_connecting() {
        let limits = Arc::new(
            gust_core::LimitsPatch {
                allowed_hosts: Some(vec!["*".into(), "localhost.test".into()]),
                ..Default::default()
            }
            .resolve()
            .unwrap(),
        );
        let slots = Arc::new(OutboundSlots::new(8, 8));
        let open = Arc::new(AtomicUsize::new(0));
        // `localhost` resolves here (through /etc/hosts, no network); IP
        // forms need no lookup at all.
        for url in [
            "http://localhost:9/",
            "http://0x7f000001:9/",
            "http://[::ffff:127.0.0.1]:9/",
            "http://[64:ff9b::7f00:1]:9/",
            "http://[2002:7f00:1::]:9/",
            "http://198.18.0.1:9/",
        ] {
            let request = http::Request::get(url)
                .body(
                    http_body_util::Empty::new()
                        .map_err(|e: std::convert::Infallible| match e {})
                        .boxed_unsync(),
                )
                .unwrap();
            let slot = slots.take(&tenant("a"), &open).unwrap();
            let got = send(request, None, limits.clone(), slot).await;
            assert!(
                matches!(got, Err(Error::HttpRequestDenied)),
                "{url}: {:?}",
                got.err()
            );
        }
        assert_eq!(open.load(Ordering::Acquire), 0, "slots are given back");
    }

    #[tokio::test]
    async fn a_granted_address_is_reached_and_its_slot_held_until_the_connection_ends() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await
                .unwrap();
            head
        });
        let limits = Arc::new(
            gust_core::LimitsPatch {
                allow_internal_hosts: Some(vec!["127.0.0.1".into()]),
                ..Default::default()
            }
            .resolve()
            .unwrap(),
        );
        let slots = Arc::new(OutboundSlots::new(8, 8));
        let open = Arc::new(AtomicUsize::new(0));
        let request = http::Request::get(format!("http://127.0.0.1:{port}/x?y=1"))
            .header(http::header::HOST, format!("127.0.0.1:{port}"))
            .body(
                http_body_util::Empty::new()
                    .map_err(|e: std::convert::Infallible| match e {})
                    .boxed_unsync(),
            )
            .unwrap();
        let slot = slots.take(&tenant("a"), &open).unwrap();
        let (response, rest) = send(request, None, limits, slot).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            open.load(Ordering::Acquire),
            1,
            "held while the body is due"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        Pin::from(rest).await.unwrap();
        assert_eq!(open.load(Ordering::Acquire), 0);
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{head}");
    }
}
