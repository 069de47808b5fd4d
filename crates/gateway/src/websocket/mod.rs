//! WebSockets. `wasi:http` has none, so Gust holds the socket and turns
//! its life into invocations of the function whose URL it upgraded
//! (deployed with `websocket`): the connect (the upgrade request's method,
//! path and headers; an answer other than 2xx refuses the upgrade with
//! that answer), each message (a POST of its bytes, one at a time and in
//! order: the next is read once the last one's invocation answered) and
//! the close. Each carries [`EVENT`] and [`CONNECTION`]. A message's 2xx
//! answer with a body is sent back on the connection; any of the tenant's
//! functions sends to a connection or closes it through
//! `http://gust.internal/_ws/<connection-id>` (POST, DELETE; see
//! [`command`]).
//!
//! Every message runs the function's live version (or the connection's
//! alias) at that moment, so connections survive a deploy. The limits of
//! the version that accepted the connection hold for its life: connections
//! per function and per tenant (the `websockets` quota), each node of a
//! cluster holding an even share of both (past either the upgrade gets
//! 429), message size (close 1009), messages per second (close 1008), idle
//! time with no message either way (close 1001). Each invocation is metered
//! as one (trigger `websocket`); at its end the connection gets a record of
//! its own: how long it was open, the bytes each way, priced as one request
//! (it holds no instance while it waits).
//!
//! Connections are held by the node their client reached. In a cluster
//! the id names that node, and a command sent on another node goes to it
//! through the node relay (`gust_store::NodeRelay`: core NATS request and
//! answer), which checks the tenant there as it does for its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use gust_core::access::TokenBucket;
use gust_core::usage::{Trigger, UsageOutcome};
use gust_core::{FunctionName, Limits, TenantId, deploy};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};

mod host;

pub(crate) use host::command;

use crate::error::GatewayError;
use crate::pipeline::{discard, run};
use crate::{GatewayBody, Shared, metering};

/// Request header on every invocation of a connection: `connect`,
/// `message` or `close`.
pub const EVENT: &str = "gust-websocket";
/// Request header: the connection's id (for `gust.internal/_ws/<id>`).
pub const CONNECTION: &str = "gust-websocket-connection";
/// Request header on a message: `text` or `binary`.
pub const MESSAGE_TYPE: &str = "gust-websocket-type";
/// Request header on a close: the close code (1006 when none was sent).
pub const CLOSE_CODE: &str = "gust-websocket-close-code";
/// The path prefix of the host API on `gust.internal`.
pub(crate) const PREFIX: &str = "/_ws/";

/// Messages waiting for one connection's writer, at most.
const QUEUED: usize = 16;
/// Bytes of messages waiting for one connection's writer, at most (past
/// it the host API answers 503): four of its largest messages, at least 1 MiB.
fn queue_bytes(max_message: u64) -> u64 {
    max_message.saturating_mul(4).max(1 << 20)
}
/// How long one message may take to go out before the client is taken
/// to be gone (it stopped reading).
const SEND_WAIT: Duration = Duration::from_secs(10);
/// How long Gust reads on after it sent a close, for the client's own
/// close (so that unread data does not reset the close away).
const LINGER: Duration = Duration::from_secs(1);

/// Removes the headers only Gust sets on a connection's invocations, so
/// that no request can pass for one.
pub(crate) fn strip_reserved(headers: &mut HeaderMap) {
    for name in [EVENT, CONNECTION, MESSAGE_TYPE, CLOSE_CODE] {
        headers.remove(name);
    }
}

/// Whether a request asks for a WebSocket upgrade.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

enum Command {
    Send(Message),
    Close(u16, String),
}

struct Conn {
    tenant: TenantId,
    function: String,
    opened: Instant,
    max_message: u64,
    commands: mpsc::Sender<Command>,
    /// Bytes of messages waiting for the writer.
    queued: Arc<AtomicU64>,
}

#[derive(Default)]
struct Open {
    conns: HashMap<String, Conn>,
    per_function: HashMap<(TenantId, String), u64>,
    per_tenant: HashMap<TenantId, u64>,
}

