//! The usage ledger ([`LedgerStore`]): markers of attempts that started,
//! and usage records in blocks per tenant-second, appended to the ledger
//! file beside the database (see the crate docs for why and how a commit
//! stays atomic across the two).

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition, WriteTransaction};

use gust_store::{LedgerCommit, LedgerEntry, LedgerRecord, LedgerRecords, LedgerStore, StoreError};

use crate::{EmbeddedStore, backend};

/// Ledger markers of attempts that started: key → marker.
const LEDGER_OPEN: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_open");
/// Usage record blocks in the ledger file: (tenant, second's first ms,
/// block number) → (offset, length). A block holds a commit's records of
/// one tenant that started in that second: a thousand records cost one
/// B-tree insert instead of a thousand.
const LEDGER_SPANS: TableDefinition<(&str, u64, u64), (u64, u64)> =
    TableDefinition::new("ledger_spans");
/// The span of a ledger block.
pub(crate) const BLOCK_MS: u64 = 1000;
/// How long a pruned block's bytes stay readable (for readers that found
/// it in an older snapshot) before its disk space is given back.
const FREE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// `LEDGER_META` key: the ledger file's committed length (u64, little-endian).
const LEDGER_FILE_END: &str = "file_end";
/// `LEDGER_META` key: the meter's journal position of the last ledger commit.
const LEDGER_POSITION: &str = "position";
/// The ledger's own markers: [`LEDGER_FILE_END`], [`LEDGER_POSITION`]
/// and [`LEDGER_OUTBOX_NEXT`].
const LEDGER_META: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_meta");
/// Records kept to ship ([`LedgerCommit::outbox`]): number → encoded records.
const LEDGER_OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger_outbox");
/// `LEDGER_META` key: the next outbox entry's number (u64, little-endian),
/// so numbers are never reused once entries are dropped.
const LEDGER_OUTBOX_NEXT: &str = "outbox_next";

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(LEDGER_OPEN).map_err(backend)?;
    txn.open_table(LEDGER_META).map_err(backend)?;
    txn.open_table(LEDGER_SPANS).map_err(backend)?;
    txn.open_table(LEDGER_OUTBOX).map_err(backend)?;
    Ok(())
}

/// 32 random bits (SipHash keyed from the system's random source).
fn random_u32() -> u32 {
    use std::hash::BuildHasher as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::hash::RandomState::new().hash_one((now, std::process::id())) as u32
}

/// Keeps `records` as the outbox's next entry.
fn keep_in_outbox(txn: &WriteTransaction, records: &LedgerRecords) -> Result<(), StoreError> {
    let mut meta = txn.open_table(LEDGER_META).map_err(backend)?;
    let next = match meta.get(LEDGER_OUTBOX_NEXT).map_err(backend)? {
        // A random upper half: no two ledgers number entries alike.
        None => (u64::from(random_u32()) << 32) | 1,
        Some(v) => u64::from_le_bytes(v.value().try_into().map_err(|_| {
            StoreError::Corrupt("the usage ledger's outbox counter is damaged".into())
        })?),
    };
    meta.insert(LEDGER_OUTBOX_NEXT, (next + 1).to_le_bytes().as_slice())
        .map_err(backend)?;
    txn.open_table(LEDGER_OUTBOX)
        .map_err(backend)?
        .insert(next, records.encode().as_slice())
        .map_err(backend)?;
    Ok(())
}

/// The ledger file's committed length, as of `txn`.
pub(crate) fn committed_end(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let meta = txn.open_table(LEDGER_META).map_err(backend)?;
    // Unreadable, it must not read as 0: opening would cut the file.
    match meta.get(LEDGER_FILE_END).map_err(backend)? {
        None => Ok(0),
        Some(v) => Ok(u64::from_le_bytes(v.value().try_into().map_err(|_| {
            StoreError::Corrupt("the usage ledger file's committed length is damaged".into())
        })?)),
    }
}

