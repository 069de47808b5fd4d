//! When an idle function should be in memory: a fixed keep-alive, or a
//! policy learned from the function's own idle times in the spirit of the
//! hybrid histogram policy of "Serverless in the Wild" (Shahrad et al.,
//! USENIX ATC 2020).
//!
//! The learned policy keeps a histogram of idle times (the time from the
//! end of one invocation to the start of the next) in bins of `bin_ms`
//! (a minute) over `bins` bins (four hours). When the histogram is
//! representative, it unloads the function right after an invocation,
//! pre-warms it at the head of the distribution (its 5th percentile, less a
//! 10% margin) and keeps it until the tail (its 99th percentile, plus 10%).
//! Otherwise it falls back:
//! - too little history, or idle times spread so evenly that no pattern
//!   shows (the coefficient of variation of the bin counts is below 2):
//!   a fixed keep-alive;
//! - mostly idle times beyond the histogram's range: unloaded at once,
//!   since no keep-alive shorter than the range would have caught them
//!   (the paper predicts these with ARIMA; Gust does not).

use gust_core::scaling::KeepAlive;

/// The learned policy's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnedConfig {
    pub bin_ms: u64,
    pub bins: usize,
    /// Fewer idle times than this: the fallback applies.
    pub min_samples: u32,
    /// Below this coefficient of variation of the bin counts, the
    /// histogram shows no pattern: the fallback applies.
    pub min_cv: f64,
    /// Percentiles of the head (pre-warm) and the tail (keep-alive).
    pub head: f64,
    pub tail: f64,
    /// Taken off the head and added to the tail.
    pub margin: f64,
    /// More than this share of idle times beyond the range: unload at once.
    pub max_out_of_range: f64,
    /// The fixed keep-alive used while the histogram cannot be trusted.
    pub fallback_ms: u64,
}

impl Default for LearnedConfig {
    fn default() -> Self {
        Self {
            bin_ms: 60_000,
            bins: 240,
            min_samples: 10,
            min_cv: 2.0,
            head: 0.05,
            tail: 0.99,
            margin: 0.10,
            max_out_of_range: 0.5,
            fallback_ms: 600_000,
        }
    }
}

/// A function's idle times, binned.
#[derive(Debug, Clone, Default)]
pub struct IdleHistogram {
    counts: Vec<u32>,
    out_of_range: u32,
    total: u32,
}

impl IdleHistogram {
    pub fn record(&mut self, config: &LearnedConfig, idle_ms: u64) {
        if self.counts.len() != config.bins {
            self.counts.resize(config.bins, 0);
        }
        let bin = usize::try_from(idle_ms / config.bin_ms.max(1)).unwrap_or(usize::MAX);
        match self.counts.get_mut(bin) {
            Some(count) => *count = count.saturating_add(1),
            None => self.out_of_range = self.out_of_range.saturating_add(1),
        }
        self.total = self.total.saturating_add(1);
    }

    pub fn samples(&self) -> u32 {
        self.total
    }

    /// The bin holding the `p` quantile of in-range idle times.
    fn quantile_bin(&self, p: f64) -> usize {
        let in_range: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        let rank = ((in_range as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (bin, &count) in self.counts.iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank {
                return bin;
            }
        }
        self.counts.len().saturating_sub(1)
    }

    /// The coefficient of variation of the bin counts.
    fn cv(&self) -> f64 {
        let n = self.counts.len() as f64;
        if n == 0.0 {
            return 0.0;
        }
        let mean = self.counts.iter().map(|&c| f64::from(c)).sum::<f64>() / n;
        if mean == 0.0 {
            return 0.0;
        }
        let var = self
            .counts
            .iter()
            .map(|&c| (f64::from(c) - mean).powi(2))
            .sum::<f64>()
            / n;
        var.sqrt() / mean
    }
}

/// Why the windows are what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    Fixed,
    /// Learned, but not enough idle times yet: the fallback keep-alive.
    TooLittleHistory,
    /// Learned, but no pattern in the idle times: the fallback keep-alive.
    NoPattern,
    /// Learned: mostly idle longer than the histogram's range.
    OutOfRange,
    Learned,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Fixed => "fixed",
            Basis::TooLittleHistory => "too_little_history",
            Basis::NoPattern => "no_pattern",
            Basis::OutOfRange => "out_of_range",
            Basis::Learned => "learned",
        }
    }
}

/// After an invocation ends: out of memory for `prewarm_ms`, then in
/// memory for `keep_ms`, then out until the next invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub prewarm_ms: u64,
    pub keep_ms: u64,
    pub basis: Basis,
}

