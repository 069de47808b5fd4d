//! Schedules fire events: one task per schedule sleeps until its next tick
//! and submits an event through [`Events::submit`], like any other trigger.
//!
//! A tick is claimed with a compare-and-set on the schedule's last-tick
//! record before its event is submitted, so a tick fires once even if two
//! tasks (two nodes, later) race for it. Its invocation id comes from the
//! schedule and the tick, so at start-up the last claimed tick is simply
//! submitted again ([`Events::submit_once`] skips it if it was queued):
//! a crash between claim and submission does not lose it.
//!
//! Ticks missed while the server was down: by default they are skipped and
//! the schedule waits for its next tick. A schedule with `catch_up: N`
//! fires the last N missed ticks (oldest first, each with its own tick
//! time) when the server starts again, then carries on. In a cluster,
//! missed means before the longest-running live node started
//! ([`gust_core::cluster::Membership::up_since_ms`]): one cut every node
//! agrees on, so nodes starting one after another catch up the same
//! ticks, not each the last N before its own start (a node started later
//! could claim a later tick first and, the claim being monotonic,
//! cancel the earlier ones).
//!
//! ## Several nodes
//! Every node keeps a task per schedule, but only the schedule's owner
//! (rendezvous hashing of its tick key over the live nodes,
//! [`gust_core::cluster::owner`]) claims its ticks, so the others cost
//! nothing per tick. When the owner dies, the others learn it from its
//! missing heartbeats and the next in line takes over at its next tick,
//! firing first the ticks nobody claimed since (at most
//! [`MAX_HANDED_OVER`], each once: the claim stays the fence against two
//! nodes that briefly both believe they own it). Those ticks fire late by
//! up to the time it takes to declare a node dead. A node starting, and a
//! new owner, queue the last claimed tick again (its claimer may have died
//! between the claim and the submission), but only once that tick is
//! [`RESUBMIT_AFTER`] old: done at once, it could race the claimer's own
//! submission, and both checks for an existing status could pass (seen
//! once in CI: a tick delivered twice while nodes joined). Such a lost
//! tick therefore runs 30 s late.
//!
//! A node that has not yet read the other nodes' records claims no tick
//! (it would count itself alone and own everything). Ticks are claimed
//! by the owner's wall clock: an owner whose clock is ahead fires each
//! tick early by that much, and a later owner with a right clock finds
//! those ticks claimed and waits for the first one not yet fired, so no
//! tick fires twice, but the events come early or late by the skew
//! (the chaos harness's S7: one node 30 s ahead). Nodes warn in their
//! log when another's clock is off by more than 10 s; a node
//! that most others (two or more) find off claims no ticks at all
//! ([`gust_core::cluster::clock_outlier`]), nor events (their leases),
//! and owns no schedule in the others' view (`Membership::owners`).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use gust_core::schedule::Schedule;
use gust_store::MetaEvent;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::{Events, TimeZone, now_ms};

/// A schedule as stored: `sched/<tenant>/<function>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub id: String,
    pub tenant: gust_core::TenantId,
    pub function: gust_core::FunctionName,
    /// Cron with seconds (`*/5 * * * * *`), five-field cron, or `@every 30s`.
    pub expr: String,
    /// `UTC`, a fixed offset such as `+02:00`, or a tz database name.
    pub tz: String,
    pub created_ms: u64,
    /// Missed ticks fired after downtime, at most (0: skip them).
    #[serde(default)]
    pub catch_up: u32,
    /// The request path the function sees.
    #[serde(default = "crate::root_path")]
    pub path: String,
}

/// Most ticks looked at when counting missed ones (a per-second schedule
/// after a day down is 86,400).
const MAX_TICKS_SCANNED: usize = 1_000_000;

/// Most unclaimed ticks a new owner fires when it takes a schedule over.
pub const MAX_HANDED_OVER: usize = 120;

/// How old a claimed tick is before a node of a cluster queues it again
/// (in case its claimer died in between).
pub const RESUBMIT_AFTER: Duration = Duration::from_secs(30);

pub(crate) const PREFIX: &str = "sched/";

