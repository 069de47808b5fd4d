//! The report of a run: what one scenario found, the violations that fail
//! it, and the figures as a Markdown table or JSON.

use crate::budget::BudgetFigures;
use crate::check::{EventFigures, KvFigures, LedgerFigures, ScheduleFigures};
use crate::feeds::FeedFigures;

/// Requests a budget may be overspent by with no fault (measured: 0–2).
const BUDGET_SLACK: i64 = 5;

/// What one scenario found.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub fault: String,
    pub timeline: Vec<String>,
    pub events: EventFigures,
    pub ledger: LedgerFigures,
    pub schedule: ScheduleFigures,
    pub kv: KvFigures,
    pub feeds: FeedFigures,
    pub budget: BudgetFigures,
    pub deploys: Option<Vec<u64>>,
    /// Missing ticks fail the run (no fault touched NATS or the owner's life).
    pub strict_ticks: bool,
    /// Budget overshoot past [`BUDGET_SLACK`] fails the run (no fault).
    pub strict_budget: bool,
    /// Of three functions claiming one host at once, those that got it.
    pub route_winners: Option<Vec<String>>,
    pub violations: Vec<String>,
}

/// What fails the run: each broken promise, in a sentence.
pub fn violations(r: &Report) -> Vec<String> {
    let mut v = Vec::new();
    let e = &r.events;
    if !e.lost.is_empty() {
        v.push(format!(
            "{} acknowledged events lost (e.g. {})",
            e.lost.len(),
            e.lost[0]
        ));
    }
    if e.unexpected > 0 {
        v.push(format!(
            "{} events executed that no client submitted",
            e.unexpected
        ));
    }
    if e.refused_503_without_retry_after > 0 {
        v.push(format!(
            "{} answers 503 without Retry-After",
            e.refused_503_without_retry_after
        ));
    }
    if !r.ledger.doubled.is_empty() {
        v.push(format!(
            "{} attempts with more than one usage record (e.g. {:?})",
            r.ledger.doubled.len(),
            r.ledger.doubled[0]
        ));
    }
    if !r.schedule.doubled.is_empty() {
        v.push(format!(
            "{} schedule ticks delivered twice (e.g. {})",
            r.schedule.doubled.len(),
            r.schedule.doubled[0]
        ));
    }
    if r.strict_ticks && r.schedule.missed > 0 {
        v.push(format!(
            "{} schedule ticks never delivered with no fault on NATS",
            r.schedule.missed
        ));
    }
    v.extend(r.kv.violations.iter().cloned());
    v.extend(
        r.kv.too_hard
            .iter()
            .map(|k| format!("KV history too hard to check: {k}")),
    );
    if !r.feeds.out_of_order.is_empty() {
        v.push(format!(
            "{} KV changes delivered out of order (e.g. {})",
            r.feeds.out_of_order.len(),
            r.feeds.out_of_order[0]
        ));
    }
    if !r.feeds.missing.is_empty() {
        v.push(format!(
            "{} acknowledged KV writes never delivered to their trigger nor dead-lettered (e.g. {})",
            r.feeds.missing.len(),
            r.feeds.missing[0]
        ));
    }
    // With no fault, every node sees the others' costs within 1.5 s: at
    // 10 requests/s the budget holds within a few requests.
    let b = &r.budget;
    if r.strict_budget && (b.over_budget == 0 || b.overshoot > BUDGET_SLACK) {
        v.push(format!(
            "a budget of {} requests, with no fault: {} billed, {} refused over budget (at most {BUDGET_SLACK} over allowed)",
            b.budget, b.billed, b.over_budget
        ));
    }
    if let Some(winners) = &r.route_winners
        && winners.len() != 1
    {
        v.push(format!(
            "three concurrent claims of one host: {} won ({winners:?}), not one",
            winners.len()
        ));
    }
    if let Some(versions) = &r.deploys {
        let consecutive = versions.windows(2).all(|w| w[1] == w[0] + 1);
        if !consecutive {
            v.push(format!(
                "concurrent deploys got versions {versions:?}, not distinct and consecutive"
            ));
        }
    }
    v
}

