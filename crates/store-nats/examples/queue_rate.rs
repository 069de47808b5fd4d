//! The cluster backend's queue rates, without Gust around them: what one
//! queue takes per second on a cluster when several nodes enqueue, claim
//! and acknowledge at once (`bench/cluster.sh` compares it with
//! `publish_rate`, JetStream's own ceiling).
//!
//! `--nodes` stores (one connection each, as many gust nodes would have)
//! share one namespace of its own. Three phases, each timed:
//! 1. enqueue `--events` events with `--in-flight` enqueues at once, spread
//!    over the nodes;
//! 2. drain them: each node claims up to `--claim` at a time and
//!    acknowledges each, until all are gone;
//! 3. both at once: the same count enqueued while the nodes drain.
//!
//! Prints one line per phase: `phase events/s p50_ms p99_ms` (latency of
//! one enqueue call, or of one claim call for the drain).
//!
//!   cargo run --release -p gust-store-nats --example queue_rate -- \
//!     --servers nats://127.0.0.1:14222,nats://127.0.0.1:14223

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gust_store::QueueStore;
use gust_store_nats::{NatsOptions, NatsStore};

struct Args {
    servers: Vec<String>,
    events: u64,
    in_flight: usize,
    nodes: usize,
    claim: usize,
    size: usize,
    replicas: usize,
}

fn args() -> Args {
    let mut args = Args {
        servers: Vec::new(),
        events: 3000,
        in_flight: 64,
        nodes: 3,
        claim: 16,
        size: 200,
        replicas: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--servers" => args.servers = value.split(',').map(str::to_string).collect(),
            "--events" => args.events = value.parse().expect("--events N"),
            "--in-flight" => args.in_flight = value.parse().expect("--in-flight K"),
            "--nodes" => args.nodes = value.parse().expect("--nodes N"),
            "--claim" => args.claim = value.parse().expect("--claim N"),
            "--size" => args.size = value.parse().expect("--size BYTES"),
            "--replicas" => args.replicas = value.parse().expect("--replicas R"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!args.servers.is_empty(), "--servers nats://…[,nats://…]");
    assert!(args.in_flight > 0 && args.nodes > 0 && args.claim > 0);
    args
}

const QUEUE: &str = "bench";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn summary(phase: &str, events: u64, elapsed: Duration, mut latencies: Vec<Duration>) {
    latencies.sort();
    let pct = |p: f64| {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    println!(
        "{phase} {:.0} {:.3} {:.3}",
        events as f64 / elapsed.as_secs_f64(),
        pct(50.0),
        pct(99.0)
    );
}

/// Enqueues `count` events from `in_flight` tasks over the nodes.
async fn enqueue(
    stores: &[Arc<NatsStore>],
    count: u64,
    in_flight: usize,
    size: usize,
) -> Vec<Duration> {
    let payload = Bytes::from(vec![b'x'; size]);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..in_flight {
        let (store, next, payload) = (
            stores[i % stores.len()].clone(),
            next.clone(),
            payload.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let sent = Instant::now();
                store
                    .enqueue(QUEUE, vec![payload.clone()], 0)
                    .await
                    .expect("enqueue");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("enqueuer"));
    }
    latencies
}

/// Claims and acknowledges on every node until `target` events are done.
async fn drain(stores: &[Arc<NatsStore>], target: u64, claim: usize) -> Vec<Duration> {
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for store in stores {
        let (store, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(600);
            while done.load(Ordering::Relaxed) < target {
                assert!(Instant::now() < deadline, "the drain stalled");
                let sent = Instant::now();
                let claimed = store
                    .claim(QUEUE, now_ms(), 60_000, claim)
                    .await
                    .expect("claim");
                latencies.push(sent.elapsed());
                if claimed.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                // Each acknowledged on its own, as the dispatcher does.
                let acks = claimed.iter().map(|c| store.ack(QUEUE, vec![c.seq]));
                for ack in futures_util::future::join_all(acks).await {
                    ack.expect("ack");
                }
                done.fetch_add(claimed.len() as u64, Ordering::Relaxed);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("drainer"));
    }
    latencies
}

#[tokio::main]
async fn main() {
    let args = args();
    let namespace = format!("QBENCH{}", std::process::id());
    let mut stores = Vec::new();
    for i in 0..args.nodes {
        let mut options = NatsOptions::new(args.servers.clone());
        options.namespace = namespace.clone();
        options.replicas = args.replicas;
        options.client_name = format!("bench-{i}");
        stores.push(Arc::new(
            NatsStore::connect(options).await.expect("connect"),
        ));
    }
    // Until each node's enqueue is acknowledged, nothing is timed.
    for store in &stores {
        let deadline = Instant::now() + Duration::from_secs(30);
        while store
            .enqueue(QUEUE, vec![Bytes::from_static(b"ready")], 0)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the queue never took an enqueue");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ready = stores.len() as u64;
    drain(&stores, ready, args.claim).await;

    let start = Instant::now();
    let latencies = enqueue(&stores, args.events, args.in_flight, args.size).await;
    summary("enqueue", args.events, start.elapsed(), latencies);
    assert_eq!(stores[0].depth(QUEUE).await.unwrap(), args.events);

    let start = Instant::now();
    let latencies = drain(&stores, args.events, args.claim).await;
    summary("drain", args.events, start.elapsed(), latencies);
    assert_eq!(stores[0].depth(QUEUE).await.unwrap(), 0);

    let start = Instant::now();
    let (enqueued, _) = tokio::join!(
        enqueue(&stores, args.events, args.in_flight, args.size),
        drain(&stores, args.events, args.claim),
    );
    summary("both", args.events, start.elapsed(), enqueued);
    assert_eq!(stores[0].depth(QUEUE).await.unwrap(), 0);
    let js = stores[0].jetstream();
    for stream in stores[0].streams().await.expect("the namespace's streams") {
        js.delete_stream(&stream.config.name)
            .await
            .expect("delete a stream");
    }
}
