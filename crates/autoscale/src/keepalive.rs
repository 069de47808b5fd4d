//! When an idle function should be in memory: a fixed keep-alive, or a
//! policy learned from the function's own idle times in the spirit of the
//! hybrid histogram policy of "Serverless in the Wild" (Shahrad et al.,
//! USENIX ATC 2020).
//!
//! The learned policy keeps a histogram of idle times (the time from the
//! end of one invocation to the start of the next) in bins of `bin_ms`
//! (a minute) over `bins` bins (four hours). After an invocation it may
//! unload the function, pre-warm it later and keep it for a while: a
//! window `[prewarm, prewarm + keep)` of idle time. Where the paper cuts
//! the window at fixed percentiles (the 5th and the 99th), Gust picks the
//! window that would have cost least over the idle times seen: each
//! minute in memory costs a minute, each idle time outside the window a
//! cold start, which weighs as much as `cold_start_weight_ms` in memory.
//! A periodic function is pre-warmed just before its period ends; a
//! function called often stays warm through its usual gaps; one whose
//! next call is anybody's guess, and rare, is unloaded at once. A window
//! opens half a bin early (loading takes a moment). While a function has
//! too little history, a fixed keep-alive applies.

use gust_core::scaling::KeepAlive;

/// The learned policy's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnedConfig {
    pub bin_ms: u64,
    pub bins: usize,
    /// Fewer idle times than this: the fallback applies.
    pub min_samples: u32,
    /// A cold start costs as much as keeping the function in memory this
    /// long: higher, fewer cold starts; lower, less memory.
    pub cold_start_weight_ms: u64,
    /// The fixed keep-alive used while the histogram cannot be trusted.
    pub fallback_ms: u64,
}

