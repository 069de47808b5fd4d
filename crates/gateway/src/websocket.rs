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
//! per function on this node and per tenant (the `websockets` quota; past
//! either the upgrade gets 429), message size (close 1009), messages per
//! second (close 1008), idle time with no message either way (close 1001).
//! Each invocation is metered as one (trigger `websocket`); at its end the
//! connection gets a record of its own: how long it was open, the bytes
//! each way, priced as one request (it holds no instance while it waits).
//!
//! Connections are node-local: in a cluster, a command for a connection
//! another node holds answers 404 (the bound is in ARCHITECTURE.md).

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

use crate::error::GatewayError;
use crate::pipeline::run;
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

/// Commands one connection's writer takes, at most this many waiting.
const COMMANDS: usize = 64;

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
}

impl Sockets {
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
                    "function `{function}` holds its limit of {per_function} WebSocket connections (ws_max_connections); retry when one closes"
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
    fn register(&mut self, id: &str, conn: Conn) {
        self.sockets.lock().conns.insert(id.to_string(), conn);
        self.id = Some(id.to_string());
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

/// A new connection's id: 128 random bits, hex.
fn connection_id() -> String {
    let mut bytes = [0u8; 16];
    // A failing system random source leaves zeros; ids are also only
    // ever reachable by their own tenant.
    let _ = getrandom::fill(&mut bytes);
    let mut id = String::with_capacity(34);
    id.push_str("ws");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
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
        u64::from(limits.ws_max_connections),
        quota,
    )?;
    let conn_id = connection_id();
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
    tokio::spawn(drain(connect.into_body()));

    let (commands, receiver) = mpsc::channel(COMMANDS);
    place.register(
        &conn_id,
        Conn {
            tenant: loaded.tenant.clone(),
            function: loaded.name.to_string(),
            opened,
            max_message: limits.ws_max_message_bytes,
            commands,
        },
    );
    let task = Connection {
        shared: shared.clone(),
        target,
        id: conn_id.clone(),
        headers,
        limits,
        place,
        opened,
        received: AtomicU64::new(0),
        sent: Arc::new(AtomicU64::new(0)),
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

async fn drain(mut body: GatewayBody) {
    while let Some(Ok(_)) = body.frame().await {}
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
    target: Target,
    id: String,
    /// The upgrade request's headers, sent with every invocation.
    headers: HeaderMap,
    limits: Arc<Limits>,
    place: Place,
    opened: Instant,
    received: AtomicU64,
    sent: Arc<AtomicU64>,
}

/// How a connection ended, from Gust's side.
fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

impl Connection {
    async fn serve(self, upgraded: hyper::upgrade::Upgraded, commands: mpsc::Receiver<Command>) {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.limits.ws_max_message_bytes as usize))
            .max_frame_size(Some(self.limits.ws_max_message_bytes as usize));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (mut sink, mut stream) = socket.split();
        // Everything sent goes through the writer: replies, commands from
        // other invocations, and Gust's own close.
        let (out, mut outgoing) = mpsc::channel::<Message>(COMMANDS);
        let sent = self.sent.clone();
        let last_sent = Arc::new(AtomicU64::new(0));
        let stamp = last_sent.clone();
        let opened = self.opened;
        // The code of the close Gust sent, if it did.
        let closed_with = Arc::new(AtomicU64::new(1000));
        let code_sent = closed_with.clone();
        let writer = tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                let closing = matches!(message, Message::Close(_));
                if let Message::Close(Some(frame)) = &message {
                    code_sent.store(u64::from(u16::from(frame.code)), Ordering::Relaxed);
                }
                sent.fetch_add(message.len() as u64, Ordering::Relaxed);
                stamp.store(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
                if sink.send(message).await.is_err() || closing {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let forward = {
            let out = out.clone();
            let mut commands = commands;
            tokio::spawn(async move {
                while let Some(command) = commands.recv().await {
                    let message = match command {
                        Command::Send(message) => message,
                        Command::Close(code, reason) => close_frame(code, &reason),
                    };
                    let closing = matches!(message, Message::Close(_));
                    if out.send(message).await.is_err() || closing {
                        break;
                    }
                }
            })
        };

        let idle = Duration::from_millis(self.limits.ws_idle_ms);
        let rate = u64::from(self.limits.ws_messages_per_second);
        let mut bucket = TokenBucket::new(rate, rate, crate::now_ms());
        let code = loop {
            let next = tokio::select! {
                next = tokio::time::timeout(idle, stream.next()) => next,
                // Gust's own close went out (a command, the drain).
                _ = out.closed() => {
                    break u16::try_from(closed_with.load(Ordering::Relaxed)).unwrap_or(1000)
                }
            };
            let message = match next {
                Err(_) => {
                    let quiet_ms = self
                        .opened
                        .elapsed()
                        .as_millis()
                        .saturating_sub(u128::from(last_sent.load(Ordering::Relaxed)));
                    if quiet_ms < idle.as_millis() {
                        continue;
                    }
                    let reason = format!("idle for longer than {} ms", idle.as_millis());
                    let _ = out.send(close_frame(1001, &reason)).await;
                    break 1001;
                }
                Ok(None) => break 1006,
                Ok(Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. })))) => {
                    let reason = format!(
                        "a message is larger than {} bytes",
                        self.limits.ws_max_message_bytes
                    );
                    let _ = out.send(close_frame(1009, &reason)).await;
                    break 1009;
                }
                Ok(Some(Err(WsError::Protocol(e)))) => {
                    let _ = out.send(close_frame(1002, &e.to_string())).await;
                    break 1002;
                }
                Ok(Some(Err(_))) => break 1006,
                Ok(Some(Ok(message))) => message,
            };
            let (kind, bytes) = match message {
                Message::Text(text) => ("text", Bytes::from(text)),
                Message::Binary(bytes) => ("binary", bytes),
                Message::Close(frame) => break frame.map_or(1005, |f| u16::from(f.code)),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            if bucket.take(crate::now_ms()).is_err() {
                let reason = format!("more than {rate} messages per second");
                let _ = out.send(close_frame(1008, &reason)).await;
                break 1008;
            }
            self.received
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            match self.message(kind, bytes).await {
                Ok(Some(reply)) => {
                    if out.send(reply).await.is_err() {
                        break 1006;
                    }
                }
                Ok(None) => {}
                Err((code, reason)) => {
                    let _ = out.send(close_frame(code, &reason)).await;
                    break code;
                }
            }
        };
        forward.abort();
        drop(out);
        let _ = writer.await;
        self.finish(code).await;
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
            tokio::spawn(drain(response.into_body()));
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
                drain(response.into_body()).await;
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
                let mut record = metering::start_record(&loaded, &attempt);
                record.start_ms =
                    crate::now_ms().saturating_sub(self.opened.elapsed().as_millis() as u64);
                record.wall_ns =
                    u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
                // It holds no instance while it waits: no memory time.
                record.memory_limit_bytes = 0;
                record.response_bytes = self.sent.load(Ordering::Relaxed);
                record.status = 101;
                record.outcome = UsageOutcome::Success;
                meter.record(record, false);
            }
        }
        drop(self.place);
    }
}

