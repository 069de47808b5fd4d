//! Tenants' data ([`DataStore`]) on one stream, `<ns>_DATA`, whose
//! messages are both the data and its change feed.
//!
//! ## Layout
//! - `<ns>.data.<encoded key>`: one message per write of the key, the value
//!   as payload, the owner's revision in [`REVISION_HEADER`], a delete as a
//!   tombstone ([`OP_HEADER`]). A key's value is its subject's last message;
//!   the feed is the messages of `<ns>.data.>` in stream order, and a
//!   change's `seq` is its stream sequence.
//! - `<ns>.datausage.<encoded owner>`: the owner's [`OwnerRecord`] (keys,
//!   bytes, last revision) after each write.
//! - `<ns>.datatrim`: how far the feed was trimmed.
//! - `<ns>.datafence`: read fences (below); each rolls up the last.
//!
//! ## A read is fenced
//! The stream leader answers a read, but a leader cut off from the others
//! goes on answering for 10–20 s (NATS checks neither quorum nor term on a
//! message get; `CHAOS.md`), and after a partition heals it answers until
//! the new leader reaches it: a read there can return a value already
//! overwritten. So a read of a key whose last message has sequence S (0:
//! none) is confirmed by a fence: a message to `<ns>.datafence` with
//! `Nats-Expected-Last-Subject-Sequence: S` for the key's subject
//! (`…-Subject`, NATS 2.11+), which only the quorum's leader acknowledges,
//! after commit. Acknowledged: the value was current at a point within the
//! read. Refused (`wrong last sequence`): the key moved; read again. Never
//! acknowledged (a leader without quorum): the read fails as unavailable.
//! `get_many` reads every key, then fences them: each fence confirms its
//! subject unchanged from its read to its fence, so the values held at
//! once, between the last read and the first fence. Keys sharing an
//! owner are fenced first through the owner's record (read before them;
//! every write moves it), one fence per owner; while the owner's other
//! keys are being written that fails, and the next tries fence each key.
//!
//! ## One apply is one atomic batch
//! [`DataStore::apply`] reads the owners' records and the keys' last
//! messages, decides every write (counters, allowance) client-side, then
//! publishes the owners' new records and the writes as one JetStream
//! atomic batch (2.12 `allow_atomic`): all are stored, in consecutive
//! sequences, or none is. Each owner's record carries
//! `Nats-Expected-Last-Subject-Sequence` = the record read, so the stream
//! leader refuses the whole batch if any write of that owner committed in
//! between; the apply then reads again and retries. An owner's writes are
//! thereby serialised through its record: every key's write is decided on
//! the state it replaces (increments lose nothing, an allowance is never
//! passed), and revisions are numbered per owner without gaps. The writes
//! carry a `Nats-Msg-Id` kept through the retries of one apply, so a try
//! stored although answered as refused is never applied a second time.
//!
//! Async-nats has no batch publisher: the messages go as core publishes
//! (the server stages them, in order, on the stream leader), the last as
//! a request whose answer is the batch's acknowledgement. A batch may hold
//! at most the servers' `jetstream { limits { batch { max_msgs } } }`
//! messages (1000 by default): the writes plus one record per owner
//! written, so Gust's largest batch (1000 keys of one tenant) needs 1001.
//!
//! ## Trimming keeps last values
//! The stream keeps every message of a key until the feed is trimmed:
//! [`DataStore::trim_changes`] moves the trim mark, then purges, key by
//! key, what the trimmed range superseded (a key's last value stays; a
//! tombstone goes), and each touched owner's older records.
//!
//! ## Costs
//! `get` one request to the stream leader and one fence (a replicated
//! write); `get_many` of one owner's keys one read per key and one more,
//! then one fence (100 keys: 9 ms on the test cluster), or, when that
//! fence fails, one fence per distinct key, sent together (75 ms);
//! `apply` one read per owner and per key, then a batch; `keys` streams
//! the last message (headers only) of every key under the prefix's whole
//! segments and sorts them client-side: O(keys under the prefix) per
//! page; `changes` one consumer created per call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use gust_store::{
    Allowance, DataChange, DataStore, DataUsage, DataWrite, Entry, KeyInfo, StoreError,
};