/// The node's open connections, by id.
#[derive(Default)]
pub(crate) struct Sockets {
    open: Mutex<Open>,
    /// In a cluster: how commands reach the connections other nodes hold.
    cluster: Option<Cluster>,
}

/// The other nodes of a cluster, as the host API reaches them.
pub(crate) struct Cluster {
    pub relay: Arc<dyn gust_store::NodeRelay>,
    pub members: Arc<dyn gust_core::cluster::Membership>,
}

impl Sockets {
    /// The table of a node alone, or of a node of a `cluster`.
    pub(crate) fn new(cluster: Option<Cluster>) -> Self {
        Self {
            open: Mutex::default(),
            cluster,
        }
    }

    /// Takes the commands other nodes relay to this node's connections.
    pub(crate) async fn serve_relayed(shared: &Arc<Shared>) -> Result<(), gust_store::RelayError> {
        let Some(cluster) = &shared.sockets.cluster else {
            return Ok(());
        };
        let weak = Arc::downgrade(shared);
        let handler: gust_store::RelayHandler = Arc::new(move |request| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(shared) => host::relayed(&shared, &request),
                    None => Bytes::new(),
                }
            })
        });
        cluster
            .relay
            .serve(cluster.members.node(), host::TOPIC, handler)
            .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for a new connection within the function's and the
    /// tenant's limits; freed when the [`Place`] drops.
    fn take(
        self: &Arc<Self>,
        tenant: &TenantId,
        function: &str,
        per_function: u64,
        per_tenant: u64,
    ) -> Result<Place, GatewayError> {
        let mut open = self.lock();
        let key = (tenant.clone(), function.to_string());
        let here = open.per_function.get(&key).copied().unwrap_or(0);
        if here >= per_function {
            return Err(GatewayError::QuotaExceeded {
                message: format!(
                    "function `{function}` holds its limit of {per_function} WebSocket connections on this node (ws_max_connections, shared evenly by a cluster's nodes); retry when one closes"
                ),
                retry_after_s: 1,
            });
        }
        let tenant_has = open.per_tenant.get(tenant).copied().unwrap_or(0);
        if tenant_has >= per_tenant {
            return Err(GatewayError::QuotaExceeded {
                message: format!(
                    "tenant `{tenant}` is at its quota `websockets` ({per_tenant} connections open); retry when one closes"
                ),
                retry_after_s: 1,
            });
        }
        *open.per_function.entry(key.clone()).or_default() += 1;
        *open.per_tenant.entry(tenant.clone()).or_default() += 1;
        Ok(Place {
            sockets: self.clone(),
            key,
            id: None,
        })
    }

    /// Every open connection is told to close (the node drains).
    pub(crate) fn close_all(&self, reason: &str) {
        for conn in self.lock().conns.values() {
            let _ = conn
                .commands
                .try_send(Command::Close(1001, reason.to_string()));
        }
    }

    /// How many connections are open on this node.
    pub(crate) fn count(&self) -> usize {
        self.lock().conns.len()
    }
}

/// A connection's place in the counts (and, once open, in the table).
struct Place {
    sockets: Arc<Sockets>,
    key: (TenantId, String),
    id: Option<String>,
}

impl Place {
    /// Enters the connection in the table; `false` if its id is taken.
    fn register(&mut self, id: &str, conn: Conn) -> bool {
        let mut open = self.sockets.lock();
        if open.conns.contains_key(id) {
            return false;
        }
        open.conns.insert(id.to_string(), conn);
        self.id = Some(id.to_string());
        true
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.sockets.lock();
        if let Some(id) = &self.id {
            open.conns.remove(id);
        }
        let (tenant, _) = &self.key;
        if let Some(n) = open.per_function.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.per_function.remove(&self.key);
            }
        }
        if let Some(n) = open.per_tenant.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                open.per_tenant.remove(tenant);
            }
        }
    }
}

