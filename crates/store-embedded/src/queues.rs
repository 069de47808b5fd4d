//! Queues ([`QueueStore`]): messages claimed under a lease, acknowledged,
//! released or deferred, optionally in ordering groups (one claimable at a
//! time per group).

use async_trait::async_trait;
use bytes::Bytes;
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition, WriteTransaction};

use gust_store::{Claimed, Peeked, QueueStore, StoreError};

use crate::{EmbeddedStore, backend};

/// (queue, seq) → (not_before_ms, state, payload); `state` holds the
/// attempts so far and the flags [`CLAIMED`] and [`GROUPED`], so claiming
/// and acknowledging touch no other table for the common case.
const QUEUE: TableDefinition<(&str, u64), (u64, u32, &[u8])> = TableDefinition::new("queue");
/// (queue, not_before_ms, seq): the claim order.
const QUEUE_DUE: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("queue_due");
/// queue → last sequence number given.
const QUEUE_HEADS: TableDefinition<&str, u64> = TableDefinition::new("queue_heads");
/// In a message's state: claimed, and not yet acknowledged or released.
const CLAIMED: u32 = 1 << 31;
/// In a message's state: it belongs to an ordering group.
const GROUPED: u32 = 1 << 30;
/// In a message's state: the attempts so far.
const ATTEMPTS: u32 = GROUPED - 1;
/// (queue, seq) → ordering group, for messages enqueued in one.
const QUEUE_GROUP_OF: TableDefinition<(&str, u64), &str> = TableDefinition::new("queue_group_of");
/// (queue, group, seq): a group's unacknowledged messages in order. Only
/// the first of each group is in `QUEUE_DUE`; the others wait here.
const QUEUE_GROUPS: TableDefinition<(&str, &str, u64), ()> = TableDefinition::new("queue_groups");
/// (queue, id) → when a message was stored under that name by
/// `enqueue_once`, and the same by time, to forget names past the window.
const QUEUE_ONCE: TableDefinition<(&str, &str), u64> = TableDefinition::new("queue_once");
const QUEUE_ONCE_BY_TIME: TableDefinition<(u64, &str, &str), ()> =
    TableDefinition::new("queue_once_by_time");
/// For how long `enqueue_once` refuses a name it stored (as JetStream's
/// default duplicate window, which the cluster backend uses).
const ONCE_WINDOW_MS: u64 = 120_000;
/// Most expired names one `enqueue_once` forgets.
const ONCE_PRUNE: usize = 64;

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(QUEUE).map_err(backend)?;
    txn.open_table(QUEUE_DUE).map_err(backend)?;
    txn.open_table(QUEUE_HEADS).map_err(backend)?;
    txn.open_table(QUEUE_GROUP_OF).map_err(backend)?;
    txn.open_table(QUEUE_GROUPS).map_err(backend)?;
    txn.open_table(QUEUE_ONCE).map_err(backend)?;
    txn.open_table(QUEUE_ONCE_BY_TIME).map_err(backend)?;
    Ok(())
}

