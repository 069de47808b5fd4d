//! The bounded workload: clients that submit events and read, write and
//! increment keys through whichever gust nodes are up, recording every
//! operation with its outcome (ok, failed, or unknown: timed out, or an
//! error that does not prove the operation was not applied).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::linearize::{Call, Operation, Outcome, Ret};
use crate::nodes::{Endpoint, Endpoints};

/// What a client knows of one submitted event.
#[derive(Debug, Clone)]
pub struct Submit {
    /// The node asked (0..3).
    pub node: usize,
    /// When it was sent and answered, in ms since the run began.
    pub sent_ms: u64,
    pub answered_ms: u64,
    /// Wall clock (Unix ms) when it was answered.
    pub wall_ms: u64,
    pub result: SubmitResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitResult {
    /// 202: the event was acknowledged, with this invocation id.
    Accepted(String),
    /// Another status (the invocation id from `x-request-id`, whether a
    /// `Retry-After` came with it).
    Refused {
        status: u16,
        id: Option<String>,
        retry_after: bool,
    },
    /// Nothing was sent (the connection was refused).
    NotSent,
    /// No answer in time, or the connection broke: it may have been stored.
    Unknown,
}

/// The run's clock: ms or µs since it began.
#[derive(Debug, Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    pub fn ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
    pub fn us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The live endpoints, in node order, with their index.
pub fn live(endpoints: &Endpoints) -> Vec<(usize, Endpoint)> {
    endpoints
        .read()
        .map(|all| {
            all.iter()
                .enumerate()
                .filter_map(|(i, e)| e.clone().map(|e| (i, e)))
                .collect()
        })
        .unwrap_or_default()
}

/// Submits events to `/sink/sleep?ms=200` at about `rate` per second in all,
/// from `clients` concurrent clients (client `i` sends to node `i % 3`
/// while it is up, else to the live ones in turn), until `until`.
pub async fn submit_events(
    http: reqwest::Client,
    endpoints: Endpoints,
    clock: Clock,
    rate: u32,
    clients: usize,
    until: Duration,
) -> anyhow::Result<Vec<Submit>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let gap = Duration::from_secs_f64(clients as f64 / f64::from(rate.max(1)));
    for client in 0..clients {
        let (http, endpoints, next) = (http.clone(), endpoints.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut tick = tokio::time::interval(gap);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while clock.0.elapsed() < until {
                tick.tick().await;
                let nodes = live(&endpoints);
                if nodes.is_empty() {
                    continue;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                // Each client keeps to its own node while that node is up,
                // as behind a load balancer: a node that answers slowly
                // holds up only its own clients.
                let (node, endpoint) = nodes
                    .iter()
                    .find(|(i, _)| *i == client % 3)
                    .unwrap_or(&nodes[n as usize % nodes.len()]);
                let sent_ms = clock.ms();
                let response = http
                    .post(format!("{}/sink/sleep?ms=200&op={n}", endpoint.url))
                    .header("Gust-Invocation-Type", "Event")
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let result = match response {
                    Ok(r) if r.status() == 202 => match r.json::<serde_json::Value>().await {
                        Ok(body) => body["invocation_id"]
                            .as_str()
                            .map_or(SubmitResult::Unknown, |id| {
                                SubmitResult::Accepted(id.to_string())
                            }),
                        Err(_) => SubmitResult::Unknown,
                    },
                    Ok(r) => SubmitResult::Refused {
                        status: r.status().as_u16(),
                        id: r
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string),
                        retry_after: r.headers().contains_key("retry-after"),
                    },
                    Err(e) if e.is_connect() => SubmitResult::NotSent,
                    Err(_) => SubmitResult::Unknown,
                };
                done.push(Submit {
                    node: *node,
                    sent_ms,
                    answered_ms: clock.ms(),
                    wall_ms: wall_ms(),
                    result,
                });
            }
            done
        }));
    }
    let mut all = gather(tasks).await?;
    all.sort_by_key(|s| s.sent_ms);
    Ok(all)
}

/// The keys of the KV workload: registers and one counter.
pub const REGISTERS: [&str; 3] = ["r0", "r1", "r2"];
pub const COUNTER: &str = "count";
pub const BUCKET: &str = "chaos";

/// One KV operation as recorded, with the key it was on.
#[derive(Debug, Clone)]
pub struct KvOp {
    pub key: &'static str,
    pub op: Operation,
    /// The revision an acknowledged write was stored under.
    pub revision: Option<u64>,
}