/// Records where blocks just appended to the ledger file are, each
/// `(tenant, second, offset, length)`, and the file's new committed length
/// `end`. A block after others of its tenant-second takes the next number.
pub(crate) fn record_spans<'a>(
    txn: &WriteTransaction,
    spans: impl IntoIterator<Item = (&'a str, u64, u64, u64)>,
    end: u64,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(LEDGER_SPANS).map_err(backend)?;
    for (tenant, second, offset, len) in spans {
        let next = table
            .range((tenant, second, 0)..=(tenant, second, u64::MAX))
            .map_err(backend)?
            .next_back()
            .transpose()
            .map_err(backend)?
            .map_or(0, |(key, _)| key.value().2 + 1);
        table
            .insert((tenant, second, next), (offset, len))
            .map_err(backend)?;
    }
    txn.open_table(LEDGER_META)
        .map_err(backend)?
        .insert(LEDGER_FILE_END, end.to_le_bytes().as_slice())
        .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl LedgerStore for EmbeddedStore {
    async fn commit(&self, commit: LedgerCommit) -> Result<u64, StoreError> {
        let ledger = self.inner.ledger.clone();
        // One ledger commit at a time: each appends where the last ended.
        let _serial = ledger.commits.lock().await;
        let start = ledger.end();
        let file = ledger.clone();
        let (written, end) = self
            .write(move |txn, _| {
                let mut open = txn.open_table(LEDGER_OPEN).map_err(backend)?;
                for (key, marker) in &commit.open {
                    open.insert(key.as_str(), marker.as_ref())
                        .map_err(backend)?;
                }
                let mut written = 0;
                // (tenant, second) → its records, by the tenant's number
                // in the batch (no string compared per record).
                let mut blocks: BTreeMap<(u32, u64), (&str, Vec<LedgerRecord<'_>>)> =
                    BTreeMap::new();
                for entry in commit.close.iter() {
                    // Only an opened entry has a marker to remove (and is
                    // skipped if it is gone: closed already).
                    if entry.opened && open.remove(entry.key).map_err(backend)?.is_none() {
                        continue;
                    }
                    let second = entry.time_ms / BLOCK_MS * BLOCK_MS;
                    blocks
                        .entry((entry.tenant_index, second))
                        .or_insert_with(|| (entry.tenant, Vec::new()))
                        .1
                        .push(entry);
                    written += 1;
                }
                if commit.outbox && written > 0 {
                    let mut kept = LedgerRecords::with_capacity(written as usize, 0);
                    for entries in blocks.values() {
                        for e in &entries.1 {
                            kept.push_written(*e);
                        }
                    }
                    keep_in_outbox(txn, &kept)?;
                }
                // The blocks go to the file, synced, before the
                // transaction that says where they are can commit.
                let mut bytes = file.scratch();
                let mut spans = Vec::with_capacity(blocks.len());
                for ((_, second), (tenant, entries)) in blocks {
                    let at = bytes.len() as u64;
                    encode_block_into(&entries, &mut bytes);
                    spans.push((tenant, second, start + at, bytes.len() as u64 - at));
                }
                let end = start + bytes.len() as u64;
                let appended = file.append(start, &bytes);
                file.keep_scratch(bytes);
                appended?;
                record_spans(txn, spans, end)?;
                let mut meta = txn.open_table(LEDGER_META).map_err(backend)?;
                if let Some(position) = &commit.position {
                    meta.insert(LEDGER_POSITION, position.as_ref())
                        .map_err(backend)?;
                }
                Ok((written, end))
            })
            .await?;
        // Committed: the next commit appends after these blocks. (Had it
        // failed, the next one would overwrite them.)
        ledger.committed(end);
        Ok(written)
    }

    async fn position(&self) -> Result<Option<Bytes>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let meta = match txn.open_table(LEDGER_META) {
                Ok(meta) => meta,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(backend(e)),
            };
            Ok(meta
                .get(LEDGER_POSITION)
                .map_err(backend)?
                .map(|v| Bytes::copy_from_slice(v.value())))
        })
        .await
    }

    async fn open_markers(&self) -> Result<Vec<(String, Bytes)>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let open = txn.open_table(LEDGER_OPEN).map_err(backend)?;
            let mut out = Vec::new();
            for entry in open.iter().map_err(backend)? {
                let (key, marker) = entry.map_err(backend)?;
                out.push((
                    key.value().to_string(),
                    Bytes::copy_from_slice(marker.value()),
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<(u64, Bytes)>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let outbox = match txn.open_table(LEDGER_OUTBOX) {
                Ok(outbox) => outbox,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(backend(e)),
            };
            let mut out = Vec::new();
            for entry in outbox.iter().map_err(backend)?.take(limit) {
                let (number, records) = entry.map_err(backend)?;
                out.push((number.value(), Bytes::copy_from_slice(records.value())));
            }
            Ok(out)
        })
        .await
    }

    async fn drop_outbox(&self, through: u64) -> Result<(), StoreError> {
        self.write(move |txn, _| {
            txn.open_table(LEDGER_OUTBOX)
                .map_err(backend)?
                .retain_in(..=through, |_, _| false)
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn prune(&self, before_ms: u64, limit: usize) -> Result<u64, StoreError> {
        use std::ops::Bound;
        let ledger = self.inner.ledger.clone();
        // Whole seconds only: a block holds one second's records.
        let before = before_ms / BLOCK_MS * BLOCK_MS;
        let file = ledger.clone();
        let (records, freed) = self
            .write(move |txn, _| {
                let mut table = txn.open_table(LEDGER_SPANS).map_err(backend)?;
                let mut gone: Vec<((String, u64, u64), (u64, u64))> = Vec::new();
                // Tenant by tenant: the first key past the previous tenant
                // names the next one.
                let mut next: Option<String> = None;
                while gone.len() < limit {
                    let start = match &next {
                        None => Bound::Unbounded,
                        Some(t) => Bound::Excluded((t.as_str(), u64::MAX, u64::MAX)),
                    };
                    let Some(first) = table
                        .range::<(&str, u64, u64)>((start, Bound::Unbounded))
                        .map_err(backend)?
                        .next()
                        .transpose()
                        .map_err(backend)?
                    else {
                        break;
                    };
                    let tenant = first.0.value().0.to_string();
                    drop(first);
                    for span in table
                        .range((tenant.as_str(), 0, 0)..(tenant.as_str(), before, 0))
                        .map_err(backend)?
                        .take(limit - gone.len())
                    {
                        let (key, value) = span.map_err(backend)?;
                        let (_, second, n) = key.value();
                        gone.push(((tenant.clone(), second, n), value.value()));
                    }
                    next = Some(tenant);
                }
                let mut records = 0u64;
                let mut freed = Vec::with_capacity(gone.len());
                for ((tenant, second, n), (offset, len)) in gone {
                    let head = file.read(offset, 4.min(len))?;
                    records += head
                        .try_into()
                        .map_or(0, |b: [u8; 4]| u64::from(u32::from_le_bytes(b)));
                    table
                        .remove((tenant.as_str(), second, n))
                        .map_err(backend)?;
                    freed.push((offset, len));
                }
                Ok((records, freed))
            })
            .await?;
        tokio::task::spawn_blocking(move || ledger.free(freed))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(records)
    }

    async fn records(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        after: Option<(u64, String)>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let tenant = tenant.to_string();
        let file = self.inner.ledger.clone();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let in_file = txn.open_table(LEDGER_SPANS).map_err(backend)?;
            let mut out = Vec::new();
            let start_ms = match &after {
                Some((time, _)) => from_ms.max(*time),
                None => from_ms,
            };
            if start_ms >= to_ms {
                return Ok(out);
            }
            let wanted = |e: &LedgerEntry| {
                (from_ms..to_ms).contains(&e.time_ms)
                    && after
                        .as_ref()
                        .is_none_or(|(t, k)| (e.time_ms, e.key.as_str()) > (*t, k.as_str()))
            };
            let first = start_ms / BLOCK_MS * BLOCK_MS;
            let range = (tenant.as_str(), first, 0)..(tenant.as_str(), to_ms, 0);
            // Spans in (second, number) order: records within a second are
            // sorted once all its blocks are read.
            let mut second = Vec::new();
            let mut current = None;
            for span in in_file.range(range).map_err(backend)? {
                let (key, value) = span.map_err(backend)?;
                let at = key.value().1;
                if current.is_some_and(|c| c != at) {
                    take_sorted(&mut second, &mut out, &wanted);
                    if out.len() >= limit {
                        break;
                    }
                }
                current = Some(at);
                let (offset, len) = value.value();
                second.extend(decode_block(&tenant, &file.read(offset, len)?)?);
            }
            take_sorted(&mut second, &mut out, &wanted);
            out.truncate(limit);
            Ok(out)
        })
        .await
    }
}

