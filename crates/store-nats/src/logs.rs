//! Logs ([`LogStore`]) on one stream, `<ns>_LOGS`: a log name is a
//! subject (`<ns>.log.<encoded name>`), a record is a message, and a
//! record's position is its stream sequence. Positions therefore grow
//! within a name but skip the numbers other names took: a position is a
//! cursor to read after, not a count (JetStream numbers messages per
//! stream; a stream per name would be a Raft group per function).
//!
//! ## Bytes held, without reading them
//! JetStream counts messages per subject, not bytes. Each record carries
//! the bytes its name had been given before it (`Gust-Log-Offset`), like a
//! file offset, so a name holds `end of its last - offset of its first`
//! bytes: two reads, whatever it holds. For the offsets to be right, an
//! append reads each name's last record and writes on condition that it is
//! still the last (`Nats-Expected-Last-Subject-Sequence` on the name's
//! first record): two nodes appending to one name retry instead of
//! overlapping. A call's records go in one atomic batch (all or none, and
//! nothing of another writer between them), so the condition on a name's
//! first record covers the rest.
//!
//! ## Limits
//! Each record carries the time it was appended (`Gust-Log-Time`, the
//! caller's clock), so the age limit follows the caller's clock as the
//! trait asks. After an append, and at `prune`, a name over a limit has its
//! oldest records read (headers only) up to the first one to keep, then
//! purged by subject below it: the cost is proportional to what is dropped.
//! The purge follows the append instead of being part of it (JetStream
//! has no write that appends and purges at once), so a name can be over
//! its byte limit by the records of the appends on it whose trims have not
//! finished: at most one call's records per writer (each node's log writer
//! appends one batch at a time), for the 2 to 5 round trips the trim takes
//! after the append is acknowledged. A trim that fails leaves the name over
//! until the next append to it or the next `prune` (a minute). Every trim
//! reads the name's last record after its own write, so once concurrent
//! appends are all done the name is within its limit.
//!
//! Function logs and the audit log share this stream and its replicas: an
//! audit entry is as durable as any acknowledged write of the cluster.

use std::collections::HashMap;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;

use gust_store::{LogLimits, LogStore, StoreError};

use crate::batch::Batch;
use crate::meta::{refusal_code, unacknowledged};
use crate::{
    NatsOptions, NatsStore, backend, decode_key, durable_stream, encode_key, ensure_stream,
};

/// Bytes the record's name had been given before it.
const OFFSET_HEADER: &str = "Gust-Log-Offset";
/// When the record was appended (Unix ms, the appender's clock).
const TIME_HEADER: &str = "Gust-Log-Time";
/// Messages in one atomic batch, at most (the server's limit).
const BATCH_MAX: usize = 1000;
/// Appends refused because another writer appended to one of the names
/// first, before the call gives up.
const CONFLICT_RETRIES: u32 = 50;
/// Attempts 100 ms apart while the stream has no leader.
const NO_LEADER_RETRIES: u32 = 30;
/// Names pruned at once.
const PRUNE_PARALLEL: usize = 8;
/// How long a read waits for a record it counted before checking that
/// the record is still there.
const IDLE: std::time::Duration = std::time::Duration::from_millis(500);

const WRONG_LAST_SEQUENCE: u64 = 10071;
const WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;

pub(crate) async fn open_stream(
    js: &jetstream::Context,
    options: &NatsOptions,
) -> Result<stream::Stream, StoreError> {
    let mut config = durable_stream(
        options,
        "LOGS",
        vec![format!("{}.log.>", options.namespace)],
    );
    config.allow_atomic_publish = true;
    ensure_stream(js, config).await
}

/// What a record's headers say about it.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    seq: u64,
    offset: u64,
    time_ms: u64,
}

