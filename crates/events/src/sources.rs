//! Event sources' side of the events front: their records, their reported
//! state, and how a message taken from a broker (or a signed webhook)
//! becomes an event. The connectors themselves are in `gust-sources`;
//! this module knows no broker.
//!
//! A source's record is `src/<tenant>/<function>/<id>` in the metadata
//! store; its `url` and webhook `secret` are sealed by the caller (the API)
//! with the context [`seal_context`], so a sealed value copied to another
//! source does not open. Its state (connected, retrying with the last
//! error) is `srcstat/<tenant>/<function>/<id>`, written by whichever node
//! runs it, on each change of state only.
//!
//! A message becomes an event through [`Events::submit_from_source`]: with
//! an id the source gives (a Redis entry id, a JetStream sequence, a
//! webhook's delivery id) the invocation id is derived from it and a
//! redelivery is recognised and not queued twice; with an ordering key
//! the event joins that key's ordering group, so one key's messages are
//! delivered one at a time in the order the source gave them.

use gust_core::source::{SourceKind, SourceSpec};
use gust_core::{FunctionName, TenantId};
use serde::{Deserialize, Serialize};

use crate::{Events, EventsError, check_path, decode, encode, now_ms};

pub(crate) const PREFIX: &str = "src/";
const STATUS_PREFIX: &str = "srcstat/";

/// A function's source as stored: its spec with `url` and `secret` sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub id: String,
    pub tenant: TenantId,
    pub function: FunctionName,
    pub kind: SourceKind,
    /// `url` and `secret` hold sealed text here.
    pub spec: SourceSpec,
    /// `url` with its password hidden: what is shown.
    pub shown_url: Option<String>,
    pub created_ms: u64,
}

impl SourceRecord {
    /// `tenant/function/id`: the source's name in logs, metrics and leases.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.tenant, self.function, self.id)
    }

    /// The request path the function sees.
    pub fn path(&self) -> &str {
        self.spec.path.as_deref().unwrap_or("/")
    }
}

/// The associated data a source's sealed `field` is bound to.
pub fn seal_context(tenant: &TenantId, function: &FunctionName, id: &str, field: &str) -> String {
    format!("source/{tenant}/{function}/{id}/{field}")
}

/// What a source is doing, as the node running it last said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceStatus {
    /// `starting`, `connected`, `retrying` (see `last_error`), `paused`
    /// (the function's backlog is at `max_backlog`) or `waiting` (webhooks:
    /// ready for requests).
    pub state: String,
    pub last_error: Option<String>,
    /// When it entered this state (Unix ms).
    pub since_ms: u64,
    /// The node running it.
    pub node: String,
}

/// The sources in the registry and their changes ([`Events::watch_sources`]).
pub struct SourceWatch {
    /// Each source when the watch started, by its key in the registry.
    pub initial: Vec<(String, SourceRecord)>,
    changes: Box<dyn gust_store::WatchStream>,
}

impl SourceWatch {
    /// The next change: a source's key and its record, or `None` once it
    /// is removed (or unreadable, as a listing skips it). An error means
    /// changes were missed: watch again. Not cancel-safe.
    pub async fn next(&mut self) -> Result<(String, Option<SourceRecord>), EventsError> {
        Ok(match self.changes.next().await? {
            gust_store::MetaEvent::Put(entry) => {
                let record = decode(&entry.value).ok();
                (entry.key, record)
            }
            gust_store::MetaEvent::Delete { key, .. } => (key, None),
        })
    }
}

fn record_key(tenant: &TenantId, function: &FunctionName, id: &str) -> String {
    format!("{PREFIX}{tenant}/{function}/{id}")
}

fn status_key(tenant: &TenantId, function: &FunctionName, id: &str) -> String {
    format!("{STATUS_PREFIX}{tenant}/{function}/{id}")
}

