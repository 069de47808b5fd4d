//! What the ledger costs per record, alone: no HTTP, no wasm. Records are
//! handed over at a steady rate from one thread (as request threads do:
//! an open frame, then a close frame), the indexer moves them into an
//! embedded store in a temporary directory, and the CPU time of the whole
//! process and of the handing-over thread is divided by the records.
//!
//!   cargo run --release -p gust-meter --example meter_cost -- [RATE/s] [SECONDS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gust_core::usage::{PlanHistory, Trigger, UsageOutcome, UsageRecord};
use gust_meter::Meter;

fn cpu(who: rustix::time::ClockId) -> Duration {
    let t = rustix::time::clock_gettime(who);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn record(n: u64, start_ms: u64) -> UsageRecord {
    UsageRecord {
        invocation_id: format!("0192f0c5a1b27c3d8e9f{n:012x}"),
        attempt: 1,
        tenant: "default".into(),
        function: "hello".into(),
        version: 1,
        trigger: Trigger::Http,
        start_ms,
        wall_ns: 0,
        cpu_ns: 0,
        peak_memory_bytes: 0,
        memory_limit_bytes: 128 << 20,
        request_bytes: 0,
        response_bytes: 0,
        outbound_requests: 0,
        outbound_bytes: 0,
        kv_operations: 0,
        outcome: UsageOutcome::Aborted,
        status: 0,
        billed_ms: 0,
        gib_us: 0,
        cost_micros: 0,
        plan: String::new(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(5), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let store = Arc::new(gust_store_embedded::EmbeddedStore::open(
        &dir.path().join("store.redb"),
    )?);
    let plans: gust_meter::Plans = Arc::new(|_: &str| PlanHistory::default());
    let meter = Meter::start(store, plans, &dir.path().join("ledger")).await?;

    // Idle baseline of the same length: the indexer's timer alone.
    let idle_from = cpu(rustix::time::ClockId::ProcessCPUTime);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let idle = cpu(rustix::time::ClockId::ProcessCPUTime) - idle_from;

    let total = rate * seconds;
    let process_from = cpu(rustix::time::ClockId::ProcessCPUTime);
    // The same loop without the meter: what making the records costs.
    let making = on_thread(move || hand_over(None, rate, total)).await?;
    let threads_from = threads();
    let hot = {
        let meter = meter.clone();
        on_thread(move || hand_over(Some(&meter), rate, total)).await?
    }
    .saturating_sub(making);
    meter.flush(Duration::from_secs(30)).await;
    let process = cpu(rustix::time::ClockId::ProcessCPUTime) - process_from;
    let per = |d: Duration| d.as_nanos() as f64 / total as f64 / 1000.0;
    let indexing = process
        .saturating_sub(making * 2 + hot)
        .saturating_sub(idle * 2);
    println!(
        "{total} records at {rate}/s: hand-over {:.2} µs/record, indexing and store {:.2} µs/record, total {:.2} µs/record (idle baseline {:.0} ms, making the records {:.2} µs/record, subtracted)",
        per(hot),
        per(indexing),
        per(hot + indexing),
        idle.as_secs_f64() * 1000.0,
        per(making),
    );
    // Where the rest went, by thread name.
    let mut by_thread = threads();
    for (name, from) in threads_from {
        if let Some(to) = by_thread.get_mut(&name) {
            *to = to.saturating_sub(from);
        }
    }
    by_thread.remove("hand-over");
    let by_thread: Vec<String> = by_thread
        .iter()
        .map(|(name, cpu)| format!("{name} {:.2}", per(*cpu)))
        .collect();
    println!("  by thread (µs/record): {}", by_thread.join(", "));
    Ok(())
}

/// Runs `f` on a thread of its own, named `hand-over`.
async fn on_thread(
    f: impl FnOnce() -> Duration + Send + 'static,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("hand-over".into())
        .spawn(move || {
            let _ = tx.send(f());
        })?;
    Ok(rx.await?)
}

/// CPU time of this process's threads so far (ns, from schedstat),
/// summed by thread name.
fn threads() -> std::collections::BTreeMap<String, Duration> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("schedstat")),
        ) else {
            continue;
        };
        let ns: u64 = stat
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        *out.entry(name.trim().to_string()).or_default() += Duration::from_nanos(ns);
    }
    out
}

/// Hands `total` records over at `rate` (or only makes them, without a
/// meter); returns the thread's CPU time.
fn hand_over(meter: Option<&Meter>, rate: u64, total: u64) -> Duration {
    let thread_from = cpu(rustix::time::ClockId::ThreadCPUTime);
    let began = Instant::now();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // In ticks of 1 ms, as many records as the rate asks for.
    let per_tick = rate.div_ceil(1000);
    let mut n = 0;
    while n < total {
        for _ in 0..per_tick.min(total - n) {
            let mut r = record(n, now_ms + began.elapsed().as_millis() as u64);
            if let Some(meter) = meter {
                meter.open(&r);
            }
            r.wall_ns = 40_000;
            r.cpu_ns = 30_000;
            r.peak_memory_bytes = 1 << 20;
            r.response_bytes = 13;
            r.status = 200;
            r.outcome = UsageOutcome::Success;
            if let Some(meter) = meter {
                meter.record(r, true);
            }
            n += 1;
        }
        let due = Duration::from_micros(n * 1_000_000 / rate);
        if let Some(wait) = due.checked_sub(began.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    cpu(rustix::time::ClockId::ThreadCPUTime) - thread_from
}