use crate::batch::Batch;
use crate::meta::unacknowledged;
use crate::{
    NatsOptions, NatsStore, REQUEST_TIMEOUT, backend, decode_key, durable_stream, encode_key,
    ensure_stream, prefix_filter,
};

/// Makes a publish conditional on another subject's last sequence (NATS 2.11+).
const EXPECTED_SUBJECT_HEADER: &str = "Nats-Expected-Last-Subject-Sequence-Subject";
/// Reads of a key that moved under its fence before the read fails.
const FENCE_ATTEMPTS: usize = 10;

/// Marks a tombstone (a deleted key).
const OP_HEADER: &str = "Gust-Op";
const OP_DELETE: &str = "del";
/// The key's revision, numbered per owner.
const REVISION_HEADER: &str = "Gust-Revision";
/// The size of the payload a headers-only consumer left out.
const SIZE_HEADER: &str = "Nats-Msg-Size";

/// JetStream's error codes for a batch refused because what it was
/// conditioned on moved, or that the server could not stage: nothing was
/// written, and the apply reads again and retries.
const RETRYABLE: [u64; 4] = [
    10071, // wrong last sequence (an owner's record changed)
    10164, // wrong last sequence (another batch of that owner in flight)
    10176, // the batch is incomplete (a staged message was dropped)
    10210, // too many batches in flight on the stream
];
const TOO_LARGE: u64 = 10199;
/// Refusals of a batch holding a `Nats-Msg-Id` already stored (in the
/// duplicate window), or being stored.
const DUPLICATE: [u64; 2] = [10201, 10158];

/// How long an apply keeps retrying while other writes of the same owner
/// keep committing first.
const CONTENTION_LIMIT: Duration = Duration::from_secs(10);

/// What the store keeps per owner, written with every write of its keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OwnerRecord {
    keys: u64,
    bytes: u64,
    /// The owner's last revision.
    revision: u64,
}

/// The data stream, its subjects, and the feed's last sequence.
#[derive(Clone)]
pub(crate) struct DataState {
    stream: stream::Stream,
    data_base: String,
    usage_base: String,
    trim_subject: String,
    fence_subject: String,
    feed: Arc<Feed>,
}

