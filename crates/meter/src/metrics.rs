//! What `/metrics` shows of the attempts indexed since start-up: counts
//! by tenant, function and outcome, and histograms of wall time, CPU time
//! and peak memory. Gathered while an index pass prices its records
//! ([`Observed`]), added once the pass commits ([`Metrics::add`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use gust_core::usage::UsageOutcome;

use crate::FastMap;
use crate::codec::{self, OUTCOMES};

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct MeterStats {
    pub written: u64,
    /// Records finished but not yet durable (the ledger's lag).
    pub pending: u64,
    /// Attempts since start-up by (tenant, function, outcome).
    pub attempts: Vec<(String, String, UsageOutcome, u64)>,
    pub wall_seconds: Histogram,
    pub cpu_seconds: Histogram,
    pub peak_memory_bytes: Histogram,
}

/// A cumulative histogram, as Prometheus exposes one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// (upper bound, observations at or below it), ascending; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// Fixed-bucket histogram of non-negative values, lock-free.
struct Buckets {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in millionths of the unit.
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn add(&self, tally: &Tally) {
        for (count, n) in self.counts.iter().zip(&tally.counts) {
            if *n > 0 {
                count.fetch_add(*n, Ordering::Relaxed);
            }
        }
        self.sum_micro.fetch_add(tally.sum_micro, Ordering::Relaxed);
        self.count.fetch_add(tally.count, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Histogram {
        let mut running = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (*bound, running)
            })
            .collect();
        Histogram {
            buckets,
            sum: self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

const SECONDS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0,
];
const BYTES: &[f64] = &[
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// Attempts per outcome (indexed as `OUTCOMES`), per function, per tenant.
type AttemptCounts = FastMap<String, FastMap<String, [u64; OUTCOMES.len()]>>;

/// What `/metrics` shows of the attempts recorded since start-up.
pub(crate) struct Metrics {
    attempts: Mutex<AttemptCounts>,
    wall: Buckets,
    cpu: Buckets,
    memory: Buckets,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            attempts: Mutex::default(),
            wall: Buckets::new(SECONDS),
            cpu: Buckets::new(SECONDS),
            memory: Buckets::new(BYTES),
        }
    }
}

impl Metrics {
    /// Adds what an index pass observed.
    pub(crate) fn add(&self, observed: &Observed) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        for (tenant, functions) in &observed.functions {
            let counts = match attempts.get_mut(tenant) {
                Some(counts) => counts,
                None => attempts.entry(tenant.clone()).or_default(),
            };
            for (function, seen) in functions {
                let total = match counts.get_mut(function) {
                    Some(total) => total,
                    None => counts.entry(function.clone()).or_default(),
                };
                for (total, n) in total.iter_mut().zip(seen.attempts) {
                    *total += n;
                }
            }
        }
        drop(attempts);
        self.wall.add(&observed.wall);
        self.cpu.add(&observed.cpu);
        self.memory.add(&observed.memory);
    }
}

impl Metrics {
    /// The figures as [`MeterStats`] shows them (`written` and `pending`
    /// are the meter's own).
    pub(crate) fn stats(&self, written: u64, pending: u64) -> MeterStats {
        let mut attempts = Vec::new();
        for (tenant, functions) in crate::lock(&self.attempts).iter() {
            for (function, counts) in functions {
                for (outcome, n) in OUTCOMES.iter().zip(counts).filter(|(_, n)| **n > 0) {
                    attempts.push((tenant.clone(), function.clone(), *outcome, *n));
                }
            }
        }
        attempts.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        MeterStats {
            written,
            pending,
            attempts,
            wall_seconds: self.wall.snapshot(),
            cpu_seconds: self.cpu.snapshot(),
            peak_memory_bytes: self.memory.snapshot(),
        }
    }
}

/// What an index pass adds to the figures kept in memory (`/metrics`,
/// function costs): gathered while pricing, so that each record is read
/// once, and added after the pass commits.
pub(crate) struct Observed {
    /// Tenant → function → what its records add.
    pub(crate) functions: FastMap<String, FastMap<String, FunctionSeen>>,
    wall: Tally,
    cpu: Tally,
    memory: Tally,
    /// Records of one tenant's function in one month in a row (most are),
    /// summed here and added to `functions` when the run ends.
    run: Run,
}

#[derive(Default)]
struct Run {
    tenant: String,
    function: String,
    month: u64,
    attempts: [u64; OUTCOMES.len()],
    cost: u64,
    records: u64,
}

#[derive(Default)]
pub(crate) struct FunctionSeen {
    attempts: [u64; OUTCOMES.len()],
    /// (month, cost of its records in this pass), months ascending.
    pub(crate) costs: Vec<(u64, u64)>,
}

impl Observed {
    pub(crate) fn new() -> Self {
        Self {
            functions: FastMap::default(),
            wall: Tally::new(SECONDS),
            cpu: Tally::new(SECONDS),
            memory: Tally::new(BYTES),
            run: Run::default(),
        }
    }

    /// Adds a record, priced at `cost`, that started in `month`. What it
    /// adds to `functions` is there after [`Observed::end_run`].
    pub(crate) fn add(&mut self, r: &codec::View<'_>, month: u64, cost: u64) {
        let run = &self.run;
        if run.records == 0
            || run.month != month
            || run.tenant != r.tenant()
            || run.function != r.function()
        {
            self.end_run();
            let run = &mut self.run;
            run.tenant.clear();
            run.tenant.push_str(r.tenant());
            run.function.clear();
            run.function.push_str(r.function());
            run.month = month;
        }
        let run = &mut self.run;
        let outcome = OUTCOMES.iter().position(|o| *o == r.outcome()).unwrap_or(0);
        run.attempts[outcome] += 1;
        run.cost = run.cost.saturating_add(cost);
        run.records += 1;
        if r.outcome() != UsageOutcome::Rejected {
            self.wall.observe(r.wall_ns() as f64 / 1e9);
            self.cpu.observe(r.cpu_ns() as f64 / 1e9);
            self.memory.observe(r.peak_memory_bytes() as f64);
        }
    }

    /// Adds the run of records being summed to `functions`.
    pub(crate) fn end_run(&mut self) {
        let run = &mut self.run;
        if run.records == 0 {
            return;
        }
        let functions = match self.functions.get_mut(run.tenant.as_str()) {
            Some(functions) => functions,
            None => self.functions.entry(run.tenant.clone()).or_default(),
        };
        let seen = match functions.get_mut(run.function.as_str()) {
            Some(seen) => seen,
            None => functions.entry(run.function.clone()).or_default(),
        };
        for (total, n) in seen.attempts.iter_mut().zip(run.attempts) {
            *total += n;
        }
        match seen.costs.iter_mut().find(|(m, _)| *m == run.month) {
            Some((_, total)) => *total = total.saturating_add(run.cost),
            None => {
                seen.costs.push((run.month, run.cost));
                seen.costs.sort_unstable();
            }
        }
        run.attempts = [0; OUTCOMES.len()];
        run.cost = 0;
        run.records = 0;
    }
}

/// A histogram's observations in one pass, before they join [`Buckets`].
struct Tally {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum_micro: u64,
    count: u64,
}

impl Tally {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum_micro: 0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.sum_micro = self.sum_micro.wrapping_add((value * 1e6) as u64);
        self.count += 1;
    }
}