/// The usage ledger's blocks: an append-only file, written only up to its
/// committed length (kept in the database).
pub(crate) struct LedgerFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// The committed length: where the next commit appends.
    end: std::sync::Mutex<u64>,
    /// Held for a whole ledger commit.
    commits: tokio::sync::Mutex<()>,
    /// The buffer the last commit's blocks were encoded in, kept for the
    /// next: a commit's megabytes then land in memory already touched,
    /// not in pages the kernel must fault in and zero each time.
    scratch: std::sync::Mutex<Vec<u8>>,
    /// Blocks no longer indexed (pruned), with when: their bytes are freed
    /// by a prune at least [`FREE_AFTER`] later, so a reader that found a
    /// block in its snapshot just before still reads it whole.
    freed: std::sync::Mutex<Vec<(std::time::Instant, u64, u64)>>,
}

impl LedgerFile {
    /// Opens (or creates) the file; bytes past `end` (a commit that did
    /// not complete) are cut off.
    pub(crate) fn open(path: &Path, end: u64) -> Result<Self, StoreError> {
        let io = |e: std::io::Error| {
            StoreError::Backend(format!("the usage ledger file {}: {e}", path.display()))
        };
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < end {
            return Err(StoreError::Corrupt(format!(
                "the usage ledger file {} has {len} bytes, but {end} were committed: it was cut short or replaced; restore it from a backup",
                path.display()
            )));
        }
        if len > end {
            file.set_len(end).map_err(io)?;
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            end: std::sync::Mutex::new(end),
            commits: tokio::sync::Mutex::new(()),
            scratch: std::sync::Mutex::new(Vec::new()),
            freed: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn io(&self, e: std::io::Error) -> StoreError {
        StoreError::Backend(format!(
            "the usage ledger file {}: {e}",
            self.path.display()
        ))
    }

    pub(crate) fn end(&self) -> u64 {
        *self.end.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn committed(&self, end: u64) {
        *self.end.lock().unwrap_or_else(|p| p.into_inner()) = end;
    }

    /// An empty buffer for a commit's blocks (see [`LedgerFile::keep_scratch`]).
    fn scratch(&self) -> Vec<u8> {
        let mut bytes =
            std::mem::take(&mut *self.scratch.lock().unwrap_or_else(|p| p.into_inner()));
        bytes.clear();
        bytes
    }

    /// Keeps a commit's buffer for the next commit, unless a burst made
    /// it larger than is worth holding on to.
    fn keep_scratch(&self, bytes: Vec<u8>) {
        const KEEP_AT_MOST: usize = 64 << 20;
        if bytes.capacity() <= KEEP_AT_MOST {
            *self.scratch.lock().unwrap_or_else(|p| p.into_inner()) = bytes;
        }
    }

    /// Writes `bytes` at `at` and waits until they are on disk.
    pub(crate) fn append(&self, at: u64, bytes: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt as _;
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(bytes, at).map_err(|e| self.io(e))?;
        self.file.sync_data().map_err(|e| self.io(e))?;
        self.forget(at, at + bytes.len() as u64);
        Ok(())
    }

    /// Drops the synced pages of `from..to` from the page cache (best
    /// effort), as a database does with its write-ahead log: only queries
    /// and exports read them back, rarely, while keeping them would grow
    /// the page cache by the ledger's whole write rate, each commit
    /// taking memory never touched before (on a virtual machine, a fault
    /// in the hypervisor per page: several times the cost of the copy)
    /// and pushing out cached pages that are read. Dropped pages are
    /// free for the next commit to write into. The last partial page
    /// stays: the next commit writes into it.
    fn forget(&self, from: u64, to: u64) {
        const PAGE: u64 = 4096;
        let from = from / PAGE * PAGE;
        let to = to / PAGE * PAGE;
        if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
            let _ = rustix::fs::fadvise(&self.file, from, Some(len), rustix::fs::Advice::DontNeed);
        }
    }

    /// Gives the disk space of blocks pruned at least [`FREE_AFTER`] ago
    /// back to the file system (holes punched, the file's length
    /// unchanged), and keeps `now`'s for a later call. Best effort: a file
    /// system without holes keeps the bytes (only space is lost), and
    /// blocks pruned before a restart keep theirs.
    fn free(&self, now: Vec<(u64, u64)>) {
        use rustix::fs::{FallocateFlags, fallocate};
        let at = std::time::Instant::now();
        let due: Vec<(u64, u64)> = {
            let mut freed = self.freed.lock().unwrap_or_else(|p| p.into_inner());
            freed.extend(now.into_iter().map(|(offset, len)| (at, offset, len)));
            let (due, later): (Vec<_>, Vec<_>) = freed
                .drain(..)
                .partition(|(when, _, _)| at.duration_since(*when) >= FREE_AFTER);
            *freed = later;
            due.into_iter()
                .map(|(_, offset, len)| (offset, len))
                .collect()
        };
        for (offset, len) in due {
            if let Err(e) = fallocate(
                &self.file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                offset,
                len,
            ) {
                tracing::warn!(file = %self.path.display(), error = %e, "pruned usage records keep their disk space: the file system punches no holes");
                return;
            }
        }
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        use std::os::unix::fs::FileExt as _;
        let len = usize::try_from(len)
            .map_err(|_| StoreError::Corrupt("a ledger block is too large".into()))?;
        let mut bytes = vec![0; len];
        self.file
            .read_exact_at(&mut bytes, offset)
            .map_err(|e| self.io(e))?;
        Ok(bytes)
    }
}

/// Moves `second`'s records that `wanted` accepts to `out`, in (time, key) order.
fn take_sorted(
    second: &mut Vec<LedgerEntry>,
    out: &mut Vec<LedgerEntry>,
    wanted: &impl Fn(&LedgerEntry) -> bool,
) {
    second.sort_by(|a, b| (a.time_ms, &a.key).cmp(&(b.time_ms, &b.key)));
    out.extend(second.drain(..).filter(|e| wanted(e)));
}

/// Appends a block of `entries` to `out`. A block: `count u32`, then per
/// record `time u64 | key len u16 | key | record len u32 | record`
/// (little-endian).
pub(crate) fn encode_block_into(entries: &[LedgerRecord<'_>], out: &mut Vec<u8>) {
    let size: usize = entries
        .iter()
        .map(|e| 14 + e.key.len() + e.record.len())
        .sum();
    out.reserve(4 + size);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.time_ms.to_le_bytes());
        out.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
        out.extend_from_slice(e.key.as_bytes());
        out.extend_from_slice(&(e.record.len() as u32).to_le_bytes());
        out.extend_from_slice(e.record);
    }
}

fn decode_block(tenant: &str, bytes: &[u8]) -> Result<Vec<LedgerEntry>, StoreError> {
    let corrupt = || StoreError::Corrupt("a ledger block is damaged".into());
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        if rest.len() < n {
            return Err(corrupt());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let word = |b: &[u8]| {
        b.iter()
            .rev()
            .fold(0u64, |n, byte| n << 8 | u64::from(*byte))
    };
    let count = word(take(4)?) as usize;
    let mut out = Vec::with_capacity(count.min(bytes.len() / 14));
    for _ in 0..count {
        let time_ms = word(take(8)?);
        let key_len = word(take(2)?) as usize;
        let key = std::str::from_utf8(take(key_len)?).map_err(|_| corrupt())?;
        let key = key.to_string();
        let record_len = word(take(4)?) as usize;
        let record = Bytes::copy_from_slice(take(record_len)?);
        out.push(LedgerEntry {
            tenant: tenant.to_string(),
            time_ms,
            key,
            record,
            opened: false,
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let (_dir, store) = crate::open_temp();
        gust_store::conformance::ledger(&store).await;
    }

    pub(crate) fn entry(time_ms: u64, key: &str) -> LedgerEntry {
        LedgerEntry {
            tenant: "t".into(),
            time_ms,
            key: key.into(),
            record: Bytes::from(format!("record {key}")),
            opened: false,
        }
    }

    pub(crate) async fn ledger_keys(store: &EmbeddedStore) -> Vec<String> {
        store
            .records("t", 0, u64::MAX, None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect()
    }

    #[test]
    fn a_commit_buffer_is_kept_for_the_next_unless_a_burst_made_it_huge() {
        let dir = tempfile::tempdir().unwrap();
        let file = LedgerFile::open(&dir.path().join("gust.ledger"), 0).unwrap();
        let mut bytes = file.scratch();
        bytes.extend_from_slice(b"last commit");
        let kept = bytes.capacity();
        file.keep_scratch(bytes);
        let again = file.scratch();
        assert!(again.is_empty(), "a reused buffer starts empty");
        assert_eq!(again.capacity(), kept);
        // Over 64 MiB (capacity only: never touched, so not committed memory).
        file.keep_scratch(Vec::with_capacity((64 << 20) + 1));
        assert_eq!(file.scratch().capacity(), 0, "a burst's buffer is dropped");
    }

    #[tokio::test]
    async fn each_ledger_commit_writes_only_its_own_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("gust.redb")).unwrap();
        let file = dir.path().join("gust.ledger");
        let mut sizes = vec![0];
        // Alike commits (the buffer of one is reused by the next).
        for (n, key) in ["a", "b", "c"].into_iter().enumerate() {
            store
                .commit(LedgerCommit {
                    open: vec![],
                    close: vec![entry(1_000 + n as u64, key)].into(),
                    position: None,
                    outbox: false,
                })
                .await
                .unwrap();
            sizes.push(std::fs::metadata(&file).unwrap().len());
        }
        let grown: Vec<u64> = sizes.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(grown[0] > 0);
        assert_eq!(grown, [grown[0]; 3], "file sizes {sizes:?}");
        assert_eq!(ledger_keys(&store).await, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_ledger_commit_that_did_not_complete_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gust.redb");
        let file = dir.path().join("gust.ledger");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store
                .commit(LedgerCommit {
                    open: vec![],
                    close: vec![entry(1_000, "a")].into(),
                    position: None,
                    outbox: false,
                })
                .await
                .unwrap();
        }
        let committed = std::fs::metadata(&file).unwrap().len();
        assert!(committed > 0);
        // A crash after the blocks were written, before the transaction.
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap();
            f.write_all(b"half a block").unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), committed);
        store
            .commit(LedgerCommit {
                open: vec![],
                close: vec![entry(1_001, "b")].into(),
                position: None,
                outbox: false,
            })
            .await
            .unwrap();
        assert_eq!(ledger_keys(&store).await, ["a", "b"]);
        drop(store);
        // A file shorter than what was committed is refused, not misread.
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(committed).unwrap();
        let refused = EmbeddedStore::open(&path).err().unwrap();
        assert!(
            matches!(&refused, StoreError::Corrupt(m) if m.contains("cut short")),
            "{refused}"
        );
    }

    #[test]
    fn a_damaged_ledger_file_length_is_refused_not_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gust.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            let txn = store.inner.db.begin_write().unwrap();
            txn.open_table(LEDGER_META)
                .unwrap()
                .insert(LEDGER_FILE_END, b"abc".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let refused = EmbeddedStore::open(&path).err().unwrap();
        assert!(
            matches!(&refused, StoreError::Corrupt(m) if m.contains("committed length")),
            "{refused}"
        );
    }
}
