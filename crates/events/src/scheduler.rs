//! Schedules fire events: one task per schedule sleeps until its next tick
//! and submits an event through [`Events::submit`], like any other trigger.
//!
//! A tick is claimed with a compare-and-set on the schedule's last-tick
//! record before its event is submitted, so a tick fires once even if two
//! tasks (two nodes, later) race for it. Ticks missed while the server was
//! down are skipped: after a restart a schedule waits for its next tick.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use gust_core::schedule::{Offset, Schedule};
use gust_store::KvEvent;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::{Events, now_ms};

/// A schedule as stored: `sched/<tenant>/<function>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub id: String,
    pub tenant: gust_core::TenantId,
    pub function: gust_core::FunctionName,
    /// Cron with seconds (`*/5 * * * * *`), five-field cron, or `@every 30s`.
    pub expr: String,
    /// `UTC` or a fixed offset such as `+02:00`.
    pub tz: String,
    pub created_ms: u64,
}

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
                        Ok(KvEvent::Put(entry)) => {
                            start_task(&events, &mut tasks, &entry.key, &entry.value)
                        }
                        Ok(KvEvent::Delete { key, .. }) => {
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
    let (Ok(schedule), Ok(offset)) = (Schedule::parse(&record.expr), Offset::parse(&record.tz))
    else {
        tracing::error!(key, expr = record.expr, "skipping an invalid schedule");
        return;
    };
    let events = events.clone();
    tasks.insert(
        key.to_string(),
        tokio::spawn(async move { run(events, record, schedule, offset).await }),
    );
}

async fn run(events: Events, record: ScheduleRecord, schedule: Schedule, offset: Offset) {
    let tick_key = format!("tick/{}/{}/{}", record.tenant, record.function, record.id);
    let mut after = now_ms();
    loop {
        let Some(tick) = schedule.next_after(after, offset) else {
            tracing::warn!(schedule = record.id, "no more ticks");
            return;
        };
        let wait = tick.saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        after = tick;
        if claim_tick(&events, &tick_key, tick).await {
            let id = events.next_invocation_id();
            let mut envelope = Events::envelope(
                record.tenant.clone(),
                record.function.clone(),
                id,
                "/".to_string(),
                |_| None,
                Vec::new(),
            );
            envelope.id = format!("{}@{tick}", record.id);
            envelope.source = format!("/gust/schedules/{}/{}", record.function, record.id);
            envelope.ty = "dev.gust.schedule.tick".to_string();
            envelope.subject = Some(record.id.clone());
            envelope.time_ms = tick;
            if let Err(e) = events.submit(envelope).await {
                tracing::error!(schedule = record.id, tick, error = %e, "could not queue a tick");
            }
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
