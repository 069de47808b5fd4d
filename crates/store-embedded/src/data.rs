//! Tenants' data ([`DataStore`]): keys with revisions numbered per owner,
//! the change feed across all owners, and each owner's usage, checked
//! against its allowance before anything is written.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition, WriteTransaction};

use gust_store::{
    Allowance, DataChange, DataStore, DataUsage, DataWrite, Entry, KeyInfo, StoreError,
};

use crate::{EmbeddedStore, META, backend, meta_number};

/// Tenants' data: key → (its owner's revision, value).
pub(crate) const DATA: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("data");
/// The change feed: seq (across all owners) → (key, is_delete, value, the
/// owner's revision).
pub(crate) const DATA_FEED: TableDefinition<u64, (&str, bool, &[u8], u64)> =
    TableDefinition::new("data_feed");
/// The last revision of each owner: revisions are numbered per owner, so
/// that one tenant's revisions say nothing of another's writes.
const DATA_REVISIONS: TableDefinition<&str, u64> = TableDefinition::new("data_revisions");
/// Usage per owner (the part of a data key before its first `/`): (keys, bytes).
pub(crate) const DATA_USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("data_usage");
/// [`META`] key: the change feed's last sequence number.
pub(crate) const DATA_REVISION: &str = "data.revision";
/// [`META`] key: where owners without a revision yet start (absent: 0). A
/// store migrated from before per-owner revisions starts them above the
/// store-wide numbers its keys already had, so a key's revision never goes
/// back.
pub(crate) const DATA_REVISION_FLOOR: &str = "data.revision_floor";

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(DATA).map_err(backend)?;
    txn.open_table(DATA_FEED).map_err(backend)?;
    txn.open_table(DATA_REVISIONS).map_err(backend)?;
    txn.open_table(DATA_USAGE).map_err(backend)?;
    Ok(())
}

/// The change feed's last sequence number.
pub(crate) fn last_seq(txn: &WriteTransaction) -> Result<u64, StoreError> {
    meta_number(&txn.open_table(META).map_err(backend)?, DATA_REVISION)
}

/// The tables one data write touches.
struct DataTables<'t> {
    data: redb::Table<'t, &'static str, (u64, &'static [u8])>,
    feed: redb::Table<'t, u64, (&'static str, bool, &'static [u8], u64)>,
    revisions: redb::Table<'t, &'static str, u64>,
    /// Where owners without a revision start.
    floor: u64,
}

/// Applies one data write inside a transaction; the change it made, if any.
/// `seq` is the feed's position across all owners.
fn write_data(
    tables: &mut DataTables<'_>,
    seq: &mut u64,
    write: DataWrite,
) -> Result<(Option<DataChange>, (i64, i64)), StoreError> {
    let DataTables {
        data,
        feed,
        revisions,
        floor,
    } = tables;
    let old = data
        .get(write.key())
        .map_err(backend)?
        .map(|v| v.value().1.to_vec());
    let (key, value) = match write {
        DataWrite::Put { key, value } => (key, Some(value)),
        DataWrite::Delete { key } => {
            if old.is_none() {
                return Ok((None, (0, 0)));
            }
            data.remove(key.as_str()).map_err(backend)?;
            (key, None)
        }
        DataWrite::Increment { key, delta } => {
            let current = match &old {
                None => 0,
                Some(v) => counter(v).ok_or_else(|| StoreError::NotACounter(key.clone()))?,
            };
            let next = current.wrapping_add(delta);
            (key, Some(Bytes::from(next.to_string())))
        }
    };
    *seq += 1;
    let owner = owner_of(&key);
    let revision = revisions
        .get(owner)
        .map_err(backend)?
        .map_or(*floor, |v| v.value())
        + 1;
    revisions.insert(owner, revision).map_err(backend)?;
    let bytes = value.as_deref().unwrap_or_default();
    if value.is_some() {
        data.insert(key.as_str(), (revision, bytes))
            .map_err(backend)?;
    }
    feed.insert(*seq, (key.as_str(), value.is_none(), bytes, revision))
        .map_err(backend)?;
    let delta = usage_delta(
        &key,
        old.as_ref().map(Vec::len),
        value.as_ref().map(Bytes::len),
    );
    Ok((
        Some(DataChange {
            seq: *seq,
            revision,
            key,
            value,
        }),
        delta,
    ))
}

fn counter(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The part of a data key before its first `/`: whose usage it counts in.
pub(crate) fn owner_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(owner, _)| owner)
}