fn header_u64(headers: Option<&HeaderMap>, name: &str) -> u64 {
    headers
        .and_then(|h| h.get(name))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

/// The first or last record of a name, and the end of the last one.
#[derive(Debug, Clone, Copy)]
struct Edge {
    stamp: Stamp,
    /// `offset + size`: the bytes the name had been given after it.
    end: u64,
}

fn edge_of(message: &jetstream::message::StreamMessage) -> Edge {
    let offset = header_u64(Some(&message.headers), OFFSET_HEADER);
    Edge {
        stamp: Stamp {
            seq: message.sequence,
            offset,
            time_ms: header_u64(Some(&message.headers), TIME_HEADER),
        },
        end: offset.saturating_add(message.payload.len() as u64),
    }
}

/// A write's outcome: written (the sequence of its last message), or
/// refused because a name's last record was no longer the one read.
enum Written {
    Last(u64),
    Conflict,
    /// Nothing listens on the subject: the stream has no leader yet (just
    /// created, or electing one); nothing was written.
    NoLeader,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl NatsStore {
    /// The log name a subject of the stream holds (`None`: not a log's).
    fn log_name_of(&self, subject: &str) -> Option<String> {
        let tokens = subject
            .strip_prefix(self.log_subjects.as_str())?
            .strip_prefix('.')?;
        decode_key(tokens).ok()
    }

    fn log_subject(&self, name: &str) -> String {
        format!("{}.{}", self.log_subjects, encode_key(name))
    }

    async fn log_first(&self, subject: &str) -> Result<Option<Edge>, StoreError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        match self.logs.get_first_raw_message_by_subject(subject, 0).await {
            Ok(message) => Ok(Some(edge_of(&message))),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    async fn log_last(&self, subject: &str) -> Result<Option<Edge>, StoreError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.logs.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(edge_of(&message))),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    /// Appends records (at most [`BATCH_MAX`]) in one atomic write, retrying
    /// while another writer appends to the same names first.
    async fn log_append_batch(
        &self,
        records: &[(String, Bytes)],
        now_ms: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        // Names in first-seen order, with the index of each one's last record.
        let mut names: Vec<(String, usize)> = Vec::new();
        for (i, (name, _)) in records.iter().enumerate() {
            match names.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 = i,
                None => names.push((name.clone(), i)),
            }
        }
        let subjects: HashMap<&str, String> = names
            .iter()
            .map(|(n, _)| (n.as_str(), self.log_subject(n)))
            .collect();
        for attempt in 0..CONFLICT_RETRIES {
            let lasts = futures_util::future::try_join_all(
                names
                    .iter()
                    .map(|(name, _)| self.log_last(&subjects[name.as_str()])),
            )
            .await?;
            // name → (bytes given so far, the last sequence its first
            // record of this call expects; taken once that record is built)
            let mut ends: HashMap<&str, (u64, Option<u64>)> = names
                .iter()
                .zip(&lasts)
                .map(|((name, _), last)| {
                    (
                        name.as_str(),
                        (
                            last.map_or(0, |l| l.end),
                            Some(last.map_or(0, |l| l.stamp.seq)),
                        ),
                    )
                })
                .collect();
            let mut messages = Vec::with_capacity(records.len());
            for (name, payload) in records {
                let mut headers = HeaderMap::new();
                let Some((end, expect)) = ends.get_mut(name.as_str()) else {
                    continue;
                };
                headers.insert(OFFSET_HEADER, end.to_string().as_str());
                headers.insert(TIME_HEADER, now_ms.to_string().as_str());
                if let Some(last) = expect.take() {
                    headers.insert(
                        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                        last.to_string().as_str(),
                    );
                }
                *end = end.saturating_add(payload.len() as u64);
                messages.push((subjects[name.as_str()].clone(), headers, payload.clone()));
            }
            match self.log_publish(messages).await? {
                Written::Last(last) => {
                    let first = (last + 1).saturating_sub(records.len() as u64);
                    return Ok(names
                        .into_iter()
                        .map(|(name, i)| (name, first + i as u64))
                        .collect());
                }
                Written::NoLeader if attempt < NO_LEADER_RETRIES => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Written::NoLeader => {
                    return Err(StoreError::Backend(
                        "the log stream has no leader: check that a majority of the NATS servers run".into(),
                    ));
                }
                Written::Conflict => {
                    // Another writer got there first; back off a little,
                    // more each time, so two do not keep colliding.
                    tokio::time::sleep(std::time::Duration::from_millis(
                        u64::from(attempt) * 2 + (now_ms ^ u64::from(attempt)) % 3,
                    ))
                    .await;
                }
            }
        }
        Err(StoreError::Backend(format!(
            "appending to the logs was refused {CONFLICT_RETRIES} times: other writers keep appending to the same logs"
        )))
    }

    /// Publishes the messages as one atomic batch (one message: a plain
    /// publish).
    async fn log_publish(
        &self,
        messages: Vec<(String, HeaderMap, Bytes)>,
    ) -> Result<Written, StoreError> {
        let refused = |code: u64, description: &str| -> Result<Written, StoreError> {
            match code {
                WRONG_LAST_SEQUENCE | WRONG_LAST_SEQUENCE_CONSTANT => Ok(Written::Conflict),
                _ => Err(StoreError::Backend(format!(
                    "JetStream refused the log write: {description} ({code})"
                ))),
            }
        };
        let count = messages.len();
        if count == 1 {
            let Some((subject, headers, payload)) = messages.into_iter().next() else {
                return Err(StoreError::Backend("an empty log write".into()));
            };
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(backend)?;
            return match ack.await {
                Ok(ack) => Ok(Written::Last(ack.sequence)),
                Err(e) if e.kind() == PublishErrorKind::StreamNotFound => Ok(Written::NoLeader),
                Err(e) => match refusal_code(&e) {
                    Some(code) => refused(code, &e.to_string()),
                    None => Err(unacknowledged(e)),
                },
            };
        }
        match crate::batch::publish(&self.client, messages).await? {
            Batch::Stored(last) => Ok(Written::Last(last)),
            Batch::Refused { code, description } => refused(code, &description),
            Batch::Unheard => Ok(Written::NoLeader),
        }
    }

    /// Appends in batches of at most [`BATCH_MAX`] (each atomic; a call
    /// with more is atomic per batch).
    async fn log_append(
        &self,
        records: Vec<(String, Bytes)>,
        now_ms: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut heads: Vec<(String, u64)> = Vec::new();
        for chunk in records.chunks(BATCH_MAX) {
            for (name, last) in self.log_append_batch(chunk, now_ms).await? {
                match heads.iter_mut().find(|(n, _)| *n == name) {
                    Some(head) => head.1 = last,
                    None => heads.push((name, last)),
                }
            }
        }
        Ok(heads)
    }

    /// Drops the name's oldest records while it is over `limits`; returns
    /// how many went.
    async fn log_hold(
        &self,
        subject: &str,
        limits: LogLimits,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let (first, last) = tokio::try_join!(self.log_first(subject), self.log_last(subject))?;
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(0);
        };
        let keep_offset = last.end.saturating_sub(limits.max_bytes);
        let keep_time = now_ms.saturating_sub(limits.max_age_ms);
        let keeps = |s: &Stamp| s.offset >= keep_offset && s.time_ms >= keep_time;
        if keeps(&first.stamp) {
            return Ok(0);
        }
        // Read the oldest records' headers until the first one to keep.
        let consumer = self
            .logs
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.to_string(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: first.stamp.seq,
                },
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(backend)?;
        if consumer.cached_info().num_pending == 0 {
            // Another writer dropped them first.
            return Ok(0);
        }
        let mut messages = consumer.messages().await.map_err(backend)?;
        // Purge below the first record to keep, or, if none is left, after
        // the last record read (only what was read is known to go).
        let mut cut = None;
        let mut read_through = first.stamp.seq - 1;
        while let Some(message) = self.log_next(&mut messages, subject, read_through).await? {
            let info = message.info().map_err(backend)?;
            if info.stream_sequence <= read_through {
                // Redelivered by a recreated consumer (see `read`).
                continue;
            }
            let stamp = Stamp {
                seq: info.stream_sequence,
                offset: header_u64(message.headers.as_ref(), OFFSET_HEADER),
                time_ms: header_u64(message.headers.as_ref(), TIME_HEADER),
            };
            if keeps(&stamp) {
                cut = Some(stamp.seq);
                break;
            }
            read_through = stamp.seq;
            cut = Some(stamp.seq + 1);
            if info.pending == 0 || stamp.seq >= last.stamp.seq {
                break;
            }
        }
        let Some(cut) = cut else {
            return Ok(0);
        };
        let purged = self
            .logs
            .purge()
            .filter(subject)
            .sequence(cut)
            .await
            .map_err(backend)?;
        Ok(purged.purged)
    }
}