/// Keeps one task per stored schedule until the process ends.
pub struct Scheduler;

impl Scheduler {
    pub fn start(events: &Events) {
        let events = events.clone();
        tokio::spawn(async move {
            let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
            loop {
                let mut watch = match events.kv.watch(PREFIX).await {
                    Ok(watch) => watch,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot watch schedules; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                for (_, task) in tasks.drain() {
                    task.abort();
                }
                for entry in &watch.initial {
                    start_task(&events, &mut tasks, &entry.key, &entry.value);
                }
                loop {
                    match watch.changes.next().await {
                        Ok(MetaEvent::Put(entry)) => {
                            start_task(&events, &mut tasks, &entry.key, &entry.value)
                        }
                        Ok(MetaEvent::Delete { key, .. }) => {
                            if let Some(task) = tasks.remove(&key) {
                                task.abort();
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "schedule watch interrupted; resynchronising");
                            break;
                        }
                    }
                }
            }
        });
    }
}

fn start_task(
    events: &Events,
    tasks: &mut HashMap<String, JoinHandle<()>>,
    key: &str,
    value: &Bytes,
) {
    if let Some(old) = tasks.remove(key) {
        old.abort();
    }
    let record: ScheduleRecord = match serde_json::from_slice(value) {
        Ok(record) => record,
        Err(e) => {
            tracing::error!(key, error = %e, "skipping an undecodable schedule");
            return;
        }
    };
    let (Ok(schedule), Ok(zone)) = (Schedule::parse(&record.expr), TimeZone::parse(&record.tz))
    else {
        tracing::error!(key, expr = record.expr, "skipping an invalid schedule");
        return;
    };
    let events = events.clone();
    tasks.insert(
        key.to_string(),
        tokio::spawn(async move { run(events, record, schedule, zone).await }),
    );
}

async fn run(events: Events, record: ScheduleRecord, schedule: Schedule, zone: TimeZone) {
    let tick_key = tick_key(&record);
    let started = now_ms();
    // In a cluster, catch-up and the resubmission below wait until this
    // node knows the others and its clock agrees with theirs (the ticks
    // since `started` are handed over by the loop below).
    while events.shared && (!events.members.settled() || events.members.clock_outlier()) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Ticks up to here were missed while the platform was down (caught
    // up), later ones while nodes settled (handed over below). In a
    // cluster, every node cuts at the same time, so the same ticks are
    // caught up whichever node claims them first.
    let up_since = if events.shared {
        events
            .members
            .up_since_ms()
            .map_or(started, |t| t.min(started))
    } else {
        started
    };
    if let Some(last) = last_tick(&events, &tick_key).await {
        // The last claimed tick may not have reached the queue (a crash
        // between the claim and the submission): submit it again, which
        // does nothing if it did.
        resubmit(&events, &record, last).await;
        if record.catch_up > 0 {
            for tick in missed(&schedule, &zone, last, up_since, record.catch_up as usize) {
                fire(&events, &record, &tick_key, tick).await;
            }
        }
    }
    let mut after = started;
    let mut owned = true;
    loop {
        let Some(tick) = schedule.next_after(after, &zone) else {
            tracing::warn!(schedule = record.id, "no more ticks");
            return;
        };
        let wait = tick.saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        after = tick;
        if !events.shared {
            fire(&events, &record, &tick_key, tick).await;
            continue;
        }
        let members = events.members.as_ref();
        if !members.settled() || members.clock_outlier() {
            // Not knowing the others yet, this node would own every
            // schedule: the owner fires this tick (or, if it died, the
            // next owner hands it over).
            continue;
        }
        let was_owned = std::mem::replace(&mut owned, owner(members, &tick_key) == members.node());
        if !owned {
            continue;
        }
        let Some(last) = read_last_tick(&events, &tick_key).await else {
            continue;
        };
        if !was_owned && let Some(last) = last {
            // Taken over: the last owner may have died between claiming
            // a tick and queueing it.
            resubmit(&events, &record, last).await;
        }
        // Ticks since the platform came up that no node claimed (their
        // owner died, or nodes were settling) go first, oldest first; of a
        // schedule never fired, those since this task started.
        let from = last.map_or(started, |last| last.max(up_since));
        for tick in missed(&schedule, &zone, from, tick, MAX_HANDED_OVER) {
            fire(&events, &record, &tick_key, tick).await;
        }
    }
}

/// The key whose compare-and-set fences a schedule's ticks.
pub(crate) fn tick_key(record: &ScheduleRecord) -> String {
    format!("tick/{}/{}/{}", record.tenant, record.function, record.id)
}

/// The node that claims the ticks of the schedule fenced by `tick_key`.
pub(crate) fn owner(members: &dyn gust_core::cluster::Membership, tick_key: &str) -> String {
    // Among the nodes whose clock agrees with this one's: a node the
    // others find off claims no ticks, so it must own none.
    let live = members.owners();
    gust_core::cluster::owner(tick_key, &live)
        .unwrap_or(members.node())
        .to_string()
}

/// The last `keep` ticks after `last` and up to `now`, oldest first.
fn missed(schedule: &Schedule, zone: &TimeZone, last: u64, now: u64, keep: usize) -> Vec<u64> {
    let mut ticks = std::collections::VecDeque::with_capacity(keep);
    let mut at = last;
    for _ in 0..MAX_TICKS_SCANNED {
        match schedule.next_after(at, zone) {
            Some(tick) if tick <= now => {
                if ticks.len() == keep {
                    ticks.pop_front();
                }
                ticks.push_back(tick);
                at = tick;
            }
            _ => break,
        }
    }
    ticks.into()
}

/// Claims a tick and, if this caller won it, submits its event.
async fn fire(events: &Events, record: &ScheduleRecord, tick_key: &str, tick: u64) {
    if claim_tick(events, tick_key, tick).await {
        submit(events, record, tick).await;
    }
}

/// Submits a claimed tick again in case its claimer died before queueing
/// it. On a node alone, now. In a cluster, once the tick is
/// [`RESUBMIT_AFTER`] old: whoever claimed it has queued it long before
/// (a claim and its submission are milliseconds apart), so this cannot
/// race that submission into a second event (the check for an existing
/// status and the enqueue are not one atomic step).
async fn resubmit(events: &Events, record: &ScheduleRecord, tick: u64) {
    if !events.shared {
        return submit(events, record, tick).await;
    }
    let (events, record) = (events.clone(), record.clone());
    tokio::spawn(async move {
        let due = tick.saturating_add(RESUBMIT_AFTER.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(due.saturating_sub(now_ms()))).await;
        submit(&events, &record, tick).await;
    });
}

/// Submits a tick's event, unless it was already accepted: its invocation
/// id comes from the schedule and the tick.
async fn submit(events: &Events, record: &ScheduleRecord, tick: u64) {
    let id = format!("sched-{}-{}-{tick}", record.function, record.id);
    let mut envelope = Events::envelope(
        record.tenant.clone(),
        record.function.clone(),
        id,
        record.path.clone(),
        |_| None,
        Vec::new(),
    );
    envelope.id = format!("{}@{tick}", record.id);
    envelope.source = format!("/gust/schedules/{}/{}", record.function, record.id);
    envelope.ty = "dev.gust.schedule.tick".to_string();
    envelope.subject = Some(record.id.clone());
    envelope.time_ms = tick;
    if let Err(e) = events.submit_once(envelope, None).await {
        tracing::error!(schedule = record.id, tick, error = %e, "could not queue a tick");
    }
}

async fn last_tick(events: &Events, key: &str) -> Option<u64> {
    read_last_tick(events, key).await.flatten()
}

/// The last claimed tick (`Some(None)`: none yet), or `None` if it cannot
/// be read now (said in the log).
async fn read_last_tick(events: &Events, key: &str) -> Option<Option<u64>> {
    match events.kv.get(key).await {
        Ok(entry) => Some(entry.and_then(|e| std::str::from_utf8(&e.value).ok()?.parse().ok())),
        Err(e) => {
            tracing::error!(key, error = %e, "cannot read the last tick");
            None
        }
    }
}

/// Records `tick` as fired unless a later or equal one already is; true if
/// this caller won the tick.
async fn claim_tick(events: &Events, key: &str, tick: u64) -> bool {
    for _ in 0..8 {
        let current = match events.kv.get(key).await {
            Ok(current) => current,
            Err(e) => {
                tracing::error!(key, error = %e, "cannot read the last tick");
                return false;
            }
        };
        let last = current
            .as_ref()
            .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        if last >= tick {
            return false;
        }
        let expected = current.map(|e| e.revision);
        match events
            .kv
            .compare_and_set(key, Bytes::from(tick.to_string()), expected)
            .await
        {
            Ok(_) => return true,
            Err(gust_store::StoreError::Conflict { .. }) => continue,
            Err(e) => {
                tracing::error!(key, error = %e, "cannot record a tick");
                return false;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_ticks_are_the_last_few_in_order() {
        let every_second = Schedule::parse("@every 1s").unwrap();
        let utc = TimeZone::parse("UTC").unwrap();
        // Last fired at 10 s; back at 15.5 s: ticks 11..=15 were missed.
        assert_eq!(
            missed(&every_second, &utc, 10_000, 15_500, 3),
            [13_000, 14_000, 15_000]
        );
        assert_eq!(missed(&every_second, &utc, 10_000, 15_500, 10).len(), 5);
        assert!(missed(&every_second, &utc, 10_000, 10_900, 3).is_empty());
    }

    /// A node of a cluster whose first node started at `up_since`.
    struct Later {
        up_since: u64,
    }

    impl gust_core::cluster::Membership for Later {
        fn node(&self) -> &str {
            "later"
        }
        fn live(&self) -> std::sync::Arc<[String]> {
            std::sync::Arc::from(vec!["later".to_string()])
        }
        fn up_since_ms(&self) -> Option<u64> {
            Some(self.up_since)
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_node_started_after_the_first_catches_up_the_ticks_before_the_first_start() {
        use gust_store::{MetaStore, QueueStore};
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            gust_store_embedded::EmbeddedStore::open(&dir.path().join("store.redb")).unwrap(),
        );
        let now = now_ms();
        // The first node came up 2.5 s before this one; the last tick
        // claimed before the whole cluster went down is 10 s old.
        let up_since = now - 2_500;
        let last = (now - 10_000) / 1000 * 1000;
        let record = ScheduleRecord {
            id: "beat".into(),
            tenant: gust_core::TenantId::new("acme").unwrap(),
            function: gust_core::FunctionName::new("ticker").unwrap(),
            expr: "@every 1s".into(),
            tz: "UTC".into(),
            created_ms: now - 60_000,
            catch_up: 3,
            path: "/".into(),
        };
        store
            .put(&tick_key(&record), Bytes::from(last.to_string()))
            .await
            .unwrap();
        store
            .put(
                "sched/acme/ticker/beat",
                Bytes::from(serde_json::to_vec(&record).unwrap()),
            )
            .await
            .unwrap();
        let events = Events::new(store.clone(), store.clone())
            .in_cluster(std::sync::Arc::new(Later { up_since }));
        Scheduler::start(&events);
        tokio::time::sleep(Duration::from_millis(2_200)).await;
        let queue = crate::queue_name(&record.tenant, &record.function);
        let queued: Vec<u64> = store
            .claim(&queue, now_ms(), 60_000, 100)
            .await
            .unwrap()
            .iter()
            .map(|c| crate::Envelope::decode(&c.payload).unwrap().time_ms)
            .collect();
        // The 3 ticks before the first node's start, not the 3 before this
        // one's; then every tick since, each once and in order.
        let first = up_since / 1000 * 1000 - 2_000;
        assert_eq!(
            queued[..3],
            [first, first + 1000, first + 2000],
            "{queued:?}"
        );
        assert!(queued.windows(2).all(|w| w[1] - w[0] == 1000), "{queued:?}");
        assert!(*queued.last().unwrap() >= now, "{queued:?}");
    }
}