impl Default for LearnedConfig {
    fn default() -> Self {
        Self {
            bin_ms: 60_000,
            bins: 240,
            min_samples: 10,
            cold_start_weight_ms: 720_000,
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

    /// The window of bins `[from, to)` in memory that would have cost
    /// least over the idle times seen, a cold start weighing `weight`
    /// bins in memory (`from == to`: never in memory).
    ///
    /// An idle time in bin `i` is taken to end mid-bin. A window that
    /// catches it costs the time from the window's start to then; one
    /// that misses it costs a cold start, plus the whole window if the
    /// idle time ran past it. The best window starts at 0 or at a bin
    /// with idle times (starting later through empty bins only saves
    /// memory) and ends just after a bin with idle times (ending later
    /// through empty bins only costs memory): prefix sums make each
    /// candidate O(1). A window must catch two idle times at least: one
    /// alone is chance (any idle time seen once would justify a sliver
    /// of a window around itself).
    fn best_window(&self, weight: f64) -> (usize, usize) {
        let bins = self.counts.len();
        // Idle times in bins before `k`, and the sum of their midpoints.
        let mut count_before = Vec::with_capacity(bins + 1);
        let mut mid_before = Vec::with_capacity(bins + 1);
        let (mut n, mut m) = (0.0, 0.0);
        count_before.push(n);
        mid_before.push(m);
        for (i, &c) in self.counts.iter().enumerate() {
            n += f64::from(c);
            m += f64::from(c) * (i as f64 + 0.5);
            count_before.push(n);
            mid_before.push(m);
        }
        let beyond_range = f64::from(self.out_of_range);
        let used: Vec<usize> = (0..bins).filter(|&i| self.counts[i] > 0).collect();
        let mut best = (weight * (n + beyond_range), 0, 0);
        let starts = std::iter::once(0).chain(used.iter().copied().filter(|&i| i > 0));
        for from in starts {
            for to in used.iter().filter(|&&i| i >= from).map(|&i| i + 1) {
                let caught = count_before[to] - count_before[from];
                if caught < 2.0 {
                    continue;
                }
                let ran_past = n - count_before[to] + beyond_range;
                let memory = (mid_before[to] - mid_before[from]) - from as f64 * caught
                    + ran_past * (to - from) as f64;
                let cost = memory + weight * (count_before[from] + ran_past);
                if cost < best.0 {
                    best = (cost, from, to);
                }
            }
        }
        (best.1, best.2)
    }
}

/// Why the windows are what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    Fixed,
    /// Learned, but not enough idle times yet: the fallback keep-alive.
    TooLittleHistory,
    Learned,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Fixed => "fixed",
            Basis::TooLittleHistory => "too_little_history",
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
    match policy {
        KeepAlive::Fixed { idle_ms } => Windows {
            prewarm_ms: 0,
            keep_ms: idle_ms,
            basis: Basis::Fixed,
        },
        KeepAlive::Learned if history.total < config.min_samples => Windows {
            prewarm_ms: 0,
            keep_ms: config.fallback_ms,
            basis: Basis::TooLittleHistory,
        },
        KeepAlive::Learned => {
            let bin = config.bin_ms.max(1);
            let (from, to) = history.best_window(config.cold_start_weight_ms as f64 / bin as f64);
            if from == to {
                return Windows {
                    prewarm_ms: 0,
                    keep_ms: 0,
                    basis: Basis::Learned,
                };
            }
            // Half a bin early: loading takes a moment, and decisions
            // come once a tick.
            let prewarm_ms = (from as u64 * bin).saturating_sub(bin / 2);
            Windows {
                prewarm_ms,
                keep_ms: to as u64 * bin - prewarm_ms,
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
        // Called every 30 minutes, give or take a minute.
        let w = learned(&[29, 30, 30, 31, 30, 30, 29, 30, 31, 30, 30, 30]);
        assert_eq!(w.basis, Basis::Learned);
        assert_eq!(
            (w.prewarm_ms, w.keep_ms),
            (28 * MIN + MIN / 2, 3 * MIN + MIN / 2)
        );
        assert!(!w.warm_after(MIN), "unloaded right after an invocation");
        assert!(w.warm_after(30 * MIN), "warm when the next call comes");
        assert!(!w.warm_after(40 * MIN));
    }

    #[test]
    fn an_odd_late_call_is_not_worth_waiting_for() {
        // Every 30 minutes, but once after 3 hours: catching that one
        // would mean keeping the function for two and a half hours more.
        let mut idle = vec![30; 15];
        idle.push(180);
        let w = learned(&idle);
        assert_eq!(
            (w.prewarm_ms, w.keep_ms),
            (29 * MIN + MIN / 2, MIN + MIN / 2)
        );
    }

    #[test]
    fn a_frequent_function_stays_warm_through_its_gaps() {
        let mut idle = vec![0; 95];
        idle.extend([1, 1, 2, 2, 3]);
        let w = learned(&idle);
        assert_eq!(w.basis, Basis::Learned);
        assert_eq!((w.prewarm_ms, w.keep_ms), (0, 4 * MIN));
    }

    #[test]
    fn a_rare_unpredictable_function_is_unloaded_at_once() {
        // Idle for 25 minutes to 5 hours, spread evenly: any window costs
        // more memory than the cold starts it saves.
        let idle: Vec<u64> = (0..12).map(|i| 24 + 25 * i).collect();
        let w = learned(&idle);
        assert_eq!(w.basis, Basis::Learned);
        assert_eq!(w.keep_ms, 0, "{w:?}");
        assert!(!w.warm_after(0));
        // Always idle beyond the histogram's range: the same.
        let w = learned(&[300; 12]);
        assert_eq!(w.keep_ms, 0, "{w:?}");
    }

    #[test]
    fn the_weight_of_a_cold_start_trades_memory_for_cold_starts() {
        // Idle for 5 minutes half of the time, for 60 the other half.
        let idle: Vec<u64> = [5, 60].repeat(10);
        let mut h = IdleHistogram::default();
        let mut config = LearnedConfig::default();
        for m in idle {
            h.record(&config, m * MIN + MIN / 2);
        }
        // Light: only the 60-minute calls are worth pre-warming for (the
        // function is out of memory in between).
        config.cold_start_weight_ms = 2 * MIN;
        let w = windows(KeepAlive::Learned, &config, &h);
        assert_eq!(
            (w.prewarm_ms, w.keep_ms),
            (59 * MIN + MIN / 2, MIN + MIN / 2)
        );
        // Heavy: the 60-minute ones too (the window runs to them).
        config.cold_start_weight_ms = 200 * MIN;
        let w = windows(KeepAlive::Learned, &config, &h);
        assert_eq!(
            (w.prewarm_ms, w.keep_ms),
            (4 * MIN + MIN / 2, 56 * MIN + MIN / 2)
        );
    }
}