impl NatsStore {
    /// The consumer's next message, or `None` when the log holds nothing
    /// after `after` any more: records counted as pending when the
    /// consumer was made may be dropped (trimmed, deleted) before they
    /// are delivered, and then never come.
    async fn log_next(
        &self,
        messages: &mut consumer::pull::Ordered,
        subject: &str,
        after: u64,
    ) -> Result<Option<jetstream::Message>, StoreError> {
        let deadline = tokio::time::Instant::now() + crate::REQUEST_TIMEOUT;
        loop {
            match tokio::time::timeout(IDLE, messages.next()).await {
                Ok(Some(Ok(message))) => return Ok(Some(message)),
                Ok(Some(Err(e))) => return Err(backend(e)),
                Ok(None) => return Err(StoreError::Closed),
                Err(_) => {
                    if self
                        .log_last(subject)
                        .await?
                        .is_none_or(|last| last.stamp.seq <= after)
                    {
                        return Ok(None);
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(StoreError::Backend("reading a log stalled".into()));
                    }
                }
            }
        }
    }
}

#[async_trait]
impl LogStore for NatsStore {
    async fn append(
        &self,
        records: Vec<(String, Bytes)>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.log_append(records, wall_ms()).await
    }

    async fn read(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, StoreError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let subject = self.log_subject(stream);
        // One get answers the commonest reads (nothing new: a follower
        // polling; one record) without making a consumer.
        let next = match self
            .logs
            .raw_message_builder()
            .sequence(after.saturating_add(1))
            .next_by_subject(subject.clone())
            .send()
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(Vec::new()),
            Err(e) => return Err(backend(e)),
        };
        let mut out = vec![(next.sequence, next.payload)];
        if limit == 1 {
            return Ok(out);
        }
        let consumer = self
            .logs
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: next.sequence + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(backend)?;
        let mut pending = consumer.cached_info().num_pending;
        if pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(backend)?;
        while pending > 0 && out.len() < limit {
            let through = out.last().map_or(after, |(seq, _)| *seq);
            let Some(message) = self.log_next(&mut messages, &subject, through).await? else {
                break;
            };
            let info = message.info().map_err(backend)?;
            pending = info.pending;
            // An ordered consumer that recreates itself before its first
            // delivery starts again from the log's beginning.
            if info.stream_sequence <= through {
                continue;
            }
            out.push((info.stream_sequence, message.payload.clone()));
        }
        Ok(out)
    }

    async fn delete_stream(&self, stream: &str) -> Result<(), StoreError> {
        self.logs
            .purge()
            .filter(self.log_subject(stream))
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn append_within(
        &self,
        records: Vec<(String, Bytes)>,
        limits: LogLimits,
        now_ms: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let heads = self.log_append(records, now_ms).await?;
        // The records are written: a failed trim must not report the
        // append as failed (a caller would write them again). The next
        // append or prune trims what this one left.
        for held in futures_util::future::join_all(
            heads
                .iter()
                .map(|(name, _)| self.log_hold_name(name, limits, now_ms)),
        )
        .await
        {
            if let Err(e) = held {
                tracing::warn!(error = %e, "holding a log to its limits failed; the next write retries");
            }
        }
        Ok(heads)
    }

    async fn prune(&self, prefix: &str, limits: LogLimits, now_ms: u64) -> Result<u64, StoreError> {
        let subjects: Vec<String> = self
            .logs
            .info_with_subjects(format!("{}.>", self.log_subjects))
            .await
            .map_err(backend)?
            .map(|item| item.map(|(subject, _)| subject).map_err(backend))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        // Names are encoded in subjects: a prefix is matched on the name.
        let subjects = subjects.into_iter().filter(|subject| {
            self.log_name_of(subject)
                .is_some_and(|name| name.starts_with(prefix))
        });
        let dropped: Vec<Result<u64, StoreError>> = futures_util::stream::iter(subjects)
            .map(|subject| async move { self.log_hold(&subject, limits, now_ms).await })
            .buffer_unordered(PRUNE_PARALLEL)
            .collect()
            .await;
        dropped.into_iter().sum()
    }

    async fn stream_bytes(&self, stream: &str) -> Result<u64, StoreError> {
        let subject = self.log_subject(stream);
        let (first, last) = tokio::try_join!(self.log_first(&subject), self.log_last(&subject))?;
        Ok(match (first, last) {
            (Some(first), Some(last)) => last.end.saturating_sub(first.stamp.offset),
            _ => 0,
        })
    }
}