/// Reads and writes the registers and reads and increments the counter,
/// from `clients` clients, each an operation every `every`, on random live
/// nodes, until `until`. Reads and writes go through the control API (a
/// read there promises the latest write), increments through the guest's
/// `wasi:keyvalue` (`/sink/kv/incr`).
pub async fn kv_clients(
    http: reqwest::Client,
    endpoints: Endpoints,
    clock: Clock,
    clients: usize,
    every: Duration,
    until: Duration,
) -> anyhow::Result<Vec<KvOp>> {
    let values = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (http, endpoints, values) = (http.clone(), endpoints.clone(), values.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((client as u64 + 1) * 0x2545_f491));
            let mut done = Vec::new();
            while clock.0.elapsed() < until {
                tokio::time::sleep(every).await;
                let nodes = live(&endpoints);
                if nodes.is_empty() {
                    continue;
                }
                let (_, endpoint) = &nodes[rng.below(nodes.len() as u64) as usize];
                let which = rng.below(4) as usize;
                let key = if which < 3 { REGISTERS[which] } else { COUNTER };
                let call = match (key == COUNTER, rng.below(10)) {
                    (_, 0..5) => Call::Read,
                    (false, 5) => Call::Delete,
                    (false, _) => Call::Write(values.fetch_add(1, Ordering::Relaxed)),
                    (true, _) => Call::Incr(1),
                };
                let invoked = clock.us();
                let outcome = kv_op(&http, endpoint, key, &call).await;
                let (outcome, revision) = match outcome {
                    KvOutcome::Ok(ret, revision) => (
                        Outcome::Ok {
                            ret,
                            completed: clock.us(),
                        },
                        revision,
                    ),
                    KvOutcome::Unknown => (Outcome::Unknown, None),
                    KvOutcome::Failed => continue,
                };
                done.push(KvOp {
                    key,
                    op: Operation {
                        client,
                        call,
                        invoked,
                        outcome,
                    },
                    revision,
                });
            }
            done
        }));
    }
    gather(tasks).await
}

/// Every client's operations; a client that panicked fails the run (its
/// operations would be missing from the checks, unseen).
pub async fn gather<T>(tasks: Vec<tokio::task::JoinHandle<Vec<T>>>) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(
            task.await
                .map_err(|e| anyhow::anyhow!("a workload client failed: {e}"))?,
        );
    }
    Ok(all)
}

enum KvOutcome {
    /// Done, with the revision a write was stored under.
    Ok(Ret, Option<u64>),
    /// Known not to have been applied (nothing sent, or refused before it was tried).
    Failed,
    Unknown,
}

async fn kv_op(http: &reqwest::Client, endpoint: &Endpoint, key: &str, call: &Call) -> KvOutcome {
    let timeout = Duration::from_secs(5);
    let request = match call {
        Call::Read => http.get(format!("{}/v1/kv/{BUCKET}/keys/{key}", endpoint.api)),
        Call::Write(v) => http
            .put(format!("{}/v1/kv/{BUCKET}/keys/{key}", endpoint.api))
            .body(v.to_string()),
        Call::Incr(by) => http.get(format!(
            "{}/sink/kv/incr?bucket={BUCKET}&key={key}&by={by}",
            endpoint.url
        )),
        Call::Delete => http.delete(format!("{}/v1/kv/{BUCKET}/keys/{key}", endpoint.api)),
    };
    let response = match request.timeout(timeout).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return KvOutcome::Failed,
        Err(_) => return KvOutcome::Unknown,
    };
    let status = response.status().as_u16();
    let Ok(text) = response.text().await else {
        return KvOutcome::Unknown;
    };
    match (call, status) {
        (Call::Read, 200) => match text.trim().parse() {
            Ok(v) => KvOutcome::Ok(Ret::Read(Some(v)), None),
            Err(_) => KvOutcome::Unknown,
        },
        (Call::Read, 404) => KvOutcome::Ok(Ret::Read(None), None),
        (Call::Write(_), 200) => {
            let revision = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["revision"].as_u64());
            KvOutcome::Ok(Ret::Written, revision)
        }
        (Call::Delete, 200 | 204 | 404) => KvOutcome::Ok(Ret::Deleted, None),
        (Call::Incr(_), 200) => match text.trim().parse() {
            Ok(v) => KvOutcome::Ok(Ret::Incremented(v), None),
            Err(_) => KvOutcome::Unknown,
        },
        // Refused by admission before it ran: not applied.
        (_, 429) => KvOutcome::Failed,
        // A read that failed changed nothing; a write that failed may
        // still have been stored.
        (Call::Read, _) => KvOutcome::Failed,
        _ => KvOutcome::Unknown,
    }
}

/// A small deterministic generator (xorshift64*), so a run's choices can be repeated.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
