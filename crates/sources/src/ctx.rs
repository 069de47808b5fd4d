//! What a connector works with: its source, where to put messages, and the
//! state it reports. The rules every connector shares live here: size
//! limit, backpressure, counting, the state written on each change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gust_events::{Events, SourceMessage, SourceRecord, SourceStatus};
use gust_store::Accounts;
use tokio::sync::Mutex;

use crate::SourceError;
use crate::stats::Counters;

/// How often the function's queue depth is looked at while pulling.
const DEPTH_EVERY: Duration = Duration::from_millis(100);
/// How long a paused source waits before looking again.
const PAUSED_POLL: Duration = Duration::from_millis(200);

pub(crate) struct Ctx {
    pub events: Events,
    pub record: SourceRecord,
    /// The broker's address, unsealed.
    pub url: String,
    pub counters: Arc<Counters>,
    pub max_event_bytes: usize,
    pub accounts: Accounts,
    pub node: String,
    /// Asked before pulling more: the function out of budget pauses it.
    pub budget: Option<crate::supervisor::BudgetCheck>,
    /// The last state written, and the queue depth last seen with when.
    state: Mutex<(String, Option<String>)>,
    depth: Mutex<Option<(Instant, u64)>>,
    /// Events queued since the depth was last read (counted in, so a
    /// cached depth never lets a burst through).
    queued_since: AtomicU64,
}

impl Ctx {
    pub fn new(
        events: Events,
        record: SourceRecord,
        url: String,
        counters: Arc<Counters>,
        max_event_bytes: usize,
        accounts: Accounts,
        node: String,
    ) -> Self {
        Self {
            events,
            record,
            url,
            counters,
            max_event_bytes,
            accounts,
            node,
            budget: None,
            state: Mutex::new((String::new(), None)),
            depth: Mutex::new(None),
            queued_since: AtomicU64::new(0),
        }
    }

    /// Records the source's state if it changed (best effort: a store
    /// that cannot take it is retried at the next change).
    pub async fn set_state(&self, state: &str, error: Option<String>) {
        self.counters
            .connected
            .store(state == "connected" || state == "paused", Ordering::Relaxed);
        self.counters
            .paused
            .store(state == "paused", Ordering::Relaxed);
        let mut last = self.state.lock().await;
        if last.0 == state && last.1 == error {
            return;
        }
        let status = SourceStatus {
            state: state.to_string(),
            last_error: error.clone(),
            since_ms: now_ms(),
            node: self.node.clone(),
        };
        match self.events.set_source_status(&self.record, &status).await {
            Ok(()) => *last = (state.to_string(), error),
            Err(e) => {
                tracing::debug!(source = %self.record.key(), error = %e, "cannot record a source's state")
            }
        }
    }

    /// Waits while the function's queue is at the source's `max_backlog`,
    /// the tenant at its `event_backlog` quota, or the function out of
    /// budget (said in the state): the broker keeps what Gust has no room
    /// for.
    pub async fn room(&self) -> Result<(), SourceError> {
        let max = u64::from(self.record.spec.max_backlog());
        let mut paused = false;
        loop {
            let quota = self
                .accounts
                .quotas(&self.record.tenant)
                .unwrap_or_default()
                .event_backlog;
            let depth = self.depth().await?;
            let spent = self
                .budget
                .as_ref()
                .and_then(|check| check(&self.record.tenant, &self.record.function));
            if spent.is_none() && depth < max && self.events.backlog(&self.record.tenant) < quota {
                if paused {
                    self.set_state("connected", None).await;
                }
                return Ok(());
            }
            if !paused {
                paused = true;
                self.set_state("paused", spent).await;
            }
            tokio::time::sleep(PAUSED_POLL).await;
            *self.depth.lock().await = None;
        }
    }

    async fn depth(&self) -> Result<u64, SourceError> {
        let mut cached = self.depth.lock().await;
        if let Some((at, depth)) = *cached
            && at.elapsed() < DEPTH_EVERY
        {
            return Ok(depth + self.queued_since.load(Ordering::Relaxed));
        }
        self.queued_since.store(0, Ordering::Relaxed);
        let depth = self
            .events
            .queued(&self.record.tenant, &self.record.function)
            .await?;
        *cached = Some((Instant::now(), depth));
        Ok(depth)
    }

    /// Queues one message; see [`Ctx::submit_batch`].
    pub async fn submit(&self, message: SourceMessage) -> Result<(), SourceError> {
        self.submit_batch(vec![message]).await
    }

    /// Queues messages in their order (one ordering key's with one
    /// commit); returns once all are durable. One over the event size
    /// limit is refused: counted and reported, and to be acknowledged like
    /// the rest (the broker would otherwise hand it back for ever).
    pub async fn submit_batch(&self, messages: Vec<SourceMessage>) -> Result<(), SourceError> {
        self.counters
            .received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        let mut fitting = Vec::with_capacity(messages.len());
        for message in messages {
            if message.data.len() <= self.max_event_bytes {
                fitting.push(message);
                continue;
            }
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            let why = format!(
                "a message of {} bytes from {} is over the event limit of {} bytes (gust up --max-event-bytes): it was acknowledged and not queued",
                message.data.len(),
                message.source,
                self.max_event_bytes
            );
            tracing::warn!(source = %self.record.key(), "{why}");
            self.set_state("connected", Some(why)).await;
        }
        if fitting.is_empty() {
            return Ok(());
        }
        let (queued, duplicates) = self
            .events
            .submit_batch_from_source(&self.record, fitting)
            .await?;
        self.counters.queued.fetch_add(queued, Ordering::Relaxed);
        self.queued_since.fetch_add(queued, Ordering::Relaxed);
        self.counters
            .duplicates
            .fetch_add(duplicates, Ordering::Relaxed);
        Ok(())
    }
}

/// The next messages waiting on a lane: at least one (waiting for it),
/// at most `max`; `None` once the lane is closed.
pub(crate) async fn next_batch<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    max: usize,
) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(more) => batch.push(more),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Which of `lanes` a key's messages go to: always the same one, so they
/// stay in order, while other keys' are queued beside them.
pub(crate) fn lane_of(key: &str, lanes: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % lanes.max(1) as u64) as usize
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The JSON text of bytes that may not be UTF-8: a string when they are,
/// else `{"base64": "…"}`.
pub(crate) fn json_bytes(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::Value::String(text.to_string()),
        Err(_) => serde_json::json!({ "base64": base64(bytes) }),
    }
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_as_json() {
        assert_eq!(json_bytes(b"hi"), serde_json::json!("hi"));
        assert_eq!(
            json_bytes(&[0xff, 0x00]),
            serde_json::json!({"base64": "/wA="})
        );
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b""), "");
    }
}
