//! The schema version, and every step that brings a database of an older
//! layout to the current one. The other modules read and write only the
//! current layout: what an older build left behind is converted here, at
//! open, in the same transaction that records the version.
//!
//! Usage records written as JSON (before the binary form) are carried as
//! they are: the store does not know a record's form, the meter does, and
//! it still decodes them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::Bytes;
use redb::{
    Database, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition, WriteTransaction,
};

use gust_store::{LedgerEntry, LedgerRecords, StoreError};

use crate::data::{DATA, DATA_FEED, DATA_REVISION, DATA_REVISION_FLOOR, DATA_USAGE, owner_of};
use crate::ledger::{BLOCK_MS, LedgerFile, encode_block_into, record_spans};
use crate::{META, backend, meta_number};

/// The layout this build reads and writes. A change of layout raises it
/// and adds its steps to [`STEPS`].
pub(crate) const SCHEMA_VERSION: u64 = 1;
/// [`META`] key: the layout the database is in. Absent from a database an
/// earlier build wrote (before versions were recorded).
pub(crate) const SCHEMA_KEY: &str = "schema.version";

/// What opening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No tables: a new database.
    New,
    /// Tables but no version: written by a build from before versions
    /// were recorded, at any of its layouts.
    Unversioned,
    /// A recorded version this build reads.
    Version(u64),
}

/// One step: converts what one earlier layout left in the database.
type Step = fn(&WriteTransaction, &LedgerFile) -> Result<(), StoreError>;

/// Every step, oldest first, with the version it brings the database to.
/// The steps to version 1 come from builds that recorded no version: an
/// unversioned database may stand anywhere among them, so each looks for
/// its own work and does nothing when there is none.
const STEPS: &[(u64, Step)] = &[
    (1, count_usage),
    (1, ledger_rows_into_blocks),
    (1, ledger_blocks_into_file),
    (1, number_revisions_per_owner),
];

/// Reads the database's schema version, before anything is written: a
/// newer (or unknown) one is refused.
pub(crate) fn schema_of(db: &Database, path: &Path) -> Result<Found, StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            // Every build creates all its tables when it opens a database.
            let any = txn.list_tables().map_err(backend)?.next().is_some();
            return Ok(if any { Found::Unversioned } else { Found::New });
        }
        Err(e) => return Err(backend(e)),
    };
    match meta.get(SCHEMA_KEY).map_err(backend)?.map(|v| v.value()) {
        None => Ok(Found::Unversioned),
        Some(found) if found > SCHEMA_VERSION => Err(StoreError::NewerSchema {
            location: path.display().to_string(),
            found,
            supported: SCHEMA_VERSION,
        }),
        Some(0) => Err(StoreError::Corrupt(format!(
            "{} records schema version 0, which no Gust writes",
            path.display()
        ))),
        Some(found) => Ok(Found::Version(found)),
    }
}

/// Brings the database to [`SCHEMA_VERSION`] and records it. Blocks moved
/// to the ledger file are synced before `txn` commits, like any ledger
/// commit (and cut off at the next open if it does not).
pub(crate) fn run(
    txn: &WriteTransaction,
    found: Found,
    ledger: &LedgerFile,
) -> Result<(), StoreError> {
    let from = match found {
        Found::New => SCHEMA_VERSION,
        Found::Unversioned => 0,
        Found::Version(version) => version,
    };
    for (to, step) in STEPS {
        if *to > from {
            step(txn, ledger)?;
        }
    }
    if found != Found::Version(SCHEMA_VERSION) {
        txn.open_table(META)
            .map_err(backend)?
            .insert(SCHEMA_KEY, SCHEMA_VERSION)
            .map_err(backend)?;
    }
    Ok(())
}

