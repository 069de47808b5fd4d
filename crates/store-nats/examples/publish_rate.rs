//! JetStream's own publish rate on a cluster: the ceiling for anything
//! stored on it, such as Gust's durable events (`bench/cluster.sh`).
//!
//! Creates a replicated file stream of its own, publishes `--messages`
//! messages of `--size` bytes with `--in-flight` publishes awaiting their
//! acknowledgement at once (spread over `--connections` connections, one
//! per server in turn; `--streams S` spreads them over S streams), prints `msgs/s p50_ms p99_ms` (the latencies are
//! publish → acknowledgement) and deletes the stream.
//!
//!   cargo run --release -p gust-store-nats --example publish_rate -- \
//!     --servers nats://127.0.0.1:14222,nats://127.0.0.1:14223 --in-flight 64

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

struct Args {
    servers: Vec<String>,
    messages: u64,
    in_flight: usize,
    connections: usize,
    size: usize,
    replicas: usize,
    streams: usize,
    batch: usize,
}

fn args() -> Args {
    let mut args = Args {
        servers: Vec::new(),
        messages: 50_000,
        in_flight: 64,
        connections: 3,
        size: 200,
        replicas: 3,
        streams: 1,
        batch: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--servers" => args.servers = value.split(',').map(str::to_string).collect(),
            "--messages" => args.messages = value.parse().expect("--messages N"),
            "--in-flight" => args.in_flight = value.parse().expect("--in-flight K"),
            "--connections" => args.connections = value.parse().expect("--connections C"),
            "--size" => args.size = value.parse().expect("--size BYTES"),
            "--replicas" => args.replicas = value.parse().expect("--replicas R"),
            "--streams" => args.streams = value.parse().expect("--streams S"),
            "--batch" => args.batch = value.parse().expect("--batch N"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!args.servers.is_empty(), "--servers nats://…[,nats://…]");
    assert!(args.in_flight > 0 && args.connections > 0 && args.batch > 0);
    args
}

#[tokio::main]
async fn main() {
    let args = args();
    let mut clients = Vec::new();
    for i in 0..args.connections {
        let server = &args.servers[i % args.servers.len()];
        clients.push(async_nats::connect(server.as_str()).await.expect("connect"));
    }
    // One stream per `--streams` (each its own Raft group, whose leader
    // may sit on any server); publisher `i` writes to stream `i % streams`.
    let names: Vec<String> = (0..args.streams)
        .map(|s| format!("BENCH_RAW_{}_{s}", std::process::id()))
        .collect();
    let subjects: Vec<String> = (0..args.streams)
        .map(|s| format!("bench.raw.{}.{s}", std::process::id()))
        .collect();
    let js = jetstream::new(clients[0].clone());
    for (name, subject) in names.iter().zip(&subjects) {
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: args.replicas,
            allow_atomic_publish: args.batch > 1,
            ..Default::default()
        })
        .await
        .expect("create the stream");
    }
    // A new stream's subjects reach every server a moment later: until a
    // publish through each connection is acknowledged, it is not timed.
    for client in &clients {
        let js = jetstream::new(client.clone());
        for subject in &subjects {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let acked = match js
                    .publish(subject.clone(), Bytes::from_static(b"ready"))
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if acked {
                    break;
                }
                assert!(Instant::now() < deadline, "the stream never took a publish");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    let payload = Bytes::from(vec![b'x'; args.size]);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.in_flight {
        let js = jetstream::new(clients[i % clients.len()].clone());
        let subject = subjects[i % subjects.len()].clone();
        let client = clients[i % clients.len()].clone();
        let (next, payload) = (next.clone(), payload.clone());
        let (total, batch) = (args.messages, args.batch as u64);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= total {
                    break;
                }
                let n = batch.min(total - first);
                let sent = Instant::now();
                if n == 1 {
                    js.publish(subject.clone(), payload.clone())
                        .await
                        .expect("publish")
                        .await
                        .expect("acknowledgement");
                } else {
                    publish_batch(&client, &subject, &payload, n).await;
                }
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("publisher"));
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    let mut stored = 0;
    for name in &names {
        stored += js
            .get_stream(name)
            .await
            .expect("the stream")
            .info()
            .await
            .expect("its info")
            .state
            .messages;
    }
    // The timed messages and one readiness message per connection and stream.
    assert_eq!(
        stored,
        args.messages + (clients.len() * names.len()) as u64,
        "every acknowledged message is stored"
    );
    // Latencies are per publish (per batch with `--batch`).
    println!(
        "{:.0} {:.3} {:.3}",
        args.messages as f64 / elapsed.as_secs_f64(),
        pct(50.0),
        pct(99.0)
    );
    for name in &names {
        js.delete_stream(name).await.expect("delete the stream");
    }
}

/// Publishes `n` copies of `payload` as one atomic batch (JetStream 2.12):
/// the first message opens it (answered empty), the last commits it
/// (answered with the batch's acknowledgement).
async fn publish_batch(client: &async_nats::Client, subject: &str, payload: &Bytes, n: u64) {
    static BATCHES: AtomicU64 = AtomicU64::new(0);
    let id = format!(
        "b{}-{}",
        std::process::id(),
        BATCHES.fetch_add(1, Ordering::Relaxed)
    );
    for i in 1..=n {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_BATCH_ID, id.as_str());
        headers.insert(
            async_nats::header::NATS_BATCH_SEQUENCE,
            i.to_string().as_str(),
        );
        if i == n {
            headers.insert(
                async_nats::header::NATS_BATCH_COMMIT,
                async_nats::header::NATS_BATCH_COMMIT_FINAL,
            );
        }
        if i == 1 || i == n {
            let reply = client
                .request_with_headers(subject.to_string(), headers, payload.clone())
                .await
                .expect("batch request");
            let text = String::from_utf8_lossy(&reply.payload);
            assert!(!text.contains("\"error\""), "batch refused: {text}");
        } else {
            client
                .publish_with_headers(subject.to_string(), headers, payload.clone())
                .await
                .expect("batch publish");
        }
    }
}
