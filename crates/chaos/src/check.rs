//! The checkers: what the records say happened, against what the clients
//! were told. Each returns figures for the report and the violations that
//! fail the run.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::linearize::{self, Call, Outcome, Ret, Verdict};
use crate::workload::{COUNTER, KvOp, Submit, SubmitResult};

/// One usage record, the fields the checkers read.
#[derive(Debug, Clone)]
pub struct Usage {
    pub invocation_id: String,
    pub attempt: u64,
    pub function: String,
    /// `event` for deliveries of events (and schedules), `http`, `call`.
    pub trigger: String,
    pub outcome: String,
    pub start_ms: u64,
}

impl Usage {
    pub fn parse(line: &str) -> Option<Usage> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(Usage {
            invocation_id: v["invocation_id"].as_str()?.to_string(),
            attempt: v["attempt"].as_u64()?,
            function: v["function"].as_str()?.to_string(),
            trigger: v["trigger"].as_str()?.to_string(),
            outcome: v["outcome"].as_str()?.to_string(),
            start_ms: v["start_ms"].as_u64().unwrap_or(0),
        })
    }

    fn succeeded(&self) -> bool {
        self.outcome == "success"
    }
}

/// The events checker's figures.
#[derive(Debug, Default, Clone)]
pub struct EventFigures {
    pub attempted: usize,
    pub accepted: usize,
    /// 202s answered by each node (a, b, c).
    pub accepted_by_node: [usize; 3],
    pub refused: BTreeMap<u16, usize>,
    /// Refusals without `Retry-After` among 503s.
    pub refused_503_without_retry_after: usize,
    pub not_sent: usize,
    pub unknown: usize,
    pub lost: Vec<String>,
    /// Executed, but neither acknowledged nor refused with its id: at
    /// least this many more than the unknown submissions could explain.
    pub unexpected: usize,
    /// Executed although the submission was refused or its answer lost.
    pub recovered: usize,
    /// Ids that succeeded more than once, and the worst.
    pub duplicates: usize,
    pub worst_duplicate: Option<(String, usize)>,
    /// Accepted per second over the workload.
    pub accepted_per_s: f64,
    /// Submission latency of the 202s, p50 and p99 (ms).
    pub accept_p50_ms: u64,
    pub accept_p99_ms: u64,
    /// The longest stretch (s) without a 202 while the workload ran.
    pub unavailable_s: f64,
    /// From the end of the fault to the first 202 of a submission sent
    /// after it (NaN: none in the workload).
    pub recovery_s: Option<f64>,
    /// From the 202 to the start of the attempt that succeeded (ms).
    pub delivery_p50_ms: u64,
    pub delivery_p99_ms: u64,
    pub delivery_max_ms: u64,
    /// Events that needed more than one attempt.
    pub redelivered: usize,
}

