//! The indexer: moves journal frames into the ledger store. Each pass
//! pairs closes with their opens, prices the records in order from the
//! month-to-date totals before them, and commits them in one transaction
//! with markers for the attempts still running and the journal position
//! reached. At start-up the same pass, finalized, records every attempt
//! still open as `aborted`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use gust_core::usage::{self, MonthToDate, PlanHistory, UsageOutcome, UsageRecord};
use gust_store::{LedgerCommit, LedgerRecords, StoreError};

use crate::budgets::add_to_month;
use crate::journal::{self, Position, Read};
use crate::metrics::Observed;
use crate::{FastMap, Meter, MeterError, Plans, codec};

/// Journal frame kinds.
pub(crate) const OPEN: u8 = 1;
pub(crate) const CLOSE: u8 = 2;
pub(crate) const CLOSE_OPENED: u8 = 3;

/// What the indexer knows between passes.
#[derive(Clone, Default)]
pub(crate) struct Index {
    /// Read up to here.
    pub(crate) position: Position,
    /// Attempts opened and not yet closed, and whether the store has
    /// their marker.
    pub(crate) open: HashMap<String, (UsageRecord, bool)>,
}

impl Meter {
    pub(crate) async fn indexer(self, mut index: Index) {
        let journal = self.inner.journal.clone();
        let mut warned = false;
        // Reused from pass to pass.
        let mut buffer = Read::default();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.pass_every()) => {}
                () = self.inner.wake.notified() => {}
            }
            let prepared = {
                let journal = journal.clone();
                tokio::task::spawn_blocking(move || journal.prepare()).await
            };
            match prepared {
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot make a usage journal segment (is the disk full?); records wait in memory");
                }
                Ok(Ok(())) => warned = false,
                _ => {}
            }
            let from = index.position;
            let mut read = std::mem::take(&mut buffer);
            let read = {
                let journal = journal.clone();
                tokio::task::spawn_blocking(move || {
                    journal.read_into(from, &mut read).map(|()| read)
                })
                .await
            };
            let read = match read
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                Ok(read) => read,
                Err(e) => {
                    tracing::error!(error = %e, "reading the usage journal failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let from_memory = read.from_memory();
            match self.index(&index, read, false).await {
                Ok((next, closed, read)) => {
                    buffer = read;
                    journal.ack_memory(from_memory);
                    index = next;
                    self.inner.indexed.fetch_add(closed, Ordering::AcqRel);
                    self.inner.flushed.notify_waiters();
                    if let Err(e) = journal.retire(index.position) {
                        tracing::warn!(error = %e, "cannot delete an indexed usage journal segment");
                    }
                }
                Err(e) => {
                    // Nothing is lost: the frames are read again next time.
                    tracing::error!(error = %e, "writing usage records failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Indexes what `read` holds (in journal order) after `index`: closes
    /// pair with their opens, records are priced in order, and one store
    /// transaction writes them with markers for attempts still open and
    /// the position reached. With `finalize`, every attempt still open is
    /// recorded as `aborted` instead. Returns the new state and how many
    /// closes it took.
    pub(crate) async fn index(
        &self,
        index: &Index,
        read: Read,
        finalize: bool,
    ) -> Result<(Index, u64, Read), MeterError> {
        let closed_pool = || MeterError::Store(StoreError::Closed);
        let (paired, read) = {
            let index = index.clone();
            tokio::task::spawn_blocking(move || (pair(index, &read, finalize), read))
                .await
                .map_err(|_| closed_pool())?
        };
        let Paired {
            index: next,
            closes,
            markers,
            closed,
        } = paired?;
        if closes.is_empty() && markers.is_empty() && next.position == index.position {
            return Ok((next, closed, read));
        }
        let merging = self.inner.merging.lock().await;
        // What each tenant used in each month before these records.
        let mut months = Months::default();
        // The tenant and month of the record before (most are the same).
        let mut last: Option<(&str, MonthSpan)> = None;
        for (close, _) in &closes {
            let Some((tenant, start_ms)) = codec::tenant_and_start(close.bytes(&read)) else {
                continue;
            };
            if last.is_some_and(|(t, span)| t == tenant && span.contains(start_ms)) {
                continue;
            }
            let span = MonthSpan::of(start_ms);
            last = Some((tenant, span));
            if months
                .get(tenant)
                .is_some_and(|m| m.contains_key(&span.start))
            {
                continue;
            }
            let totals = self.month_to_date(tenant, span.start).await?;
            months
                .entry(tenant.to_string())
                .or_default()
                .insert(span.start, totals);
        }
        let plans = self.inner.plans.clone();
        let (entries, months, observed, read) = tokio::task::spawn_blocking(move || {
            let (entries, months, observed) = price(&read, closes, months, &plans);
            (entries, months, observed, read)
        })
        .await
        .map_err(|_| closed_pool())?;
        let written = self
            .inner
            .ledger
            .commit(LedgerCommit {
                open: markers,
                close: entries,
                position: Some(Bytes::copy_from_slice(&next.position.to_bytes())),
                outbox: self.inner.ship_to.is_some(),
            })
            .await?;
        if self.inner.ship_to.is_some() && written > 0 {
            self.inner.to_ship.notify_one();
        }
        self.inner.written.fetch_add(written, Ordering::Relaxed);
        self.inner.metrics.add(&observed);
        self.add_to_functions(&observed);
        let mut cached = self.months();
        for (tenant, by_month) in months {
            for (month, totals) in by_month {
                match cached.get(&tenant) {
                    Some((latest, _)) if *latest > month => {}
                    _ => {
                        cached.insert(tenant.clone(), (month, totals));
                    }
                }
            }
        }
        drop(cached);
        drop(merging);
        Ok((next, closed, read))
    }
}

/// A finished attempt's record in an index pass: a frame of the read, or
/// made here (an attempt found open at start-up).
enum Close {
    At(std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl Close {
    fn bytes<'a>(&'a self, read: &'a Read) -> &'a [u8] {
        match self {
            Close::At(range) => &read.bytes[range.clone()],
            Close::Owned(bytes) => bytes,
        }
    }
}

/// An index pass before pricing.
struct Paired {
    index: Index,
    /// Finished attempts in order, and whether the store has their marker.
    closes: Vec<(Close, bool)>,
    /// Markers to write: attempts open after this pass.
    markers: Vec<(String, Bytes)>,
    /// Close frames taken.
    closed: u64,
}

/// Pairs closes with opens. Nothing is decoded but the opens still open
/// at the end of the pass (an open closed in the same pass, most of them,
/// is only matched by its key).
fn pair(index: Index, read: &Read, finalize: bool) -> Result<Paired, MeterError> {
    let mut next = index;
    // Opens of this pass not closed (yet), by attempt: (id, attempt) → frame.
    let mut pending: FastMap<(&[u8], u32), &journal::FrameAt> = FastMap::default();
    let mut closes = Vec::new();
    let mut closed = 0;
    for frame in &read.frames {
        if let Some(at) = frame.at {
            next.position = at;
        }
        let payload = read.payload(frame);
        let Some(id) = codec::key_of(payload) else {
            tracing::error!("an unreadable usage journal frame");
            continue;
        };
        match frame.kind {
            OPEN => {
                pending.insert(id, frame);
            }
            CLOSE => {
                closed += 1;
                closes.push((Close::At(frame.payload.clone()), false));
            }
            CLOSE_OPENED => {
                closed += 1;
                if pending.remove(&id).is_some() {
                    closes.push((Close::At(frame.payload.clone()), false));
                    continue;
                }
                let key = usage::attempt_key(&String::from_utf8_lossy(id.0), id.1);
                if let Some((_, marked)) = next.open.remove(key.as_str()) {
                    closes.push((Close::At(frame.payload.clone()), marked));
                }
                // Else it was closed already: never twice.
            }
            other => tracing::error!(kind = other, "an unknown usage journal frame"),
        }
    }
    // Opens still open: decoded, kept, and marked in the store below.
    let mut still_open: Vec<_> = pending.into_values().collect();
    still_open.sort_by_key(|f| f.payload.start);
    for frame in still_open {
        match codec::decode(read.payload(frame)) {
            Ok(record) => {
                next.open.insert(record.key(), (record, false));
            }
            Err(e) => tracing::error!(error = %e, "an unreadable usage journal frame"),
        }
    }
    if finalize && !next.open.is_empty() {
        tracing::warn!(
            count = next.open.len(),
            "recording attempts the last run stopped in the middle of as aborted"
        );
        for (_, (record, marked)) in next.open.drain() {
            let aborted = UsageRecord {
                outcome: UsageOutcome::Aborted,
                ..record
            };
            closes.push((Close::Owned(encode(&aborted)?.to_vec()), marked));
        }
    }
    let mut markers = Vec::new();
    for (key, (record, marked)) in &mut next.open {
        if !*marked {
            markers.push((key.clone(), encode(record)?));
            *marked = true;
        }
    }
    Ok(Paired {
        index: next,
        closes,
        markers,
        closed,
    })
}

/// Month-to-date totals: tenant → month's first ms → totals.
type Months = FastMap<String, FastMap<u64, MonthToDate>>;

/// Prices records in order from the month-to-date totals before them
/// (`months` has every tenant and month they need); returns the ledger
/// entries, the totals after them and what they add to the figures kept
/// in memory.
fn price(
    read: &Read,
    closes: Vec<(Close, bool)>,
    mut months: Months,
    plans: &Plans,
) -> (LedgerRecords, Months, Observed) {
    // Every tenant priced here has month-to-date totals.
    let plans_of: FastMap<String, PlanHistory> =
        months.keys().map(|t| (t.clone(), plans(t))).collect();
    let bytes = closes.iter().map(|(c, _)| c.bytes(read).len() + 48).sum();
    let mut entries = LedgerRecords::with_capacity(closes.len(), bytes);
    let mut observed = Observed::new();
    let mut span = MonthSpan::of(0);
    // The tenant and month of the record before, its plans and totals
    // (most records share them).
    let mut last: Option<(&str, u64, &PlanHistory, &mut MonthToDate)> = None;
    for (close, marked) in &closes {
        let record = match codec::View::new(close.bytes(read)) {
            Ok(record) => record,
            Err(e) => {
                tracing::error!(error = %e, "an unreadable usage record");
                continue;
            }
        };
        let tenant = record.tenant();
        if !span.contains(record.start_ms()) {
            span = MonthSpan::of(record.start_ms());
        }
        let month = span.start;
        if !last
            .as_ref()
            .is_some_and(|(t, m, _, _)| *t == tenant && *m == month)
        {
            last = None;
            let totals = months.get_mut(tenant).and_then(|m| m.get_mut(&month));
            let (Some(history), Some(totals)) = (plans_of.get(tenant), totals) else {
                tracing::error!(tenant, "no month-to-date totals to price a record with");
                continue;
            };
            last = Some((tenant, month, history, totals));
        }
        let Some((_, _, history, totals)) = last.as_mut() else {
            continue;
        };
        // The plan in force when the invocation started.
        let plan = history.at(record.start_ms());
        let billed_ms = usage::billed_ms(record.wall_ns(), record.outcome());
        let gib_us = usage::gib_us(record.memory_limit_bytes(), billed_ms);
        let cost = usage::price_of(plan, **totals, record.outcome(), gib_us, record.cpu_ns());
        add_to_month(totals, record.outcome(), gib_us, cost);
        observed.add(&record, month, cost);
        entries.push(
            tenant,
            record.start_ms(),
            *marked,
            |out| record.key_into(out),
            |out| record.priced_into(billed_ms, gib_us, cost, &plan.id, out),
        );
    }
    observed.end_run();
    (entries, months, observed)
}

/// The calendar month (UTC) a time falls in, as Unix ms.
#[derive(Debug, Clone, Copy)]
struct MonthSpan {
    start: u64,
    end: u64,
}

impl MonthSpan {
    fn of(ms: u64) -> Self {
        let start = usage::month_start_ms(ms);
        Self {
            start,
            end: usage::month_start_ms(start + 32 * 86_400_000),
        }
    }

    fn contains(&self, ms: u64) -> bool {
        (self.start..self.end).contains(&ms)
    }
}

fn encode(record: &UsageRecord) -> Result<Bytes, MeterError> {
    let mut bytes = Vec::new();
    codec::encode(record, &mut bytes).map_err(|e| MeterError::Corrupt(e.to_string()))?;
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gust_store::LedgerStore;

    use super::*;
    use crate::journal::Journal;
    use crate::testing::{default_plans, record};
    use crate::{GroupBy, UsageQuery};

    /// Frames as the journal would give them back.
    fn frames(list: &[(u8, &UsageRecord)]) -> Read {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), 1 << 16, 0).unwrap();
        journal.prepare().unwrap();
        for (kind, record) in list {
            let mut bytes = Vec::new();
            codec::encode(record, &mut bytes).unwrap();
            assert!(journal.append(*kind, &bytes));
        }
        journal.read(Position::default()).unwrap()
    }

    #[test]
    fn closes_pair_with_opens_once_across_passes() {
        let a = record("a", 1, 1, UsageOutcome::Success);
        let b = record("b", 1, 2, UsageOutcome::Success);
        let r = record("r", 1, 3, UsageOutcome::Rejected);
        // Pass 1: a opens and closes (twice), b opens, r is refused.
        let first = frames(&[
            (OPEN, &a),
            (OPEN, &b),
            (CLOSE_OPENED, &a),
            (CLOSE_OPENED, &a),
            (CLOSE, &r),
        ]);
        let one = pair(Index::default(), &first, false).unwrap();
        let keys = |p: &Paired, read: &Read| {
            p.closes
                .iter()
                .map(|(c, m)| (codec::View::new(c.bytes(read)).unwrap().key(), *m))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(&one, &first),
            [("a#1".into(), false), ("r#1".into(), false)]
        );
        assert_eq!(one.closed, 3);
        // b is still running: its marker goes to the store.
        assert_eq!(one.markers.len(), 1);
        assert_eq!(one.markers[0].0, "b#1");
        // Pass 2: b closes (its marker is removed with the record); a
        // third close of a is ignored.
        let second = frames(&[(CLOSE_OPENED, &b), (CLOSE_OPENED, &a)]);
        let two = pair(one.index, &second, false).unwrap();
        assert_eq!(keys(&two, &second), [("b#1".into(), true)]);
        assert!(two.markers.is_empty() && two.index.open.is_empty());
        // At start-up, whatever is still open becomes an aborted record.
        let third = frames(&[(OPEN, &a)]);
        let three = pair(Index::default(), &third, true).unwrap();
        let aborted = codec::View::new(three.closes[0].0.bytes(&third)).unwrap();
        assert_eq!(aborted.outcome(), UsageOutcome::Aborted);
        assert!(three.markers.is_empty());
    }

    #[tokio::test]
    async fn open_attempts_are_recorded_as_aborted_at_start_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = gust_store_embedded::EmbeddedStore::open(&dir.path().join("db")).unwrap();
        let ledger: Arc<dyn LedgerStore> = Arc::new(store);
        let journal = dir.path().join("journal");
        let meter = Meter::start(ledger.clone(), default_plans(), &journal)
            .await
            .unwrap();
        let done = record("a", 1, 1000, UsageOutcome::Success);
        meter.open(&done);
        meter.open(&record("b", 1, 2000, UsageOutcome::Success));
        // "c" started and finished but was never indexed: a kill before
        // the indexer's next pass finds it in the journal.
        let unindexed = record("c", 1, 3000, UsageOutcome::Success);
        meter.record(done.clone(), true);
        // The same attempt reported twice is recorded once.
        meter.record(done, true);
        meter.flush(Duration::from_secs(5)).await;
        assert_eq!(meter.stats().pending, 0);
        // The process "dies": no more indexing, and then...
        meter.stop();
        // ...frames it journaled just before.
        meter.append(OPEN, &unindexed);
        meter.append(CLOSE_OPENED, &unindexed);
        meter.append(OPEN, &record("d", 1, 4000, UsageOutcome::Success));
        // "b" never finished: a restart records it as aborted; "c" is
        // recorded as it ended, "d" as aborted.
        let again = Meter::start(ledger.clone(), default_plans(), &journal)
            .await
            .unwrap();
        let query = UsageQuery {
            function: None,
            from_ms: 0,
            to_ms: u64::MAX,
            by: Some(GroupBy::Function),
        };
        let report = again.usage(crate::Scope::Node, "t", &query).await.unwrap();
        assert_eq!(report.total.invocations, 4);
        let mut outcomes = Vec::new();
        again
            .for_each(crate::Scope::Node, "t", 0, u64::MAX, |r| {
                outcomes.push((r.key(), r.outcome))
            })
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            [
                ("a#1".to_string(), UsageOutcome::Success),
                ("b#1".to_string(), UsageOutcome::Aborted),
                ("c#1".to_string(), UsageOutcome::Success),
                ("d#1".to_string(), UsageOutcome::Aborted),
            ]
        );
        // And a third start finds nothing open.
        again.stop();
        let third = Meter::start(ledger, default_plans(), &journal)
            .await
            .unwrap();
        assert_eq!(
            third
                .usage(crate::Scope::Node, "t", &query)
                .await
                .unwrap()
                .total
                .invocations,
            4
        );
    }
}
