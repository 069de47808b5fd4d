//! A native WebSocket echo server (tokio-tungstenite): the ceiling Gust's
//! WebSockets are compared against in `bench/websockets.sh`. Run:
//! `cargo run --release -p gust-gateway --example native_ws_echo -- 127.0.0.1:9301`
//!
//! Each text message is answered with `echo: <message>`, as the testbed's
//! `/ws/echo` does, so both carry the same bytes.

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9301".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("native WebSocket echo on ws://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = socket.next().await {
                let reply = match message {
                    Message::Text(text) => Message::text(format!("echo: {text}")),
                    Message::Binary(bytes) => Message::binary(bytes),
                    Message::Close(_) => break,
                    _ => continue,
                };
                if socket.send(reply).await.is_err() {
                    break;
                }
            }
        });
    }
}
