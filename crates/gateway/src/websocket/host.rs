//! The host API on `gust.internal/_ws/<id>`: what any of a tenant's
//! functions may do to the tenant's connections, held on this node or,
//! in a cluster, on another (reached through the node relay).

use super::*;

/// What a command asks of a connection, read from its request.
struct Ask {
    method: Method,
    /// The request's query (a close's `code` and `reason`).
    query: String,
    /// The message is binary (`application/octet-stream`), else text.
    binary: bool,
    body: Bytes,
}

/// What a node holding a connection needs of a command another node got.
struct Relayed {
    tenant: String,
    id: String,
    method: String,
    query: String,
    binary: bool,
}

/// The relay topic on which each node takes commands for its connections.
pub(crate) const TOPIC: &str = "ws";
/// How long a command relayed to another node may wait for its answer.
const RELAY_WAIT: Duration = Duration::from_secs(5);

/// A connection as a command finds it in the table.
struct Found {
    commands: mpsc::Sender<Command>,
    max_message: u64,
    function: String,
    opened: Instant,
    queued: Arc<AtomicU64>,
}

/// `tenant`'s open connection `id` on this node.
fn find(shared: &Shared, tenant: &TenantId, id: &str) -> Option<Found> {
    let open = shared.sockets.lock();
    open.conns
        .get(id)
        // One whose close went out is as good as gone.
        .filter(|c| c.tenant == *tenant && !c.commands.is_closed())
        .map(|c| Found {
            commands: c.commands.clone(),
            max_message: c.max_message,
            function: c.function.clone(),
            opened: c.opened,
            queued: c.queued.clone(),
        })
}

/// The host API, `http://gust.internal/_ws/<id>` from any of `tenant`'s
/// functions: POST sends the body (binary when its content type is
/// `application/octet-stream`, text otherwise), DELETE closes
/// (`?code=N&reason=R`), GET describes. Another tenant's connection, or
/// one closed, is 404. In a cluster, a connection another live node holds
/// (its id names the node) is reached through the relay, and that node
/// checks the tenant.
pub(crate) async fn command(
    shared: &Arc<Shared>,
    tenant: &TenantId,
    request: Request<gust_runtime::CallBody>,
) -> Response<GatewayBody> {
    let conn_id = request.uri().path().trim_start_matches(PREFIX).to_string();
    if !matches!(
        *request.method(),
        Method::GET | Method::DELETE | Method::POST | Method::PUT
    ) {
        let (status, text) = not_allowed();
        return plain(status, &text);
    }
    let found = find(shared, tenant, &conn_id);
    let holder = match (&found, &shared.sockets.cluster) {
        (None, Some(cluster)) => cluster.holder(&conn_id),
        _ => None,
    };
    if found.is_none() && holder.is_none() {
        return not_found(&conn_id);
    }
    // The holder checks the size against the connection's own limit.
    let cap = found
        .as_ref()
        .map_or(gust_core::Limits::CEILING_WS_MAX_MESSAGE_BYTES, |found| {
            found.max_message
        });
    let query = request.uri().query().unwrap_or("").to_string();
    let method = request.method().clone();
    let binary = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
    let body = if matches!(method, Method::POST | Method::PUT) {
        match read_capped(request.into_body(), cap).await {
            Some(body) => body,
            None => return too_large(cap),
        }
    } else {
        Bytes::new()
    };
    let ask = Ask {
        method,
        query,
        binary,
        body,
    };
    let (status, text) = match (found, holder) {
        (Some(found), _) => execute(node_of(shared), &conn_id, found, ask),
        (None, Some((cluster, node))) => cluster.relay(&node, tenant, &conn_id, ask).await,
        (None, None) => return not_found(&conn_id),
    };
    plain(status, &text)
}

/// This node's name, in a cluster (what `GET` on a connection shows).
fn node_of(shared: &Shared) -> Option<&str> {
    shared.sockets.cluster.as_ref().map(|c| c.members.node())
}