/// How a key going from `old` to `new` value length changes (keys, bytes).
fn usage_delta(key: &str, old: Option<usize>, new: Option<usize>) -> (i64, i64) {
    let size = |len: Option<usize>| len.map_or(0, |l| (key.len() + l) as i64);
    (
        i64::from(new.is_some()) - i64::from(old.is_some()),
        size(new) - size(old),
    )
}

/// The longest a counter's decimal text can be.
const COUNTER_MAX_LEN: usize = 20;

/// Checks the writes before any is made: every increment must find a
/// counter (or a key this call puts or deletes first), and returns how the
/// writes change usage per owner — exact for puts and deletes, an upper
/// bound for increments.
fn project(
    data: &redb::Table<&str, (u64, &[u8])>,
    writes: &[DataWrite],
) -> Result<HashMap<String, (i64, i64)>, StoreError> {
    // Each key's value length as the writes so far leave it.
    let mut pending: HashMap<&str, Option<usize>> = HashMap::new();
    let mut deltas: HashMap<String, (i64, i64)> = HashMap::new();
    for write in writes {
        let key = write.key();
        let old = match pending.get(key) {
            Some(len) => *len,
            None => match data.get(key).map_err(backend)? {
                Some(v) => {
                    let stored = v.value().1;
                    if matches!(write, DataWrite::Increment { .. }) && counter(stored).is_none() {
                        return Err(StoreError::NotACounter(key.to_string()));
                    }
                    Some(stored.len())
                }
                None => None,
            },
        };
        let new = match write {
            DataWrite::Put { value, .. } => Some(value.len()),
            DataWrite::Delete { .. } => None,
            DataWrite::Increment { .. } => Some(COUNTER_MAX_LEN.max(old.unwrap_or(0))),
        };
        pending.insert(key, new);
        let (keys, bytes) = usage_delta(key, old, new);
        let owner = deltas.entry(owner_of(key).to_string()).or_default();
        owner.0 += keys;
        owner.1 += bytes;
    }
    Ok(deltas)
}

fn check_allowance(
    usage: &redb::Table<&str, (u64, u64)>,
    allowance: &Allowance,
    writes: &[DataWrite],
    projected: HashMap<String, (i64, i64)>,
) -> Result<(), StoreError> {
    if let Some(stranger) = writes.iter().find(|w| owner_of(w.key()) != allowance.owner) {
        return Err(StoreError::Backend(format!(
            "`{}` is not owned by `{}`",
            stranger.key(),
            allowance.owner
        )));
    }
    let Some(&(keys, bytes)) = projected.get(&allowance.owner) else {
        return Ok(());
    };
    let before = read_usage(usage, &allowance.owner)?;
    let after = DataUsage {
        keys: before.keys.saturating_add_signed(keys),
        bytes: before.bytes.saturating_add_signed(bytes),
    };
    allowance.check(before, after)
}

fn read_usage(
    usage: &impl redb::ReadableTable<&'static str, (u64, u64)>,
    owner: &str,
) -> Result<DataUsage, StoreError> {
    Ok(usage
        .get(owner)
        .map_err(backend)?
        .map_or_else(DataUsage::default, |v| {
            let (keys, bytes) = v.value();
            DataUsage { keys, bytes }
        }))
}