/// The feed's last sequence, kept current by a task following the stream
/// (so it moves when any node writes), and by this node's own applies.
struct Feed {
    last: Arc<watch::Sender<u64>>,
    follower: tokio::task::AbortHandle,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

pub(crate) async fn open(
    js: &jetstream::Context,
    options: &NatsOptions,
) -> Result<DataState, StoreError> {
    let ns = &options.namespace;
    let data_base = format!("{ns}.data");
    let usage_base = format!("{ns}.datausage");
    let trim_subject = format!("{ns}.datatrim");
    let fence_subject = format!("{ns}.datafence");
    let mut config = durable_stream(
        options,
        "DATA",
        vec![
            format!("{data_base}.>"),
            format!("{usage_base}.>"),
            trim_subject.clone(),
            fence_subject.clone(),
        ],
    );
    config.allow_atomic_publish = true;
    config.allow_rollup = true;
    let stream = ensure_stream(js, config).await?;
    let last = Arc::new(watch::channel(0).0);
    let follower = tokio::spawn(follow(
        stream.clone(),
        format!("{data_base}.>"),
        last.clone(),
    ))
    .abort_handle();
    Ok(DataState {
        stream,
        data_base,
        usage_base,
        trim_subject,
        fence_subject,
        feed: Arc::new(Feed { last, follower }),
    })
}

/// Raises `last` to the sequence of every data message the stream
/// stores, from the last one now on (headers only).
async fn follow(stream: stream::Stream, filter: String, last: Arc<watch::Sender<u64>>) {
    loop {
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter.clone(),
                deliver_policy: consumer::DeliverPolicy::Last,
                headers_only: true,
                ..Default::default()
            })
            .await;
        match consumer {
            Ok(consumer) => match consumer.messages().await {
                Ok(mut messages) => {
                    while let Some(message) = messages.next().await {
                        match message
                            .map_err(backend)
                            .and_then(|m| m.info().map(|i| i.stream_sequence).map_err(backend))
                        {
                            Ok(seq) => raise(&last, seq),
                            Err(e) => {
                                tracing::warn!(error = %e, "following the data feed failed; restarting");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot follow the data feed"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot follow the data feed"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn raise(last: &watch::Sender<u64>, seq: u64) {
    last.send_if_modified(|r| {
        let higher = seq > *r;
        if higher {
            *r = seq;
        }
        higher
    });
}

/// The part of a data key before its first `/`: whose usage it counts in.
fn owner_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(owner, _)| owner)
}

/// What a key keeps of its owner's usage with this value.
fn size_of(key: &str, value: Option<usize>) -> (u64, u64) {
    value.map_or((0, 0), |len| (1, (key.len() + len) as u64))
}

fn counter(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// One stored data message, read.
struct Stored {
    key: String,
    revision: u64,
    /// `None`: a tombstone.
    value: Option<Bytes>,
}

impl DataState {
    fn key_subject(&self, key: &str) -> String {
        format!("{}.{}", self.data_base, encode_key(key))
    }

    fn owner_subject(&self, owner: &str) -> String {
        format!("{}.{}", self.usage_base, encode_key(owner))
    }

    /// The key a data subject holds.
    fn key_of(&self, subject: &str) -> Result<String, StoreError> {
        let tokens = subject
            .strip_prefix(self.data_base.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or_else(|| StoreError::Corrupt(format!("subject `{subject}` is not a data key")))?;
        decode_key(tokens)
    }

    fn parse(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<Stored, StoreError> {
        let key = self.key_of(subject)?;
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let revision = header(REVISION_HEADER)
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("`{key}` has no revision")))?;
        let value = (header(OP_HEADER) != Some(OP_DELETE)).then_some(payload);
        Ok(Stored {
            key,
            revision,
            value,
        })
    }

    /// The last message of `subject`, read through the stream leader.
    async fn last(&self, subject: &str) -> Result<Option<StreamMessage>, StoreError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    /// The key's entry now (`None`: absent or deleted), and the sequence
    /// of the message it was read from (0: none).
    async fn entry_at(&self, key: &str) -> Result<(Option<Entry>, u64), StoreError> {
        let Some(message) = self.last(&self.key_subject(key)).await? else {
            return Ok((None, 0));
        };
        let seq = message.sequence;
        let stored = self.parse(&message.subject, Some(&message.headers), message.payload)?;
        let entry = stored.value.map(|value| Entry {
            key: stored.key,
            value,
            revision: stored.revision,
        });
        Ok((entry, seq))
    }

    /// The key's entry now (`None`: absent or deleted), unfenced: for
    /// decisions a conditional write confirms anyway.
    async fn entry(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.entry_at(key).await?.0)
    }

    /// Whether `subject`'s last message is still `seq` (0: none) at a
    /// point the stream's quorum agreed on (see "A read is fenced").
    async fn fence(
        &self,
        js: &jetstream::Context,
        subject: &str,
        seq: u64,
    ) -> Result<bool, StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            seq.to_string().as_str(),
        );
        headers.insert(EXPECTED_SUBJECT_HEADER, subject);
        headers.insert("Nats-Rollup", "sub");
        let sent = js
            .publish_with_headers(self.fence_subject.clone(), headers, Bytes::new())
            .await
            .map_err(backend)?;
        match sent.await {
            Ok(_) => Ok(true),
            Err(e) => {
                // Moved (10071), or a write of it in flight (10164): read again.
                let code = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<jetstream::Error>())
                    .map(|j| j.error_code().0);
                if matches!(code, Some(10071 | 10164)) {
                    Ok(false)
                } else {
                    Err(backend(e))
                }
            }
        }
    }

    /// Whether every `(subject, seq)` of `fences` still holds, each at a
    /// point the stream's quorum agreed on (the fences sent together).
    async fn fence_all(
        &self,
        js: &jetstream::Context,
        fences: &[(String, u64)],
    ) -> Result<bool, StoreError> {
        let held = futures_util::future::try_join_all(
            fences
                .iter()
                .map(|(subject, seq)| self.fence(js, subject, *seq)),
        )
        .await?;
        Ok(held.into_iter().all(|held| held))
    }

    /// The keys' entries, confirmed current by fences (read again while a
    /// key moves under its fence). Every fence is sent after every read,
    /// and each confirms its subject unchanged from its read to its fence:
    /// so all the values held at once, between the last read and the
    /// first fence, whichever node read them.
    ///
    /// Keys that share an owner are first fenced through the owner's
    /// record, read before them: every write of a key moves it, so one
    /// fence per owner covers all its keys. While another key of the
    /// owner is being written that fence fails, and the next tries fence
    /// each key (which only a write of that key moves).
    async fn fenced_entries(
        &self,
        js: &jetstream::Context,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>, StoreError> {
        self.fenced_entries_with(js, keys, |key| self.entry_at(key))
            .await
    }

    /// [`Self::fenced_entries`] with the reads made by `read` (a key's
    /// entry and the sequence read): tests make keys move under every
    /// read.
    async fn fenced_entries_with<'k, R, F>(
        &self,
        js: &jetstream::Context,
        keys: &'k [String],
        read: R,
    ) -> Result<Vec<Option<Entry>>, StoreError>
    where
        R: Fn(&'k str) -> F,
        F: std::future::Future<Output = Result<(Option<Entry>, u64), StoreError>>,
    {
        let mut owners: Vec<&str> = keys.iter().map(|k| owner_of(k)).collect();
        owners.sort_unstable();
        owners.dedup();
        let mut distinct: Vec<&String> = keys.iter().collect();
        distinct.sort_unstable();
        distinct.dedup();
        for attempt in 1..=FENCE_ATTEMPTS {
            let by_owner = attempt == 1 && owners.len() < distinct.len();
            let mut fences: Vec<(String, u64)> = Vec::new();
            if by_owner {
                let records =
                    futures_util::future::try_join_all(owners.iter().map(|o| self.owner(o)))
                        .await?;
                fences.extend(
                    owners
                        .iter()
                        .zip(records)
                        .map(|(owner, (seq, _))| (self.owner_subject(owner), seq)),
                );
            }
            let entries = futures_util::future::try_join_all(keys.iter().map(|k| read(k))).await?;
            if !by_owner {
                // A key asked for twice is fenced once.
                fences = keys
                    .iter()
                    .zip(&entries)
                    .map(|(key, (_, seq))| (self.key_subject(key), *seq))
                    .collect();
                fences.sort_unstable();
                fences.dedup();
            }
            if self.fence_all(js, &fences).await? {
                return Ok(entries.into_iter().map(|(entry, _)| entry).collect());
            }
            if !by_owner {
                crate::back_off(attempt).await;
            }
        }
        Err(StoreError::Unavailable(match keys {
            [key] => format!("`{key}` kept changing while being read; try again"),
            _ => "the keys kept changing while being read; try again".into(),
        }))
    }

    /// The owner's record and the sequence of the message holding it (0:
    /// none yet).
    async fn owner(&self, owner: &str) -> Result<(u64, OwnerRecord), StoreError> {
        Ok(match self.last(&self.owner_subject(owner)).await? {
            Some(message) => (
                message.sequence,
                serde_json::from_slice(&message.payload)
                    .map_err(|e| StoreError::Corrupt(format!("the usage of `{owner}`: {e}")))?,
            ),
            None => (0, OwnerRecord::default()),
        })
    }

    /// How far the feed was trimmed (changes at or below it are gone),
    /// and the sequence of the message saying so.
    async fn trimmed(&self) -> Result<(u64, u64), StoreError> {
        Ok(match self.last(&self.trim_subject).await? {
            Some(message) => (
                std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt("the feed's trim mark".into()))?,
                message.sequence,
            ),
            None => (0, 0),
        })
    }

    /// An ordered consumer over `filter` from `deliver`, and how many
    /// messages it has to deliver now; with `fresh`, on the stream's
    /// leader (see [`crate::ordered_consumer`]).
    async fn read_from(
        &self,
        filter: String,
        deliver: consumer::DeliverPolicy,
        headers_only: bool,
        fresh: bool,
    ) -> Result<(consumer::pull::Ordered, u64), StoreError> {
        let config = consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: deliver,
            headers_only,
            ..Default::default()
        };
        crate::ordered_consumer(&self.stream, config, fresh).await
    }
}

/// The next message of an ordered consumer that still has some to deliver.
async fn next_message(
    messages: &mut consumer::pull::Ordered,
) -> Result<jetstream::Message, StoreError> {
    tokio::time::timeout(REQUEST_TIMEOUT, messages.next())
        .await
        .map_err(|_| StoreError::Backend("reading the data stream stalled".into()))?
        .ok_or(StoreError::Closed)?
        .map_err(backend)
}

/// What one apply will write, decided on the state it read.
struct Plan {
    /// Per owner: the sequence its record was read at, and its new record.
    owners: Vec<(String, u64, OwnerRecord)>,
    /// The data messages, in order: (index of the write, subject, headers, payload).
    messages: Vec<(usize, String, HeaderMap, Bytes)>,
    /// Each write's change, without its `seq` (known after the commit).
    changes: Vec<Option<DataChange>>,
}

impl NatsStore {
    /// Reads what the writes depend on and decides them; refusals
    /// (counters, allowance) come from here, before anything is written.
    async fn plan(
        &self,
        writes: &[DataWrite],
        allowance: Option<&Allowance>,
    ) -> Result<Plan, StoreError> {
        let d = &self.data;
        let mut owner_names: Vec<&str> = writes.iter().map(|w| owner_of(w.key())).collect();
        owner_names.sort_unstable();
        owner_names.dedup();
        let mut keys: Vec<&str> = writes.iter().map(DataWrite::key).collect();
        keys.sort_unstable();
        keys.dedup();
        // The owners' records first: a write committed after them is
        // caught by the batch's condition on them.
        let records =
            futures_util::future::try_join_all(owner_names.iter().map(|o| d.owner(o))).await?;
        let values = futures_util::future::try_join_all(keys.iter().map(|k| d.entry(k))).await?;
        let mut current: HashMap<&str, Option<Bytes>> = keys
            .iter()
            .zip(values)
            .map(|(k, e)| (*k, e.map(|e| e.value)))
            .collect();
        let mut owners: HashMap<&str, (u64, OwnerRecord, OwnerRecord)> = owner_names
            .iter()
            .zip(records)
            .map(|(o, (seq, record))| (*o, (seq, record, record)))
            .collect();
        let mut messages = Vec::new();
        let mut changes = Vec::with_capacity(writes.len());
        for (index, write) in writes.iter().enumerate() {
            let key = write.key();
            let old = current.get(key).cloned().flatten();
            let new = match write {
                DataWrite::Put { value, .. } => Some(value.clone()),
                DataWrite::Delete { .. } => {
                    if old.is_none() {
                        changes.push(None);
                        continue;
                    }
                    None
                }
                DataWrite::Increment { delta, .. } => {
                    let now = match &old {
                        None => 0,
                        Some(v) => counter(v).ok_or_else(|| StoreError::NotACounter(key.into()))?,
                    };
                    Some(Bytes::from(now.wrapping_add(*delta).to_string()))
                }
            };
            let (_, _, record) = owners
                .get_mut(owner_of(key))
                .ok_or_else(|| StoreError::Backend("an owner was not read".into()))?;
            let (old_keys, old_bytes) = size_of(key, old.as_ref().map(Bytes::len));
            let (new_keys, new_bytes) = size_of(key, new.as_ref().map(Bytes::len));
            record.keys = (record.keys + new_keys).saturating_sub(old_keys);
            record.bytes = (record.bytes + new_bytes).saturating_sub(old_bytes);
            record.revision += 1;
            let mut headers = HeaderMap::new();
            headers.insert(REVISION_HEADER, record.revision.to_string().as_str());
            if new.is_none() {
                headers.insert(OP_HEADER, OP_DELETE);
            }
            messages.push((
                index,
                d.key_subject(key),
                headers,
                new.clone().unwrap_or_default(),
            ));
            changes.push(Some(DataChange {
                seq: 0,
                revision: record.revision,
                key: key.to_string(),
                value: new.clone(),
            }));
            current.insert(key, new);
        }
        if let Some(allowance) = allowance {
            check_allowance(allowance, owners.get(allowance.owner.as_str()))?;
        }
        let mut owners: Vec<(String, u64, OwnerRecord)> = owners
            .into_iter()
            .filter(|(_, (_, before, after))| before != after)
            .map(|(owner, (seq, _, after))| (owner.to_string(), seq, after))
            .collect();
        owners.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Plan {
            owners,
            messages,
            changes,
        })
    }