impl EmbeddedStore {
    /// Ends a claim: the message is due again at `not_before_ms`; with
    /// `refund`, the claim does not count as an attempt.
    async fn unclaim(
        &self,
        queue: &str,
        seq: u64,
        not_before_ms: u64,
        refund: bool,
    ) -> Result<(), StoreError> {
        let queue = queue.to_string();
        self.write(move |txn, _| {
            let mut items = txn.open_table(QUEUE).map_err(backend)?;
            let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            let current = items.get((queue.as_str(), seq)).map_err(backend)?.map(|v| {
                let (not_before, attempts, payload) = v.value();
                (not_before, attempts, payload.to_vec())
            });
            if let Some((old, state, payload)) = current {
                due.remove((queue.as_str(), old, seq)).map_err(backend)?;
                items
                    .insert(
                        (queue.as_str(), seq),
                        (not_before_ms, unclaimed(state, refund), payload.as_slice()),
                    )
                    .map_err(backend)?;
                due.insert((queue.as_str(), not_before_ms, seq), ())
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    /// Appends messages to a queue, in an ordering group or not.
    async fn append_to_queue(
        &self,
        queue: &str,
        group: Option<String>,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let queue = queue.to_string();
        self.write(move |txn, _| append(txn, &queue, group.as_deref(), &payloads, not_before_ms))
            .await
    }
}

/// Appends messages to a queue in `txn`. A grouped message is claimable at
/// once only if its group holds nothing else; otherwise `ack` of its
/// predecessor makes it claimable.
fn append(
    txn: &WriteTransaction,
    queue: &str,
    group: Option<&str>,
    payloads: &[Bytes],
    not_before_ms: u64,
) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::with_capacity(payloads.len());
    let mut items = txn.open_table(QUEUE).map_err(backend)?;
    let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
    let mut heads = txn.open_table(QUEUE_HEADS).map_err(backend)?;
    let mut grouping = match group {
        Some(group) => Some((
            group,
            txn.open_table(QUEUE_GROUP_OF).map_err(backend)?,
            txn.open_table(QUEUE_GROUPS).map_err(backend)?,
        )),
        None => None,
    };
    let mut seq = heads.get(queue).map_err(backend)?.map_or(0, |v| v.value());
    for payload in payloads {
        seq += 1;
        let state = if grouping.is_some() { GROUPED } else { 0 };
        items
            .insert((queue, seq), (not_before_ms, state, payload.as_ref()))
            .map_err(backend)?;
        let claimable = match &mut grouping {
            None => true,
            Some((g, group_of, groups)) => {
                let waiting = groups
                    .range((queue, *g, 0)..=(queue, *g, u64::MAX))
                    .map_err(backend)?
                    .next()
                    .is_some();
                groups.insert((queue, *g, seq), ()).map_err(backend)?;
                group_of.insert((queue, seq), *g).map_err(backend)?;
                !waiting
            }
        };
        if claimable {
            due.insert((queue, not_before_ms, seq), ())
                .map_err(backend)?;
        }
        seqs.push(seq);
    }
    heads.insert(queue, seq).map_err(backend)?;
    Ok(seqs)
}

/// Like [`append`] for one message named `id`, unless the queue stored one
/// under `id` less than [`ONCE_WINDOW_MS`] before `now_ms` (`None`). Also
/// forgets up to [`ONCE_PRUNE`] names past the window.
fn append_once(
    txn: &WriteTransaction,
    queue: &str,
    group: Option<&str>,
    id: &str,
    payload: Bytes,
    not_before_ms: u64,
    now_ms: u64,
) -> Result<Option<u64>, StoreError> {
    let mut once = txn.open_table(QUEUE_ONCE).map_err(backend)?;
    let mut by_time = txn.open_table(QUEUE_ONCE_BY_TIME).map_err(backend)?;
    let cutoff = now_ms.saturating_sub(ONCE_WINDOW_MS);
    let expired: Vec<(u64, String, String)> = by_time
        .range((0, "", "")..(cutoff, "", ""))
        .map_err(backend)?
        .take(ONCE_PRUNE)
        .map(|entry| {
            entry.map(|(k, _)| {
                let (at, q, i) = k.value();
                (at, q.to_string(), i.to_string())
            })
        })
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    for (at, q, i) in &expired {
        by_time
            .remove((*at, q.as_str(), i.as_str()))
            .map_err(backend)?;
        // A name stored again had its old time entry removed then, so the
        // name's entry is this one's.
        once.remove((q.as_str(), i.as_str())).map_err(backend)?;
    }
    let stored_at = once.get((queue, id)).map_err(backend)?.map(|v| v.value());
    if stored_at.is_some_and(|at| at > cutoff) {
        return Ok(None);
    }
    if let Some(at) = stored_at {
        by_time.remove((at, queue, id)).map_err(backend)?;
    }
    let seq = append(txn, queue, group, &[payload], not_before_ms)?;
    once.insert((queue, id), now_ms).map_err(backend)?;
    by_time.insert((now_ms, queue, id), ()).map_err(backend)?;
    Ok(seq.first().copied())
}

/// A claimed message's state once its claim ends.
fn unclaimed(state: u32, refund: bool) -> u32 {
    let attempts = state & ATTEMPTS;
    let attempts = if refund {
        attempts.saturating_sub(1)
    } else {
        attempts
    };
    attempts | (state & GROUPED)
}

/// After `seq` (of an ordering group) is acknowledged: drops it from its
/// group and makes the group's next message claimable; that message's
/// sequence number and due time.
fn release_next_in_group(
    txn: &WriteTransaction,
    items: &mut redb::Table<(&str, u64), (u64, u32, &[u8])>,
    due: &mut redb::Table<(&str, u64, u64), ()>,
    queue: &str,
    seq: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let mut group_of = txn.open_table(QUEUE_GROUP_OF).map_err(backend)?;
    let mut groups = txn.open_table(QUEUE_GROUPS).map_err(backend)?;
    let Some(group) = group_of
        .remove((queue, seq))
        .map_err(backend)?
        .map(|g| g.value().to_string())
    else {
        return Ok(None);
    };
    let group = group.as_str();
    groups.remove((queue, group, seq)).map_err(backend)?;
    let next = groups
        .range((queue, group, 0)..=(queue, group, u64::MAX))
        .map_err(backend)?
        .next()
        .transpose()
        .map_err(backend)?
        .map(|(k, _)| k.value().2);
    if let Some(next) = next
        && let Some(not_before) = items
            .get((queue, next))
            .map_err(backend)?
            .map(|v| v.value().0)
    {
        due.insert((queue, not_before, next), ()).map_err(backend)?;
        return Ok(Some((next, not_before)));
    }
    Ok(None)
}

/// Removes message `seq` (if still there) and, when it was of an ordering
/// group, makes the group's next message claimable: that one's sequence
/// number and due time.
fn ack_one(
    txn: &WriteTransaction,
    items: &mut redb::Table<(&str, u64), (u64, u32, &[u8])>,
    due: &mut redb::Table<(&str, u64, u64), ()>,
    queue: &str,
    seq: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let removed = items
        .remove((queue, seq))
        .map_err(backend)?
        .map(|v| (v.value().0, v.value().1));
    let Some((not_before, state)) = removed else {
        return Ok(None);
    };
    due.remove((queue, not_before, seq)).map_err(backend)?;
    if state & GROUPED == 0 {
        return Ok(None);
    }
    release_next_in_group(txn, items, due, queue, seq)
}

/// Claims message `seq`, due at `not_before`, until `visible_again`.
fn claim_one(
    items: &mut redb::Table<(&str, u64), (u64, u32, &[u8])>,
    due: &mut redb::Table<(&str, u64, u64), ()>,
    queue: &str,
    (seq, not_before): (u64, u64),
    visible_again: u64,
) -> Result<Option<Claimed>, StoreError> {
    due.remove((queue, not_before, seq)).map_err(backend)?;
    let Some((state, payload)) = items.get((queue, seq)).map_err(backend)?.map(|v| {
        let (_, state, payload) = v.value();
        (state, Bytes::copy_from_slice(payload))
    }) else {
        return Ok(None);
    };
    let attempt = (state & ATTEMPTS) + 1;
    let state = attempt | (state & GROUPED) | CLAIMED;
    items
        .insert((queue, seq), (visible_again, state, payload.as_ref()))
        .map_err(backend)?;
    due.insert((queue, visible_again, seq), ())
        .map_err(backend)?;
    Ok(Some(Claimed {
        seq,
        attempt,
        due_ms: not_before,
        payload,
        grouped: state & GROUPED != 0,
    }))
}

#[async_trait]
impl QueueStore for EmbeddedStore {
    async fn enqueue(
        &self,
        queue: &str,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        self.append_to_queue(queue, None, payloads, not_before_ms)
            .await
    }

    async fn enqueue_ordered(
        &self,
        queue: &str,
        group: &str,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        self.append_to_queue(queue, Some(group.to_string()), payloads, not_before_ms)
            .await
    }

    async fn enqueue_once(
        &self,
        queue: &str,
        group: Option<&str>,
        id: &str,
        payload: Bytes,
        not_before_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let (queue, group, id) = (queue.to_string(), group.map(str::to_string), id.to_string());
        let now_ms = crate::logs::wall_ms();
        self.write(move |txn, _| {
            append_once(
                txn,
                &queue,
                group.as_deref(),
                &id,
                payload,
                not_before_ms,
                now_ms,
            )
        })
        .await
    }

    fn once_window_ms(&self) -> u64 {
        ONCE_WINDOW_MS
    }

    async fn claim(
        &self,
        queue: &str,
        now_ms: u64,
        lease_ms: u64,
        max: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        // A read finds "nothing due" without paying for a durable commit.
        let probe = queue.to_string();
        let anything_due = self
            .read(move |db| {
                let txn = db.begin_read().map_err(backend)?;
                let due = txn.open_table(QUEUE_DUE).map_err(backend)?;
                let mut range = due
                    .range((probe.as_str(), 0, 0)..=(probe.as_str(), now_ms, u64::MAX))
                    .map_err(backend)?;
                Ok(range.next().is_some())
            })
            .await?;
        if !anything_due {
            return Ok(Vec::new());
        }
        let queue = queue.to_string();
        self.write(move |txn, _| {
            let mut claimed = Vec::new();
            let mut items = txn.open_table(QUEUE).map_err(backend)?;
            let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            let mut ready = Vec::new();
            for entry in due
                .range((queue.as_str(), 0, 0)..=(queue.as_str(), now_ms, u64::MAX))
                .map_err(backend)?
                .take(max)
            {
                let (key, _) = entry.map_err(backend)?;
                let (_, not_before, seq) = key.value();
                ready.push((not_before, seq));
            }
            let visible_again = now_ms.saturating_add(lease_ms);
            for (not_before, seq) in ready {
                claimed.extend(claim_one(
                    &mut items,
                    &mut due,
                    &queue,
                    (seq, not_before),
                    visible_again,
                )?);
            }
            Ok(claimed)
        })
        .await
    }

    async fn ack(&self, queue: &str, seqs: Vec<u64>) -> Result<(), StoreError> {
        let queue = queue.to_string();
        self.write(move |txn, _| {
            let mut items = txn.open_table(QUEUE).map_err(backend)?;
            let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            for seq in seqs {
                ack_one(txn, &mut items, &mut due, &queue, seq)?;
            }
            Ok(())
        })
        .await
    }

    async fn ack_and_claim_next(
        &self,
        queue: &str,
        seq: u64,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Option<Claimed>, StoreError> {
        let queue = queue.to_string();
        self.write(move |txn, _| {
            let mut items = txn.open_table(QUEUE).map_err(backend)?;
            let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            match ack_one(txn, &mut items, &mut due, &queue, seq)? {
                Some((next, due_at)) if due_at <= now_ms => claim_one(
                    &mut items,
                    &mut due,
                    &queue,
                    (next, due_at),
                    now_ms.saturating_add(lease_ms),
                ),
                _ => Ok(None),
            }
        })
        .await
    }

    async fn release(&self, queue: &str, seq: u64, not_before_ms: u64) -> Result<(), StoreError> {
        self.unclaim(queue, seq, not_before_ms, false).await
    }

    async fn defer(&self, queue: &str, seq: u64, not_before_ms: u64) -> Result<(), StoreError> {
        self.unclaim(queue, seq, not_before_ms, true).await
    }

    async fn release_claims(&self, queue: &str, now_ms: u64) -> Result<u64, StoreError> {
        let queue = queue.to_string();
        self.write(move |txn, _| {
            let mut items = txn.open_table(QUEUE).map_err(backend)?;
            let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            // One node holds every claim, so all of them are this node's.
            // Only at start-up: a scan of the queue is fine.
            let mut held = Vec::new();
            for entry in items
                .range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))
                .map_err(backend)?
            {
                let (key, value) = entry.map_err(backend)?;
                let (lease_end, state, payload) = value.value();
                if state & CLAIMED != 0 {
                    held.push((key.value().1, lease_end, state, payload.to_vec()));
                }
            }
            for (seq, lease_end, state, payload) in &held {
                due.remove((queue.as_str(), *lease_end, *seq))
                    .map_err(backend)?;
                items
                    .insert(
                        (queue.as_str(), *seq),
                        (now_ms, state & !CLAIMED, payload.as_slice()),
                    )
                    .map_err(backend)?;
                due.insert((queue.as_str(), now_ms, *seq), ())
                    .map_err(backend)?;
            }
            let seqs = held;
            Ok(seqs.len() as u64)
        })
        .await
    }

    async fn next_due(&self, queue: &str) -> Result<Option<u64>, StoreError> {
        let queue = queue.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            let first = due
                .range((queue.as_str(), 0, 0)..=(queue.as_str(), u64::MAX, u64::MAX))
                .map_err(backend)?
                .next()
                .transpose()
                .map_err(backend)?;
            Ok(first.map(|(key, _)| key.value().1))
        })
        .await
    }

