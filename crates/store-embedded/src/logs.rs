//! Logs ([`LogStore`]): append-only streams of records with sequence
//! numbers, pruned by age and size.

use async_trait::async_trait;
use bytes::Bytes;
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition, WriteTransaction};

use gust_store::{LogLimits, LogStore, StoreError};

use crate::{EmbeddedStore, backend};

/// (stream, seq) → record.
const LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");
/// stream → last sequence number given (kept when the stream is deleted,
/// so numbers are never reused).
const LOG_HEADS: TableDefinition<&str, u64> = TableDefinition::new("log_heads");
/// stream → bytes of the records it holds.
const LOG_BYTES: TableDefinition<&str, u64> = TableDefinition::new("log_bytes");
/// (stream, minute of the wall clock) → the first sequence number appended
/// in that minute: what ages records out without a time in each.
const LOG_MINUTES: TableDefinition<(&str, u64), u64> = TableDefinition::new("log_minutes");
const MINUTE_MS: u64 = 60_000;

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(LOGS).map_err(backend)?;
    txn.open_table(LOG_HEADS).map_err(backend)?;
    txn.open_table(LOG_BYTES).map_err(backend)?;
    txn.open_table(LOG_MINUTES).map_err(backend)?;
    Ok(())
}

#[async_trait]
impl LogStore for EmbeddedStore {
    async fn append(
        &self,
        records: Vec<(String, Bytes)>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.write(move |txn, _| append_logs(txn, &records, wall_ms()))
            .await
    }

    async fn append_within(
        &self,
        records: Vec<(String, Bytes)>,
        limits: LogLimits,
        now_ms: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.write(move |txn, _| {
            let heads = append_logs(txn, &records, now_ms)?;
            for (stream, _) in &heads {
                prune_log(txn, stream, limits, now_ms)?;
            }
            Ok(heads)
        })
        .await
    }

    async fn prune(&self, prefix: &str, limits: LogLimits, now_ms: u64) -> Result<u64, StoreError> {
        let owned = prefix.to_string();
        let streams = EmbeddedStore::read(self, move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let sizes = txn.open_table(LOG_BYTES).map_err(backend)?;
            let mut streams = Vec::new();
            for item in sizes.range(owned.as_str()..).map_err(backend)? {
                let (stream, _) = item.map_err(backend)?;
                if !stream.value().starts_with(owned.as_str()) {
                    break;
                }
                streams.push(stream.value().to_string());
            }
            Ok(streams)
        })
        .await?;
        // A write per stream (each held to its size): other writers go in
        // between, whatever the number of streams.
        let mut dropped = 0;
        for stream in streams {
            dropped += self
                .write(move |txn, _| prune_log(txn, &stream, limits, now_ms))
                .await?;
        }
        Ok(dropped)
    }

    async fn stream_bytes(&self, stream: &str) -> Result<u64, StoreError> {
        let stream = stream.to_string();
        EmbeddedStore::read(self, move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let sizes = txn.open_table(LOG_BYTES).map_err(backend)?;
            Ok(sizes
                .get(stream.as_str())
                .map_err(backend)?
                .map_or(0, |v| v.value()))
        })
        .await
    }

    async fn read(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let stream = stream.to_string();
        EmbeddedStore::read(self, move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let logs = txn.open_table(LOGS).map_err(backend)?;
            let start = after.saturating_add(1);
            let mut out = Vec::new();
            for item in logs
                .range((stream.as_str(), start)..=(stream.as_str(), u64::MAX))
                .map_err(backend)?
                .take(limit)
            {
                let (k, v) = item.map_err(backend)?;
                out.push((k.value().1, Bytes::copy_from_slice(v.value())));
            }
            Ok(out)
        })
        .await
    }

    async fn delete_stream(&self, stream: &str) -> Result<(), StoreError> {
        let stream = stream.to_string();
        self.write(move |txn, _| {
            let mut logs = txn.open_table(LOGS).map_err(backend)?;
            logs.retain_in(
                (stream.as_str(), 0)..=(stream.as_str(), u64::MAX),
                |_, _| false,
            )
            .map_err(backend)?;
            let mut minutes = txn.open_table(LOG_MINUTES).map_err(backend)?;
            minutes
                .retain_in(
                    (stream.as_str(), 0)..=(stream.as_str(), u64::MAX),
                    |_, _| false,
                )
                .map_err(backend)?;
            txn.open_table(LOG_BYTES)
                .map_err(backend)?
                .remove(stream.as_str())
                .map_err(backend)?;
            // Keep the head so sequence numbers are never reused for this stream name.
            Ok(())
        })
        .await
    }
}