    /// Publishes the plan as one atomic batch: `Ok(Err(code))` when the
    /// server refused it (nothing written), else the sequence of its
    /// first message.
    ///
    /// Each write carries `Nats-Msg-Id` `<apply>.<index of the write>`, the
    /// same in every try of one apply: a try that was stored although its
    /// answer was a refusal (seen as a stream leader rejoined after a
    /// partition) makes the next try a duplicate, refused as such, rather
    /// than a second application (an increment counted twice).
    async fn commit(&self, plan: &Plan, apply: &str) -> Result<Result<u64, u64>, StoreError> {
        let d = &self.data;
        let mut batch: Vec<(String, HeaderMap, Bytes)> = Vec::new();
        for (owner, seq, record) in &plan.owners {
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                seq.to_string().as_str(),
            );
            let payload = serde_json::to_vec(record).map_err(backend)?;
            batch.push((d.owner_subject(owner), headers, payload.into()));
        }
        for (index, subject, headers, payload) in &plan.messages {
            let mut headers = headers.clone();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{apply}.{index}").as_str(),
            );
            batch.push((subject.clone(), headers, payload.clone()));
        }
        let count = batch.len() as u64;
        match crate::batch::publish(&self.client, batch).await? {
            Batch::Stored(last) => Ok(Ok(last + 1 - count)),
            Batch::Refused { code, .. } if RETRYABLE.contains(&code) => Ok(Err(code)),
            Batch::Refused { code, .. } if DUPLICATE.contains(&code) => {
                Err(StoreError::Unavailable(
                    "an earlier try of these writes, answered as refused (a NATS leader change), was stored or may still be: they are not applied twice, but their result is unknown here; read the keys again".into(),
                ))
            }
            Batch::Refused { code, description } if code == TOO_LARGE => {
                Err(StoreError::Backend(format!(
                    "{count} messages in one atomic batch (the writes and one usage record per owner) is more than the NATS servers allow: raise it with `jetstream {{ limits {{ batch {{ max_msgs: 1001 }} }} }}` in their configuration ({description})"
                )))
            }
            Batch::Refused { code, description } => Err(StoreError::Backend(format!(
                "JetStream refused the writes: {description} (error {code})"
            ))),
            Batch::Unheard => Err(StoreError::Unavailable(format!(
                "the data stream {} has no leader to write to",
                d.stream.cached_info().config.name
            ))),
        }
    }
}