impl Windows {
    /// Whether a function idle for `idle_ms` should be in memory.
    pub fn warm_after(&self, idle_ms: u64) -> bool {
        idle_ms >= self.prewarm_ms && idle_ms < self.prewarm_ms.saturating_add(self.keep_ms)
    }
}

/// The windows `policy` sets for a function with idle times `history`.
pub fn windows(policy: KeepAlive, config: &LearnedConfig, history: &IdleHistogram) -> Windows {
    let fallback = |basis| Windows {
        prewarm_ms: 0,
        keep_ms: config.fallback_ms,
        basis,
    };
    match policy {
        KeepAlive::Fixed { idle_ms } => Windows {
            prewarm_ms: 0,
            keep_ms: idle_ms,
            basis: Basis::Fixed,
        },
        KeepAlive::Learned => {
            if history.total < config.min_samples {
                return fallback(Basis::TooLittleHistory);
            }
            if f64::from(history.out_of_range) > config.max_out_of_range * f64::from(history.total)
            {
                return Windows {
                    prewarm_ms: 0,
                    keep_ms: 0,
                    basis: Basis::OutOfRange,
                };
            }
            if history.cv() < config.min_cv {
                return fallback(Basis::NoPattern);
            }
            let bin = config.bin_ms as f64;
            let head = history.quantile_bin(config.head) as f64 * bin * (1.0 - config.margin);
            let tail = (history.quantile_bin(config.tail) + 1) as f64 * bin * (1.0 + config.margin);
            Windows {
                prewarm_ms: head.round() as u64,
                keep_ms: (tail - head).max(0.0).round() as u64,
                basis: Basis::Learned,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn learned(idle_minutes: &[u64]) -> Windows {
        let config = LearnedConfig::default();
        let mut h = IdleHistogram::default();
        for &m in idle_minutes {
            h.record(&config, m * MIN + MIN / 2);
        }
        windows(KeepAlive::Learned, &config, &h)
    }

    #[test]
    fn fixed_is_warm_for_its_duration() {
        let w = windows(
            KeepAlive::Fixed { idle_ms: 10 * MIN },
            &LearnedConfig::default(),
            &IdleHistogram::default(),
        );
        assert_eq!(w.basis, Basis::Fixed);
        assert!(w.warm_after(0) && w.warm_after(10 * MIN - 1));
        assert!(!w.warm_after(10 * MIN));
        let zero = windows(
            KeepAlive::Fixed { idle_ms: 0 },
            &LearnedConfig::default(),
            &IdleHistogram::default(),
        );
        assert!(!zero.warm_after(0));
    }

    #[test]
    fn little_history_falls_back_to_the_fixed_keep_alive() {
        let w = learned(&[30, 30, 30]);
        assert_eq!(w.basis, Basis::TooLittleHistory);
        assert_eq!((w.prewarm_ms, w.keep_ms), (0, 10 * MIN));
    }

    #[test]
    fn a_periodic_function_is_unloaded_then_prewarmed_before_its_next_call() {
        // Called every ~30 minutes.
        let w = learned(&[30; 20]);
        assert_eq!(w.basis, Basis::Learned);
        // Pre-warmed at 27 min (30 less 10%), kept until 34.1 min (31 + 10%).
        assert_eq!(w.prewarm_ms, 27 * MIN);
        assert_eq!(w.prewarm_ms + w.keep_ms, 34 * MIN + 6_000);
        assert!(!w.warm_after(MIN), "unloaded right after an invocation");
        assert!(
            w.warm_after(30 * MIN + MIN / 2),
            "warm when the next call comes"
        );
        assert!(!w.warm_after(40 * MIN));
    }

    #[test]
    fn a_frequent_function_stays_warm_until_its_tail() {
        let mut idle = vec![0; 95];
        idle.extend([1, 1, 2, 2, 3]);
        let w = learned(&idle);
        assert_eq!(w.basis, Basis::Learned);
        assert_eq!(w.prewarm_ms, 0);
        // The 99th idle time falls in the 2-minute bin: kept 3 min + 10%.
        assert_eq!(w.keep_ms, 3 * MIN + 18_000);
    }

    #[test]
    fn evenly_spread_idle_times_show_no_pattern() {
        let idle: Vec<u64> = (0..240).collect();
        let w = learned(&idle);
        assert_eq!(w.basis, Basis::NoPattern);
        assert_eq!(w.keep_ms, 10 * MIN);
    }

    #[test]
    fn idle_beyond_the_range_unloads_at_once() {
        let mut idle = vec![300; 12];
        idle.extend([5; 3]);
        let w = learned(&idle);
        assert_eq!(w.basis, Basis::OutOfRange);
        assert!(!w.warm_after(0));
    }
}