/// The wall clock in ms (stamps log records appended without a time, and
/// names given to queued messages).
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Appends log records in `txn`, counting each stream's bytes and marking
/// the minute (`now_ms`) its records were appended in.
fn append_logs(
    txn: &redb::WriteTransaction,
    records: &[(String, Bytes)],
    now_ms: u64,
) -> Result<Vec<(String, u64)>, StoreError> {
    // stream → (first seq given now, last seq given now, bytes added)
    let mut heads: Vec<(String, u64, u64, u64)> = Vec::new();
    let mut logs = txn.open_table(LOGS).map_err(backend)?;
    let mut head_table = txn.open_table(LOG_HEADS).map_err(backend)?;
    for (stream, bytes) in records {
        let seq = match heads.iter_mut().find(|(s, ..)| s == stream) {
            Some((_, _, seq, added)) => {
                *seq += 1;
                *added += bytes.len() as u64;
                *seq
            }
            None => {
                let last = head_table
                    .get(stream.as_str())
                    .map_err(backend)?
                    .map_or(0, |v| v.value());
                heads.push((stream.clone(), last + 1, last + 1, bytes.len() as u64));
                last + 1
            }
        };
        logs.insert((stream.as_str(), seq), bytes.as_ref())
            .map_err(backend)?;
    }
    let mut sizes = txn.open_table(LOG_BYTES).map_err(backend)?;
    let mut minutes = txn.open_table(LOG_MINUTES).map_err(backend)?;
    let minute = now_ms / MINUTE_MS;
    for (stream, first, last, added) in &heads {
        head_table.insert(stream.as_str(), *last).map_err(backend)?;
        let held = sizes
            .get(stream.as_str())
            .map_err(backend)?
            .map_or(0, |v| v.value());
        sizes
            .insert(stream.as_str(), held.saturating_add(*added))
            .map_err(backend)?;
        if minutes
            .get((stream.as_str(), minute))
            .map_err(backend)?
            .is_none()
        {
            minutes
                .insert((stream.as_str(), minute), *first)
                .map_err(backend)?;
        }
    }
    Ok(heads
        .into_iter()
        .map(|(stream, _, last, _)| (stream, last))
        .collect())
}

/// Drops `stream`'s oldest records while it is over `limits`; returns how many.
fn prune_log(
    txn: &redb::WriteTransaction,
    stream: &str,
    limits: LogLimits,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let mut logs = txn.open_table(LOGS).map_err(backend)?;
    let mut sizes = txn.open_table(LOG_BYTES).map_err(backend)?;
    let mut minutes = txn.open_table(LOG_MINUTES).map_err(backend)?;
    let mut held = sizes.get(stream).map_err(backend)?.map_or(0, |v| v.value());
    let before = held;
    let mut dropped = 0u64;
    // By age: records appended in a minute wholly before the cutoff go.
    let cutoff = now_ms.saturating_sub(limits.max_age_ms) / MINUTE_MS;
    let oldest = minutes
        .range((stream, 0)..=(stream, u64::MAX))
        .map_err(backend)?
        .next()
        .transpose()
        .map_err(backend)?
        .map(|(k, _)| k.value().1);
    if oldest.is_some_and(|minute| minute < cutoff) {
        let keep_from = minutes
            .range((stream, cutoff)..=(stream, u64::MAX))
            .map_err(backend)?
            .next()
            .transpose()
            .map_err(backend)?
            .map_or(u64::MAX, |(_, seq)| seq.value());
        logs.retain_in((stream, 0)..(stream, keep_from), |_, v| {
            held = held.saturating_sub(v.len() as u64);
            dropped += 1;
            false
        })
        .map_err(backend)?;
        minutes
            .retain_in((stream, 0)..(stream, cutoff), |_, _| false)
            .map_err(backend)?;
    }
    // By size: the oldest records go until the rest fits.
    if held > limits.max_bytes {
        let mut through = None;
        for item in logs
            .range((stream, 0)..=(stream, u64::MAX))
            .map_err(backend)?
        {
            let (k, v) = item.map_err(backend)?;
            held = held.saturating_sub(v.value().len() as u64);
            dropped += 1;
            through = Some(k.value().1);
            if held <= limits.max_bytes {
                break;
            }
        }
        if let Some(through) = through {
            logs.retain_in((stream, 0)..=(stream, through), |_, _| false)
                .map_err(backend)?;
        }
    }
    if held != before {
        sizes.insert(stream, held).map_err(backend)?;
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        let (_dir, store) = crate::open_temp();
        gust_store::conformance::logs(&store).await;
        gust_store::conformance::log_limits(&store).await;
    }
}