fn check_allowance(
    allowance: &Allowance,
    owner: Option<&(u64, OwnerRecord, OwnerRecord)>,
) -> Result<(), StoreError> {
    let Some((_, before, after)) = owner else {
        return Ok(());
    };
    let usage = |r: &OwnerRecord| DataUsage {
        keys: r.keys,
        bytes: r.bytes,
    };
    allowance.check(usage(before), usage(after))
}

#[async_trait]
impl DataStore for NatsStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut found = self
            .data
            .fenced_entries(&self.js, &[key.to_string()])
            .await?;
        Ok(found.pop().flatten())
    }

    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Entry>>, StoreError> {
        self.data.fenced_entries(&self.js, &keys).await
    }

    async fn apply(
        &self,
        writes: Vec<DataWrite>,
        allowance: Option<&Allowance>,
    ) -> Result<Vec<Option<DataChange>>, StoreError> {
        self.linked().await?;
        if let Some(allowance) = allowance
            && let Some(stranger) = writes.iter().find(|w| owner_of(w.key()) != allowance.owner)
        {
            return Err(StoreError::Backend(format!(
                "`{}` is not owned by `{}`",
                stranger.key(),
                allowance.owner
            )));
        }
        let deadline = tokio::time::Instant::now() + CONTENTION_LIMIT;
        let mut attempt = 0;
        let apply = crate::batch::batch_id();
        loop {
            let mut plan = self.plan(&writes, allowance).await?;
            if plan.messages.is_empty() {
                return Ok(plan.changes);
            }
            match self.commit(&plan, &apply).await? {
                Ok(first) => {
                    let base = first + plan.owners.len() as u64;
                    let mut last = 0;
                    for (offset, (index, ..)) in plan.messages.iter().enumerate() {
                        if let Some(change) = plan.changes[*index].as_mut() {
                            change.seq = base + offset as u64;
                            last = change.seq;
                        }
                    }
                    raise(&self.data.feed.last, last);
                    return Ok(plan.changes);
                }
                Err(code) if tokio::time::Instant::now() < deadline => {
                    tracing::trace!(code, attempt, "a data batch was refused; retrying");
                    attempt += 1;
                    crate::back_off(attempt as usize).await;
                }
                Err(code) => {
                    return Err(StoreError::Backend(format!(
                        "other writes of the same owner kept committing first for {CONTENTION_LIMIT:?} ({attempt} attempts, last refusal {code}); try again"
                    )));
                }
            }
        }
    }

    async fn usage(&self, owner: &str) -> Result<DataUsage, StoreError> {
        let (_, record) = self.data.owner(owner).await?;
        Ok(DataUsage {
            keys: record.keys,
            bytes: record.bytes,
        })
    }

    async fn keys(
        &self,
        prefix: &str,
        start_after: Option<String>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        let d = &self.data;
        let (mut messages, mut pending) = d
            .read_from(
                prefix_filter(&d.data_base, prefix),
                consumer::DeliverPolicy::LastPerSubject,
                true,
                true,
            )
            .await?;
        // Per key, its latest message: an ordered consumer that had to
        // recreate itself before its first message starts over from the
        // stream's first message (async-nats 0.51), so older ones may come.
        let mut latest: HashMap<String, (u64, Stored, u64)> = HashMap::new();
        while pending > 0 {
            let message = next_message(&mut messages).await?;
            let info = message.info().map_err(backend)?;
            pending = info.pending;
            let seq = info.stream_sequence;
            let size = message
                .headers
                .as_ref()
                .and_then(|h| h.get(SIZE_HEADER))
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or(0);
            let stored = d.parse(&message.subject, message.headers.as_ref(), Bytes::new())?;
            if !stored.key.starts_with(prefix)
                || start_after
                    .as_ref()
                    .is_some_and(|after| stored.key <= *after)
                || latest.get(&stored.key).is_some_and(|(s, ..)| *s > seq)
            {
                continue;
            }
            latest.insert(stored.key.clone(), (seq, stored, size));
        }
        let mut found: Vec<KeyInfo> = latest
            .into_values()
            .filter(|(_, stored, _)| stored.value.is_some())
            .map(|(_, stored, size)| KeyInfo {
                key: stored.key,
                revision: stored.revision,
                size,
            })
            .collect();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        found.truncate(limit);
        Ok(found)
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<Vec<DataChange>, StoreError> {
        let d = &self.data;
        let (trimmed, _) = d.trimmed().await?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = after.max(trimmed) + 1;
        let (mut messages, mut pending) = d
            .read_from(
                format!("{}.>", d.data_base),
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                false,
                false,
            )
            .await?;
        let mut out = Vec::new();
        while pending > 0 && out.len() < limit {
            let message = next_message(&mut messages).await?;
            let info = message.info().map_err(backend)?;
            pending = info.pending;
            let seq = info.stream_sequence;
            // A recreated consumer may start over from the first message.
            if seq < start {
                continue;
            }
            let stored = d.parse(
                &message.subject,
                message.headers.as_ref(),
                message.payload.clone(),
            )?;
            out.push(DataChange {
                seq,
                revision: stored.revision,
                key: stored.key,
                value: stored.value,
            });
        }
        Ok(out)
    }

    async fn trim_changes(&self, through: u64) -> Result<(), StoreError> {
        let d = &self.data;
        // Move the mark first: once it is past a change, no reader gets
        // that change again, whatever the purge below leaves behind.
        let from = loop {
            let (trimmed, mark) = d.trimmed().await?;
            if trimmed >= through {
                return Ok(());
            }
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                mark.to_string().as_str(),
            );
            let ack = self
                .js
                .publish_with_headers(d.trim_subject.clone(), headers, through.to_string().into())
                .await
                .map_err(backend)?;
            match ack.await {
                Ok(_) => break trimmed,
                Err(e) if crate::meta::refusal_code(&e).is_some() => continue,
                Err(e) => return Err(unacknowledged(e)),
            }
        };
        // Per key, the last of its messages in the trimmed range: every
        // message before it goes, it too if it is a tombstone.
        let mut last_of: HashMap<String, (u64, bool)> = HashMap::new();
        let (mut messages, mut pending) = d
            .read_from(
                format!("{}.>", d.data_base),
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from + 1,
                },
                true,
                false,
            )
            .await?;
        while pending > 0 {
            let message = next_message(&mut messages).await?;
            let info = message.info().map_err(backend)?;
            pending = info.pending;
            if info.stream_sequence > through {
                break;
            }
            if info.stream_sequence <= from {
                continue;
            }
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get(OP_HEADER))
                .is_some_and(|v| v.as_str() == OP_DELETE);
            last_of.insert(message.subject.to_string(), (info.stream_sequence, deleted));
        }
        drop(messages);
        let mut owners: Vec<String> = Vec::new();
        for subject in last_of.keys() {
            owners.push(owner_of(&d.key_of(subject)?).to_string());
        }
        owners.sort_unstable();
        owners.dedup();
        let mut purges: Vec<(String, Option<u64>)> = last_of
            .into_iter()
            .map(|(subject, (seq, deleted))| (subject, Some(if deleted { seq + 1 } else { seq })))
            .collect();
        purges.extend(owners.iter().map(|o| (d.owner_subject(o), None)));
        purges.push((d.trim_subject.clone(), None));
        let stream = d.stream.clone();
        let results: Vec<Result<(), StoreError>> = futures_util::stream::iter(purges)
            .map(move |(subject, keep_from)| {
                let stream = stream.clone();
                async move {
                    let purge = stream.purge().filter(subject);
                    match keep_from {
                        Some(seq) => purge.sequence(seq).await.map(drop),
                        None => purge.keep(1).await.map(drop),
                    }
                    .map_err(backend)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect()
    }

    fn last_revision(&self) -> watch::Receiver<u64> {
        self.data.feed.last.subscribe()
    }
}

#[cfg(test)]
mod tests;