/// The host API, `http://gust.internal/_ws/<id>` from any of `tenant`'s
/// functions: POST sends the body (binary when its content type is
/// `application/octet-stream`, text otherwise), DELETE closes
/// (`?code=N&reason=R`), GET describes. Another tenant's connection, or
/// one closed, is 404.
pub(crate) async fn command(
    shared: &Arc<Shared>,
    tenant: &TenantId,
    request: Request<gust_runtime::CallBody>,
) -> Response<GatewayBody> {
    let path = request.uri().path();
    let conn_id = path.trim_start_matches(PREFIX).to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let found = {
        let open = shared.sockets.lock();
        open.conns
            .get(&conn_id)
            .filter(|c| c.tenant == *tenant)
            .map(|c| {
                (
                    c.commands.clone(),
                    c.max_message,
                    c.function.clone(),
                    c.opened,
                )
            })
    };
    let Some((commands, max_message, function, opened)) = found else {
        return plain(
            StatusCode::NOT_FOUND,
            &format!("no open WebSocket connection `{conn_id}` of this tenant on this node"),
        );
    };
    let command = match *request.method() {
        Method::GET => {
            let body = serde_json::json!({
                "id": conn_id,
                "function": function,
                "open_ms": opened.elapsed().as_millis() as u64,
            });
            return plain(StatusCode::OK, &body.to_string());
        }
        Method::DELETE => {
            let param = |name: &str| {
                query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k == name).then(|| v.to_string())
                })
            };
            let code = param("code")
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(1000);
            if !(code == 1000 || (3000..5000).contains(&code)) {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "a close code is 1000 or between 3000 and 4999",
                );
            }
            let reason: String = param("reason")
                .unwrap_or_default()
                .chars()
                .take(120)
                .collect();
            Command::Close(code, reason)
        }
        Method::POST | Method::PUT => {
            let binary = request
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
            let Some(body) = read_capped(request.into_body(), max_message).await else {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("a message to this connection is at most {max_message} bytes"),
                );
            };
            if binary {
                Command::Send(Message::Binary(body))
            } else {
                match String::from_utf8(body.to_vec()) {
                    Ok(text) => Command::Send(Message::Text(text.into())),
                    Err(_) => {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            "a text message is UTF-8: send bytes as application/octet-stream",
                        );
                    }
                }
            }
        }
        _ => {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST sends a message, DELETE closes, GET describes",
            );
        }
    };
    match commands.try_send(command) {
        Ok(()) => plain(StatusCode::ACCEPTED, ""),
        Err(mpsc::error::TrySendError::Full(_)) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the connection's client is not reading fast enough; retry shortly",
        ),
        Err(mpsc::error::TrySendError::Closed(_)) => plain(
            StatusCode::NOT_FOUND,
            &format!("the WebSocket connection `{conn_id}` is closing"),
        ),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<GatewayBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(text.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
    fn connection_ids_are_unlike_each_other() {
        let (a, b) = (connection_id(), connection_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 34);
    }
}