impl NatsStore {
    async fn log_hold_name(
        &self,
        name: &str,
        limits: LogLimits,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.log_hold(&self.log_subject(name), limits, now_ms).await
    }
}

#[cfg(test)]
mod tests {
    use gust_store::LogStore as _;

    use crate::testkit;

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_logs() {
        let Some(store) = testkit::store().await else {
            return;
        };
        gust_store::conformance::logs(&store).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_log_limits() {
        let Some(store) = testkit::store().await else {
            return;
        };
        gust_store::conformance::log_limits(&store).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn appends_from_two_nodes_interleave_and_both_read_all() {
        let Some(one) = testkit::store().await else {
            return;
        };
        let other = testkit::store_beside(&one).await;
        let write = |store: crate::NatsStore, tag: &'static str| async move {
            for i in 0..20 {
                let records = (0..3)
                    .map(|j| ("shared".to_string(), format!("{tag}{i}.{j}").into()))
                    .chain(std::iter::once((
                        format!("own/{tag}"),
                        format!("{tag}{i}").into(),
                    )))
                    .collect();
                store.append(records).await.unwrap();
            }
        };
        tokio::join!(write(one.clone(), "a"), write(other.clone(), "b"));
        for reader in [&one, &other] {
            let all = reader.read("shared", 0, 1000).await.unwrap();
            assert_eq!(all.len(), 120);
            assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "in position order");
            // Each writer's records are in its order, and a call's three are together.
            for tag in ["a", "b"] {
                let mine: Vec<String> = all
                    .iter()
                    .map(|(_, b)| String::from_utf8(b.to_vec()).unwrap())
                    .filter(|s| s.starts_with(tag))
                    .collect();
                let expected: Vec<String> = (0..20)
                    .flat_map(|i| (0..3).map(move |j| format!("{tag}{i}.{j}")))
                    .collect();
                assert_eq!(mine, expected);
            }
            for chunk in all.chunks(3) {
                let first = String::from_utf8(chunk[0].1.to_vec()).unwrap();
                let call = first.split('.').next().unwrap().to_string();
                assert!(
                    chunk
                        .iter()
                        .all(|(_, b)| b.starts_with(format!("{call}.").as_bytes())),
                    "a call's records are not split by another's"
                );
            }
            // The bytes held are the bytes written.
            let bytes: u64 = all.iter().map(|(_, b)| b.len() as u64).sum();
            assert_eq!(reader.stream_bytes("shared").await.unwrap(), bytes);
            assert_eq!(reader.read("own/a", 0, 100).await.unwrap().len(), 20);
            assert_eq!(reader.read("own/b", 0, 100).await.unwrap().len(), 20);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_nodes_trimming_one_log_leave_it_within_its_limit() {
        let Some(one) = testkit::store().await else {
            return;
        };
        let other = testkit::store_beside(&one).await;
        let limits = gust_store::LogLimits {
            max_bytes: 100,
            max_age_ms: 60_000,
        };
        let write = |store: crate::NatsStore, tag: &'static str| async move {
            for i in 0..30 {
                let records = (0..2)
                    .map(|j| ("tight".to_string(), format!("{tag}{i:02}.{j}").into()))
                    .collect();
                store.append_within(records, limits, 1_000).await.unwrap();
            }
        };
        let reader = async {
            // A reader following the log while it is trimmed sees each
            // record at most once, in order.
            let mut after = 0;
            let mut seen = Vec::new();
            for _ in 0..40 {
                for (seq, record) in one.read("tight", after, 7).await.unwrap() {
                    assert!(seq > after);
                    after = seq;
                    seen.push(record);
                }
            }
            seen
        };
        let ((), (), seen) =
            tokio::join!(write(one.clone(), "a"), write(other.clone(), "b"), reader);
        let mut unique = seen.clone();
        unique.dedup();
        assert_eq!(unique.len(), seen.len());
        // Each trim follows its own write and sees every earlier one, so
        // once all are done the log is within its limit, and holds its
        // newest records.
        let bytes = one.stream_bytes("tight").await.unwrap();
        assert!(bytes <= 100 && bytes > 100 - 6, "{bytes}");
        let kept = other.read("tight", 0, 100).await.unwrap();
        let held: u64 = kept.iter().map(|(_, r)| r.len() as u64).sum();
        assert_eq!(held, bytes);
        // The newest record is the last one either writer wrote (the other
        // writer may have finished long before, its records trimmed since).
        let newest = kept.last().map(|(_, r)| r.clone()).unwrap();
        assert!(
            newest.as_ref() == b"a29.1" || newest.as_ref() == b"b29.1",
            "{newest:?}"
        );
    }

    /// Throughput on the test cluster, printed: `cargo test -p
    /// gust-store-nats log_throughput -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a measurement, not a check"]
    async fn log_throughput() {
        let Some(store) = testkit::store().await else {
            return;
        };
        let record = bytes::Bytes::from(vec![b'x'; 200]);
        let calls = 300;
        let start = std::time::Instant::now();
        for _ in 0..calls {
            store
                .append(vec![("one".into(), record.clone())])
                .await
                .unwrap();
        }
        let single = start.elapsed();
        let start = std::time::Instant::now();
        for _ in 0..calls / 10 {
            store
                .append(vec![("hundred".into(), record.clone()); 100])
                .await
                .unwrap();
        }
        let hundreds = start.elapsed();
        let limits = gust_store::LogLimits {
            max_bytes: 100 * 200,
            ..Default::default()
        };
        let start = std::time::Instant::now();
        for _ in 0..calls {
            store
                .append_within(vec![("held".into(), record.clone())], limits, 0)
                .await
                .unwrap();
        }
        let held_single = start.elapsed();
        let start = std::time::Instant::now();
        for _ in 0..calls / 10 {
            store
                .append_within(vec![("held100".into(), record.clone()); 100], limits, 0)
                .await
                .unwrap();
        }
        let held_hundreds = start.elapsed();
        assert_eq!(store.stream_bytes("held").await.unwrap(), 100 * 200);
        let start = std::time::Instant::now();
        let read = store.read("hundred", 0, 1000).await.unwrap();
        let reading = start.elapsed();
        assert_eq!(read.len(), 1000);
        println!(
            "append, 1 record per call: {:.0} records/s ({:.2} ms per call); \
             100 per call: {:.0} records/s ({:.2} ms per call); read of 1,000: {:.1} ms",
            f64::from(calls) / single.as_secs_f64(),
            single.as_secs_f64() * 1000.0 / f64::from(calls),
            f64::from(calls / 10 * 100) / hundreds.as_secs_f64(),
            hundreds.as_secs_f64() * 1000.0 / f64::from(calls / 10),
            reading.as_secs_f64() * 1000.0
        );
        println!(
            "append_within at a full 20 kB limit (each call drops as much as it adds), \
             1 record per call: {:.2} ms per call; 100 per call: {:.2} ms per call",
            held_single.as_secs_f64() * 1000.0 / f64::from(calls),
            held_hundreds.as_secs_f64() * 1000.0 / f64::from(calls / 10),
        );
    }
}
