//! Invocation logs: what each invocation printed, written to the log store
//! in batches off the request path. Logs are best effort: when the writer
//! falls behind by more than the queue holds, records are dropped and
//! counted, never blocking a request. (Usage records are not logs: they get
//! their own durable path.)
//!
//! Each function's logs are bounded three ways: a rate (a token bucket of
//! bytes per function: past it records are dropped and counted, never an
//! error to the guest), and its stream's size and age in the store
//! ([`LogLimits`]: the oldest records go, in the write that appends, and
//! by age in the API's retention pass).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gust_core::{FunctionName, LogRecord, TenantId};
use gust_store::{LogLimits, LogStore, Registry};
use tokio::sync::mpsc;

const QUEUE: usize = 16 * 1024;
const BATCH: usize = 512;
/// How long the writer waits for more records after the first of a
/// batch. Writing each record of a trickle alone (every failed request
/// leaves one) cost a store transaction each: about as much CPU as the
/// request itself (bench/README.md, trap cost).
const LINGER: std::time::Duration = std::time::Duration::from_millis(50);
/// Bytes of log records waiting to be written, at most.
const QUEUE_BYTES: usize = 32 << 20;

/// How much a function's logs may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Bytes of log records one function may write per second, on average.
    pub rate_bytes_per_second: u64,
    /// Bytes one function may write at once above the average.
    pub burst_bytes: u64,
    /// What one function's stream keeps (per function: a tenant's logs
    /// take at most its `functions` quota times `max_bytes`).
    pub limits: LogLimits,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            rate_bytes_per_second: 64 << 10,
            burst_bytes: 1 << 20,
            limits: LogLimits::default(),
        }
    }
}

/// A token bucket of bytes: `rate` per second, at most `burst` saved up.
/// Pure: the caller passes the time.
#[derive(Debug, Clone)]
struct ByteBucket {
    tokens: u64,
    last_ms: u64,
}

impl ByteBucket {
    fn new(config: &LogConfig, now_ms: u64) -> Self {
        Self {
            tokens: config.burst_bytes,
            last_ms: now_ms,
        }
    }

    /// Whether it has refilled to its burst by `now_ms`: then it is the
    /// same as a new one, and need not be kept.
    fn is_full(&self, config: &LogConfig, now_ms: u64) -> bool {
        let earned = config
            .rate_bytes_per_second
            .saturating_mul(now_ms.saturating_sub(self.last_ms))
            / 1000;
        self.tokens.saturating_add(earned) >= config.burst_bytes
    }

    /// Takes `bytes` if there are that many; false (and nothing taken) if not.
    fn take(&mut self, config: &LogConfig, bytes: u64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if elapsed > 0 {
            let earned = config.rate_bytes_per_second.saturating_mul(elapsed) / 1000;
            // Time is kept for the fraction of a byte not yet earned.
            if earned > 0 || config.rate_bytes_per_second == 0 {
                self.tokens = self
                    .tokens
                    .saturating_add(earned)
                    .min(config.burst_bytes.max(config.rate_bytes_per_second));
                self.last_ms = now_ms;
            }
        }
        if bytes > self.tokens {
            return false;
        }
        self.tokens -= bytes;
        true
    }
}

/// Adds what arrives within [`LINGER`] to `batch` (up to [`BATCH`]).
async fn linger(rx: &mut mpsc::Receiver<(String, Bytes)>, batch: &mut Vec<(String, Bytes)>) {
    let _ = tokio::time::timeout(LINGER, async {
        while batch.len() < BATCH && rx.recv_many(batch, BATCH - batch.len()).await > 0 {}
    })
    .await;
}

#[derive(Clone)]
pub(crate) struct LogSink {
    tx: mpsc::Sender<(String, Bytes)>,
    queued_bytes: Arc<AtomicUsize>,
    /// Records dropped: over a function's rate, or the writer behind.
    pub dropped: Arc<AtomicU64>,
    config: LogConfig,
    buckets: Arc<Mutex<HashMap<String, ByteBucket>>>,
}