/// The figures as a Markdown table, then each scenario's timeline.
pub fn print_table(reports: &[Report]) {
    println!(
        "| | fault | accepted (/s) | lost | unexpected | duplicates | unknown | refused | unavailable s | accept p50/p99 ms | delivery p50/p99/max ms | ledger: records, doubled, gaps, aborted | ticks, doubled, missed | KV ops, unknown, stale reads, violations | KV changes: writes, delivered, redelivered, out of order, missing | budget: requests, billed, overshoot |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let e = &r.events;
        let refused: Vec<String> = e
            .refused
            .iter()
            .map(|(code, n)| format!("{n}×{code}"))
            .chain((e.not_sent > 0).then(|| format!("{}×no connection", e.not_sent)))
            .collect();
        println!(
            "| {} | {} | {} ({:.0}) | {} | {} | {} ({:.2}%) | {} | {} | {:.1} | {}/{} | {}/{}/{} | {}, {}, {}, {} | {}, {}, {} | {}, {}, {}, {} | {}, {}, {}, {}, {} | {}, {}, {:+} |",
            r.scenario,
            r.fault,
            e.accepted,
            e.accepted_per_s,
            e.lost.len(),
            e.unexpected,
            e.duplicates,
            100.0 * e.duplicates as f64 / e.accepted.max(1) as f64,
            e.unknown,
            if refused.is_empty() {
                "0".to_string()
            } else {
                refused.join(" ")
            },
            e.unavailable_s,
            e.accept_p50_ms,
            e.accept_p99_ms,
            e.delivery_p50_ms,
            e.delivery_p99_ms,
            e.delivery_max_ms,
            r.ledger.records,
            r.ledger.doubled.len(),
            r.ledger.missing_attempts,
            r.ledger.aborted,
            r.schedule.ticks,
            r.schedule.doubled.len(),
            r.schedule.missed,
            r.kv.operations,
            r.kv.unknown,
            r.kv.stale_reads,
            r.kv.violations.len(),
            r.feeds.acknowledged,
            r.feeds.deliveries,
            r.feeds.redelivered,
            r.feeds.out_of_order.len(),
            r.feeds.missing.len(),
            r.budget.budget,
            r.budget.billed,
            r.budget.overshoot,
        );
    }
    for r in reports {
        println!("\n{} timeline:", r.scenario);
        for line in &r.timeline {
            println!("  {line}");
        }
        println!("  202s per node (a, b, c): {:?}", r.events.accepted_by_node);
        let b = &r.budget;
        println!(
            "  budget of {} requests: {} served, {} refused over budget (first at {}), {} other answers; {} billed ({:+})",
            b.budget,
            b.served,
            b.over_budget,
            b.first_refusal_ms.map_or("never".to_string(), |ms| format!(
                "{:.1} s",
                ms as f64 / 1000.0
            )),
            b.other,
            b.billed,
            b.overshoot
        );
        match r.events.recovery_s {
            Some(recovery) if recovery.is_nan() => {
                println!("  first 202 after the fault ended: none before the load ended")
            }
            Some(recovery) => println!("  first 202 after the fault ended: {recovery:.1} s later"),
            None => {}
        }
        if let Some(winners) = &r.route_winners {
            println!("  concurrent claims of one host, won by: {winners:?}");
        }
        if let Some(versions) = &r.deploys {
            println!("  concurrent deploys: versions {versions:?}");
        }
        for v in &r.violations {
            println!("  VIOLATION: {v}");
        }
        for t in &r.kv.too_hard {
            println!("  KV history too hard to check: {t}");
        }
    }
}

/// The figures as JSON (`--json`).
pub fn json(reports: &[Report]) -> serde_json::Value {
    serde_json::Value::Array(
        reports
            .iter()
            .map(|r| {
                let e = &r.events;
                serde_json::json!({
                    "scenario": r.scenario,
                    "fault": r.fault,
                    "timeline": r.timeline,
                    "events": {
                        "attempted": e.attempted, "accepted": e.accepted,
                        "accepted_per_s": e.accepted_per_s, "lost": e.lost,
                        "unexpected": e.unexpected, "recovered": e.recovered,
                        "duplicates": e.duplicates,
                        "duplicates_pct": 100.0 * e.duplicates as f64 / e.accepted.max(1) as f64,
                        "worst_duplicate": e.worst_duplicate,
                        "unknown": e.unknown, "not_sent": e.not_sent,
                        "refused": e.refused.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
                        "unavailable_s": e.unavailable_s, "recovery_s": e.recovery_s,
                        "accept_ms": {"p50": e.accept_p50_ms, "p99": e.accept_p99_ms},
                        "delivery_ms": {"p50": e.delivery_p50_ms, "p99": e.delivery_p99_ms, "max": e.delivery_max_ms},
                        "redelivered": e.redelivered, "accepted_by_node": e.accepted_by_node,
                    },
                    "ledger": {
                        "records": r.ledger.records, "doubled": r.ledger.doubled,
                        "missing_attempts": r.ledger.missing_attempts, "aborted": r.ledger.aborted,
                    },
                    "schedule": {
                        "ticks": r.schedule.ticks, "doubled": r.schedule.doubled,
                        "missed": r.schedule.missed,
                        "delay_ms": {"p50": r.schedule.delay_p50_ms, "p99": r.schedule.delay_p99_ms, "max": r.schedule.delay_max_ms},
                    },
                    "kv": {
                        "operations": r.kv.operations, "unknown": r.kv.unknown,
                        "stale_reads": r.kv.stale_reads, "violations": r.kv.violations,
                        "too_hard": r.kv.too_hard, "counter_final": r.kv.counter_final,
                        "increments_ok": r.kv.increments_ok, "increments_unknown": r.kv.increments_unknown,
                    },
                    "kv_changes": {
                        "acknowledged": r.feeds.acknowledged, "deliveries": r.feeds.deliveries,
                        "redelivered": r.feeds.redelivered, "out_of_order": r.feeds.out_of_order,
                        "missing": r.feeds.missing, "dead_lettered": r.feeds.dead_lettered,
                    },
                    "budget": {
                        "requests": r.budget.budget, "served": r.budget.served,
                        "over_budget": r.budget.over_budget, "other": r.budget.other,
                        "billed": r.budget.billed, "overshoot": r.budget.overshoot,
                        "first_refusal_ms": r.budget.first_refusal_ms,
                    },
                    "deploys": r.deploys, "route_winners": r.route_winners,
                    "violations": r.violations,
                })
            })
            .collect(),
    )
}