/// A new connection's id: `ws` and 128 random bits in hex, then, in a
/// cluster, `.` and the node that holds it (`None`: the system's random
/// source failed).
fn connection_id(node: Option<&str>) -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    let mut id = String::with_capacity(35 + node.map_or(0, str::len));
    id.push_str("ws");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    if let Some(node) = node {
        id.push('.');
        id.push_str(node);
    }
    Some(id)
}

/// The node a connection id names as its holder (ids made in a cluster).
fn holder_of(id: &str) -> Option<&str> {
    let (random, node) = id.split_once('.')?;
    (random.len() == 34 && random.starts_with("ws") && gust_store::relay_name(node)).then_some(node)
}

/// What the connection's invocations are sent to.
#[derive(Clone)]
struct Target {
    tenant: TenantId,
    function: FunctionName,
    alias: String,
    /// The guest's path and the upgrade request's host.
    uri: http::Uri,
}

/// Upgrades `request` for `loaded` (a function deployed with `websocket`),
/// after its connect invocation said yes.
pub(crate) async fn accept(
    shared: &Arc<Shared>,
    loaded: &Arc<crate::catalog::Loaded>,
    mut request: Request<Incoming>,
    uri: http::Uri,
    alias: String,
    id: &str,
) -> Result<Response<GatewayBody>, GatewayError> {
    if request.method() != Method::GET {
        return Err(GatewayError::BadRequest("a WebSocket upgrade is a GET"));
    }
    let version_ok = request
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    if !version_ok {
        let mut response =
            GatewayError::BadRequest("only WebSocket version 13 is served").into_response(id);
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Ok(response);
    }
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(GatewayError::BadRequest(
            "a WebSocket upgrade needs Sec-WebSocket-Key",
        ));
    };
    let limits = loaded.limits.clone();
    let quota = shared.access.websockets_quota(&loaded.tenant);
    let mut place = shared.sockets.take(
        &loaded.tenant,
        loaded.name.as_str(),
        shared
            .access
            .node_share(u64::from(limits.ws_max_connections)),
        quota,
    )?;
    let node = shared.sockets.cluster.as_ref().map(|c| c.members.node());
    let Some(conn_id) = connection_id(node) else {
        return Err(GatewayError::NoRandomness);
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let target = Target {
        tenant: loaded.tenant.clone(),
        function: loaded.name.clone(),
        alias,
        uri,
    };

    // The connect: the upgrade request as the function sees it.
    let (parts, _) = request.into_parts();
    let mut headers = parts.headers;
    for name in [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ] {
        headers.remove(name);
    }
    let opened = Instant::now();
    let connect = invoke(
        shared,
        loaded,
        &target,
        &conn_id,
        "connect",
        headers.clone(),
        id,
        None,
    )
    .await?;
    if !connect.status().is_success() {
        // Its answer is the refusal.
        return Ok(connect);
    }
    let protocol = connect
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .cloned();
    // What it answered besides is not sent: read to its end, so it finishes.
    tokio::spawn(discard(connect.into_body()));

    let (commands, receiver) = mpsc::channel(QUEUED);
    let queued = Arc::new(AtomicU64::new(0));
    let registered = place.register(
        &conn_id,
        Conn {
            tenant: loaded.tenant.clone(),
            function: loaded.name.to_string(),
            opened,
            max_message: limits.ws_max_message_bytes,
            commands: commands.clone(),
            queued: queued.clone(),
        },
    );
    if !registered {
        return Err(GatewayError::Draining);
    }
    // Accepted while the node began to drain (after it told every
    // connection to close): this one closes at once too.
    if shared.draining.load(Ordering::Relaxed) {
        let _ = commands.try_send(Command::Close(
            1001,
            "the server is shutting down".to_string(),
        ));
    }
    let task = Connection {
        shared: shared.clone(),
        accepted: loaded.clone(),
        target,
        id: conn_id.clone(),
        headers,
        limits,
        place,
        opened,
        received: AtomicU64::new(0),
        sent: Arc::new(AtomicU64::new(0)),
        commands,
        queued,
    };
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => task.serve(upgraded, receiver).await,
            Err(e) => {
                tracing::debug!(error = %e, "the WebSocket upgrade failed");
                task.finish(1006).await;
            }
        }
    });

    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    if let Ok(value) = HeaderValue::from_str(&conn_id) {
        headers.insert(CONNECTION, value);
    }
    Ok(response)
}