/// Counts every owner's usage from the data itself, for stores from before
/// usage was counted (those counted since are marked with this key).
fn count_usage(txn: &WriteTransaction, _: &LedgerFile) -> Result<(), StoreError> {
    const COUNTED: &str = "data.usage_counted";
    let mut meta = txn.open_table(META).map_err(backend)?;
    if meta.remove(COUNTED).map_err(backend)?.is_some() {
        return Ok(());
    }
    let data = txn.open_table(DATA).map_err(backend)?;
    let mut counted: HashMap<String, (u64, u64)> = HashMap::new();
    for entry in data.iter().map_err(backend)? {
        let (key, value) = entry.map_err(backend)?;
        let key = key.value();
        let owner = counted.entry(owner_of(key).to_string()).or_default();
        owner.0 += 1;
        owner.1 += (key.len() + value.value().1.len()) as u64;
    }
    let mut usage = txn.open_table(DATA_USAGE).map_err(backend)?;
    for (owner, counts) in counted {
        usage.insert(owner.as_str(), counts).map_err(backend)?;
    }
    Ok(())
}

/// Usage records one row each: (tenant, time ms, key) → record.
const LEDGER_ROWS: TableDefinition<(&str, u64, &str), &[u8]> = TableDefinition::new("ledger");
/// Usage records in blocks in the database: (tenant, second's first ms,
/// block number) → block, in the ledger file's block format.
const LEDGER_BLOCKS: TableDefinition<(&str, u64, u64), &[u8]> =
    TableDefinition::new("ledger_blocks");

/// Gathers the records of the one-row-per-record ledger into blocks per
/// tenant-second (in the database; the next step moves them to the file).
fn ledger_rows_into_blocks(txn: &WriteTransaction, _: &LedgerFile) -> Result<(), StoreError> {
    let mut blocks: BTreeMap<(String, u64), Vec<LedgerEntry>> = BTreeMap::new();
    {
        let rows = txn.open_table(LEDGER_ROWS).map_err(backend)?;
        for row in rows.iter().map_err(backend)? {
            let (key, record) = row.map_err(backend)?;
            let (tenant, time_ms, key) = key.value();
            blocks
                .entry((tenant.to_string(), time_ms / BLOCK_MS * BLOCK_MS))
                .or_default()
                .push(LedgerEntry {
                    tenant: tenant.to_string(),
                    time_ms,
                    key: key.to_string(),
                    record: Bytes::copy_from_slice(record.value()),
                    opened: false,
                });
        }
    }
    txn.delete_table(LEDGER_ROWS).map_err(backend)?;
    if blocks.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(LEDGER_BLOCKS).map_err(backend)?;
    for ((tenant, second), entries) in &blocks {
        // Numbered after the blocks the database already holds for that
        // second (a second's records are sorted when read).
        let next = table
            .range((tenant.as_str(), *second, 0)..=(tenant.as_str(), *second, u64::MAX))
            .map_err(backend)?
            .next_back()
            .transpose()
            .map_err(backend)?
            .map_or(0, |(key, _)| key.value().2 + 1);
        table
            .insert(
                (tenant.as_str(), *second, next),
                encode_block(entries).as_slice(),
            )
            .map_err(backend)?;
    }
    Ok(())
}

/// Moves the blocks kept in the database into the ledger file, where
/// blocks belong: appended after what the file holds, synced, then
/// recorded as spans. Written in chunks, so a large ledger does not have
/// to fit in memory.
fn ledger_blocks_into_file(txn: &WriteTransaction, file: &LedgerFile) -> Result<(), StoreError> {
    const CHUNK: usize = 16 << 20;
    let mut end = crate::ledger::committed_end(txn)?;
    {
        let blocks = txn.open_table(LEDGER_BLOCKS).map_err(backend)?;
        if !blocks.is_empty().map_err(backend)? {
            let mut bytes = Vec::new();
            let mut spans: Vec<(String, u64, u64, u64)> = Vec::new();
            let mut rows = blocks.iter().map_err(backend)?.peekable();
            while let Some(row) = rows.next() {
                let (key, block) = row.map_err(backend)?;
                let (tenant, second, _) = key.value();
                let at = bytes.len() as u64;
                bytes.extend_from_slice(block.value());
                spans.push((
                    tenant.to_string(),
                    second,
                    end + at,
                    block.value().len() as u64,
                ));
                if bytes.len() >= CHUNK || rows.peek().is_none() {
                    file.append(end, &bytes)?;
                    end += bytes.len() as u64;
                    record_spans(
                        txn,
                        spans.iter().map(|(t, s, o, l)| (t.as_str(), *s, *o, *l)),
                        end,
                    )?;
                    bytes.clear();
                    spans.clear();
                }
            }
        }
    }
    txn.delete_table(LEDGER_BLOCKS).map_err(backend)?;
    Ok(())
}

