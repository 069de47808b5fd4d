//! Canary judging: what a version's traffic shows ([`Health`], counted
//! lock-free on the request path) and the pure decision made from two
//! versions' figures over a canary's window ([`judge`]).
//!
//! A canary is rolled back as soon as its error rate is clearly worse than
//! the stable version's (by the policy's margin *and* a one-sided
//! two-proportion z-test at z ≥ 2.58, so a handful of unlucky requests do
//! not condemn it); at the end of its window it is also rolled back if its
//! p99 latency is past `stable p99 × factor + slack`, and otherwise
//! promoted. With fewer requests than the policy's minimum there is no
//! evidence against it, and it is promoted at the end of the window (as a
//! deployment without alarms is), the report saying on how little.

use std::sync::atomic::{AtomicU64, Ordering};

use gust_core::deploy::CanaryPolicy;

/// Latency buckets: four per doubling from 64 µs, the last one open.
const BUCKETS: usize = 80;
const FIRST_US: f64 = 64.0;

/// Upper bound of bucket `i` in µs.
fn bucket_upper_us(i: usize) -> f64 {
    FIRST_US * 2f64.powf((i + 1) as f64 / 4.0)
}

fn bucket_of(us: u64) -> usize {
    if us as f64 <= FIRST_US {
        return 0;
    }
    let i = (4.0 * (us as f64 / FIRST_US).log2()).ceil() as usize;
    i.saturating_sub(1).min(BUCKETS - 1)
}

/// One version's answered requests, errors and latencies, since it began
/// serving. Counted with relaxed atomics on the request path.
pub struct Health {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for Health {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Health {
    /// One request answered with `status` after `latency_us`. A 5xx is an
    /// error (a trap, a timeout, a failure to run).
    pub fn record(&self, status: u16, latency_us: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[bucket_of(latency_us)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
        }
    }
}

/// [`Health`] at one moment; two of them subtract to a window's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub requests: u64,
    pub errors: u64,
    latency: [u64; BUCKETS],
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Snapshot {
    /// Both together (several functions' figures as one).
    pub fn plus(&self, other: &Snapshot) -> Snapshot {
        Snapshot {
            requests: self.requests + other.requests,
            errors: self.errors + other.errors,
            latency: std::array::from_fn(|i| self.latency[i] + other.latency[i]),
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: std::array::from_fn(|i| self.latency[i].saturating_sub(earlier.latency[i])),
        }
    }

    /// The `q`-quantile of latency in ms (a bucket's upper bound: within
    /// 19% above the true value), `None` with no requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper_us(i) / 1000.0);
            }
        }
        None
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// `12 of 240 (5.0%), p99 8.1 ms`.
    pub fn describe(&self) -> String {
        let p99 = self
            .quantile_ms(0.99)
            .map_or_else(String::new, |p| format!(", p99 {p:.1} ms"));
        format!(
            "{} errors in {} requests ({:.1}%){p99}",
            self.errors,
            self.requests,
            100.0 * self.error_rate()
        )
    }

    /// Test helper and driver aid: figures built by hand.
    pub fn from_counts(requests: u64, errors: u64, latencies_us: &[(u64, u64)]) -> Snapshot {
        let mut latency = [0; BUCKETS];
        for (us, n) in latencies_us {
            latency[bucket_of(*us)] += n;
        }
        Snapshot {
            requests,
            errors,
            latency,
        }
    }
}

/// What to do with a canary now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep splitting: the window is not over and nothing condemns it yet.
    Wait,
    Promote(String),
    RollBack(String),
}

/// Judges a canary `elapsed_ms` into its `window_ms`, from the stable
/// version's and the canary's figures over the same time.
pub fn judge(
    policy: &CanaryPolicy,
    elapsed_ms: u64,
    window_ms: u64,
    stable: &Snapshot,
    canary: &Snapshot,
) -> Verdict {
    let figures = || {
        format!(
            "canary: {}; stable: {}",
            canary.describe(),
            stable.describe()
        )
    };
    if canary.requests >= policy.min_requests && errors_worse(policy, stable, canary) {
        return Verdict::RollBack(format!("its error rate is higher ({})", figures()));
    }
    if elapsed_ms < window_ms {
        return Verdict::Wait;
    }
    if canary.requests < policy.min_requests {
        return Verdict::Promote(format!(
            "nothing against it, on little evidence: {} requests in the window, {} needed to judge ({})",
            canary.requests,
            policy.min_requests,
            figures()
        ));
    }
    if let (Some(c), Some(s)) = (canary.quantile_ms(0.99), stable.quantile_ms(0.99)) {
        let bound =
            s * f64::from(policy.latency_factor_pct) / 100.0 + policy.latency_slack_ms as f64;
        if c > bound {
            return Verdict::RollBack(format!(
                "its p99 latency {c:.1} ms is above {bound:.1} ms ({})",
                figures()
            ));
        }
    }
    Verdict::Promote(format!("healthy over its window ({})", figures()))
}

