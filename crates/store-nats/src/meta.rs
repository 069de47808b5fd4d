//! The registry's metadata ([`MetaStore`]) on one stream, `<ns>_META`.
//!
//! Each key is a subject (`<ns>.meta.<encoded key>`) and the stream keeps
//! one message per subject, so a key's value is its last message and its
//! revision is that message's stream sequence: revisions grow across the
//! whole store, as the trait asks. A delete is a message with the
//! [`OP_HEADER`] header set to `del` (a tombstone: watchers see the key
//! go). A tombstone expires after [`crate::NatsOptions::tombstone_ttl`]
//! (`Nats-TTL`, an hour by default), so keys deleted by the million (every
//! event's status, pruned) do not stay in the stream, nor in every listing
//! of their prefix, for ever. Its going changes nothing a reader could
//! rely on: revisions are stream sequences, never reused, so a
//! compare-and-set expecting the tombstone's revision is refused once it
//! is gone and reads again; a watch lagging by more than the TTL misses
//! the delete, as it would miss being restarted.
//!
//! Compare-and-set is JetStream's own: a publish with
//! `Nats-Expected-Last-Subject-Sequence`, checked by the stream's leader
//! in the replicated log, so two nodes racing for one key cannot both win.
//!
//! Creates of new keys (a compare-and-set expecting none: every event's
//! status record is one) that arrive while one is being written go
//! together in the next atomic batch, each on its own condition; a batch
//! refused as a whole (one key existed after all) is written again one
//! key at a time, so each create gets its own answer.
//!
//! Listing and watching use an ordered consumer delivering the last
//! message of each subject under the prefix, then every later one.

use std::collections::VecDeque;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;

use gust_store::{Entry, MetaEvent, MetaStore, StoreError, Watch, WatchStream};

use crate::{
    NatsOptions, NatsStore, backend, decode_key, durable_stream, encode_key, ensure_stream,
    prefix_filter,
};

/// Attempts of a compare-and-set whose condition the leader could not
/// judge while another write to the key was in flight (about 2 s at most).
const IN_FLIGHT_RETRIES: usize = 24;

/// Tries of a write that no server took (see [`NatsStore::meta_publish`]):
/// a second or two in all.
pub(crate) const UNHEARD_RETRIES: usize = 40;

/// Most creates written in one batch.
pub(crate) const MAX_CREATES: usize = 256;

/// Creates waiting to be written together: (key, value) → its revision,
/// `None` if the key exists.
pub(crate) type Creates =
    crate::group::GroupCommit<(String, Bytes), Result<Option<u64>, StoreError>>;

/// Marks a tombstone (a deleted key).
pub(crate) const OP_HEADER: &str = "Gust-Op";
const OP_DELETE: &str = "del";

pub(crate) async fn open_stream(
    js: &jetstream::Context,
    options: &NatsOptions,
) -> Result<stream::Stream, StoreError> {
    let mut config = durable_stream(
        options,
        "META",
        vec![format!("{}.meta.>", options.namespace)],
    );
    config.max_messages_per_subject = 1;
    config.discard = stream::DiscardPolicy::Old;
    config.allow_atomic_publish = true;
    // Tombstones expire (`Nats-TTL`); values never do.
    config.allow_message_ttl = true;
    ensure_stream(js, config).await
}

/// One message of the stream, read as a change.
fn event_of(
    base: &str,
    subject: &str,
    sequence: u64,
    headers: Option<&async_nats::HeaderMap>,
    payload: Bytes,
) -> Result<MetaEvent, StoreError> {
    let tokens = subject
        .strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or_else(|| StoreError::Corrupt(format!("subject `{subject}` is outside the store")))?;
    let key = decode_key(tokens)?;
    let deleted = headers
        .and_then(|h| h.get(OP_HEADER))
        .is_some_and(|v| v.as_str() == OP_DELETE);
    Ok(if deleted {
        MetaEvent::Delete {
            key,
            revision: sequence,
        }
    } else {
        MetaEvent::Put(Entry {
            key,
            value: payload,
            revision: sequence,
        })
    })
}

impl NatsStore {
    fn meta_subject(&self, key: &str) -> String {
        format!("{}.{}", self.meta_subjects, encode_key(key))
    }

