//! Key-value change triggers: a function subscribes to a bucket (and
//! optionally a key prefix), and every put or delete there becomes an
//! event for it, through [`Events::submit_once`] like any trigger.
//!
//! The source is the data store's change feed, written in the same
//! transaction as each change, so no change is missed even if the server
//! dies between the write and the event. `ChangeFeed` reads the feed from
//! a durable cursor, submits one event per matching subscription, then
//! moves the cursor and trims the feed. A crash in between makes it read
//! the same changes again; each event's invocation id is derived from its
//! function, trigger and revision, and [`Events::submit_once`] skips those
//! already accepted, so at most the last event per key is queued twice —
//! right behind the first copy, which keeps the order per key.
//!
//! Order per key: the events of one key share an ordering group in the
//! function's queue, so they are delivered one at a time in revision
//! order, retries included. Events of different keys run in parallel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gust_core::kv::{self, BucketName, ChangeEvent};
use gust_core::{FunctionName, TenantId};
use gust_store::{DataChange, DataStore};
use serde::{Deserialize, Serialize};

use crate::{Events, EventsError, check_path, decode, encode, now_ms};

pub(crate) const PREFIX: &str = "ktrig/";
const CURSOR_KEY: &str = "feed/data-cursor";
/// Changes read from the feed at a time.
const BATCH: usize = 512;

/// A function's subscription to changes in a bucket:
/// `ktrig/<tenant>/<function>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvTriggerRecord {
    pub id: String,
    pub tenant: TenantId,
    pub function: FunctionName,
    pub bucket: BucketName,
    /// Only keys starting with this (all keys when empty).
    #[serde(default)]
    pub prefix: String,
    /// The request path the function sees.
    #[serde(default = "crate::root_path")]
    pub path: String,
    pub created_ms: u64,
}

fn trigger_key(tenant: &TenantId, function: &FunctionName, id: &str) -> String {
    format!("{PREFIX}{tenant}/{function}/{id}")
}

impl Events {
    pub async fn add_kv_trigger(&self, record: KvTriggerRecord) -> Result<(), EventsError> {
        check_path(&record.path).map_err(EventsError::InvalidTrigger)?;
        if !record.prefix.is_empty() {
            kv::check_key(&record.prefix)
                .map_err(|e| EventsError::InvalidTrigger(format!("prefix: {e}")))?;
        }
        let key = trigger_key(&record.tenant, &record.function, &record.id);
        self.kv.put(&key, encode(&record)?).await?;
        Ok(())
    }

    pub async fn kv_triggers(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
    ) -> Result<Vec<KvTriggerRecord>, EventsError> {
        let entries = self
            .kv
            .list(&format!("{PREFIX}{tenant}/{function}/"))
            .await?;
        Ok(entries
            .iter()
            .map(|e| decode(&e.value))
            .collect::<Result<_, _>>()?)
    }

    pub async fn remove_kv_trigger(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
        id: &str,
    ) -> Result<(), EventsError> {
        match self.kv.delete(&trigger_key(tenant, function, id)).await? {
            Some(_) => Ok(()),
            None => Err(EventsError::NoSuchTrigger(id.to_string())),
        }
    }
}

/// Turns the data change feed into events until the process ends.
pub struct ChangeFeed;

impl ChangeFeed {
    /// Reads the feed from now on. With `exclusive` (nodes of a cluster
    /// sharing one feed), only while holding that lease: one reader at a
    /// time keeps each key's events in revision order and each change's
    /// event single. A holder that dies is replaced once its lease runs
    /// out ([`gust_store::Lease::TTL`]): KV-triggered events pause that long.
    pub fn start(events: &Events, data: Arc<dyn DataStore>, exclusive: Option<gust_store::Lease>) {
        let events = events.clone();
        tokio::spawn(async move {
            let _held = match exclusive {
                Some(lease) => loop {
                    match lease.acquire().await {
                        Ok(guard) => {
                            tracing::info!("this node reads the data change feed");
                            break Some(guard);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "change feed: cannot take its lease; retrying in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                },
                None => None,
            };
            let mut written = data.last_revision();
            loop {
                match pump(&events, data.as_ref()).await {
                    Ok(true) => continue,
                    Ok(false) => {
                        // Caught up: wait for the next write (or a while, as a safety net).
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), written.changed()).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "change feed: retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

/// Handles one batch of the feed; true if there may be more.
async fn pump(events: &Events, data: &dyn DataStore) -> Result<bool, EventsError> {
    let cursor = match events.kv.get(CURSOR_KEY).await? {
        Some(entry) => std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0),
        None => 0,
    };
    let changes = data.changes(cursor, BATCH).await?;
    let Some(last) = changes.last().map(|c| c.seq) else {
        return Ok(false);
    };
    let triggers: Vec<KvTriggerRecord> = events
        .kv
        .list(PREFIX)
        .await?
        .iter()
        .filter_map(|e| decode(&e.value).ok())
        .collect();

    // One chain per (function, key): in order within, in parallel across.
    let mut chains: HashMap<(String, String), Vec<(KvTriggerRecord, DataChange)>> = HashMap::new();
    for change in &changes {
        let Some((tenant, bucket, key)) = kv::parse_storage_key(&change.key) else {
            continue;
        };
        for trigger in &triggers {
            if trigger.tenant == tenant
                && trigger.bucket == bucket
                && key.starts_with(&trigger.prefix)
            {
                chains
                    .entry((trigger.function.to_string(), change.key.clone()))
                    .or_default()
                    .push((trigger.clone(), change.clone()));
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for chain in chains.into_values() {
        let events = events.clone();
        tasks.spawn(async move {
            for (trigger, change) in chain {
                submit(&events, &trigger, &change).await?;
            }
            Ok::<(), EventsError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|_| EventsError::Store(gust_store::StoreError::Closed))??;
    }
    events
        .kv
        .put(CURSOR_KEY, Bytes::from(last.to_string()))
        .await?;
    data.trim_changes(last).await?;
    Ok(changes.len() == BATCH)
}

async fn submit(
    events: &Events,
    trigger: &KvTriggerRecord,
    change: &DataChange,
) -> Result<(), EventsError> {
    let Some((_, bucket, key)) = kv::parse_storage_key(&change.key) else {
        return Ok(());
    };
    let payload = ChangeEvent::new(&bucket, key, change.revision, change.value.as_deref());
    let data = serde_json::to_vec(&payload)
        .map_err(|e| EventsError::Store(gust_store::StoreError::Corrupt(e.to_string())))?;
    let invocation_id = format!("kv-{}-{}-{}", trigger.function, trigger.id, change.revision);
    let mut envelope = Events::envelope(
        trigger.tenant.clone(),
        trigger.function.clone(),
        invocation_id,
        trigger.path.clone(),
        |_| None,
        data,
    );
    envelope.id = format!("{}-{}", bucket, change.revision);
    envelope.source = format!("/gust/kv/{bucket}");
    envelope.ty = format!("dev.gust.kv.{}", payload.operation);
    envelope.subject = Some(key.to_string());
    envelope.content_type = Some("application/json".to_string());
    envelope.time_ms = now_ms();
    let group = format!("kv/{bucket}/{key}");
    events.submit_once(envelope, Some(group)).await
}