/// What this node answers to a command relayed from another node.
pub(crate) fn relayed(shared: &Shared, request: &Bytes) -> Bytes {
    let (status, text) = match decode(request) {
        None => (
            StatusCode::BAD_REQUEST,
            "a relayed WebSocket command could not be read".to_string(),
        ),
        Some((relayed, body)) => {
            let found = TenantId::new(&relayed.tenant)
                .ok()
                .and_then(|tenant| find(shared, &tenant, &relayed.id));
            match (found, Method::from_bytes(relayed.method.as_bytes())) {
                (None, _) => (StatusCode::NOT_FOUND, not_found_text(&relayed.id)),
                (Some(_), Err(_)) => not_allowed(),
                (Some(found), Ok(method)) => {
                    let ask = Ask {
                        method,
                        query: relayed.query,
                        binary: relayed.binary,
                        body,
                    };
                    execute(node_of(shared), &relayed.id, found, ask)
                }
            }
        }
    };
    encode_answer(status, &text)
}

/// A relayed command on the wire: its description as one JSON line, then
/// the message's bytes.
fn encode(relayed: &Relayed, body: &[u8]) -> Option<Bytes> {
    let head = serde_json::json!({
        "tenant": relayed.tenant,
        "id": relayed.id,
        "method": relayed.method,
        "query": relayed.query,
        "binary": relayed.binary,
    });
    let mut out = serde_json::to_vec(&head).ok()?;
    out.push(b'\n');
    out.extend_from_slice(body);
    Some(out.into())
}

fn decode(bytes: &Bytes) -> Option<(Relayed, Bytes)> {
    let at = bytes.iter().position(|b| *b == b'\n')?;
    let head: serde_json::Value = serde_json::from_slice(&bytes[..at]).ok()?;
    let text = |name: &str| head.get(name)?.as_str().map(str::to_string);
    let relayed = Relayed {
        tenant: text("tenant")?,
        id: text("id")?,
        method: text("method")?,
        query: text("query")?,
        binary: head.get("binary")?.as_bool()?,
    };
    Some((relayed, bytes.slice(at + 1..)))
}

/// An answer on the wire: the status as two bytes, then its text.
fn encode_answer(status: StatusCode, text: &str) -> Bytes {
    let mut out = Vec::with_capacity(2 + text.len());
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.into()
}

fn decode_answer(bytes: &[u8]) -> Option<(StatusCode, String)> {
    let status =
        StatusCode::from_u16(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?])).ok()?;
    Some((status, String::from_utf8_lossy(&bytes[2..]).into_owned()))
}

impl super::Cluster {
    /// The other live node that holds connection `id` (its id names it),
    /// and the relay to it; `None` for this node's own ids or a node gone.
    fn holder(&self, id: &str) -> Option<(&Self, String)> {
        let node = super::holder_of(id)?;
        (node != self.members.node() && self.members.live().iter().any(|n| n == node))
            .then(|| (self, node.to_string()))
    }

    /// Sends `ask` for `tenant`'s connection `id` to `node`, which holds it.
    async fn relay(
        &self,
        node: &str,
        tenant: &TenantId,
        id: &str,
        ask: Ask,
    ) -> (StatusCode, String) {
        let relayed = Relayed {
            tenant: tenant.to_string(),
            id: id.to_string(),
            method: ask.method.to_string(),
            query: ask.query,
            binary: ask.binary,
        };
        let Some(request) = encode(&relayed, &ask.body) else {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the command could not be relayed".to_string(),
            );
        };
        let unavailable = |what: String| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("node `{node}`, which holds the connection, {what}; retry shortly"),
            )
        };
        match self.relay.ask(node, TOPIC, request, RELAY_WAIT).await {
            Ok(answer) => decode_answer(&answer)
                .unwrap_or_else(|| unavailable("sent an answer that could not be read".into())),
            Err(gust_store::RelayError::NoNode(_)) => (StatusCode::NOT_FOUND, not_found_text(id)),
            Err(gust_store::RelayError::TooLarge(size)) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a message of {size} bytes is larger than the cluster relays between nodes (NATS max_payload): send it from a function on node `{node}` or raise max_payload"
                ),
            ),
            Err(gust_store::RelayError::Timeout { waited, .. }) => {
                unavailable(format!("did not answer within {} s", waited.as_secs()))
            }
            Err(gust_store::RelayError::Unavailable(why)) => {
                unavailable(format!("cannot be reached ({why})"))
            }
        }
    }
}