    /// The key's last message: its entry, or `Err(revision)` of a tombstone.
    async fn meta_last(&self, key: &str) -> Result<Option<Result<Entry, u64>>, StoreError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self
            .meta
            .get_last_raw_message_by_subject(&self.meta_subject(key))
            .await
        {
            Ok(message) => Ok(Some(
                match event_of(
                    &self.meta_subjects,
                    &message.subject,
                    message.sequence,
                    Some(&message.headers),
                    message.payload,
                )? {
                    MetaEvent::Put(entry) => Ok(entry),
                    MetaEvent::Delete { revision, .. } => Err(revision),
                },
            )),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    /// Publishes to the key's subject, on condition that its last message
    /// is `expect_last` (0: it has none); returns the new revision.
    async fn meta_publish(
        &self,
        key: &str,
        value: Bytes,
        expect_last: Option<u64>,
        delete: bool,
    ) -> Result<Result<u64, ()>, StoreError> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(last) = expect_last {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                last.to_string().as_str(),
            );
        }
        if delete {
            headers.insert(OP_HEADER, OP_DELETE);
            let ttl = self.options.tombstone_ttl.as_secs().max(1).to_string();
            headers.insert("Nats-TTL", ttl.as_str());
        }
        let subject = self.meta_subject(key);
        let mut attempt = 0;
        let written = loop {
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), value.clone())
                .await
                .map_err(backend)?;
            match ack.await {
                // No server took it (nothing written): the stream is new
                // and its subjects not yet known where this client is
                // connected, or it has no leader for a moment.
                Err(e)
                    if e.kind() == PublishErrorKind::StreamNotFound
                        && attempt < UNHEARD_RETRIES =>
                {
                    attempt += 1;
                    crate::back_off(attempt).await;
                }
                written => break written,
            }
        };
        match written {
            Ok(ack) => Ok(Ok(ack.sequence)),
            Err(e) => match refusal_code(&e) {
                Some(WRONG_LAST_SEQUENCE | WRONG_LAST_SEQUENCE_CONSTANT) => Ok(Err(())),
                Some(_) => Err(StoreError::Backend(format!(
                    "JetStream refused the write: {e}"
                ))),
                None => Err(unacknowledged(e)),
            },
        }
    }

    /// Writes `key` if it has no message yet, in one batch with the other
    /// creates waiting: its revision, or `None` if it has one.
    async fn meta_create(&self, key: &str, value: Bytes) -> Result<Option<u64>, StoreError> {
        let this = self.clone();
        let written = self
            .creates
            .submit("", vec![(key.to_string(), value)], move |items| {
                let this = this.clone();
                async move { this.meta_create_all(items).await }
            })
            .await?;
        written
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(StoreError::Backend("a create went unanswered".into())))
    }

    /// Creates each key with no message yet: one batch, else one by one,
    /// each with its own answer. A key twice in one batch would pass both
    /// of its conditions there (the leader checks each against the stream
    /// before the batch), so such a group is written one by one.
    async fn meta_create_all(
        &self,
        items: Vec<(String, Bytes)>,
    ) -> Result<Vec<Result<Option<u64>, StoreError>>, StoreError> {
        let distinct = {
            let mut keys = std::collections::HashSet::with_capacity(items.len());
            items.iter().all(|(key, _)| keys.insert(key.as_str()))
        };
        if items.len() > 1 && distinct {
            let messages = items
                .iter()
                .map(|(key, value)| {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
                    (self.meta_subject(key), headers, value.clone())
                })
                .collect();
            if let crate::batch::Batch::Stored(last) =
                crate::batch::publish(&self.client, messages).await?
            {
                let first = last + 1 - items.len() as u64;
                return Ok((first..=last).map(|revision| Ok(Some(revision))).collect());
            }
        }
        let writes = items.into_iter().map(|(key, value)| async move {
            self.meta_publish(&key, value, Some(0), false).await
        });
        Ok(futures_util::future::join_all(writes)
            .await
            .into_iter()
            .map(|written| written.map(Result::ok))
            .collect())
    }

    /// An ordered consumer over the keys under `prefix`: the last message
    /// of each, then every new one; with `fresh`, on the stream's leader
    /// (see [`crate::ordered_consumer`]).
    async fn meta_consumer(
        &self,
        prefix: &str,
        fresh: bool,
    ) -> Result<(consumer::pull::Ordered, u64), StoreError> {
        let config = consumer::pull::OrderedConfig {
            filter_subject: prefix_filter(&self.meta_subjects, prefix),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        };
        crate::ordered_consumer(&self.meta, config, fresh).await
    }

    /// The stream's last sequence: the store's revision now.
    async fn meta_revision(&self) -> Result<u64, StoreError> {
        let info = self.meta.get_info().await.map_err(backend)?;
        Ok(info.state.last_sequence)
    }
}

