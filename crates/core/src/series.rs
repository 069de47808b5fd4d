//! A function's activity over time, from its usage records: requests,
//! errors, latency percentiles and cost per interval (the dashboard's
//! charts, `GET /v1/functions/{name}/stats`).
//!
//! Latency is kept per interval in a log-scale histogram (four buckets per
//! doubling, so a percentile reads at most 25% high, and an interval
//! costs the same whatever its traffic), not as every sample.

use serde::{Deserialize, Serialize};

use crate::usage::{UsageOutcome, UsageRecord};

/// Histogram buckets: 4 per doubling from 1 µs, up to about 2^31 µs.
const BINS: usize = 4 * 32;

/// One interval's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Interval {
    pub start_ms: u64,
    /// Attempts that started in it.
    pub requests: u64,
    /// Of those, the ones that failed: a status of 500 or above, or an
    /// attempt that did not finish (trap, timeout, abort, a cut body).
    pub errors: u64,
    /// Wall-time percentiles in milliseconds (0 without requests).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cost_micros: u64,
}

/// Builds the intervals of `[from_ms, from_ms + step_ms × count)`.
#[derive(Debug, Clone)]
pub struct SeriesBuilder {
    from_ms: u64,
    step_ms: u64,
    intervals: Vec<(Interval, Vec<u32>)>,
}

impl SeriesBuilder {
    /// `step_ms` is at least 1 and `count` at least 1.
    pub fn new(from_ms: u64, step_ms: u64, count: usize) -> Self {
        let step_ms = step_ms.max(1);
        let intervals = (0..count.max(1) as u64)
            .map(|i| {
                (
                    Interval {
                        start_ms: from_ms.saturating_add(i.saturating_mul(step_ms)),
                        requests: 0,
                        errors: 0,
                        p50_ms: 0.0,
                        p99_ms: 0.0,
                        cost_micros: 0,
                    },
                    Vec::new(),
                )
            })
            .collect();
        Self {
            from_ms,
            step_ms,
            intervals,
        }
    }

    /// Counts a record in its interval; one outside them all is ignored.
    pub fn add(&mut self, record: &UsageRecord) {
        let Some(offset) = record.start_ms.checked_sub(self.from_ms) else {
            return;
        };
        let Some((interval, bins)) = self.intervals.get_mut((offset / self.step_ms) as usize)
        else {
            return;
        };
        interval.requests += 1;
        if record.status >= 500
            || matches!(
                record.outcome,
                UsageOutcome::Trapped
                    | UsageOutcome::TimedOut
                    | UsageOutcome::Aborted
                    | UsageOutcome::Incomplete
            )
        {
            interval.errors += 1;
        }
        interval.cost_micros += record.cost_micros;
        if bins.is_empty() {
            bins.resize(BINS, 0);
        }
        bins[bin(record.wall_ns / 1000)] += 1;
    }

    pub fn finish(self) -> Vec<Interval> {
        self.intervals
            .into_iter()
            .map(|(mut interval, bins)| {
                interval.p50_ms = percentile(&bins, interval.requests, 0.50);
                interval.p99_ms = percentile(&bins, interval.requests, 0.99);
                interval
            })
            .collect()
    }
}

/// The bin of a duration in µs: 4 per doubling.
fn bin(us: u64) -> usize {
    if us < 2 {
        return 0;
    }
    let log2 = 63 - us.leading_zeros() as usize;
    // The two bits after the leading one pick the quarter.
    let quarter = if log2 >= 2 {
        ((us >> (log2 - 2)) & 3) as usize
    } else {
        ((us << (2 - log2)) & 3) as usize
    };
    (log2 * 4 + quarter).min(BINS - 1)
}

/// The upper bound of a bin, in µs.
fn upper_us(bin: usize) -> f64 {
    let (log2, quarter) = (bin / 4, bin % 4);
    2f64.powi(log2 as i32) * (1.0 + (quarter as f64 + 1.0) / 4.0)
}

/// The `q` percentile in ms: the upper bound of the bin holding it.
fn percentile(bins: &[u32], total: u64, q: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, n) in bins.iter().enumerate() {
        seen += u64::from(*n);
        if seen >= rank {
            return upper_us(i) / 1000.0;
        }
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Trigger;

    fn record(start_ms: u64, wall_ms: u64, status: u16, outcome: UsageOutcome) -> UsageRecord {
        UsageRecord {
            invocation_id: "i".into(),
            attempt: 1,
            tenant: "t".into(),
            function: "f".into(),
            version: 1,
            trigger: Trigger::Http,
            start_ms,
            wall_ns: wall_ms * 1_000_000,
            cpu_ns: 0,
            peak_memory_bytes: 0,
            memory_limit_bytes: 0,
            request_bytes: 0,
            response_bytes: 0,
            outbound_requests: 0,
            outbound_bytes: 0,
            kv_operations: 0,
            outcome,
            status,
            billed_ms: wall_ms,
            gib_us: 0,
            cost_micros: 3,
            plan: "p".into(),
        }
    }

    #[test]
    fn records_fall_in_their_interval_with_errors_cost_and_percentiles() {
        let mut series = SeriesBuilder::new(1_000, 100, 3);
        // Interval 0: 99 fast requests and a slow one; one 503.
        for i in 0..99 {
            let status = if i == 0 { 503 } else { 200 };
            series.add(&record(1_000 + i, 10, status, UsageOutcome::Success));
        }
        series.add(&record(1_050, 400, 200, UsageOutcome::Success));
        // Interval 2: a timeout. Outside: ignored.
        series.add(&record(1_250, 30, 0, UsageOutcome::TimedOut));
        series.add(&record(999, 10, 200, UsageOutcome::Success));
        series.add(&record(1_300, 10, 200, UsageOutcome::Success));
        let out = series.finish();
        assert_eq!(out.len(), 3);
        assert_eq!(
            (
                out[0].start_ms,
                out[0].requests,
                out[0].errors,
                out[0].cost_micros
            ),
            (1_000, 100, 1, 300)
        );
        // Within the histogram's 25%: p50 of 10 ms, p99 of the 99th (10 ms), not the slow one.
        assert!((10.0..=12.0).contains(&out[0].p50_ms), "{}", out[0].p50_ms);
        assert!((10.0..=12.0).contains(&out[0].p99_ms), "{}", out[0].p99_ms);
        assert_eq!((out[1].requests, out[1].p50_ms), (0, 0.0));
        assert_eq!((out[2].requests, out[2].errors), (1, 1));
        assert!((30.0..=36.0).contains(&out[2].p99_ms), "{}", out[2].p99_ms);
    }

    #[test]
    fn bins_grow_by_quarters_of_a_doubling_and_bound_what_they_hold() {
        for us in [1u64, 2, 3, 5, 7, 100, 999, 1_000_000, 60_000_000] {
            let b = bin(us);
            assert!(
                upper_us(b) >= us as f64,
                "{us} in bin {b} up to {}",
                upper_us(b)
            );
            assert!(
                upper_us(b) <= us as f64 * 1.25 + 1.0,
                "{us}: {}",
                upper_us(b)
            );
        }
        assert!(bin(1_000) < bin(1_300) && bin(1_300) < bin(2_000));
        assert_eq!(bin(u64::MAX), BINS - 1);
    }
}