/// The ledger checker's figures.
#[derive(Debug, Default, Clone)]
pub struct LedgerFigures {
    pub records: usize,
    /// (invocation, attempt) pairs with more than one record.
    pub doubled: Vec<(String, u64)>,
    /// Attempts before a recorded attempt that have no record of their own.
    pub missing_attempts: usize,
    pub aborted: usize,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Joins the submissions with every node's usage records of `function`.
pub fn events(
    submits: &[Submit],
    usage: &[Usage],
    dead_lettered: &HashSet<String>,
    function: &str,
    workload_s: f64,
    healed_ms: Option<u64>,
) -> EventFigures {
    let mut f = EventFigures {
        attempted: submits.len(),
        ..Default::default()
    };
    let mut accepted: HashMap<&str, &Submit> = HashMap::new();
    let mut refused_ids = HashSet::new();
    let mut latencies = Vec::new();
    let mut accept_times = Vec::new();
    for s in submits {
        match &s.result {
            SubmitResult::Accepted(id) => {
                accepted.insert(id, s);
                if let Some(n) = f.accepted_by_node.get_mut(s.node) {
                    *n += 1;
                }
                latencies.push(s.answered_ms - s.sent_ms);
                accept_times.push(s.answered_ms);
            }
            SubmitResult::Refused {
                status,
                id,
                retry_after,
            } => {
                *f.refused.entry(*status).or_default() += 1;
                if *status == 503 && !retry_after {
                    f.refused_503_without_retry_after += 1;
                }
                if let Some(id) = id {
                    refused_ids.insert(id.as_str());
                }
            }
            SubmitResult::NotSent => f.not_sent += 1,
            SubmitResult::Unknown => f.unknown += 1,
        }
    }
    f.accepted = accepted.len();
    f.accepted_per_s = f.accepted as f64 / workload_s.max(0.001);
    latencies.sort_unstable();
    f.accept_p50_ms = percentile(&latencies, 50.0);
    f.accept_p99_ms = percentile(&latencies, 99.0);
    accept_times.sort_unstable();
    // The longest stretch without a 202, the workload's start and end included.
    let end_ms = (workload_s * 1000.0) as u64;
    let mut bounds = vec![0];
    bounds.extend(accept_times.iter().copied());
    bounds.push(end_ms.max(accept_times.last().copied().unwrap_or(0)));
    f.unavailable_s = bounds.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0) as f64 / 1000.0;
    f.recovery_s = healed_ms.map(|healed| {
        submits
            .iter()
            .filter(|s| s.sent_ms >= healed && matches!(s.result, SubmitResult::Accepted(_)))
            .map(|s| s.answered_ms)
            .min()
            .map_or(f64::NAN, |first| (first - healed) as f64 / 1000.0)
    });

    let mut successes: HashMap<&str, Vec<&Usage>> = HashMap::new();
    let mut executed: HashSet<&str> = HashSet::new();
    for u in usage
        .iter()
        .filter(|u| u.function == function && u.trigger == "event")
    {
        executed.insert(&u.invocation_id);
        if u.succeeded() {
            successes.entry(&u.invocation_id).or_default().push(u);
        }
    }
    let mut delays = Vec::new();
    for (id, submit) in &accepted {
        match successes.get(id) {
            Some(runs) => {
                if let Some(first) = runs.iter().min_by_key(|u| u.start_ms) {
                    delays.push(first.start_ms.saturating_sub(submit.wall_ms));
                    if first.attempt > 1 {
                        f.redelivered += 1;
                    }
                }
            }
            None if dead_lettered.contains(*id) => {}
            None => f.lost.push(id.to_string()),
        }
    }
    f.lost.sort();
    delays.sort_unstable();
    f.delivery_p50_ms = percentile(&delays, 50.0);
    f.delivery_p99_ms = percentile(&delays, 99.0);
    f.delivery_max_ms = delays.last().copied().unwrap_or(0);
    let mut foreign = 0;
    for id in &executed {
        if accepted.contains_key(id) {
            continue;
        }
        if refused_ids.contains(id) {
            f.recovered += 1;
        } else {
            foreign += 1;
        }
    }
    // An unknown submission may have been stored under an id the client
    // never saw: those explain as many executions of unseen ids.
    f.recovered += foreign.min(f.unknown);
    f.unexpected = foreign.saturating_sub(f.unknown);
    for (id, runs) in &successes {
        if runs.len() > 1 {
            f.duplicates += 1;
            if f.worst_duplicate
                .as_ref()
                .is_none_or(|(_, n)| runs.len() > *n)
            {
                f.worst_duplicate = Some((id.to_string(), runs.len()));
            }
        }
    }
    f
}