/// JetStream's error codes for a failed `Nats-Expected-Last-Subject-Sequence`.
const WRONG_LAST_SEQUENCE: u64 = 10071;
const WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;

/// The server's error code when the server refused the publish (nothing
/// was written); `None` when no answer came (the outcome is unknown).
pub(crate) fn refusal_code(e: &async_nats::jetstream::context::PublishError) -> Option<u64> {
    if e.kind() == PublishErrorKind::WrongLastSequence {
        return Some(WRONG_LAST_SEQUENCE);
    }
    let source = std::error::Error::source(e)?;
    source
        .downcast_ref::<async_nats::jetstream::Error>()
        .map(|e| e.error_code().0)
}

/// A publish whose acknowledgement did not come: it may or may not have
/// been written.
pub(crate) fn unacknowledged(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!(
        "JetStream did not acknowledge the write ({e}); it may or may not have been made"
    ))
}

/// Reads an ordered consumer's backlog (`pending` messages at its start):
/// the entries at or below `revision`, the changes above it, in order, and
/// the last stream sequence read.
///
/// An ordered consumer that recreates itself (a server restart, a lost
/// heartbeat) may start over from the stream's first message (async-nats
/// 0.51): messages arrive in sequence order otherwise, so any at or below
/// the last one read are repeats and skipped, here and in the watch.
async fn read_backlog(
    store: &NatsStore,
    messages: &mut consumer::pull::Ordered,
    mut pending: u64,
    prefix: &str,
    revision: u64,
) -> Result<(Vec<Entry>, VecDeque<MetaEvent>, u64), StoreError> {
    let mut initial = Vec::new();
    let mut later = VecDeque::new();
    let mut last_read = 0;
    while pending > 0 {
        let message = tokio::time::timeout(crate::REQUEST_TIMEOUT, messages.next())
            .await
            .map_err(|_| StoreError::Backend("the metadata listing stalled".into()))?
            .ok_or(StoreError::Closed)?
            .map_err(backend)?;
        let info = message.info().map_err(backend)?;
        let sequence = info.stream_sequence;
        pending = info.pending;
        if sequence <= last_read {
            continue;
        }
        last_read = sequence;
        let event = event_of(
            &store.meta_subjects,
            &message.subject,
            sequence,
            message.headers.as_ref(),
            message.payload.clone(),
        )?;
        if !event.key().starts_with(prefix) {
            continue;
        }
        if sequence > revision {
            later.push_back(event);
        } else if let MetaEvent::Put(entry) = event {
            initial.push(entry);
        }
    }
    initial.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((initial, later, last_read))
}

/// A paged walk in progress: the prefix's listing as read for its first
/// page, and where the next page starts. A subject filter reads a prefix
/// whole (JetStream has no ordered index of keys), so a walk reads it
/// once, not once per page; it does not see keys written after it began.
pub(crate) struct Walk {
    prefix: String,
    entries: Vec<Entry>,
    next: usize,
}

