//! WebSockets in a cluster: each connection is held by the node its
//! client reached, and a function on any node sends to it or closes it
//! through `gust.internal/_ws/<id>`; no other tenant reaches it from any
//! node; a function's connection limit is shared by the nodes.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use super::GustCluster;
use crate::harness::guests;
use crate::websockets::{closed_with, connect, connect_as, deploy_spy, next, text};

#[tokio::test(flavor = "multi_thread")]
async fn a_room_spread_over_the_nodes_hears_every_message_and_no_other_tenant_reaches_it() {
    let Some(cluster) = GustCluster::alive(3).await else {
        return;
    };
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    a.deploy("chat", &guests().testbed, &["--websocket"]);
    // One client on each node; its connection's id names the node.
    let mut clients = Vec::new();
    for (node, name) in [(a, "a"), (b, "b"), (c, "c")] {
        let (socket, id) = connect(node, "/chat/ws/room").await;
        assert!(id.ends_with(&format!(".{name}")), "{id}");
        clients.push((socket, id));
    }
    // A message to the room on any node reaches every client, whichever
    // node holds it.
    for from in [0, 2] {
        let said = format!("from {from}");
        clients[from]
            .0
            .send(Message::text(said.clone()))
            .await
            .unwrap();
        for (socket, id) in clients.iter_mut() {
            assert_eq!(text(next(socket).await), said, "{id}");
        }
    }
    // The node holding a connection describes it, asked on another.
    let held_by_a = clients[0].1.clone();
    let (_, seen) = c
        .get(&format!(
            "/chat/call?url=http://gust.internal/_ws/{held_by_a}"
        ))
        .await;
    assert!(
        seen.starts_with("status 200") && seen.contains("\"node\":\"a\""),
        "{seen}"
    );

    // Another tenant's function, on every node, cannot see, send to or
    // close any of them; nor can a forged id that names a node.
    deploy_spy(b);
    let forged = format!("ws{}.a", "0".repeat(32));
    let gone = format!("{}.z", &held_by_a[..34]);
    for node in [a, b, c] {
        for (_, victim) in &clients {
            for method in ["call", "enqueue"] {
                let (_, seen) = node
                    .get(&format!(
                        "/@globex/spy/{method}?url=http://gust.internal/_ws/{victim}"
                    ))
                    .await;
                assert!(seen.starts_with("status 404"), "{method} {victim}: {seen}");
            }
        }
        for id in [&forged, &gone] {
            let (_, seen) = node
                .get(&format!("/chat/call?url=http://gust.internal/_ws/{id}"))
                .await;
            assert!(seen.starts_with("status 404"), "{id}: {seen}");
        }
    }
    for (socket, id) in clients.iter_mut() {
        let quiet = tokio::time::timeout(Duration::from_millis(300), socket.next()).await;
        assert!(quiet.is_err(), "nothing was sent to {id}: {quiet:?}");
    }

    // A holding node that stops answering (SIGSTOP: alive to the others,
    // its heartbeat not yet stale) costs the sender the relay's 5 s wait
    // and a 503, never a hang or a false 202. The command may still run
    // once the node resumes (at most once): the client's fate and the
    // node's answer afterwards agree.
    let held_by_b = clients[1].1.clone();
    b.signal("STOP");
    let asked = std::time::Instant::now();
    clients[0]
        .0
        .send(Message::text(format!("kick {held_by_b}")))
        .await
        .unwrap();
    let answer = text(next(&mut clients[0].0).await);
    let waited = asked.elapsed();
    b.signal("CONT");
    assert_eq!(answer, "503", "a stopped holder is 503");
    assert!(
        waited >= Duration::from_millis(4500) && waited < Duration::from_secs(9),
        "the relay waits its 5 s: {waited:?}"
    );
    let kicked = match tokio::time::timeout(Duration::from_secs(3), clients[1].0.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            assert_eq!(
                (u16::from(frame.code), frame.reason.as_str()),
                (4001, "kicked")
            );
            true
        }
        Err(_) => false,
        Ok(other) => panic!("b's client is kicked or left alone: {other:?}"),
    };
    let (_, seen) = a
        .get(&format!(
            "/chat/call?url=http://gust.internal/_ws/{held_by_b}"
        ))
        .await;
    let expected = if kicked { "status 404" } else { "status 200" };
    assert!(seen.starts_with(expected), "kicked {kicked}: {seen}");

    // A close asked for on a reaches the client on c with its code.
    let held_by_c = clients[2].1.clone();
    clients[0]
        .0
        .send(Message::text(format!("kick {held_by_c}")))
        .await
        .unwrap();
    assert_eq!(text(next(&mut clients[0].0).await), "202");
    let (code, reason) = closed_with(&mut clients[2].0).await;
    assert_eq!((code, reason.as_str()), (4001, "kicked"));

    // A function's connection limit holds across the nodes: 3 on three
    // nodes is one each.
    a.deploy(
        "capped",
        &guests().testbed,
        &["--websocket", "--ws-max-connections", "3"],
    );
    let mut held = Vec::new();
    for node in [a, b, c] {
        held.push(connect(node, "/capped/ws/echo").await);
        let refused = connect_as(node, &node.token, "/capped/ws/echo", None).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 429)
            }
            other => panic!("a second connection on one node gets 429: {other:?}"),
        }
    }
}