/// Exactly one record per (invocation, attempt); attempts before the last
/// recorded one each recorded too.
pub fn ledger(usage: &[Usage]) -> LedgerFigures {
    let mut f = LedgerFigures {
        records: usage.len(),
        ..Default::default()
    };
    let mut per_attempt: HashMap<(&str, u64), usize> = HashMap::new();
    let mut attempts: HashMap<&str, HashSet<u64>> = HashMap::new();
    for u in usage {
        // A claim refused at admission is recorded `rejected` and gives its
        // attempt number back: the next try records that number again.
        if u.outcome == "rejected" {
            continue;
        }
        *per_attempt
            .entry((&u.invocation_id, u.attempt))
            .or_default() += 1;
        attempts
            .entry(&u.invocation_id)
            .or_default()
            .insert(u.attempt);
        if u.outcome == "aborted" {
            f.aborted += 1;
        }
    }
    f.doubled = per_attempt
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((id, a), _)| (id.to_string(), a))
        .collect();
    f.doubled.sort();
    for seen in attempts.values() {
        let last = seen.iter().max().copied().unwrap_or(0);
        f.missing_attempts += (1..last).filter(|a| !seen.contains(a)).count();
    }
    f
}

/// The schedule checker's figures: deliveries per tick.
#[derive(Debug, Default, Clone)]
pub struct ScheduleFigures {
    pub ticks: usize,
    /// Ticks delivered more than once (succeeded more than once).
    pub doubled: Vec<u64>,
    /// Ticks from the first delivered to the end of the run with no delivery.
    pub missed: usize,
    pub delay_p50_ms: u64,
    pub delay_p99_ms: u64,
    pub delay_max_ms: u64,
}

/// Schedule `id` of `function` fires `sched-<function>-<id>-<tick>`;
/// counts each tick's successful deliveries.
pub fn schedule(
    usage: &[Usage],
    function: &str,
    id: &str,
    every_ms: u64,
    until_ms: u64,
) -> ScheduleFigures {
    let prefix = format!("sched-{function}-{id}-");
    let mut per_tick: BTreeMap<u64, usize> = BTreeMap::new();
    let mut delays = Vec::new();
    for u in usage.iter().filter(|u| u.succeeded()) {
        let Some(tick) = u
            .invocation_id
            .strip_prefix(&prefix)
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        *per_tick.entry(tick).or_default() += 1;
        delays.push(u.start_ms.saturating_sub(tick));
    }
    delays.sort_unstable();
    let mut f = ScheduleFigures {
        ticks: per_tick.len(),
        doubled: per_tick
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(t, _)| *t)
            .collect(),
        delay_p50_ms: percentile(&delays, 50.0),
        delay_p99_ms: percentile(&delays, 99.0),
        delay_max_ms: delays.last().copied().unwrap_or(0),
        ..Default::default()
    };
    // From the first tick delivered up to `until_ms` (the end of the run):
    // a schedule that stopped for good counts its missing ticks too.
    if let (Some(first), Some(last)) = (per_tick.keys().next(), per_tick.keys().last()) {
        let end = until_ms.max(*last);
        let expected = (end - first) / every_ms.max(1) + 1;
        f.missed = (expected as usize).saturating_sub(per_tick.len());
    }
    f
}

/// The KV checker's figures.
#[derive(Debug, Default, Clone)]
pub struct KvFigures {
    pub operations: usize,
    pub unknown: usize,
    /// Keys whose history has no linearization, with the checker's words.
    pub violations: Vec<String>,
    /// Keys the search gave up on.
    pub too_hard: Vec<String>,
    /// The counter after the run, and the increments acknowledged / unknown.
    pub counter_final: Option<u64>,
    pub increments_ok: u64,
    pub increments_unknown: u64,
    /// Reads that returned an older value than one read before them by a
    /// read that had completed before they began (stale reads).
    pub stale_reads: usize,
}