/// A message from a source, ready to become an event.
#[derive(Debug, Clone, Default)]
pub struct SourceMessage {
    /// The source's own id for this message, stable across redeliveries
    /// (`None` where the source gives none: each delivery is then new).
    pub id: Option<String>,
    /// CloudEvents `type`, e.g. `dev.gust.redis.message`.
    pub ty: String,
    /// CloudEvents `source`: the broker and topic, e.g. `redis://h:6379/orders`.
    pub source: String,
    pub subject: Option<String>,
    /// Messages of one key are delivered one at a time, in order.
    pub ordering_key: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

impl Events {
    /// Stores a source (its secrets already sealed); replaces one of the same id.
    pub async fn add_source(&self, record: SourceRecord) -> Result<(), EventsError> {
        check_path(record.path()).map_err(EventsError::InvalidTrigger)?;
        let key = record_key(&record.tenant, &record.function, &record.id);
        self.kv.put(&key, encode(&record)?).await?;
        Ok(())
    }

    /// A function's sources.
    pub async fn sources(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
    ) -> Result<Vec<SourceRecord>, EventsError> {
        self.list_sources(&format!("{PREFIX}{tenant}/{function}/"))
            .await
    }

    /// A tenant's sources (`None`: every tenant's).
    pub async fn all_sources(
        &self,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<SourceRecord>, EventsError> {
        match tenant {
            Some(tenant) => self.list_sources(&format!("{PREFIX}{tenant}/")).await,
            None => self.list_sources(PREFIX).await,
        }
    }

    /// Every tenant's sources now, and each later change: what a node that
    /// runs sources follows (one watch, rather than a listing a second: in
    /// a cluster each listing is a consumer made on the stream).
    pub async fn watch_sources(&self) -> Result<SourceWatch, EventsError> {
        let watch = self.kv.watch(PREFIX).await?;
        Ok(SourceWatch {
            initial: watch
                .initial
                .into_iter()
                .filter_map(|e| Some((e.key, decode(&e.value).ok()?)))
                .collect(),
            changes: watch.changes,
        })
    }

    async fn list_sources(&self, prefix: &str) -> Result<Vec<SourceRecord>, EventsError> {
        let entries = self.kv.list(prefix).await?;
        Ok(entries
            .iter()
            .filter_map(|e| decode(&e.value).ok())
            .collect())
    }

    pub async fn source(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
        id: &str,
    ) -> Result<SourceRecord, EventsError> {
        match self.kv.get(&record_key(tenant, function, id)).await? {
            Some(entry) => Ok(decode(&entry.value)?),
            None => Err(EventsError::NoSuchSource(id.to_string())),
        }
    }

    pub async fn remove_source(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
        id: &str,
    ) -> Result<(), EventsError> {
        match self.kv.delete(&record_key(tenant, function, id)).await? {
            Some(_) => {
                let _ = self.kv.delete(&status_key(tenant, function, id)).await;
                Ok(())
            }
            None => Err(EventsError::NoSuchSource(id.to_string())),
        }
    }

    /// Records what a source is doing (by the node running it).
    pub async fn set_source_status(
        &self,
        record: &SourceRecord,
        status: &SourceStatus,
    ) -> Result<(), EventsError> {
        let key = status_key(&record.tenant, &record.function, &record.id);
        self.kv.put(&key, encode(status)?).await?;
        Ok(())
    }

    pub async fn source_status(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
        id: &str,
    ) -> Result<Option<SourceStatus>, EventsError> {
        Ok(
            match self.kv.get(&status_key(tenant, function, id)).await? {
                Some(entry) => decode(&entry.value).ok(),
                None => None,
            },
        )
    }

    /// Queues `message` for the source's function; returns once it is
    /// durably stored (the moment to acknowledge it to its broker). With
    /// an id, a message already accepted is skipped: returns `false`.
    pub async fn submit_from_source(
        &self,
        record: &SourceRecord,
        message: SourceMessage,
    ) -> Result<bool, EventsError> {
        let (queued, _) = self.submit_batch_from_source(record, vec![message]).await?;
        Ok(queued == 1)
    }

    /// Queues `messages` for the source's function, in their order: those
    /// of one ordering key with one enqueue (one commit), keys side by
    /// side. Returns once all are durable: how many were queued, and how
    /// many skipped as redeliveries of an accepted id.
    pub async fn submit_batch_from_source(
        &self,
        record: &SourceRecord,
        messages: Vec<SourceMessage>,
    ) -> Result<(u64, u64), EventsError> {
        // Which were accepted before (looked up side by side).
        let mut lookups = tokio::task::JoinSet::new();
        let mut envelopes = Vec::with_capacity(messages.len());
        for (i, message) in messages.into_iter().enumerate() {
            let stable = message.id.is_some();
            let (envelope, group) = self.source_envelope(record, message);
            if stable {
                let kv = self.kv.clone();
                let key = crate::invocation_key(&envelope.tenant, &envelope.invocation_id);
                lookups.spawn(async move { (i, kv.get(&key).await.map(|e| e.is_some())) });
            }
            envelopes.push(Some((envelope, group)));
        }
        let mut duplicates = 0;
        while let Some(found) = lookups.join_next().await {
            let (i, seen) =
                found.map_err(|_| EventsError::Store(gust_store::StoreError::Closed))?;
            if seen? {
                envelopes[i] = None;
                duplicates += 1;
            }
        }
        // One batch per ordering key, each in arrival order.
        let mut batches: Vec<(Option<String>, Vec<gust_core::Envelope>)> = Vec::new();
        let mut index: std::collections::HashMap<Option<String>, usize> = Default::default();
        for (envelope, group) in envelopes.into_iter().flatten() {
            let at = *index.entry(group.clone()).or_insert_with(|| {
                batches.push((group, Vec::new()));
                batches.len() - 1
            });
            batches[at].1.push(envelope);
        }
        let mut queued = 0;
        let mut stores = tokio::task::JoinSet::new();
        for (group, batch) in batches {
            queued += batch.len() as u64;
            let this = self.clone();
            // In tasks of their own: a caller that goes away half way
            // cannot leave a queue entry without its status.
            stores.spawn(async move { this.store_many(batch, group, crate::Once::No).await });
        }
        let mut result = Ok(());
        while let Some(done) = stores.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(EventsError::Store(gust_store::StoreError::Closed)),
            }
        }
        result.map(|()| (queued, duplicates))
    }

