//! Usage across a cluster: every node's records in one shared log, and on
//! each node a ledger of all of them (the *view*) that reports and exports
//! read, so `gust usage` on any node counts every node's records, those of
//! nodes that are down included.
//!
//! ## Shipping, exactly once
//! A cluster node's index passes keep the records they write in the
//! ledger's outbox, in the same transaction ([`LedgerCommit::outbox`]):
//! a record is in the outbox exactly when it is in the node's ledger. The
//! shipper appends each outbox entry to the log [`LOG`] (in parts of at
//! most [`PART_BYTES`], [`PARTS_PER_APPEND`] per append), each part
//! stamped with the entry's number (whose upper half names the ledger)
//! and the part's, and drops the entry once every part is acknowledged.
//! An append whose acknowledgement was lost is made again, so the log can
//! hold a part twice, always after the first (the log keeps one name's
//! appends in order). A clean stop ships what is left ([`Meter::ship_left`]).
//!
//! ## Following
//! Each node reads the log in order into its view. Per ledger the view
//! keeps the last (entry, part) applied, with the log position read, in
//! the view's own commit position: a part not after its ledger's last
//! applied one is a copy and skipped. So the view holds each record once,
//! and a follower that stops resumes where its last commit left it. A
//! position it cannot read stops the follower (starting over would count
//! everything twice).
//!
//! ## Bounds
//! The log is never trimmed (function logs' limits do not apply to it): it
//! is the cluster's record of usage. Records a node's ledger held before
//! it joined a cluster stay in that ledger (`gust usage --local`).
//!
//! ## Lag
//! A record reaches the log one index pass after its attempt ends (see
//! [`crate::INDEX_EVERY`]) plus an append, and each view [`FOLLOW_EVERY`]
//! later at most: a report on another node misses the last second or so.
//! While the log is out of reach, records wait in the outbox (on disk) and
//! ship when it is back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gust_store::{LedgerCommit, LedgerRecords, LedgerStore, LogStore, StoreError};
use serde::{Deserialize, Serialize};

use crate::Meter;

/// The shared log's name in the [`LogStore`].
pub const LOG: &str = "usage/records";
/// Bytes of records per part at most (a log record must stay well under
/// NATS's 1 MiB message limit).
const PART_BYTES: usize = 128 * 1024;
/// Parts per append at most (one atomic batch each).
const PARTS_PER_APPEND: usize = 16;
/// How often a view looks for new parts when it found none.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// Outbox entries shipped, or parts read, per round.
const ROUND: usize = 64;
/// Version byte of a part.
const PART_V1: u8 = 1;

/// Where a cluster node's usage goes and where every node's is read.
pub struct SharedUsage {
    /// This node's name, stamped on what it ships.
    pub node: String,
    /// The shared log.
    pub log: Arc<dyn LogStore>,
    /// This node's ledger of every node's records.
    pub view: Arc<dyn LedgerStore>,
}

/// One part of a shipped outbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    node: String,
    /// The outbox entry's number on `node`.
    entry: u64,
    /// This part's number within the entry, from 0.
    part: u32,
    records: LedgerRecords,
}

impl Part {
    fn encode(&self) -> Bytes {
        let records = self.records.encode();
        let mut out = Vec::with_capacity(records.len() + self.node.len() + 20);
        out.push(PART_V1);
        out.extend_from_slice(&(self.node.len() as u32).to_le_bytes());
        out.extend_from_slice(self.node.as_bytes());
        out.extend_from_slice(&self.entry.to_le_bytes());
        out.extend_from_slice(&self.part.to_le_bytes());
        out.extend_from_slice(&records);
        Bytes::from(out)
    }

    fn decode(bytes: &[u8]) -> Result<Part, StoreError> {
        let corrupt = || StoreError::Corrupt("a shipped usage part is damaged".into());
        let (&version, rest) = bytes.split_first().ok_or_else(corrupt)?;
        if version != PART_V1 {
            return Err(corrupt());
        }
        let (len, rest) = rest.split_at_checked(4).ok_or_else(corrupt)?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| corrupt())?) as usize;
        let (node, rest) = rest.split_at_checked(len).ok_or_else(corrupt)?;
        let node = std::str::from_utf8(node)
            .map_err(|_| corrupt())?
            .to_string();
        let (entry, rest) = rest.split_at_checked(8).ok_or_else(corrupt)?;
        let (part, rest) = rest.split_at_checked(4).ok_or_else(corrupt)?;
        Ok(Part {
            node,
            entry: u64::from_le_bytes(entry.try_into().map_err(|_| corrupt())?),
            part: u32::from_le_bytes(part.try_into().map_err(|_| corrupt())?),
            records: LedgerRecords::decode(rest)?,
        })
    }
}