impl LogSink {
    /// Starts the writer; it ends when every sink is dropped, or when
    /// `close` is notified, after writing what is queued.
    pub fn start(
        store: Arc<dyn LogStore>,
        close: Arc<tokio::sync::Notify>,
        config: LogConfig,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<(String, Bytes)>(QUEUE);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let queued = queued_bytes.clone();
        let limits = config.limits;
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let closing = tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => {
                        if n > 0 {
                            linger(&mut rx, &mut batch).await;
                        }
                        n == 0
                    }
                    () = close.notified() => {
                        while let Ok(record) = rx.try_recv() {
                            batch.push(record);
                        }
                        true
                    }
                };
                if !batch.is_empty() {
                    let bytes: usize = batch.iter().map(|(_, b)| b.len()).sum();
                    let records = std::mem::take(&mut batch);
                    if let Err(e) = store.append_within(records, limits, crate::now_ms()).await {
                        tracing::error!(error = %e, "writing invocation logs failed");
                    }
                    queued.fetch_sub(bytes, Ordering::Relaxed);
                }
                if closing {
                    break;
                }
            }
        });
        (
            Self {
                tx,
                queued_bytes,
                dropped: Arc::new(AtomicU64::new(0)),
                config,
                buckets: Arc::new(Mutex::new(HashMap::new())),
            },
            writer,
        )
    }

    pub fn record(&self, tenant: &TenantId, name: &FunctionName, record: &LogRecord) {
        let Ok(bytes) = serde_json::to_vec(record) else {
            return;
        };
        let len = bytes.len();
        let stream = Registry::log_stream(tenant, name);
        if !self.within_rate(&stream, len as u64) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.try_send((stream, Bytes::from(bytes))).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes `bytes` from the function's (stream's) rate.
    fn within_rate(&self, stream: &str, bytes: u64) -> bool {
        let now = crate::now_ms();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match buckets.get_mut(stream) {
            Some(bucket) => bucket.take(&self.config, bytes, now),
            None => {
                // Forget the functions whose buckets refilled (removed ones
                // among them), each time the map has doubled.
                if buckets.len() >= 1024 && buckets.len().is_power_of_two() {
                    buckets.retain(|_, bucket| !bucket.is_full(&self.config, now));
                }
                let mut bucket = ByteBucket::new(&self.config, now);
                let taken = bucket.take(&self.config, bytes, now);
                buckets.insert(stream.to_string(), bucket);
                taken
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_functions_log_bytes_are_held_to_its_rate() {
        let config = LogConfig {
            rate_bytes_per_second: 1000,
            burst_bytes: 5000,
            ..LogConfig::default()
        };
        let mut bucket = ByteBucket::new(&config, 0);
        // The burst, then nothing more until time passes.
        assert!(bucket.take(&config, 4000, 0));
        assert!(!bucket.take(&config, 1001, 0), "1000 left");
        assert!(bucket.take(&config, 1000, 0));
        assert!(!bucket.take(&config, 1, 0));
        // A second earns the rate; small steps add up as well as one big one.
        for ms in 1..=500 {
            bucket.take(&config, 0, ms);
        }
        assert!(bucket.take(&config, 500, 500));
        assert!(!bucket.take(&config, 1, 500));
        assert!(bucket.take(&config, 1000, 1500));
        // Saved up to the burst, never more.
        assert!(!bucket.take(&config, 5001, 1_000_000));
        assert!(bucket.take(&config, 5000, 1_000_000));
        // A record larger than the burst never fits.
        assert!(!bucket.take(&config, 6000, 2_000_000));
    }

    #[test]
    fn a_refilled_bucket_is_as_good_as_a_new_one() {
        let config = LogConfig {
            rate_bytes_per_second: 1000,
            burst_bytes: 2000,
            ..LogConfig::default()
        };
        let mut bucket = ByteBucket::new(&config, 0);
        assert!(bucket.is_full(&config, 0));
        assert!(bucket.take(&config, 1500, 0));
        assert!(!bucket.is_full(&config, 1000));
        assert!(bucket.is_full(&config, 1500));
    }

    #[test]
    fn a_sub_byte_rate_still_earns_over_time() {
        let config = LogConfig {
            rate_bytes_per_second: 10,
            burst_bytes: 100,
            ..LogConfig::default()
        };
        let mut bucket = ByteBucket::new(&config, 0);
        assert!(bucket.take(&config, 100, 0));
        // Every 50 ms earns half a byte: kept until a whole one is earned.
        for ms in (50..=1000).step_by(50) {
            bucket.take(&config, 0, ms);
        }
        assert!(bucket.take(&config, 10, 1000));
        assert!(!bucket.take(&config, 1, 1000));
    }
}