    /// A message's envelope and ordering group.
    fn source_envelope(
        &self,
        record: &SourceRecord,
        message: SourceMessage,
    ) -> (gust_core::Envelope, Option<String>) {
        let invocation_id = match &message.id {
            Some(id) => format!(
                "src-{}-{}-{}",
                record.function,
                record.id,
                stable_digest(id.as_bytes())
            ),
            None => self.next_invocation_id(),
        };
        let mut envelope = Events::envelope(
            record.tenant.clone(),
            record.function.clone(),
            invocation_id,
            record.path().to_string(),
            |_| None,
            message.data,
        );
        if let Some(id) = message.id {
            envelope.id = id;
        }
        envelope.source = message.source;
        envelope.ty = message.ty;
        envelope.origin = Some(record.spec.kind.clone());
        envelope.subject = message.subject;
        envelope.content_type = message.content_type;
        envelope.time_ms = now_ms();
        let group = message
            .ordering_key
            .map(|key| format!("src/{}/{key}", record.id));
        (envelope, group)
    }

    /// Events of `function` queued and not yet finished: what a source's
    /// `max_backlog` bounds.
    pub async fn queued(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
    ) -> Result<u64, EventsError> {
        Ok(self
            .queue
            .depth(&crate::queue_name(tenant, function))
            .await?)
    }
}

/// A short, stable digest of a source's message id (FNV-1a, 128 bits as
/// two 64-bit lanes): it keeps invocation ids short and free of the
/// characters an id may hold.
fn stable_digest(bytes: &[u8]) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for &byte in bytes {
        a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        b = b.rotate_left(5) ^ a;
    }
    format!("{a:016x}{b:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_stable_and_distinct() {
        assert_eq!(stable_digest(b"1-0"), stable_digest(b"1-0"));
        assert_ne!(stable_digest(b"1-0"), stable_digest(b"1-1"));
        assert_ne!(stable_digest(b"ab"), stable_digest(b"ba"));
        assert_eq!(stable_digest(b"").len(), 32);
    }
}