/// Runs a command on connection `conn_id`, held here (`node`: this
/// node's name, in a cluster).
fn execute(node: Option<&str>, conn_id: &str, found: Found, ask: Ask) -> (StatusCode, String) {
    let Found {
        commands,
        max_message,
        function,
        opened,
        queued,
    } = found;
    let command = match ask.method {
        Method::GET => {
            let body = serde_json::json!({
                "id": conn_id,
                "function": function,
                "open_ms": opened.elapsed().as_millis() as u64,
                "node": node,
            });
            return (StatusCode::OK, body.to_string());
        }
        Method::DELETE => {
            let param = |name: &str| {
                ask.query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k == name).then(|| v.to_string())
                })
            };
            let code = param("code")
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(1000);
            if !(code == 1000 || (3000..5000).contains(&code)) {
                return (
                    StatusCode::BAD_REQUEST,
                    "a close code is 1000 or between 3000 and 4999".to_string(),
                );
            }
            let Some(reason) = percent_decoded(&param("reason").unwrap_or_default()) else {
                return (
                    StatusCode::BAD_REQUEST,
                    "the close reason is not percent-encoded UTF-8".to_string(),
                );
            };
            Command::Close(code, short(&reason))
        }
        Method::POST | Method::PUT => {
            if ask.body.len() as u64 > max_message {
                return (StatusCode::PAYLOAD_TOO_LARGE, too_large_text(max_message));
            }
            if ask.binary {
                Command::Send(Message::Binary(ask.body))
            } else {
                match String::from_utf8(ask.body.to_vec()) {
                    Ok(text) => Command::Send(Message::Text(text.into())),
                    Err(_) => {
                        return (
                            StatusCode::BAD_REQUEST,
                            "a text message is UTF-8: send bytes as application/octet-stream"
                                .to_string(),
                        );
                    }
                }
            }
        }
        _ => return not_allowed(),
    };
    let len = match &command {
        Command::Send(message) => message.len() as u64,
        Command::Close(..) => 0,
    };
    let slow = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the connection's client is not reading fast enough; retry shortly".to_string(),
        )
    };
    let waiting = queued.fetch_add(len, Ordering::Relaxed);
    if len > 0 && waiting + len > queue_bytes(max_message) {
        queued.fetch_sub(len, Ordering::Relaxed);
        return slow();
    }
    match commands.try_send(command) {
        Ok(()) => (StatusCode::ACCEPTED, String::new()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            queued.fetch_sub(len, Ordering::Relaxed);
            slow()
        }
        Err(mpsc::error::TrySendError::Closed(_)) => (
            StatusCode::NOT_FOUND,
            format!("the WebSocket connection `{conn_id}` is closing"),
        ),
    }
}

fn not_allowed() -> (StatusCode, String) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        "POST sends a message, DELETE closes, GET describes".to_string(),
    )
}

fn not_found_text(id: &str) -> String {
    format!("no open WebSocket connection `{id}` of this tenant")
}

fn not_found(id: &str) -> Response<GatewayBody> {
    plain(StatusCode::NOT_FOUND, &not_found_text(id))
}

fn too_large_text(max_message: u64) -> String {
    format!("a message to this connection is at most {max_message} bytes")
}