fn empty() -> GatewayBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body read whole, or `None` past `limit` bytes or on an error.
async fn read_capped(mut body: GatewayBody, limit: u64) -> Option<Bytes> {
    let mut whole = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if (whole.len() + data.len()) as u64 > limit {
                return None;
            }
            whole.extend_from_slice(&data);
        }
    }
    Some(whole.freeze())
}

/// Runs one invocation of the connection's function: `event` with `body`.
#[allow(clippy::too_many_arguments)]
async fn invoke(
    shared: &Arc<Shared>,
    loaded: &Arc<crate::catalog::Loaded>,
    target: &Target,
    conn_id: &str,
    event: &'static str,
    mut headers: HeaderMap,
    id: &str,
    body: Option<Bytes>,
) -> Result<Response<GatewayBody>, GatewayError> {
    headers.insert(EVENT, HeaderValue::from_static(event));
    if let Ok(value) = HeaderValue::from_str(conn_id) {
        headers.insert(CONNECTION, value);
    }
    let length = body.as_ref().map_or(0, |b| b.len() as u64);
    let mut request = Request::new(
        Full::new(body.unwrap_or_default())
            .map_err(
                |never: std::convert::Infallible| -> gust_runtime::GuestBody { match never {} },
            )
            .boxed_unsync(),
    );
    *request.method_mut() = if event == "message" {
        Method::POST
    } else {
        Method::GET
    };
    *request.uri_mut() = target.uri.clone();
    *request.headers_mut() = headers;
    if length > 0 {
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    let attempt = metering::Attempt {
        id,
        attempt: 1,
        trigger: Trigger::WebSocket,
        request_bytes: length,
        fault: None,
        depth: 0,
    };
    run(shared, loaded, request, attempt, None).await
}

/// One open connection's task.
struct Connection {
    shared: Arc<Shared>,
    /// The version that accepted it (its record names it if the function
    /// is gone by the end).
    accepted: Arc<crate::catalog::Loaded>,
    target: Target,
    id: String,
    /// The upgrade request's headers, sent with every invocation.
    headers: HeaderMap,
    limits: Arc<Limits>,
    place: Place,
    opened: Instant,
    received: AtomicU64,
    sent: Arc<AtomicU64>,
    /// To its own writer: replies and Gust's close.
    commands: mpsc::Sender<Command>,
    queued: Arc<AtomicU64>,
}

/// How a connection ended, from Gust's side.
fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: short(reason).into(),
    }))
}

