//! In a cluster, the final statuses of events that succeeded at their
//! first attempt, many to a stored message.
//!
//! On a cluster syncing every write, what an event costs is the messages
//! it stores, and its own status record was one of the two it stored
//! (`bench/README.md`, session 42). Such an event had no record before
//! (it was accepted without one: its queue entry stood for it), so its
//! status need not be a record of its own: each node gathers the
//! statuses its dispatcher finishes while its writes are in flight, and
//! stores them together, one entry per tenant and *bucket*:
//! the invocation id without its last two characters. Gust's own ids are
//! a process's start time and a counter, so a bucket holds up to 256
//! events accepted one after another on one node, and a lookup by id
//! reads only its bucket's entries
//! (`done/<tenant>/<bucket>/<node>.<writer start>.<n>`).
//!
//! Every other status stays a record of its own (`inv/<tenant>/<id>`):
//! an event accepted with one (a trigger's, a source's, a redriven one),
//! a retry, a failure, a dead letter, and everything on one node, whose
//! store commits writes in groups anyway. An entry is written before the
//! event is acknowledged, so an event gone from its queue has its status
//! in one place or the other. Both hold one only when a later attempt
//! ran (the first one's acknowledgement was lost): its record is the
//! later status.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gust_core::{InvocationRecord, InvocationState, TenantId};
use gust_store::{MetaStore, StoreError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{decode, encode, now_ms};

/// Where the entries live.
pub(crate) const PREFIX: &str = "done/";
/// Statuses one flush takes, at most.
const MAX_BATCH: usize = 512;
/// Flushes in flight at once: a status never waits under light load, and
/// under heavy load gathers with the others given while these are out.
const FLUSHES: usize = 4;

/// The bucket of an invocation id: the id without its last two
/// characters (nothing when it is that short).
fn bucket(id: &str) -> &str {
    let cut = id.char_indices().rev().nth(1).map_or(0, |(at, _)| at);
    &id[..cut]
}

/// The prefix of the entries that may hold `id`'s status.
fn bucket_prefix(tenant: &TenantId, id: &str) -> String {
    format!("{PREFIX}{tenant}/{}/", bucket(id))
}

/// The status of `id` among the entries, if one holds it (the latest, if
/// a repeated write left two).
pub(crate) async fn find(
    kv: &Arc<dyn MetaStore>,
    tenant: &TenantId,
    id: &str,
) -> Result<Option<InvocationRecord>, StoreError> {
    let mut found: Option<InvocationRecord> = None;
    for entry in kv.list(&bucket_prefix(tenant, id)).await? {
        for record in decode::<Vec<InvocationRecord>>(&entry.value)? {
            if record.invocation_id == id
                && found
                    .as_ref()
                    .is_none_or(|f| f.updated_ms < record.updated_ms)
            {
                found = Some(record);
            }
        }
    }
    Ok(found)
}

/// Every status the entries hold for `tenant`.
pub(crate) async fn all(
    kv: &Arc<dyn MetaStore>,
    tenant: &TenantId,
) -> Result<Vec<InvocationRecord>, StoreError> {
    let mut records = Vec::new();
    for entry in kv.list(&format!("{PREFIX}{tenant}/")).await? {
        records.extend(decode::<Vec<InvocationRecord>>(&entry.value)?);
    }
    Ok(records)
}

/// Whether an entry may go: every status in it is a success older than
/// `before` (one that cannot be read stays, as a record would).
pub(crate) fn expired(value: &[u8], before: u64) -> bool {
    decode::<Vec<InvocationRecord>>(value).is_ok_and(|records| {
        records
            .iter()
            .all(|r| r.state == InvocationState::Succeeded && r.updated_ms < before)
    })
}

struct Pending {
    tenant: TenantId,
    record: InvocationRecord,
    written: oneshot::Sender<Result<(), StoreError>>,
}

/// One node's writer of entries: a status given while every flush is in
/// flight goes in the next one.
pub(crate) struct DoneWriter {
    kv: Arc<dyn MetaStore>,
    node: String,
    tx: mpsc::UnboundedSender<Pending>,
    /// Taken by the first write, which starts the writing task (in the
    /// runtime, whatever made the writer).
    rx: Mutex<Option<mpsc::UnboundedReceiver<Pending>>>,
    started: AtomicBool,
}

impl DoneWriter {
    pub(crate) fn new(kv: Arc<dyn MetaStore>, node: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            kv,
            node: node.to_string(),
            tx,
            rx: Mutex::new(Some(rx)),
            started: AtomicBool::new(false),
        }
    }

    /// Stores `record` (a success of `tenant`'s) durably, with the others
    /// given meanwhile.
    pub(crate) async fn write(
        &self,
        tenant: &TenantId,
        record: InvocationRecord,
    ) -> Result<(), StoreError> {
        if !self.started.swap(true, Ordering::AcqRel) {
            let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(rx) = rx {
                tokio::spawn(run(self.kv.clone(), self.node.clone(), rx));
            }
        }
        let (written, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                tenant: tenant.clone(),
                record,
                written,
            })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run(kv: Arc<dyn MetaStore>, node: String, mut rx: mpsc::UnboundedReceiver<Pending>) {
    // Entry names are unique per writer: the node's name, when this
    // writer started, and a count.
    let start = now_ms();
    let mut next = 0u64;
    let flushes = Arc::new(Semaphore::new(FLUSHES));
    while let Some(first) = rx.recv().await {
        // While every flush is in flight, statuses wait for the next.
        let Ok(permit) = flushes.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let mut groups: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for pending in batch {
            groups
                .entry(bucket_prefix(
                    &pending.tenant,
                    &pending.record.invocation_id,
                ))
                .or_default()
                .push(pending);
        }
        let groups: Vec<(String, Vec<Pending>)> = groups
            .into_iter()
            .map(|(prefix, group)| {
                next += 1;
                (format!("{prefix}{node}.{start:x}.{next:x}"), group)
            })
            .collect();
        let kv = kv.clone();
        tokio::spawn(async move {
            let mut writes = tokio::task::JoinSet::new();
            for (key, group) in groups {
                let kv = kv.clone();
                writes.spawn(async move {
                    let records: Vec<&InvocationRecord> = group.iter().map(|p| &p.record).collect();
                    let result = match encode(&records) {
                        Ok(value) => kv.put(&key, value).await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    for pending in group {
                        let _ = pending.written.send(result.clone());
                    }
                });
            }
            while writes.join_next().await.is_some() {}
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_goes_once_every_status_in_it_is_an_old_success() {
        let status = |state, updated_ms| InvocationRecord {
            invocation_id: "i".into(),
            function: "f".into(),
            state,
            attempts: 1,
            accepted_ms: 0,
            updated_ms,
            last_status: Some(200),
            last_error: None,
            retry_at_ms: None,
        };
        let entry = |records: Vec<InvocationRecord>| encode(&records).unwrap();
        let old = entry(vec![
            status(InvocationState::Succeeded, 10),
            status(InvocationState::Succeeded, 20),
        ]);
        assert!(expired(&old, 21));
        // One status as new as the cut keeps the whole entry.
        assert!(!expired(&old, 20));
        let mixed = entry(vec![
            status(InvocationState::Succeeded, 10),
            status(InvocationState::Failed, 10),
        ]);
        assert!(!expired(&mixed, 100));
        // What cannot be read stays, as a record would.
        assert!(!expired(b"not json", u64::MAX));
    }

    #[test]
    fn a_bucket_is_the_id_without_its_last_two_characters() {
        assert_eq!(bucket("0192a3b4c5d00000001f7"), "0192a3b4c5d00000001");
        assert_eq!(bucket("ab"), "");
        assert_eq!(bucket("a"), "");
        assert_eq!(bucket(""), "");
        // Never inside a character.
        assert_eq!(bucket("xé€"), "x");
    }
}