    async fn peek(
        &self,
        queue: &str,
        visit: &mut (dyn FnMut(Peeked) -> bool + Send),
    ) -> Result<(), StoreError> {
        /// Messages read at a time.
        const CHUNK: usize = 256;
        let mut from = 0;
        loop {
            let queue = queue.to_string();
            let chunk = self
                .read(move |db| {
                    let txn = db.begin_read().map_err(backend)?;
                    let items = txn.open_table(QUEUE).map_err(backend)?;
                    let mut chunk = Vec::with_capacity(CHUNK);
                    for entry in items
                        .range((queue.as_str(), from)..=(queue.as_str(), u64::MAX))
                        .map_err(backend)?
                        .take(CHUNK)
                    {
                        let (key, value) = entry.map_err(backend)?;
                        let (_, state, payload) = value.value();
                        chunk.push(Peeked {
                            seq: key.value().1,
                            attempts: state & ATTEMPTS,
                            claimed: state & CLAIMED != 0,
                            payload: Bytes::copy_from_slice(payload),
                        });
                    }
                    Ok(chunk)
                })
                .await?;
            let full = chunk.len() == CHUNK;
            let Some(last) = chunk.last().map(|p| p.seq) else {
                return Ok(());
            };
            for peeked in chunk {
                if !visit(peeked) {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
            from = last + 1;
        }
    }

    async fn depth(&self, queue: &str) -> Result<u64, StoreError> {
        let queue = queue.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let items = txn.open_table(QUEUE).map_err(backend)?;
            let mut n = 0;
            for entry in items
                .range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))
                .map_err(backend)?
            {
                entry.map_err(backend)?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn queues(&self) -> Result<Vec<String>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let items = txn.open_table(QUEUE).map_err(backend)?;
            let mut names: Vec<String> = Vec::new();
            let mut next = items
                .first()
                .map_err(backend)?
                .map(|(k, _)| k.value().0.to_string());
            while let Some(name) = next {
                // Skip to the first key after this queue's last possible key.
                next = items
                    .range((name.as_str(), u64::MAX)..)
                    .map_err(backend)?
                    .map(|e| e.map(|(k, _)| k.value().0.to_string()))
                    .find(|n| !matches!(n, Ok(n) if *n == name))
                    .transpose()
                    .map_err(backend)?;
                names.push(name);
            }
            Ok(names)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let (_dir, store) = crate::open_temp();
        gust_store::conformance::queues(&store).await;
    }

    #[tokio::test]
    async fn conformance_ordered() {
        let (_dir, store) = crate::open_temp();
        gust_store::conformance::ordered_queues(&store).await;
    }

    #[tokio::test]
    async fn conformance_named() {
        let (_dir, store) = crate::open_temp();
        gust_store::conformance::named_messages(&store).await;
    }

    #[tokio::test]
    async fn a_name_past_its_window_is_stored_again_and_forgotten() {
        let (_dir, store) = crate::open_temp();
        let once = |now_ms| {
            store.write(move |txn, _| {
                append_once(txn, "q", None, "id", b"x".as_slice().into(), 0, now_ms)
            })
        };
        assert_eq!(once(1_000).await.unwrap(), Some(1));
        assert_eq!(once(1_000 + ONCE_WINDOW_MS - 1).await.unwrap(), None);
        assert_eq!(once(1_001 + ONCE_WINDOW_MS).await.unwrap(), Some(2));
        // Stored again, it is refused again for a whole window.
        assert_eq!(once(1_002 + ONCE_WINDOW_MS).await.unwrap(), None);
        // Past every window, a pruning enqueue forgets it.
        let later = 10 * ONCE_WINDOW_MS;
        store
            .write(move |txn, _| {
                append_once(txn, "q", None, "other", b"y".as_slice().into(), 0, later)
            })
            .await
            .unwrap();
        let left = store
            .read(|db| {
                let txn = db.begin_read().map_err(backend)?;
                let n = txn
                    .open_table(QUEUE_ONCE)
                    .map_err(backend)?
                    .iter()
                    .map_err(backend)?
                    .count();
                let m = txn
                    .open_table(QUEUE_ONCE_BY_TIME)
                    .map_err(backend)?
                    .iter()
                    .map_err(backend)?
                    .count();
                Ok((n, m))
            })
            .await
            .unwrap();
        assert_eq!(left, (1, 1));
    }

    #[test]
    fn an_ended_claim_keeps_its_attempts_unless_refunded() {
        let claimed = 3 | GROUPED | CLAIMED;
        assert_eq!(unclaimed(claimed, false), 3 | GROUPED);
        assert_eq!(unclaimed(claimed, true), 2 | GROUPED);
        assert_eq!(unclaimed(CLAIMED, true), 0);
    }
}