/// A close reason as a frame may carry it: at most 123 bytes, cut on a
/// character boundary.
fn short(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

impl Connection {
    async fn serve(self, upgraded: hyper::upgrade::Upgraded, commands: mpsc::Receiver<Command>) {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.limits.ws_max_message_bytes as usize))
            .max_frame_size(Some(self.limits.ws_max_message_bytes as usize));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (sink, mut stream) = socket.split();
        // Since the connection opened, in ms: when a message last went out.
        let last_sent = Arc::new(AtomicU64::new(0));
        // The code of the close Gust sent (0: none).
        let closed_with = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(write(
            sink,
            commands,
            Written {
                opened: self.opened,
                sent: self.sent.clone(),
                queued: self.queued.clone(),
                last_sent: last_sent.clone(),
                closed_with: closed_with.clone(),
            },
        ));

        let idle = Duration::from_millis(self.limits.ws_idle_ms);
        let rate = u64::from(self.limits.ws_messages_per_second);
        let now_ms = || self.opened.elapsed().as_millis() as u64;
        let mut bucket = TokenBucket::new(rate, rate, now_ms());
        let quiet = tokio::time::sleep(idle);
        let mut quiet = std::pin::pin!(quiet);
        // The code the connection ends with, and whether Gust closed it.
        let (code, ours) = loop {
            let next = tokio::select! {
                next = stream.next() => next,
                () = &mut quiet => {
                    // A message that went out counts as activity too.
                    let due = Duration::from_millis(last_sent.load(Ordering::Relaxed)) + idle;
                    if self.opened.elapsed() < due {
                        quiet.as_mut().reset((self.opened + due).into());
                        continue;
                    }
                    let reason = format!("idle for longer than {} ms", idle.as_millis());
                    break (self.close(1001, &reason), true);
                }
                // The writer stopped: Gust's close went out, or the client
                // stopped reading.
                () = self.commands.closed() => {
                    let code = u16::try_from(closed_with.load(Ordering::Relaxed)).unwrap_or(0);
                    break if code == 0 { (1006, false) } else { (code, true) };
                }
            };
            let message = match next {
                None => break (1006, false),
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                    let reason = format!(
                        "a message is larger than {} bytes",
                        self.limits.ws_max_message_bytes
                    );
                    break (self.close(1009, &reason), true);
                }
                Some(Err(WsError::Protocol(e))) => break (self.close(1002, &e.to_string()), true),
                Some(Err(_)) => break (1006, false),
                Some(Ok(message)) => message,
            };
            // Every frame the client sends counts against its rate, pings
            // included.
            if bucket.take(now_ms()).is_err() {
                let reason = format!("more than {rate} messages per second");
                break (self.close(1008, &reason), true);
            }
            let (kind, bytes) = match message {
                Message::Text(text) => ("text", Bytes::from(text)),
                Message::Binary(bytes) => ("binary", bytes),
                Message::Close(frame) => break (frame.map_or(1005, |f| u16::from(f.code)), false),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            quiet.as_mut().reset((Instant::now() + idle).into());
            self.received
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            match self.message(kind, bytes).await {
                Ok(Some(reply)) => {
                    self.queued.fetch_add(reply.len() as u64, Ordering::Relaxed);
                    let sent = self.commands.send(Command::Send(reply));
                    if !matches!(tokio::time::timeout(SEND_WAIT, sent).await, Ok(Ok(()))) {
                        break (1006, false);
                    }
                }
                Ok(None) => {}
                Err((code, reason)) => break (self.close(code, &reason), true),
            }
        };
        if ours {
            // Read on (and drop) until the client's own close, briefly.
            let _ = tokio::time::timeout(LINGER, async {
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        let mut writer = writer;
        if tokio::time::timeout(2 * LINGER, &mut writer).await.is_err() {
            writer.abort();
        }
        self.finish(code).await;
    }

    /// Asks the writer to send a close (if it can take one: a client that
    /// reads nothing gets none); the code.
    fn close(&self, code: u16, reason: &str) -> u16 {
        let _ = self
            .commands
            .try_send(Command::Close(code, reason.to_string()));
        code
    }

    /// The function at the connection's alias, as it is now.
    fn loaded(&self) -> Option<Arc<crate::catalog::Loaded>> {
        let served = self
            .shared
            .catalog
            .get(self.target.tenant.as_str(), self.target.function.as_str())?;
        let key = self.id.as_bytes().to_vec();
        served
            .pick(
                &self.target.alias,
                || Some(key),
                || deploy::fnv1a(self.id.as_bytes()),
            )
            .cloned()
    }

    /// Runs the function for one message; its 2xx answer's body, if any,
    /// is the reply. `Err`: the connection closes with that code.
    async fn message(
        &self,
        kind: &'static str,
        bytes: Bytes,
    ) -> Result<Option<Message>, (u16, String)> {
        let Some(loaded) = self.loaded() else {
            return Err((1001, "the function was removed".to_string()));
        };
        // The tenant's rate and the budgets hold for every message.
        let budget = loaded.limits.monthly_budget_micros;
        let function = budget.map(|budget| (loaded.name.as_str(), budget));
        if self
            .shared
            .access
            .admit(&loaded.tenant, function, self.shared.meter.as_ref())
            .is_err()
        {
            let reason = "over the tenant's rate or budget; reconnect later";
            return Err((1013, reason.to_string()));
        }
        let mut headers = self.headers.clone();
        headers.insert(MESSAGE_TYPE, HeaderValue::from_static(kind));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(if kind == "text" {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            }),
        );
        let id = self.shared.events.next_invocation_id();
        let response = invoke(
            &self.shared,
            &loaded,
            &self.target,
            &self.id,
            "message",
            headers,
            &id,
            Some(bytes),
        )
        .await;
        let response = match response {
            Ok(response) => response,
            // Refused (its quotas, the node full): the client may retry.
            Err(error)
                if error.status_code() == StatusCode::TOO_MANY_REQUESTS
                    || error.status_code() == StatusCode::SERVICE_UNAVAILABLE =>
            {
                let reason = "the function is at its capacity; reconnect shortly";
                return Err((1013, reason.to_string()));
            }
            Err(error) => {
                tracing::debug!(connection = %self.id, ?error, "a WebSocket message's invocation failed");
                return Ok(None);
            }
        };
        if !response.status().is_success() {
            tokio::spawn(discard(response.into_body()));
            return Ok(None);
        }
        let Some(body) = read_capped(response.into_body(), self.limits.ws_max_message_bytes).await
        else {
            return Ok(None);
        };
        if body.is_empty() {
            return Ok(None);
        }
        Ok(Some(if kind == "text" {
            match String::from_utf8(body.to_vec()) {
                Ok(text) => Message::Text(text.into()),
                Err(_) => Message::Binary(body),
            }
        } else {
            Message::Binary(body)
        }))
    }

    /// The close invocation and the connection's own record.
    async fn finish(self, code: u16) {
        if let Some(loaded) = self.loaded() {
            let mut headers = self.headers.clone();
            if let Ok(value) = HeaderValue::from_str(&code.to_string()) {
                headers.insert(CLOSE_CODE, value);
            }
            let id = self.shared.events.next_invocation_id();
            let closed = invoke(
                &self.shared,
                &loaded,
                &self.target,
                &self.id,
                "close",
                headers,
                &id,
                None,
            )
            .await;
            if let Ok(response) = closed {
                discard(response.into_body()).await;
            }
        }
        if let Some(meter) = &self.shared.meter {
            let attempt = metering::Attempt {
                id: &self.id,
                attempt: 1,
                trigger: Trigger::WebSocket,
                request_bytes: self.received.load(Ordering::Relaxed),
                fault: None,
                depth: 0,
            };
            let open = self.opened.elapsed();
            let mut record = metering::start_record(&self.accepted, &attempt);
            record.start_ms = crate::now_ms().saturating_sub(open.as_millis() as u64);
            record.wall_ns = u64::try_from(open.as_nanos()).unwrap_or(u64::MAX);
            // It holds no instance while it waits: no memory time.
            record.memory_limit_bytes = 0;
            record.response_bytes = self.sent.load(Ordering::Relaxed);
            record.status = 101;
            record.outcome = UsageOutcome::Success;
            meter.record(record, false);
        }
        drop(self.place);
    }
}

/// What the writer keeps count of.
struct Written {
    opened: Instant,
    sent: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
    last_sent: Arc<AtomicU64>,
    closed_with: Arc<AtomicU64>,
}

/// Sends what the connection's commands say, each within [`SEND_WAIT`],
/// until a close went out, the commands end or the client stops reading.
async fn write<S>(mut sink: S, mut commands: mpsc::Receiver<Command>, w: Written)
where
    S: futures_util::Sink<Message> + Unpin,
{
    while let Some(command) = commands.recv().await {
        let message = match command {
            Command::Send(message) => {
                w.queued.fetch_sub(message.len() as u64, Ordering::Relaxed);
                message
            }
            Command::Close(code, reason) => {
                // Nothing after a close is ever sent: commands from now
                // on are refused (404, closing), not accepted and lost.
                commands.close();
                w.closed_with.store(u64::from(code), Ordering::Relaxed);
                close_frame(code, &reason)
            }
        };
        let closing = matches!(message, Message::Close(_));
        w.sent.fetch_add(message.len() as u64, Ordering::Relaxed);
        let sent = tokio::time::timeout(SEND_WAIT, sink.send(message)).await;
        w.last_sent
            .store(w.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        if !matches!(sent, Ok(Ok(()))) || closing {
            break;
        }
    }
    let _ = tokio::time::timeout(LINGER, sink.close()).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A client that reads everything and never answers a close: the
    /// writer lingers.
    struct Lingering(Arc<std::sync::Mutex<Vec<Message>>>);

    impl futures_util::Sink<Message> for Lingering {
        type Error = std::convert::Infallible;
        fn poll_ready(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn start_send(self: std::pin::Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.0.lock().unwrap().push(item);
            Ok(())
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test]
    async fn once_a_close_is_sent_no_command_is_taken_while_the_writer_lingers() {
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (commands, receiver) = mpsc::channel(8);
        let counter = || Arc::new(AtomicU64::new(0));
        let written = Written {
            opened: Instant::now(),
            sent: counter(),
            queued: counter(),
            last_sent: counter(),
            closed_with: counter(),
        };
        let closed_with = written.closed_with.clone();
        for command in [
            Command::Send(Message::text("before")),
            Command::Close(4001, "kicked".into()),
            // Queued behind the close: never sent.
            Command::Send(Message::text("queued after")),
        ] {
            commands.try_send(command).unwrap();
        }
        let writer = tokio::spawn(write(Lingering(sent.clone()), receiver, written));
        while sent.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        // The writer waits up to LINGER for the client's close: meanwhile
        // a command is refused, not accepted and lost.
        assert!(!writer.is_finished());
        assert!(commands.is_closed());
        assert!(matches!(
            commands.try_send(Command::Send(Message::text("later"))),
            Err(mpsc::error::TrySendError::Closed(_))
        ));
        writer.await.unwrap();
        let sent = sent.lock().unwrap();
        assert!(
            matches!(&sent[..], [first, Message::Close(Some(_))] if *first == Message::text("before")),
            "nothing after the close: {sent:?}"
        );
        assert_eq!(closed_with.load(Ordering::Relaxed), 4001);
    }

    #[test]
    fn an_upgrade_is_told_by_both_headers_whatever_their_case() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(!is_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_upgrade(&h));
    }

    #[test]
    fn places_count_per_function_and_per_tenant_and_free_on_drop() {
        let sockets = Arc::new(Sockets::default());
        let a = TenantId::new("a").unwrap();
        let one = sockets.take(&a, "f", 2, 3).unwrap();
        let two = sockets.take(&a, "f", 2, 3).unwrap();
        let full = sockets.take(&a, "f", 2, 3).err().unwrap();
        assert!(
            format!("{full:?}").contains("ws_max_connections"),
            "{full:?}"
        );
        let other = sockets.take(&a, "g", 2, 3).unwrap();
        let quota = sockets.take(&a, "h", 2, 3).err().unwrap();
        assert!(format!("{quota:?}").contains("websockets"), "{quota:?}");
        drop(one);
        let again = sockets.take(&a, "f", 2, 3).unwrap();
        drop((two, other, again));
        let open = sockets.lock();
        assert!(open.per_function.is_empty() && open.per_tenant.is_empty());
    }

    #[test]
    fn close_reasons_fit_a_frame_and_are_decoded() {
        let long = "é".repeat(100);
        let cut = short(&long);
        assert!(cut.len() <= 123 && cut.chars().all(|c| c == 'é'), "{cut}");
    }

    #[test]
    fn connection_ids_are_unlike_each_other() {
        let (a, b) = (connection_id(None).unwrap(), connection_id(None).unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 34);
        assert_eq!(holder_of(&a), None);
    }

    #[test]
    fn a_cluster_connection_id_names_its_node_and_nothing_else_does() {
        let id = connection_id(Some("node-b")).unwrap();
        assert_eq!(holder_of(&id), Some("node-b"));
        let random = &id[..34];
        for forged in [
            format!("{random}.a.b"),
            format!("{random}.*"),
            format!("{random}.>"),
            format!("{random}."),
            "ws1.node-b".to_string(),
            format!("xx{}.node-b", &random[2..]),
        ] {
            assert_eq!(holder_of(&forged), None, "{forged}");
        }
    }
}