/// The change feed from before revisions were numbered per owner: seq →
/// (key, is_delete, value).
const DATA_CHANGES: TableDefinition<u64, (&str, bool, &[u8])> =
    TableDefinition::new("data_changes");

/// Moves a store from before per-owner revisions to them: the old feed's
/// changes keep their store-wide numbers as revisions, and owners start
/// above the last of them. (A store with a revision floor has moved.)
fn number_revisions_per_owner(txn: &WriteTransaction, _: &LedgerFile) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(backend)?;
    if meta.get(DATA_REVISION_FLOOR).map_err(backend)?.is_none() {
        let floor = meta_number(&meta, DATA_REVISION)?;
        let old = txn.open_table(DATA_CHANGES).map_err(backend)?;
        let mut feed = txn.open_table(DATA_FEED).map_err(backend)?;
        for entry in old.iter().map_err(backend)? {
            let (seq, record) = entry.map_err(backend)?;
            let (key, deleted, value) = record.value();
            feed.insert(seq.value(), (key, deleted, value, seq.value()))
                .map_err(backend)?;
        }
        meta.insert(DATA_REVISION_FLOOR, floor).map_err(backend)?;
    }
    txn.delete_table(DATA_CHANGES).map_err(backend)?;
    Ok(())
}

/// `entries` as one ledger block.
fn encode_block(entries: &[LedgerEntry]) -> Vec<u8> {
    let packed: LedgerRecords = entries.iter().cloned().collect();
    let records: Vec<_> = packed.iter().collect();
    let mut out = Vec::new();
    encode_block_into(&records, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use gust_store::{DataStore, DataUsage, DataWrite, LedgerCommit, LedgerStore, MetaStore};

    use super::*;
    use crate::EmbeddedStore;
    use crate::ledger::tests::{entry, ledger_keys};

    fn recorded_version(path: &Path) -> Option<u64> {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get(SCHEMA_KEY).unwrap().map(|v| v.value())
    }

    fn table_names(path: &Path) -> Vec<String> {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        txn.list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect()
    }

    #[test]
    fn a_new_store_records_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gust.redb");
        drop(EmbeddedStore::open(&path).unwrap());
        assert_eq!(recorded_version(&path), Some(SCHEMA_VERSION));
    }

    #[test]
    fn a_store_of_a_newer_version_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gust.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, SCHEMA_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let refused = EmbeddedStore::open(&path).err().unwrap();
        assert!(
            matches!(refused, StoreError::NewerSchema { found, supported, .. }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{refused}"
        );
        assert_eq!(
            refused.to_string(),
            format!(
                "the data directory {} was written by a newer Gust (schema 2; this gust reads schema 1 and older): upgrade gust, or start with another --data-dir",
                path.display()
            )
        );
        // Nothing was created or changed.
        assert_eq!(table_names(&path), ["meta"]);
        assert!(!path.with_extension("ledger").exists());
    }

    /// A database as the builds before versions left it: a key, tenant
    /// data numbered store-wide with its old feed and no usage counted,
    /// ledger records one row each and in database blocks.
    fn write_unversioned(path: &Path) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("kv.revision", 1).unwrap();
            meta.insert(DATA_REVISION, 3).unwrap();
            let kv: TableDefinition<&'static str, (u64, &'static [u8])> =
                TableDefinition::new("kv");
            txn.open_table(kv)
                .unwrap()
                .insert("k", (1, b"v".as_slice()))
                .unwrap();
            let mut data = txn.open_table(DATA).unwrap();
            data.insert("t/a", (1, b"1".as_slice())).unwrap();
            data.insert("t/b", (3, b"xyz".as_slice())).unwrap();
            let mut changes = txn.open_table(DATA_CHANGES).unwrap();
            changes.insert(1, ("t/a", false, b"1".as_slice())).unwrap();
            changes.insert(2, ("t/b", false, b"x".as_slice())).unwrap();
            changes
                .insert(3, ("t/b", false, b"xyz".as_slice()))
                .unwrap();
            let mut rows = txn.open_table(LEDGER_ROWS).unwrap();
            rows.insert(("t", 1_500, "b"), b"record b".as_slice())
                .unwrap();
            // A JSON record, as the ledger held before the binary form.
            rows.insert(("t", 2_200, "e"), br#"{"json":true}"#.as_slice())
                .unwrap();
            let mut blocks = txn.open_table(LEDGER_BLOCKS).unwrap();
            blocks
                .insert(
                    ("t", 1_000, 0),
                    encode_block(&[entry(1_200, "a")]).as_slice(),
                )
                .unwrap();
            blocks
                .insert(
                    ("t", 2_000, 0),
                    encode_block(&[entry(2_100, "d")]).as_slice(),
                )
                .unwrap();
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn an_unversioned_store_is_migrated_then_reads_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gust.redb");
        write_unversioned(&path);
        let store = EmbeddedStore::open(&path).unwrap();

        let entry_k = MetaStore::get(&store, "k").await.unwrap().unwrap();
        assert_eq!(
            (entry_k.revision, entry_k.value.as_ref()),
            (1, b"v".as_slice())
        );
        assert_eq!(
            store.usage("t").await.unwrap(),
            DataUsage {
                keys: 2,
                bytes: 4 + 6
            }
        );
        let feed: Vec<_> = store
            .changes(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.seq, c.revision, c.key))
            .collect();
        assert_eq!(
            feed,
            [
                (1, 1, "t/a".into()),
                (2, 2, "t/b".into()),
                (3, 3, "t/b".into())
            ]
        );
        // Revisions go on above the store-wide numbers.
        let put = store
            .apply(
                vec![DataWrite::Put {
                    key: "t/a".into(),
                    value: Bytes::from_static(b"2"),
                }],
                None,
            )
            .await
            .unwrap();
        assert_eq!(put[0].as_ref().unwrap().revision, 4);

        // Every ledger generation reads from the file, with new commits.
        store
            .commit(LedgerCommit {
                open: vec![],
                close: vec![entry(1_600, "c")].into(),
                position: None,
                outbox: false,
            })
            .await
            .unwrap();
        assert_eq!(ledger_keys(&store).await, ["a", "b", "c", "d", "e"]);
        let json = store.records("t", 2_200, 2_201, None, 1).await.unwrap();
        assert_eq!(json[0].record.as_ref(), br#"{"json":true}"#);
        // Paged across them.
        let page = store
            .records("t", 0, u64::MAX, Some((1_500, "b".into())), 2)
            .await
            .unwrap();
        let keys: Vec<_> = page.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["c", "d"]);
        drop(store);

        assert_eq!(recorded_version(&path), Some(SCHEMA_VERSION));
        let tables = table_names(&path);
        for old in ["ledger", "ledger_blocks", "data_changes"] {
            assert!(!tables.iter().any(|t| t == old), "{old} in {tables:?}");
        }
        // Opened again (nothing left to migrate), it reads the same.
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(ledger_keys(&store).await, ["a", "b", "c", "d", "e"]);
        assert_eq!(
            store.usage("t").await.unwrap(),
            DataUsage {
                keys: 2,
                bytes: 4 + 6
            }
        );
    }
}