#[async_trait]
impl DataStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut found = self.get_many(vec![key.to_string()]).await?;
        Ok(found.pop().flatten())
    }

    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Entry>>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let data = txn.open_table(DATA).map_err(backend)?;
            keys.into_iter()
                .map(|key| {
                    let found = data.get(key.as_str()).map_err(backend)?.map(|v| {
                        let (revision, value) = v.value();
                        (revision, Bytes::copy_from_slice(value))
                    });
                    Ok(found.map(|(revision, value)| Entry {
                        key,
                        value,
                        revision,
                    }))
                })
                .collect()
        })
        .await
    }

    async fn apply(
        &self,
        writes: Vec<DataWrite>,
        allowance: Option<&Allowance>,
    ) -> Result<Vec<Option<DataChange>>, StoreError> {
        let allowance = allowance.cloned();
        let changes = self
            .write(move |txn, _| {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let mut tables = DataTables {
                    data: txn.open_table(DATA).map_err(backend)?,
                    feed: txn.open_table(DATA_FEED).map_err(backend)?,
                    revisions: txn.open_table(DATA_REVISIONS).map_err(backend)?,
                    floor: meta_number(&meta, DATA_REVISION_FLOOR)?,
                };
                let mut usage = txn.open_table(DATA_USAGE).map_err(backend)?;
                let start = meta_number(&meta, DATA_REVISION)?;
                // Refusals (a bad counter, over the allowance) must leave
                // nothing behind, and the transaction is shared with other
                // callers: check everything before the first write.
                let projected = project(&tables.data, &writes)?;
                if let Some(allowance) = &allowance {
                    check_allowance(&usage, allowance, &writes, projected)?;
                }
                let mut revision = start;
                let mut changes = Vec::with_capacity(writes.len());
                let mut deltas: HashMap<String, (i64, i64)> = HashMap::new();
                for write in writes {
                    // A refusal here (a counter overwritten earlier in the
                    // same call) comes after writes: abandon the batch.
                    let (change, delta) =
                        write_data(&mut tables, &mut revision, write).map_err(|e| match e {
                            e if e.is_refusal() => {
                                StoreError::Backend(format!("{e}; nothing was written"))
                            }
                            e => e,
                        })?;
                    if let Some(change) = &change {
                        let owner = deltas.entry(owner_of(&change.key).to_string()).or_default();
                        owner.0 += delta.0;
                        owner.1 += delta.1;
                    }
                    changes.push(change);
                }
                for (owner, (keys, bytes)) in deltas {
                    let now = read_usage(&usage, &owner)?;
                    let next = (
                        now.keys.saturating_add_signed(keys),
                        now.bytes.saturating_add_signed(bytes),
                    );
                    usage.insert(owner.as_str(), next).map_err(backend)?;
                }
                if revision != start {
                    meta.insert(DATA_REVISION, revision).map_err(backend)?;
                }
                Ok(changes)
            })
            .await?;
        if let Some(last) = changes.iter().flatten().map(|c| c.seq).max() {
            self.inner
                .data_revision
                .send_modify(|r| *r = (*r).max(last));
        }
        Ok(changes)
    }

    async fn usage(&self, owner: &str) -> Result<DataUsage, StoreError> {
        let owner = owner.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let usage = txn.open_table(DATA_USAGE).map_err(backend)?;
            read_usage(&usage, &owner)
        })
        .await
    }

    async fn keys(
        &self,
        prefix: &str,
        start_after: Option<String>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let data = txn.open_table(DATA).map_err(backend)?;
            let from = match &start_after {
                Some(after) if after.as_str() >= prefix.as_str() => after.as_str(),
                _ => prefix.as_str(),
            };
            let mut out = Vec::new();
            for entry in data.range(from..).map_err(backend)? {
                let (key, value) = entry.map_err(backend)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) || out.len() >= limit {
                    break;
                }
                if start_after.as_deref() == Some(key) {
                    continue;
                }
                let (revision, bytes) = value.value();
                out.push(KeyInfo {
                    key: key.to_string(),
                    revision,
                    size: bytes.len() as u64,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<Vec<DataChange>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let feed = txn.open_table(DATA_FEED).map_err(backend)?;
            let mut out = Vec::new();
            for entry in feed
                .range(after.saturating_add(1)..)
                .map_err(backend)?
                .take(limit)
            {
                let (seq, record) = entry.map_err(backend)?;
                let (key, deleted, value, revision) = record.value();
                out.push(DataChange {
                    seq: seq.value(),
                    revision,
                    key: key.to_string(),
                    value: (!deleted).then(|| Bytes::copy_from_slice(value)),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn trim_changes(&self, through: u64) -> Result<(), StoreError> {
        self.write(move |txn, _| {
            let mut feed = txn.open_table(DATA_FEED).map_err(backend)?;
            feed.retain_in(..=through, |_, _| false).map_err(backend)?;
            Ok(())
        })
        .await
    }

    fn last_revision(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.data_revision.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let (_dir, store) = crate::open_temp();
        gust_store::conformance::data(&store).await;
    }

    #[test]
    fn usage_counts_a_key_and_its_value() {
        assert_eq!(usage_delta("t/k", None, Some(2)), (1, 5));
        assert_eq!(usage_delta("t/k", Some(2), Some(4)), (0, 2));
        assert_eq!(usage_delta("t/k", Some(4), None), (-1, -7));
        assert_eq!(owner_of("t/a/b"), "t");
        assert_eq!(owner_of("t"), "t");
    }
}