/// Splits an outbox entry into parts of at most [`PART_BYTES`] of records
/// (a record larger than that is a part of its own).
fn split(node: &str, entry: u64, records: &LedgerRecords) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut current = LedgerRecords::default();
    let mut bytes = 0;
    for r in records.iter() {
        let size = r.tenant.len() + r.key.len() + r.record.len() + 24;
        if bytes + size > PART_BYTES && !current.is_empty() {
            parts.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push_written(r);
    }
    if !current.is_empty() || parts.is_empty() {
        parts.push(current);
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(i, records)| Part {
            node: node.to_string(),
            entry,
            part: i as u32,
            records,
        })
        .collect()
}

/// How far a view has read the log, kept as the view's commit position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Followed {
    /// The log position read up to.
    #[serde(default)]
    after: u64,
    /// Per ledger (the upper half of its entry numbers, in hex), the last
    /// (entry, part) applied.
    #[serde(default)]
    ledgers: BTreeMap<String, (u64, u32)>,
}

impl Followed {
    /// Takes `part` in: its records if they are new, `None` if they are a
    /// copy of what was applied.
    fn take(&mut self, part: Part) -> Option<LedgerRecords> {
        let at = (part.entry, part.part);
        let ledger = format!("{:08x}", part.entry >> 32);
        match self.ledgers.get(&ledger) {
            Some(last) if *last >= at => None,
            _ => {
                self.ledgers.insert(ledger, at);
                Some(part.records)
            }
        }
    }
}