/// The canary's error rate exceeds the stable one's by more than the
/// margin, and significantly (one-sided two-proportion z-test, z ≥ 2.58;
/// against a stable version with no traffic, the margin alone).
fn errors_worse(policy: &CanaryPolicy, stable: &Snapshot, canary: &Snapshot) -> bool {
    let (pc, ps) = (canary.error_rate(), stable.error_rate());
    let margin = f64::from(policy.error_margin_bp) / 10_000.0;
    if pc - ps <= margin {
        return false;
    }
    if stable.requests == 0 {
        return true;
    }
    let (nc, ns) = (canary.requests as f64, stable.requests as f64);
    let pooled = (canary.errors + stable.errors) as f64 / (nc + ns);
    let spread = (pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / ns)).sqrt();
    spread > 0.0 && (pc - ps) / spread >= 2.58
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CanaryPolicy {
        CanaryPolicy::default()
    }

    fn fast(requests: u64, errors: u64) -> Snapshot {
        Snapshot::from_counts(requests, errors, &[(2_000, requests)])
    }

    #[test]
    fn buckets_cover_latencies_in_order() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(64), 0);
        let mut last = 0;
        for us in [65, 100, 1_000, 10_000, 1_000_000, 60_000_000, u64::MAX / 2] {
            let b = bucket_of(us);
            assert!(b >= last);
            assert!(b == BUCKETS - 1 || bucket_upper_us(b) >= us as f64, "{us}");
            last = b;
        }
        let s = Snapshot::from_counts(100, 0, &[(1_000, 98), (50_000, 2)]);
        assert!(s.quantile_ms(0.5).unwrap() >= 1.0 && s.quantile_ms(0.5).unwrap() < 1.2);
        assert!(s.quantile_ms(0.99).unwrap() >= 50.0 && s.quantile_ms(0.99).unwrap() < 60.0);
    }

    #[test]
    fn health_counts_and_windows_subtract() {
        let h = Health::default();
        h.record(200, 900);
        h.record(500, 900);
        let first = h.snapshot();
        h.record(504, 30_000_000);
        h.record(429, 100);
        let window = h.snapshot().since(&first);
        assert_eq!((window.requests, window.errors), (2, 1));
        assert!(window.quantile_ms(1.0).unwrap() >= 30_000.0);
    }

    #[test]
    fn a_failing_canary_is_rolled_back_before_its_window_ends() {
        let v = judge(&policy(), 10_000, 300_000, &fast(450, 0), &fast(50, 25));
        assert!(
            matches!(v, Verdict::RollBack(ref r) if r.contains("error rate")),
            "{v:?}"
        );
    }

    #[test]
    fn too_few_requests_condemn_nothing() {
        assert_eq!(
            judge(&policy(), 10_000, 300_000, &fast(100, 0), &fast(5, 5)),
            Verdict::Wait
        );
        let v = judge(&policy(), 300_000, 300_000, &fast(100, 0), &fast(5, 0));
        assert!(
            matches!(v, Verdict::Promote(ref r) if r.contains("little evidence")),
            "{v:?}"
        );
    }

    #[test]
    fn a_small_difference_in_errors_is_not_significant() {
        // 3 errors in 40 against 20 in 900: above the margin, not significant.
        let v = judge(&policy(), 300_000, 300_000, &fast(900, 20), &fast(40, 3));
        assert!(matches!(v, Verdict::Promote(_)), "{v:?}");
        // Well above the margin and significant.
        let v = judge(&policy(), 300_000, 300_000, &fast(900, 9), &fast(100, 15));
        assert!(matches!(v, Verdict::RollBack(_)), "{v:?}");
        // Within the margin: never, however many requests.
        let v = judge(
            &policy(),
            300_000,
            300_000,
            &fast(90_000, 900),
            &fast(10_000, 250),
        );
        assert!(matches!(v, Verdict::Promote(_)), "{v:?}");
    }

    #[test]
    fn a_healthy_canary_waits_for_its_window_then_is_promoted() {
        assert_eq!(
            judge(&policy(), 299_999, 300_000, &fast(900, 3), &fast(100, 0)),
            Verdict::Wait
        );
        let v = judge(&policy(), 300_000, 300_000, &fast(900, 3), &fast(100, 0));
        assert!(
            matches!(v, Verdict::Promote(ref r) if r.contains("healthy")),
            "{v:?}"
        );
    }

    #[test]
    fn a_slow_canary_is_rolled_back_at_the_end_of_its_window() {
        let stable = fast(900, 0);
        let slow = Snapshot::from_counts(100, 0, &[(2_000, 90), (200_000, 10)]);
        assert_eq!(
            judge(&policy(), 1_000, 300_000, &stable, &slow),
            Verdict::Wait
        );
        let v = judge(&policy(), 300_000, 300_000, &stable, &slow);
        assert!(
            matches!(v, Verdict::RollBack(ref r) if r.contains("p99")),
            "{v:?}"
        );
        // Within factor and slack: promoted.
        let a_bit_slower = Snapshot::from_counts(100, 0, &[(2_000, 90), (20_000, 10)]);
        let v = judge(&policy(), 300_000, 300_000, &stable, &a_bit_slower);
        assert!(matches!(v, Verdict::Promote(_)), "{v:?}");
    }

    #[test]
    fn against_a_stable_version_without_traffic_the_margin_decides() {
        let v = judge(&policy(), 1_000, 300_000, &fast(0, 0), &fast(40, 10));
        assert!(matches!(v, Verdict::RollBack(_)), "{v:?}");
        let v = judge(&policy(), 300_000, 300_000, &fast(0, 0), &fast(40, 0));
        assert!(matches!(v, Verdict::Promote(_)), "{v:?}");
    }
}
