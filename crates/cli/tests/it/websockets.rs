//! WebSockets: Gust holds the socket and runs the function for the
//! connect, each message and the close; functions send to connections
//! through `gust.internal/_ws/<id>`; limits close with the right codes;
//! connections survive a deploy; no tenant reaches another's connections.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::abandoned::records;
use crate::harness::{Server, guests};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `path` with `token`; the 101's connection id.
pub(crate) async fn connect_as(
    server: &Server,
    token: &str,
    path: &str,
    protocols: Option<&str>,
) -> Result<(Socket, String, Option<String>), WsError> {
    let url = format!("{}{path}", server.url.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(protocols) = protocols {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
    }
    let (socket, response) = tokio_tungstenite::connect_async(request).await?;
    let id = response.headers()["gust-websocket-connection"]
        .to_str()
        .unwrap()
        .to_string();
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((socket, id, protocol))
}

pub(crate) async fn connect(server: &Server, path: &str) -> (Socket, String) {
    let (socket, id, _) = connect_as(server, &server.token, path, None).await.unwrap();
    (socket, id)
}

/// The next data message (pings skipped), within 10 s.
pub(crate) async fn next(socket: &mut Socket) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the connection is open")
            .expect("a message");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

/// The close code the server ends with (reading past data messages).
pub(crate) async fn closed_with(socket: &mut Socket) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("closed within 10 s")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the connection broke instead of closing: {e}"),
        }
    }
}

/// Tenant `globex` and its public function `spy` (the testbed), which
/// tries to reach other tenants' connections as `/@globex/spy/…`.
pub(crate) fn deploy_spy(server: &Server) {
    server.gust_json(&["tenant", "create", "globex"]);
    let other = server.token_for("globex", "owner", &[]);
    let deployed = server.gust_as(
        &other,
        &[
            "deploy",
            "spy",
            guests().testbed.to_str().unwrap(),
            "--public",
        ],
    );
    assert!(deployed.status.success(), "{deployed:?}");
}