impl Meter {
    /// Ships this node's outbox to the shared log, for as long as the
    /// meter runs.
    pub(crate) async fn ship(self) {
        let mut warned = false;
        loop {
            match self.ship_round().await {
                Ok(true) => warned = false,
                Ok(false) => {
                    warned = false;
                    let _ = tokio::time::timeout(crate::INDEX_EVERY, self.inner.to_ship.notified())
                        .await;
                }
                Err(e) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(error = %e, "cannot ship usage records to the cluster; they wait in the outbox");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Ships what the outbox holds, for a clean stop: until it is empty or
    /// `limit` has passed.
    pub async fn ship_left(&self, limit: Duration) {
        if self.inner.ship_to.is_none() {
            return;
        }
        let _ = tokio::time::timeout(limit, async {
            while let Ok(true) = self.ship_round().await {}
        })
        .await;
    }

    /// Ships up to [`ROUND`] outbox entries; whether it shipped any.
    async fn ship_round(&self) -> Result<bool, StoreError> {
        let Some((node, log)) = &self.inner.ship_to else {
            return Ok(false);
        };
        // One shipper at a time; it remembers the last entry whose parts
        // are all acknowledged (so a failed drop is not shipped again).
        let mut acknowledged = self.inner.shipping.lock().await;
        let entries = self.inner.ledger.outbox(ROUND).await?;
        if entries.is_empty() {
            return Ok(false);
        }
        for (number, bytes) in entries {
            if acknowledged.is_none_or(|a| number > a) {
                let records = match LedgerRecords::decode(&bytes) {
                    Ok(records) => records,
                    Err(e) => {
                        // Never shippable: kept in the node's own ledger.
                        tracing::error!(entry = number, error = %e, "an outbox entry is damaged; it stays on this node only");
                        LedgerRecords::default()
                    }
                };
                let parts: Vec<(String, Bytes)> = split(node, number, &records)
                    .iter()
                    .map(|p| (LOG.to_string(), p.encode()))
                    .collect();
                for append in parts.chunks(PARTS_PER_APPEND) {
                    log.append(append.to_vec()).await?;
                }
                *acknowledged = Some(number);
            }
            self.inner.ledger.drop_outbox(number).await?;
        }
        Ok(true)
    }

    /// Reads the shared log into `view`, for as long as the meter runs.
    pub(crate) async fn follow_usage(log: Arc<dyn LogStore>, view: Arc<dyn LedgerStore>) {
        let mut followed: Option<Followed> = None;
        let mut warned = false;
        loop {
            let mut at = match followed.take() {
                Some(at) => at,
                None => match view.position().await {
                    Ok(None) => Followed::default(),
                    Ok(Some(position)) => match serde_json::from_slice(&position) {
                        Ok(at) => at,
                        Err(e) => {
                            tracing::error!(error = %e, "the usage view's position is unreadable: it follows the cluster's usage no more (remove usage-view.* from the data directory to rebuild it)");
                            return;
                        }
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the usage view's position; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let read = match log.read(LOG, at.after, ROUND).await {
                Ok(read) => {
                    warned = false;
                    read
                }
                Err(e) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(error = %e, "cannot read the cluster's usage log: other nodes' usage is missing from reports here until it can");
                    }
                    followed = Some(at);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if read.is_empty() {
                followed = Some(at);
                tokio::time::sleep(FOLLOW_EVERY).await;
                continue;
            }
            let before = at.clone();
            let mut close = LedgerRecords::default();
            for (position, bytes) in read {
                at.after = position;
                match Part::decode(&bytes) {
                    Ok(part) => {
                        if let Some(records) = at.take(part) {
                            records.iter().for_each(|r| close.push_written(r));
                        }
                    }
                    Err(e) => {
                        tracing::error!(position, error = %e, "a damaged part of the shared usage log; skipped")
                    }
                }
            }
            let position = serde_json::to_vec(&at).map(Bytes::from).ok();
            let commit = LedgerCommit {
                close,
                position,
                ..LedgerCommit::default()
            };
            match view.commit(commit).await {
                Ok(_) => followed = Some(at),
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the usage view; retrying");
                    followed = Some(before);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(keys: &[&str], size: usize) -> LedgerRecords {
        keys.iter()
            .enumerate()
            .map(|(i, key)| gust_store::LedgerEntry {
                tenant: if i % 2 == 0 { "t" } else { "u" }.into(),
                time_ms: i as u64,
                key: (*key).into(),
                record: Bytes::from(vec![i as u8; size]),
                opened: false,
            })
            .collect()
    }

    fn keys(records: &LedgerRecords) -> Vec<String> {
        records.iter().map(|r| r.key.to_string()).collect()
    }

    #[test]
    fn an_entry_splits_into_parts_that_read_back_in_order() {
        let all: Vec<String> = (0..40).map(|i| format!("k{i}#1")).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let entry = records(&all, 20_000);
        let parts = split("node-a", 7, &entry);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut seen = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let back = Part::decode(&part.encode()).unwrap();
            assert_eq!(&back, part);
            assert_eq!(
                (back.node.as_str(), back.entry, back.part),
                ("node-a", 7, i as u32)
            );
            assert!(part.records.iter().map(|r| r.record.len()).sum::<usize>() <= PART_BYTES);
            seen.extend(keys(&back.records));
        }
        assert_eq!(seen, all);
        // A record larger than a part is a part of its own; nothing is one part.
        assert_eq!(split("a", 1, &records(&["big#1"], PART_BYTES * 2)).len(), 1);
        let empty = split("a", 1, &LedgerRecords::default());
        assert_eq!(empty.len(), 1);
        assert!(empty[0].records.is_empty());
        assert!(Part::decode(&empty[0].encode()[..5]).is_err());
    }

    #[test]
    fn a_part_shipped_twice_is_taken_once_per_ledger() {
        let (a, b) = (7u64 << 32, 9u64 << 32);
        let part = |node: &str, entry, part, key: &str| Part {
            node: node.into(),
            entry,
            part,
            records: records(&[key], 1),
        };
        let mut at = Followed::default();
        let taken = |at: &mut Followed, p: Part| at.take(p).map(|r| keys(&r));
        assert_eq!(
            taken(&mut at, part("a", a + 1, 0, "x")),
            Some(vec!["x".into()])
        );
        assert_eq!(
            taken(&mut at, part("a", a + 1, 1, "y")),
            Some(vec!["y".into()])
        );
        // An append made again after its acknowledgement was lost.
        assert_eq!(taken(&mut at, part("a", a + 1, 0, "x")), None);
        assert_eq!(taken(&mut at, part("a", a + 1, 1, "y")), None);
        // Another ledger numbers its own entries: another node's, or this
        // node's after its data directory was made again.
        assert_eq!(
            taken(&mut at, part("b", b + 1, 0, "z")),
            Some(vec!["z".into()])
        );
        assert_eq!(
            taken(&mut at, part("a", b + 2, 0, "v")),
            Some(vec!["v".into()])
        );
        assert_eq!(
            taken(&mut at, part("a", a + 2, 0, "w")),
            Some(vec!["w".into()])
        );
        // A node renamed keeps its ledger: a copy is still a copy.
        assert_eq!(taken(&mut at, part("renamed", a + 2, 0, "w")), None);
        // The position survives as JSON.
        let kept: Followed = serde_json::from_slice(&serde_json::to_vec(&at).unwrap()).unwrap();
        assert_eq!(kept, at);
    }
}