fn too_large(max_message: u64) -> Response<GatewayBody> {
    plain(StatusCode::PAYLOAD_TOO_LARGE, &too_large_text(max_message))
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

/// `%XX`-decoded (a query parameter); `None` for a bad escape or non-UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_relayed_command_and_its_answer_arrive_as_sent() {
        let relayed = Relayed {
            tenant: "acme".into(),
            id: "ws00.b".into(),
            method: "POST".into(),
            query: "code=4000&reason=a%20b".into(),
            binary: true,
        };
        let body = b"line one\nline two\0";
        let wire = encode(&relayed, body).unwrap();
        let (back, bytes) = decode(&wire).unwrap();
        assert_eq!(
            (back.tenant, back.id, back.method, back.query, back.binary),
            (
                relayed.tenant,
                relayed.id,
                relayed.method,
                relayed.query,
                relayed.binary
            )
        );
        assert_eq!(&bytes[..], body);
        assert!(decode(&Bytes::from_static(b"{\"tenant\":1}\n")).is_none());
        assert!(decode(&Bytes::from_static(b"no line")).is_none());

        let answer = encode_answer(StatusCode::PAYLOAD_TOO_LARGE, "at most 5 bytes");
        assert_eq!(
            decode_answer(&answer),
            Some((StatusCode::PAYLOAD_TOO_LARGE, "at most 5 bytes".to_string()))
        );
        assert_eq!(decode_answer(b"\x01"), None);
    }

    fn held(max_message: u64) -> (Found, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(QUEUED);
        let found = Found {
            commands,
            max_message,
            function: "chat".into(),
            opened: Instant::now(),
            queued: Arc::default(),
        };
        (found, rx)
    }

    fn ask(method: Method, query: &str, binary: bool, body: &'static [u8]) -> Ask {
        Ask {
            method,
            query: query.into(),
            binary,
            body: Bytes::from_static(body),
        }
    }

    fn run(found: &Found, ask: Ask) -> StatusCode {
        let found = Found {
            commands: found.commands.clone(),
            max_message: found.max_message,
            function: found.function.clone(),
            opened: found.opened,
            queued: found.queued.clone(),
        };
        execute(Some("b"), "ws00.b", found, ask).0
    }

    #[test]
    fn a_command_is_checked_before_it_reaches_the_connection() {
        let (found, mut rx) = held(8);
        // Refused: nothing is queued and no byte is counted.
        for (refused, status) in [
            (ask(Method::POST, "", false, b"123456789"), 413),
            (ask(Method::POST, "", false, b"\xff\xfe"), 400),
            (ask(Method::DELETE, "code=1001", false, b""), 400),
            (ask(Method::DELETE, "reason=%zz", false, b""), 400),
            (ask(Method::PATCH, "", false, b""), 405),
        ] {
            assert_eq!(run(&found, refused).as_u16(), status);
        }
        assert!(rx.try_recv().is_err());
        assert_eq!(found.queued.load(Ordering::Relaxed), 0);

        // Accepted: each arrives as asked.
        assert_eq!(run(&found, ask(Method::POST, "", true, b"\xff")), 202);
        assert!(
            matches!(rx.try_recv(), Ok(Command::Send(Message::Binary(b))) if b[..] == b"\xff"[..])
        );
        let close = ask(Method::DELETE, "code=4000&reason=a%20b", false, b"");
        assert_eq!(run(&found, close), 202);
        assert!(matches!(rx.try_recv(), Ok(Command::Close(4000, r)) if r == "a b"));
        let (status, text) = execute(
            Some("b"),
            "ws00.b",
            held(8).0,
            ask(Method::GET, "", false, b""),
        );
        assert_eq!(status, 200);
        assert!(
            text.contains("\"node\":\"b\"") && text.contains("\"function\":\"chat\""),
            "{text}"
        );
    }

    #[test]
    fn a_connection_that_does_not_drain_its_queue_refuses_more_and_a_closed_one_is_gone() {
        let (found, rx) = held(4);
        // Its bytes' bound (1 MiB at least) and then its count bound.
        let mut sent = 0;
        while run(&found, ask(Method::POST, "", true, b"abcd")) == 202 {
            sent += 1;
        }
        assert_eq!(sent, QUEUED);
        assert_eq!(run(&found, ask(Method::POST, "", true, b"abcd")), 503);
        assert_eq!(found.queued.load(Ordering::Relaxed), 4 * QUEUED as u64);
        drop(rx);
        assert_eq!(run(&found, ask(Method::DELETE, "", false, b"")), 404);
    }

    #[test]
    fn close_reasons_are_percent_decoded() {
        assert_eq!(percent_decoded("a%20b+c%C3%A9").as_deref(), Some("a b cé"));
        assert_eq!(percent_decoded("bad%2"), None);
        assert_eq!(percent_decoded("%FF"), None);
    }
}