#[async_trait]
impl MetaStore for NatsStore {
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let walk = |w: &mut Walk| {
            let page: Vec<Entry> = w.entries[w.next..].iter().take(limit).cloned().collect();
            w.next += page.len();
            page
        };
        {
            let mut current = self.walk.lock().unwrap_or_else(|p| p.into_inner());
            // The walk goes on where its last page ended.
            if let (Some(w), Some(after)) = (current.as_mut(), after)
                && w.prefix == prefix
                && w.next > 0
                && w.entries.get(w.next - 1).is_some_and(|e| e.key == after)
            {
                let page = walk(w);
                if w.next >= w.entries.len() {
                    // Done: the listing is not kept.
                    *current = None;
                }
                return Ok(page);
            }
        }
        let entries: Vec<Entry> = self
            .list(prefix)
            .await?
            .into_iter()
            .filter(|e| after.is_none_or(|after| e.key.as_str() > after))
            .collect();
        let mut w = Walk {
            prefix: prefix.to_string(),
            entries,
            next: 0,
        };
        let page = walk(&mut w);
        if w.next < w.entries.len() {
            *self.walk.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        }
        Ok(page)
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.meta_last(key).await?.and_then(Result::ok))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        match self.meta_publish(key, value, None, false).await? {
            Ok(revision) => Ok(revision),
            Err(()) => Err(StoreError::Backend(
                "an unconditional write was refused".into(),
            )),
        }
    }

    async fn compare_and_set(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, StoreError> {
        let conflict = |found: Option<u64>| StoreError::Conflict {
            key: key.to_string(),
            expected,
            found,
        };
        match expected {
            Some(revision) => {
                // The leader also refuses a condition it cannot judge yet
                // because an earlier write to the key is still being
                // replicated (error 10164): the key then still reads as
                // `revision`. Wait for that write to settle, then either
                // the key has moved on (a real conflict) or this write may
                // go ahead after all.
                let mut wait = std::time::Duration::from_millis(2);
                for _ in 0..IN_FLIGHT_RETRIES {
                    if let Ok(written) = self
                        .meta_publish(key, value.clone(), Some(revision), false)
                        .await?
                    {
                        return Ok(written);
                    }
                    let found = self
                        .meta_last(key)
                        .await?
                        .and_then(Result::ok)
                        .map(|e| e.revision);
                    if found != Some(revision) {
                        return Err(conflict(found));
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_millis(100));
                }
                Err(conflict(Some(revision)))
            }
            None => {
                // Absent means no message (tried first, with other
                // creates), or a tombstone as the last one.
                let mut last = 0;
                let mut written = self.meta_create(key, value.clone()).await?.ok_or(());
                loop {
                    match written {
                        Ok(revision) => return Ok(revision),
                        Err(()) => match self.meta_last(key).await? {
                            Some(Ok(entry)) => return Err(conflict(Some(entry.revision))),
                            Some(Err(tombstone)) if tombstone != last => last = tombstone,
                            None if last != 0 => last = 0,
                            // The same state refused twice: another
                            // writer keeps changing it; report that.
                            _ => return Err(conflict(None)),
                        },
                    }
                    written = self
                        .meta_publish(key, value.clone(), Some(last), false)
                        .await?;
                }
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        loop {
            let Some(Ok(entry)) = self.meta_last(key).await? else {
                return Ok(None);
            };
            if let Ok(revision) = self
                .meta_publish(key, Bytes::new(), Some(entry.revision), true)
                .await?
            {
                return Ok(Some(revision));
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let (mut messages, pending) = self.meta_consumer(prefix, true).await?;
        let (initial, later, _) =
            read_backlog(self, &mut messages, pending, prefix, u64::MAX).await?;
        debug_assert!(later.is_empty());
        Ok(initial)
    }

    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        let revision = self.meta_revision().await?;
        let (mut messages, pending) = self.meta_consumer(prefix, false).await?;
        let (initial, later, last_read) =
            read_backlog(self, &mut messages, pending, prefix, revision).await?;
        Ok(Watch {
            initial,
            revision,
            changes: Box::new(MetaWatch {
                base: self.meta_subjects.clone(),
                prefix: prefix.to_string(),
                later,
                last_read,
                messages,
            }),
        })
    }
}

struct MetaWatch {
    base: String,
    prefix: String,
    /// Changes read with the backlog, not yet returned.
    later: VecDeque<MetaEvent>,
    /// The last stream sequence read: repeats are skipped.
    last_read: u64,
    messages: consumer::pull::Ordered,
}

#[async_trait]
impl WatchStream for MetaWatch {
    async fn next(&mut self) -> Result<MetaEvent, StoreError> {
        if let Some(event) = self.later.pop_front() {
            return Ok(event);
        }
        loop {
            let message = match self.messages.next().await {
                Some(Ok(message)) => message,
                // The ordered consumer recreates itself where it can; an
                // error here means changes may have been missed.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the metadata watch failed; resyncing");
                    return Err(StoreError::Lagged(0));
                }
                None => return Err(StoreError::Closed),
            };
            let sequence = message.info().map_err(backend)?.stream_sequence;
            if sequence <= self.last_read {
                continue;
            }
            self.last_read = sequence;
            let event = event_of(
                &self.base,
                &message.subject,
                sequence,
                message.headers.as_ref(),
                message.payload.clone(),
            )?;
            if event.key().starts_with(&self.prefix) {
                return Ok(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::testkit;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_fresh_listing_is_served_by_the_stream_leader() {
        use gust_store::MetaStore as _;
        let Some(store) = testkit::store().await else {
            return;
        };
        store.put("fresh/a", bytes::Bytes::from("1")).await.unwrap();
        let leader = store.meta.get_info().await.unwrap().cluster.unwrap().leader;
        assert!(leader.is_some());
        // JetStream picks one replica of three at random: 13 or more of 16
        // listings on the leader by chance alone would happen about once
        // in 10,000; a fresh listing settles for a follower once in ~130.
        for _ in 0..16 {
            let config = super::consumer::pull::OrderedConfig {
                filter_subject: super::prefix_filter(&store.meta_subjects, "fresh/"),
                deliver_policy: super::consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            };
            let (_, pending) = crate::ordered_consumer(&store.meta, config, true)
                .await
                .unwrap();
            assert_eq!(pending, 1);
        }
        use futures_util::TryStreamExt as _;
        let filter = super::prefix_filter(&store.meta_subjects, "fresh/");
        let hosts = store
            .meta
            .consumers()
            .try_filter(|info| std::future::ready(info.config.filter_subject == filter))
            .map_ok(|info| info.cluster.and_then(|c| c.leader))
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        assert!(hosts.len() >= 8, "{hosts:?}");
        let on_leader = hosts.iter().filter(|h| **h == leader).count();
        assert!(
            on_leader >= 8,
            "{on_leader} of {} on the leader: {hosts:?}",
            hosts.len()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_tombstone_expires_and_the_key_is_written_again() {
        use gust_store::MetaStore as _;
        let Some(cluster) = tokio::task::spawn_blocking(testkit::shared).await.unwrap() else {
            return;
        };
        let mut options = testkit::options(cluster);
        options.tombstone_ttl = std::time::Duration::from_secs(1);
        let store = crate::NatsStore::connect(options).await.unwrap();
        let watcher = testkit::store_beside(&store).await;
        let mut watch = watcher.watch("gone/").await.unwrap();
        let first = store.put("gone/a", bytes::Bytes::from("1")).await.unwrap();
        store.put("gone/b", bytes::Bytes::from("2")).await.unwrap();
        let deleted = store.delete("gone/a").await.unwrap().unwrap();
        // Watchers see the delete (the put before it may be skipped: the
        // stream keeps each key's last message), and the tombstone is
        // there at first.
        let saw_delete = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                if let gust_store::MetaEvent::Delete { key, .. } =
                    watch.changes.next().await.unwrap()
                    && key == "gone/a"
                {
                    return;
                }
            }
        })
        .await;
        assert!(saw_delete.is_ok(), "the watch never saw the delete");
        assert!(matches!(store.meta_last("gone/a").await.unwrap(), Some(Err(r)) if r == deleted));
        // Then it goes, and with it the stream's message.
        let subject = store.meta_subject("gone/a");
        let mut gone = false;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let info = store.meta.get_info().await.unwrap();
            if store.meta_last("gone/a").await.unwrap().is_none() && info.state.messages == 1 {
                gone = true;
                break;
            }
        }
        assert!(gone, "the tombstone of {subject} is still there");
        // The key reads absent, a create succeeds at a later revision, and
        // a write expecting a revision from before is refused.
        assert!(store.get("gone/a").await.unwrap().is_none());
        assert!(
            store
                .compare_and_set("gone/a", bytes::Bytes::from("x"), Some(first))
                .await
                .is_err()
        );
        let again = store
            .compare_and_set("gone/a", bytes::Bytes::from("3"), None)
            .await
            .unwrap();
        assert!(again > deleted);
        assert_eq!(store.list("gone/").await.unwrap().len(), 2);
        // Values never expire.
        assert_eq!(&store.get("gone/b").await.unwrap().unwrap().value[..], b"2");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_kv() {
        let Some(store) = testkit::store().await else {
            return;
        };
        gust_store::conformance::kv(&store).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_registry() {
        let Some(store) = testkit::store().await else {
            return;
        };
        gust_store::conformance::registry(Arc::new(store)).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_accounts() {
        let Some(store) = testkit::store().await else {
            return;
        };
        gust_store::conformance::accounts(Arc::new(store)).await;
        let Some(store) = testkit::store().await else {
            return;
        };
        gust_store::conformance::last_admin_token(Arc::new(store)).await;
    }

    /// Two connections to one namespace stand for two nodes of a cluster.
    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_two_nodes() {
        use gust_store::MetaStore;
        async fn two() -> Option<(Arc<dyn MetaStore>, Arc<dyn MetaStore>)> {
            let one = testkit::store().await?;
            let other = testkit::store_beside(&one).await;
            Some((Arc::new(one), Arc::new(other)))
        }
        let Some((one, other)) = two().await else {
            return;
        };
        gust_store::conformance::leases(one, other).await;
        let (one, other) = two().await.unwrap();
        gust_store::conformance::claims_across_nodes(one, other).await;
        let (one, other) = two().await.unwrap();
        gust_store::conformance::component_bytes_across_nodes(one, other).await;
        let (one, other) = two().await.unwrap();
        gust_store::conformance::revocations_across_nodes(one, other).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_creates_share_batches_and_each_gets_its_own_answer() {
        use gust_store::{MetaStore as _, StoreError};
        let Some(store) = testkit::store().await else {
            return;
        };
        let store = Arc::new(store);
        store.put("inv/t/taken", "before".into()).await.unwrap();
        let mut creates = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            // Every 50th collides with the key that exists.
            let key = if i % 50 == 7 {
                "inv/t/taken".to_string()
            } else {
                format!("inv/t/{i}")
            };
            creates.spawn(async move {
                let written = store
                    .compare_and_set(&key, format!("{i}").into(), None)
                    .await;
                (key, i, written)
            });
        }
        let mut revisions = std::collections::BTreeSet::new();
        while let Some(done) = creates.join_next().await {
            let (key, i, written) = done.unwrap();
            if key == "inv/t/taken" {
                assert!(
                    matches!(written, Err(StoreError::Conflict { .. })),
                    "{written:?}"
                );
                continue;
            }
            let revision = written.unwrap();
            assert!(
                revisions.insert(revision),
                "revision {revision} given twice"
            );
            let read = store.get(&key).await.unwrap().unwrap();
            assert_eq!(
                (read.revision, read.value),
                (revision, format!("{i}").into())
            );
        }
        assert_eq!(revisions.len(), 196);
        // The same new key created many times at once: one create wins.
        let mut creates = tokio::task::JoinSet::new();
        for i in 0..20 {
            let store = store.clone();
            creates.spawn(async move {
                store
                    .compare_and_set("inv/t/fresh", format!("{i}").into(), None)
                    .await
            });
        }
        let mut won = 0;
        while let Some(done) = creates.join_next().await {
            match done.unwrap() {
                Ok(_) => won += 1,
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(won, 1, "one create of a new key wins");
        assert_eq!(
            store.get("inv/t/taken").await.unwrap().unwrap().value,
            "before"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_puts_each_get_their_own_revision_and_the_last_wins() {
        use gust_store::MetaStore as _;
        let Some(store) = testkit::store().await else {
            return;
        };
        let store = Arc::new(store);
        // Distinct keys (every event's final status) and, among them, one
        // key written by many callers at once.
        let mut puts = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            let key = if i % 10 == 3 {
                "inv/t/shared".to_string()
            } else {
                format!("inv/t/{i}")
            };
            puts.spawn(async move {
                let written = store.put(&key, format!("{i}").into()).await;
                (key, i, written)
            });
        }
        let mut revisions = std::collections::BTreeSet::new();
        let mut shared = Vec::new();
        while let Some(done) = puts.join_next().await {
            let (key, i, written) = done.unwrap();
            let revision = written.unwrap();
            assert!(
                revisions.insert(revision),
                "revision {revision} given twice"
            );
            if key == "inv/t/shared" {
                shared.push((revision, i));
                continue;
            }
            let read = store.get(&key).await.unwrap().unwrap();
            assert_eq!(
                (read.revision, read.value),
                (revision, format!("{i}").into())
            );
        }
        assert_eq!(revisions.len(), 200);
        // The shared key holds the write with the highest revision.
        let (last, i) = shared.into_iter().max().unwrap();
        let read = store.get("inv/t/shared").await.unwrap().unwrap();
        assert_eq!((read.revision, read.value), (last, format!("{i}").into()));
        // Revisions grow with each write: a later put is above all of them.
        let after = store.put("inv/t/after", "x".into()).await.unwrap();
        assert!(after > *revisions.last().unwrap());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_write_on_one_connection_is_read_on_another() {
        use gust_store::MetaStore as _;
        let Some(one) = testkit::store().await else {
            return;
        };
        let other = testkit::store_beside(&one).await;
        let revision = one.put("fn/t/a", "v1".into()).await.unwrap();
        let read = other.get("fn/t/a").await.unwrap().unwrap();
        assert_eq!(
            (read.revision, read.value.as_ref()),
            (revision, b"v1".as_ref())
        );
        // Both race to create one key: exactly one wins.
        let (a, b) = tokio::join!(
            one.compare_and_set("claim/x", "one".into(), None),
            other.compare_and_set("claim/x", "other".into(), None)
        );
        assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
    }
}