pub(crate) fn text(message: Message) -> String {
    match message {
        Message::Text(text) => text.to_string(),
        other => panic!("a text message, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_echo_runs_the_function_for_connect_each_message_and_close() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &["--websocket"]);
    // A connect the function refuses is its answer, not an upgrade.
    let refused = connect_as(&server, &server.token, "/tb/ws/echo?refuse=1", None).await;
    match refused {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("refused with the function's 403: {other:?}"),
    }
    // A private function's socket needs a token, as its requests do (and
    // without one, the function is not there).
    let anonymous = connect_as(&server, "not-a-token", "/tb/ws/echo", None).await;
    assert!(
        matches!(&anonymous, Err(WsError::Http(r)) if r.status() == 404),
        "{anonymous:?}"
    );

    let (mut socket, id, protocol) = connect_as(
        &server,
        &server.token,
        "/tb/ws/echo",
        Some("chat, superchat"),
    )
    .await
    .unwrap();
    assert_eq!(protocol.as_deref(), Some("chat"), "the function chose one");
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(text(next(&mut socket).await), "echo: hello");
    socket
        .send(Message::binary(vec![b'a', 0, b'b']))
        .await
        .unwrap();
    match next(&mut socket).await {
        Message::Binary(bytes) => assert_eq!(&bytes[..], b"echo: a\0b"),
        other => panic!("a binary reply to a binary message: {other:?}"),
    }
    // In order, one at a time.
    for i in 0..20 {
        socket.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..20 {
        assert_eq!(text(next(&mut socket).await), format!("echo: m{i}"));
    }
    // The function closes its own connection through the host API.
    socket.send(Message::text("bye")).await.unwrap();
    assert_eq!(closed_with(&mut socket).await, (4000, "bye".to_string()));

    // Its close ran with the code, and every part is metered.
    let closes = Server::eventually(Duration::from_secs(5), || async {
        let (status, code) = server
            .get(&format!("/tb/kv/get?bucket=closes&key={id}"))
            .await;
        (status == 200).then_some(code)
    })
    .await;
    assert_eq!(closes.as_deref(), Some("4000"));
    // The refused connect; connect, 23 messages, close and the
    // connection's own record.
    let websocket = |records: &std::collections::HashMap<String, serde_json::Value>| {
        records
            .values()
            .filter(|r| r["trigger"] == "websocket")
            .count()
    };
    let records = Server::eventually(Duration::from_secs(10), || async {
        let all = records(&server, 27).await;
        (websocket(&all) >= 27).then_some(all)
    })
    .await
    .expect("27 websocket records");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(websocket(&records), 27);
    let connection = &records[&id];
    assert_eq!(connection["status"], 101, "{connection}");
    assert_eq!(connection["outcome"], "success", "{connection}");
    assert!(connection["wall_ns"].as_u64().unwrap() > 0, "{connection}");
    assert_eq!(
        connection["gib_us"], 0,
        "it holds no instance: {connection}"
    );
    assert!(connection["request_bytes"].as_u64().unwrap() >= 5 + 3 + 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broadcast_room_reaches_every_client_and_no_other_tenant() {
    let server = Server::start();
    server.deploy("chat", &guests().testbed, &["--websocket"]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&server, "/chat/ws/room").await);
    }
    clients[0].0.send(Message::text("hi all")).await.unwrap();
    for (socket, _) in clients.iter_mut() {
        assert_eq!(text(next(socket).await), "hi all");
    }
    clients[1].0.send(Message::text("second")).await.unwrap();
    for (socket, _) in clients.iter_mut() {
        assert_eq!(text(next(socket).await), "second");
    }
    let (mut gone, gone_id) = clients.pop().unwrap();
    gone.close(None).await.unwrap();
    let left = Server::eventually(Duration::from_secs(5), || async {
        let (_, keys) = server.get("/chat/kv/list?bucket=room").await;
        (!keys.contains(&gone_id)).then_some(())
    })
    .await;
    assert!(left.is_some(), "its close removed it from the room");
    clients[0].0.send(Message::text("after")).await.unwrap();
    for (socket, _) in clients.iter_mut() {
        assert_eq!(text(next(socket).await), "after");
    }

    // Another tenant's function cannot see, send to or close them.
    deploy_spy(&server);
    let victim = &clients[0].1;
    for method in ["call", "enqueue"] {
        let (_, seen) = server
            .get(&format!(
                "/@globex/spy/{method}?url=http://gust.internal/_ws/{victim}"
            ))
            .await;
        assert!(seen.starts_with("status 404"), "{method}: {seen}");
    }
    // Its own tenant's functions can.
    let (_, seen) = server
        .get(&format!("/chat/call?url=http://gust.internal/_ws/{victim}"))
        .await;
    assert!(
        seen.starts_with("status 200") && seen.contains("\"function\":\"chat\""),
        "{seen}"
    );
    // A plain request cannot pass for a connection's invocation.
    let forged = server
        .http
        .post(format!("{}/chat/ws/room", server.url))
        .header("authorization", format!("Bearer {}", server.token))
        .header("gust-websocket", "message")
        .header("gust-websocket-connection", victim.as_str())
        .body("forged")
        .send()
        .await
        .unwrap();
    assert_ne!(forged.status(), 204);
    for (socket, _) in clients.iter_mut() {
        let quiet = tokio::time::timeout(Duration::from_millis(300), socket.next()).await;
        assert!(quiet.is_err(), "nothing was sent: {quiet:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_limits_close_with_the_right_codes() {
    let server = Server::start();
    server.deploy(
        "tb",
        &guests().testbed,
        &[
            "--websocket",
            "--ws-max-connections",
            "2",
            "--ws-max-message-bytes",
            "1024",
            "--ws-idle-ms",
            "800",
            "--ws-messages-per-second",
            "1",
        ],
    );
    // Connections per function: the third is refused before the upgrade.
    let (mut big, _) = connect(&server, "/tb/ws/echo").await;
    let (mut flood, _) = connect(&server, "/tb/ws/echo").await;
    match connect_as(&server, &server.token, "/tb/ws/echo", None).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body =
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("ws_max_connections"), "{body}");
        }
        other => panic!("a third connection gets 429: {other:?}"),
    }
    // Too large a message: 1009.
    big.send(Message::text("x".repeat(2000))).await.unwrap();
    assert_eq!(closed_with(&mut big).await.0, 1009);
    // Too many messages a second: 1008.
    for i in 0..40 {
        if flood.send(Message::text(format!("{i}"))).await.is_err() {
            break;
        }
    }
    let (code, reason) = closed_with(&mut flood).await;
    assert_eq!(code, u16::from(CloseCode::Policy), "{reason}");
    assert!(reason.contains("1 messages per second"), "{reason}");
    // Idle: 1001, after the limit (places are free again once closed).
    let idle = Server::eventually(Duration::from_secs(5), || async {
        connect_as(&server, &server.token, "/tb/ws/echo", None)
            .await
            .ok()
    })
    .await;
    let (mut idle, _, _) = idle.expect("the closed connections' places are free");
    let started = std::time::Instant::now();
    let (code, reason) = closed_with(&mut idle).await;
    assert_eq!(code, 1001, "{reason}");
    assert!(started.elapsed() >= Duration::from_millis(700), "{reason}");

    // The tenant's quota holds across its functions.
    server.deploy("other", &guests().testbed, &["--websocket"]);
    let set = server
        .http
        .put(format!("{}/v1/tenants/default/quotas", server.api))
        .json(&serde_json::json!({"websockets": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let quota = Server::eventually(Duration::from_secs(5), || async {
        let first = connect_as(&server, &server.token, "/other/ws/echo", None)
            .await
            .ok()?;
        let second = connect_as(&server, &server.token, "/other/ws/echo", None).await;
        drop(first);
        match second {
            Err(WsError::Http(response)) if response.status() == 429 => Some(
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string(),
            ),
            _ => None,
        }
    })
    .await;
    let quota = quota.expect("the second connection is over the quota");
    assert!(quota.contains("quota `websockets` (1"), "{quota}");

    // A function not deployed for WebSockets is not upgraded.
    server.deploy("plain", &guests().testbed, &[]);
    let plain = connect_as(&server, &server.token, "/plain/", None).await;
    assert!(
        matches!(&plain, Err(WsError::Http(r)) if r.status() == 200),
        "{plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn open_connections_survive_a_deploy_and_run_the_new_version() {
    let server = Server::start();
    server.deploy("live", &guests().testbed, &["--websocket"]);
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(connect(&server, "/live/ws/echo").await.0);
    }
    for socket in sockets.iter_mut() {
        socket.send(Message::text("one")).await.unwrap();
        assert_eq!(text(next(socket).await), "echo: one");
    }
    // The echo example answers with what it received.
    server.deploy("live", &guests().echo, &["--websocket"]);
    for socket in sockets.iter_mut() {
        socket.send(Message::text("two")).await.unwrap();
        let reply = text(next(socket).await);
        assert!(reply.starts_with("method: POST"), "{reply}");
        assert!(reply.contains("header: gust-websocket: message"), "{reply}");
        assert!(reply.contains("body-size: 3"), "{reply}");
    }
    for socket in sockets.iter_mut() {
        socket.close(None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_let_go_and_frees_its_place() {
    let server = Server::start();
    server.deploy(
        "tb",
        &guests().testbed,
        &[
            "--websocket",
            "--ws-max-connections",
            "1",
            "--ws-messages-per-second",
            "10000",
        ],
    );
    let (mut deaf, _) = connect(&server, "/tb/ws/echo").await;
    // Replies of 60 KiB that it never reads: the socket's buffers fill,
    // the writer waits, and the connection is given up.
    let big = "x".repeat(60 << 10);
    let flood = async {
        for _ in 0..2000 {
            if deaf.send(Message::text(big.clone())).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), flood).await;
    let freed = Server::eventually(Duration::from_secs(30), || async {
        connect_as(&server, &server.token, "/tb/ws/echo", None)
            .await
            .ok()
    })
    .await;
    let (mut next, _, _) = freed.expect("the deaf client's place is free again");
    next.send(Message::text("hello")).await.unwrap();
    assert_eq!(text(self::next(&mut next).await), "echo: hello");
    assert_eq!(server.metric("gust_websocket_connections").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_closes_open_connections_with_1001_and_runs_their_close() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    server.deploy("tb", &guests().testbed, &["--websocket"]);
    let (mut socket, id) = connect(&server, "/tb/ws/echo").await;
    socket.send(Message::text("before")).await.unwrap();
    assert_eq!(text(next(&mut socket).await), "echo: before");
    server.signal("TERM");
    let (code, reason) = closed_with(&mut socket).await;
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("shutting down"), "{reason}");
    assert_eq!(server.stop(), Some(0), "it drains and exits cleanly");
    // Its close ran before the node stopped: the code is in the tenant's KV.
    let again = Server::start_in(dir.path(), &[]);
    let (status, code) = again
        .get(&format!("/tb/kv/get?bucket=closes&key={id}"))
        .await;
    assert_eq!((status, code.as_str()), (200, "1001"));
}