/// A key's history in invocation order, one operation per item, for a
/// post-mortem from CI's log: `c<client> <call> @<invoked ms>→<ret> @<completed ms>`.
fn compact(history: &[linearize::Operation]) -> String {
    let mut ops: Vec<&linearize::Operation> = history.iter().collect();
    ops.sort_by_key(|op| op.invoked);
    let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
    ops.iter()
        .map(|op| {
            let ended = match op.outcome {
                Outcome::Ok { ret, completed } => format!("{ret:?} @{}", ms(completed)),
                Outcome::Unknown => "unknown".to_string(),
            };
            format!("c{} {:?} @{}→{ended}", op.client, op.call, ms(op.invoked))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks each key's history for linearizability, and the counter's final
/// value (read after the cluster healed) against its increments.
pub fn kv(ops: &[KvOp], counter_final: Option<u64>) -> KvFigures {
    let mut f = KvFigures {
        operations: ops.len(),
        counter_final,
        ..Default::default()
    };
    let mut keys: BTreeMap<&str, Vec<linearize::Operation>> = BTreeMap::new();
    for op in ops {
        if matches!(op.op.outcome, Outcome::Unknown) {
            f.unknown += 1;
        }
        if op.key == COUNTER {
            match (&op.op.call, &op.op.outcome) {
                (Call::Incr(by), Outcome::Ok { .. }) => f.increments_ok += by,
                (Call::Incr(by), Outcome::Unknown) => f.increments_unknown += by,
                _ => {}
            }
        }
        keys.entry(op.key).or_default().push(op.op.clone());
    }
    for (key, history) in &keys {
        f.stale_reads += stale_reads(history);
        match linearize::check(None, history, 20_000_000) {
            Verdict::Linearizable => {}
            Verdict::Violation { prefix, stuck_at } => f.violations.push(format!(
                "{key}: no linearization ({prefix} operations placed; stuck at {:?}); its history: {}",
                history.get(stuck_at),
                compact(history)
            )),
            Verdict::TooHard { steps } => f.too_hard.push(format!("{key} ({steps} steps)")),
        }
    }
    if let Some(last) = counter_final
        && (last < f.increments_ok || last > f.increments_ok + f.increments_unknown)
    {
        f.violations.push(format!(
            "{COUNTER}: final value {last}, but {} increments acknowledged and {} unknown",
            f.increments_ok, f.increments_unknown
        ));
    }
    f
}

/// Reads that returned a value already overwritten before they began:
/// its write had completed, and another write or delete, invoked after
/// that and acknowledged, had completed too before the read was invoked.
fn stale_reads(history: &[linearize::Operation]) -> usize {
    let completed = |op: &linearize::Operation| match op.outcome {
        Outcome::Ok { completed, .. } => Some(completed),
        Outcome::Unknown => None,
    };
    let overwrites: Vec<(u64, u64, Option<u64>)> = history
        .iter()
        .filter_map(|op| match op.call {
            Call::Write(v) => Some((op.invoked, completed(op)?, Some(v))),
            Call::Delete => Some((op.invoked, completed(op)?, None)),
            _ => None,
        })
        .collect();
    history
        .iter()
        .filter(|read| {
            let (
                Call::Read,
                Outcome::Ok {
                    ret: Ret::Read(Some(v)),
                    ..
                },
            ) = (&read.call, &read.outcome)
            else {
                return false;
            };
            let Some(&(_, written, _)) = overwrites.iter().find(|w| w.2 == Some(*v)) else {
                return false;
            };
            overwrites
                .iter()
                .any(|w| w.2 != Some(*v) && w.0 > written && w.1 < read.invoked)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(id: &str, attempt: u64, outcome: &str, start_ms: u64) -> Usage {
        Usage {
            invocation_id: id.into(),
            attempt,
            function: "sink".into(),
            trigger: "event".into(),
            outcome: outcome.into(),
            start_ms,
        }
    }

    fn submit(id: &str, wall_ms: u64) -> Submit {
        Submit {
            node: 0,
            sent_ms: 0,
            answered_ms: 1,
            wall_ms,
            result: SubmitResult::Accepted(id.into()),
        }
    }

    #[test]
    fn an_acknowledged_event_never_run_is_lost_and_one_run_twice_is_a_duplicate() {
        let submits = [submit("a", 100), submit("b", 100), submit("c", 100)];
        let runs = [
            usage("a", 1, "success", 110),
            usage("b", 1, "aborted", 120),
            usage("b", 2, "success", 900),
            usage("b", 3, "success", 950),
            usage("z", 1, "success", 130),
        ];
        let f = events(&submits, &runs, &HashSet::new(), "sink", 1.0, None);
        assert_eq!(f.lost, vec!["c".to_string()]);
        assert_eq!(f.duplicates, 1);
        assert_eq!(f.worst_duplicate, Some(("b".into(), 2)));
        assert_eq!(f.redelivered, 1);
        // `z` was never submitted as far as any client knows.
        assert_eq!(f.unexpected, 1);
        assert_eq!(f.delivery_max_ms, 800);
        let dead: HashSet<String> = ["c".to_string()].into();
        assert!(
            events(&submits, &runs, &dead, "sink", 1.0, None)
                .lost
                .is_empty()
        );
    }

    #[test]
    fn an_unknown_submission_explains_one_unseen_execution() {
        let mut submits = vec![submit("a", 0)];
        submits.push(Submit {
            result: SubmitResult::Unknown,
            ..submit("", 0)
        });
        let runs = [usage("a", 1, "success", 1), usage("q", 1, "success", 1)];
        let f = events(&submits, &runs, &HashSet::new(), "sink", 1.0, None);
        assert_eq!((f.unexpected, f.recovered), (0, 1));
    }

    #[test]
    fn the_ledger_wants_one_record_per_attempt_and_no_gaps() {
        let runs = [
            usage("a", 1, "aborted", 0),
            usage("a", 1, "aborted", 0),
            usage("b", 3, "success", 0),
        ];
        let f = ledger(&runs);
        assert_eq!(f.doubled, vec![("a".to_string(), 1)]);
        assert_eq!(f.missing_attempts, 2);
        assert_eq!(f.aborted, 2);
    }

    #[test]
    fn a_tick_delivered_twice_or_skipped_is_reported() {
        let runs = [
            usage("sched-t-beat-1000", 1, "success", 1010),
            usage("sched-t-beat-2000", 1, "success", 2020),
            usage("sched-t-beat-2000", 1, "success", 2030),
            usage("sched-t-beat-4000", 1, "success", 4040),
        ];
        let f = schedule(&runs, "t", "beat", 1000, 0);
        assert_eq!(schedule(&runs, "t", "beat", 1000, 6500).missed, 3);
        assert_eq!(f.ticks, 3);
        assert_eq!(f.doubled, vec![2000]);
        assert_eq!(f.missed, 1);
        assert_eq!(f.delay_max_ms, 40);
    }

    #[test]
    fn a_read_older_than_a_read_before_it_is_stale() {
        let op = |call, invoked, completed, ret| linearize::Operation {
            client: 0,
            call,
            invoked,
            outcome: Outcome::Ok { ret, completed },
        };
        let write = |v, invoked, completed| op(Call::Write(v), invoked, completed, Ret::Written);
        let read = |v, invoked, completed| op(Call::Read, invoked, completed, Ret::Read(Some(v)));
        // 3 was overwritten by 5 (begun after 3 was written) before the read.
        assert_eq!(
            stale_reads(&[write(3, 0, 10), write(5, 20, 30), read(3, 40, 50)]),
            1
        );
        // The writes overlap: either may have been last.
        assert_eq!(
            stale_reads(&[write(3, 0, 10), write(5, 5, 30), read(3, 40, 50)]),
            0
        );
        // The overwrite had not completed when the read began.
        assert_eq!(
            stale_reads(&[write(3, 0, 10), write(5, 20, 45), read(3, 40, 50)]),
            0
        );
    }
}
