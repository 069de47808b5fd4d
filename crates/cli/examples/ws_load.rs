#![allow(clippy::expect_used, clippy::unwrap_used)]
//! A WebSocket load client for `bench/websockets.sh`: opens C connections
//! to a URL, then each sends M text messages one after another, waiting
//! for each reply, and prints one line: `connections messages seconds
//! messages_per_second p50_ms p99_ms connect_p50_ms connect_p99_ms`.
//!
//! `cargo run --release -p gust --example ws_load -- URL C M [TOKEN]`

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).cloned().expect("URL");
    let connections: usize = args.get(2).map_or(64, |a| a.parse().expect("C"));
    let messages: usize = args.get(3).map_or(1000, |a| a.parse().expect("M"));
    let token = args.get(4).cloned();

    let mut sockets = Vec::with_capacity(connections);
    let mut connects = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut request = url.as_str().into_client_request().expect("a ws:// URL");
        if let Some(token) = &token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("a token"),
            );
        }
        let started = Instant::now();
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("the connection is upgraded");
        connects.push(started.elapsed());
        sockets.push(socket);
    }
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(c, mut socket)| {
            tokio::spawn(async move {
                let mut rtts = Vec::with_capacity(messages);
                for m in 0..messages {
                    let sent = Instant::now();
                    let text = format!("c{c} m{m}");
                    socket
                        .send(Message::text(text.clone()))
                        .await
                        .expect("send");
                    loop {
                        match socket.next().await {
                            Some(Ok(Message::Text(reply))) => {
                                assert_eq!(reply.as_str(), format!("echo: {text}"));
                                break;
                            }
                            Some(Ok(_)) => {}
                            other => panic!("connection {c} ended: {other:?}"),
                        }
                    }
                    rtts.push(sent.elapsed());
                }
                let _ = socket.close(None).await;
                rtts
            })
        })
        .collect();
    let mut rtts = Vec::with_capacity(connections * messages);
    for task in tasks {
        rtts.extend(task.await.expect("a client task"));
    }
    let seconds = started.elapsed().as_secs_f64();
    rtts.sort();
    connects.sort();
    println!(
        "{connections} {} {seconds:.3} {:.0} {:.3} {:.3} {:.3} {:.3}",
        rtts.len(),
        rtts.len() as f64 / seconds,
        percentile(&rtts, 50.0),
        percentile(&rtts, 99.0),
        percentile(&connects, 50.0),
        percentile(&connects, 99.0),
    );
}
