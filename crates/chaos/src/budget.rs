//! Budget overshoot under faults. Every request is priced at 1,000
//! micro-units (a plan with only a per-request price); [`FUNCTION`] gets a
//! monthly budget of half the requests its clients send in the run, so it
//! runs out while the fault is on. Every node refuses it (429) once the
//! shared ledger says the budget is spent; what it served past the budget
//! is the overshoot: requests in flight when it ran out, and those served
//! while a node could not see the other nodes' records.

use std::time::Duration;

use crate::check::Usage;
use crate::nodes::World;
use crate::workload::{Clock, gather, live};

/// The budgeted function.
pub const FUNCTION: &str = "capped";
/// What one request costs, in micro-units.
const PRICE_MICROS: u64 = 1_000;

/// Prices each request at [`PRICE_MICROS`] and deploys [`FUNCTION`] with
/// a budget of `requests` requests.
pub async fn setup(world: &World, guest: &str, requests: u64) -> anyhow::Result<()> {
    let api = world.gust[0]
        .endpoint
        .as_ref()
        .map(|e| e.api.clone())
        .ok_or_else(|| anyhow::anyhow!("node a is down"))?;
    world
        .http
        .put(format!("{api}/v1/tenants/default/plan"))
        .json(&serde_json::json!({
            "id": "per-request",
            "per_million_requests": PRICE_MICROS * 1_000_000,
            "per_million_gb_seconds": 0, "free_requests": 0, "free_gb_seconds": 0,
        }))
        .send()
        .await?
        .error_for_status()?;
    let budget = (requests * PRICE_MICROS).to_string();
    world.gust_json(
        0,
        &[
            "deploy",
            FUNCTION,
            guest,
            "--monthly-budget-micros",
            &budget,
        ],
    )?;
    Ok(())
}

/// What the budget clients were told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Served,
    /// 429 naming the monthly budget.
    OverBudget,
    /// Anything else: another status, no answer, no connection.
    Other,
}

/// Calls [`FUNCTION`] at about `rate` per second in all, from two clients
/// on the live nodes in turn, until `until`; each answer with when it came
/// (ms into the run).
pub async fn spend(
    http: reqwest::Client,
    endpoints: crate::nodes::Endpoints,
    clock: Clock,
    rate: u32,
    until: Duration,
) -> anyhow::Result<Vec<(u64, Answer)>> {
    let clients = 2;
    let gap = Duration::from_secs_f64(clients as f64 / f64::from(rate.max(1)));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (http, endpoints) = (http.clone(), endpoints.clone());
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut tick = tokio::time::interval(gap);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = client;
            while clock.0.elapsed() < until {
                tick.tick().await;
                let nodes = live(&endpoints);
                if nodes.is_empty() {
                    continue;
                }
                n += 1;
                let (_, endpoint) = &nodes[n % nodes.len()];
                let answer = match http
                    .get(format!("{}/{FUNCTION}/", endpoint.url))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => Answer::Served,
                    Ok(r) if r.status() == 429 => match r.text().await {
                        Ok(body) if body.contains("monthly budget") => Answer::OverBudget,
                        _ => Answer::Other,
                    },
                    _ => Answer::Other,
                };
                answers.push((clock.ms(), answer));
            }
            answers
        }));
    }
    let mut all = gather(tasks).await?;
    all.sort_by_key(|(at, _)| *at);
    Ok(all)
}

/// The budget checker's figures.
#[derive(Debug, Default, Clone)]
pub struct BudgetFigures {
    /// The budget, in requests.
    pub budget: u64,
    pub served: usize,
    pub over_budget: usize,
    pub other: usize,
    /// Invocations in the ledger (refusals excluded): what was billed.
    pub billed: usize,
    /// Billed past the budget, in requests (negative: it never ran out).
    pub overshoot: i64,
    /// When the first refusal came, ms into the run.
    pub first_refusal_ms: Option<u64>,
}

pub fn check(budget: u64, answers: &[(u64, Answer)], usage: &[Usage]) -> BudgetFigures {
    let count = |a: Answer| answers.iter().filter(|(_, x)| *x == a).count();
    let billed = usage
        .iter()
        .filter(|u| u.function == FUNCTION && u.outcome != "rejected")
        .count();
    BudgetFigures {
        budget,
        served: count(Answer::Served),
        over_budget: count(Answer::OverBudget),
        other: count(Answer::Other),
        billed,
        overshoot: billed as i64 - budget as i64,
        first_refusal_ms: answers
            .iter()
            .find(|(_, a)| *a == Answer::OverBudget)
            .map(|(at, _)| *at),
    }
}
