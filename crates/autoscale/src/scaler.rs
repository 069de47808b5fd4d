//! How many instances a function's demand needs, the way Knative's pod
//! autoscaler decides it: the average concurrency over a stable window
//! (60 s) and a panic window (6 s), each divided by the concurrency one
//! instance should carry (its target times the target utilisation). When
//! the panic window's figure reaches twice the instances ready, the scaler
//! panics: it follows the short window and never scales down until a whole
//! stable window has passed below the threshold. Scaling up is bounded by a
//! rate (at most `max_scale_up_rate` times the ready instances per
//! decision), scaling down by another.

use std::collections::VecDeque;

/// The scaler's settings (Knative's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalerConfig {
    /// Concurrent requests one instance is meant to carry. A Gust instance
    /// serves one request, so 1.
    pub target: f64,
    /// Share of `target` aimed at, leaving headroom for bursts.
    pub target_utilization: f64,
    pub stable_window_ms: u64,
    pub panic_window_ms: u64,
    /// Panic when the panic window wants this many times the ready instances.
    pub panic_threshold: f64,
    /// Per decision, at most this many times the ready instances.
    pub max_scale_up_rate: f64,
    /// Per decision, at least the ready instances divided by this.
    pub max_scale_down_rate: f64,
    /// The width of one observation (the driver's tick).
    pub tick_ms: u64,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        Self {
            target: 1.0,
            target_utilization: 0.7,
            stable_window_ms: 60_000,
            panic_window_ms: 6_000,
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            tick_ms: 1000,
        }
    }
}

/// What the scaler decided at one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// Instances the demand needs (before keep-alive and provisioning).
    pub instances: u32,
    /// Average concurrency over the stable and the panic window.
    pub stable: f64,
    pub panic: f64,
    /// True while in panic mode.
    pub panicking: bool,
}

/// One function's scaler: the recent observations and the panic state.
///
/// Only ticks with demand are kept (a tick without is zero in every
/// average), each with its own start: a function that sits idle, as most
/// of ten thousand do, holds no observations at all.
#[derive(Debug, Clone, Default)]
pub struct Scaler {
    /// (tick start ms, tick end ms, average concurrency during it), oldest
    /// first; never a zero.
    observed: VecDeque<(u64, u64, f64)>,
    first_ms: Option<u64>,
    /// The end of the last tick observed.
    last_ms: Option<u64>,
    panic_since_ms: Option<u64>,
    panic_peak: u32,
}

impl Scaler {
    /// Records the average concurrency of the tick ending at `now_ms` and
    /// decides the instances needed, `ready` being those warm now.
    pub fn decide(
        &mut self,
        config: &ScalerConfig,
        now_ms: u64,
        concurrency: f64,
        ready: u32,
    ) -> Demand {
        let concurrency = if concurrency.is_finite() {
            concurrency.max(0.0)
        } else {
            0.0
        };
        let first = *self
            .first_ms
            .get_or_insert(now_ms.saturating_sub(config.tick_ms));
        let start = self.last_ms.unwrap_or(first).min(now_ms);
        self.last_ms = Some(now_ms);
        if concurrency > 0.0 {
            self.observed.push_back((start, now_ms, concurrency));
        }
        let horizon = now_ms.saturating_sub(config.stable_window_ms);
        while self.observed.front().is_some_and(|(_, t, _)| *t <= horizon) {
            self.observed.pop_front();
        }
        if self.observed.is_empty() && self.observed.capacity() > 0 {
            // Demand is over: its memory goes back too.
            self.observed = VecDeque::new();
        }
        let stable = self.average(now_ms, config.stable_window_ms, first);
        let panic = self.average(now_ms, config.panic_window_ms, first);

        let per_instance = (config.target * config.target_utilization).max(f64::MIN_POSITIVE);
        let ready_f = f64::from(ready.max(1));
        let max_up = (config.max_scale_up_rate * ready_f).ceil();
        let max_down = (f64::from(ready) / config.max_scale_down_rate).floor();
        let bound = |wanted: f64| wanted.min(max_up).max(max_down.min(max_up));
        // Rounded up, but not for a rounding error's sake (7 / 0.7 is 10).
        let instances_for = |c: f64| (c / per_instance - 1e-9).ceil().max(0.0);
        let want_stable = bound(instances_for(stable));
        let want_panic = bound(instances_for(panic));

        let over_threshold = want_panic / ready_f >= config.panic_threshold;
        if over_threshold {
            if self.panic_since_ms.is_none() {
                self.panic_peak = 0;
            }
            self.panic_since_ms = Some(now_ms);
        } else if self
            .panic_since_ms
            .is_some_and(|since| now_ms >= since + config.stable_window_ms)
        {
            self.panic_since_ms = None;
        }
        let panicking = self.panic_since_ms.is_some();
        let instances = if panicking {
            // Never scale down while panicking.
            self.panic_peak = self.panic_peak.max(to_u32(want_panic));
            self.panic_peak
        } else {
            to_u32(want_stable)
        };
        Demand {
            instances,
            stable,
            panic,
            panicking,
        }
    }

    /// Average concurrency over the last `window_ms` (ticks without an
    /// observation count as zero), over less when observing began later.
    fn average(&self, now_ms: u64, window_ms: u64, first_ms: u64) -> f64 {
        let span = window_ms.min(now_ms.saturating_sub(first_ms)).max(1);
        let from = now_ms.saturating_sub(span);
        let weighted: f64 = self
            .observed
            .iter()
            .filter(|(_, end, _)| *end > from)
            .map(|&(start, end, value)| value * end.saturating_sub(start.max(from)) as f64)
            .sum();
        weighted / span as f64
    }
}

fn to_u32(x: f64) -> u32 {
    if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        x.max(0.0) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `ticks` one-second observations of `concurrency`.
    fn feed(
        s: &mut Scaler,
        c: &ScalerConfig,
        from_s: u64,
        ticks: u64,
        concurrency: f64,
        ready: u32,
    ) -> Demand {
        let mut last = None;
        for t in from_s..from_s + ticks {
            last = Some(s.decide(c, (t + 1) * 1000, concurrency, ready));
        }
        last.unwrap()
    }

    #[test]
    fn steady_demand_sizes_by_target_utilisation() {
        let c = ScalerConfig::default();
        let mut s = Scaler::default();
        // 7 concurrent requests at 70% of one each: 10 instances.
        let d = feed(&mut s, &c, 0, 120, 7.0, 10);
        assert_eq!(d.instances, 10);
        assert!(!d.panicking);
        assert!((d.stable - 7.0).abs() < 1e-9);
    }

    #[test]
    fn no_demand_wants_no_instances() {
        let c = ScalerConfig::default();
        let mut s = Scaler::default();
        feed(&mut s, &c, 0, 30, 3.0, 5);
        // A full stable window of nothing: down at most by half each time.
        let d = feed(&mut s, &c, 30, 60, 0.0, 5);
        assert_eq!((d.instances, d.stable), (2, 0.0));
        assert_eq!(s.decide(&c, 91_000, 0.0, 2).instances, 1);
        assert_eq!(s.decide(&c, 92_000, 0.0, 1).instances, 0);
    }

    #[test]
    fn the_stable_window_smooths_a_drop() {
        let c = ScalerConfig::default();
        let mut s = Scaler::default();
        feed(&mut s, &c, 0, 60, 7.0, 10);
        // 10 s after demand halves, the 60 s average is still high …
        let d = feed(&mut s, &c, 60, 10, 3.5, 10);
        assert!(d.instances >= 9, "{d:?}");
        // … a window later it follows (bounded by the scale-down rate: ≥ 10/2).
        let d = feed(&mut s, &c, 70, 60, 3.5, 10);
        assert_eq!(d.instances, 5);
    }

    #[test]
    fn a_burst_panics_and_panic_never_scales_down() {
        let c = ScalerConfig::default();
        let mut s = Scaler::default();
        feed(&mut s, &c, 0, 60, 0.7, 1);
        // Demand jumps to 14: the 6 s window wants 20 instances, ≥ 2 × 1 ready.
        let d = feed(&mut s, &c, 60, 3, 14.0, 1);
        assert!(d.panicking, "{d:?}");
        assert!(d.instances >= 10, "{d:?}");
        let peak = feed(&mut s, &c, 63, 3, 14.0, 20).instances;
        assert_eq!(peak, 20);
        // Demand falls back, but panic holds the peak for a stable window.
        let d = feed(&mut s, &c, 66, 30, 0.7, 20);
        assert!(d.panicking);
        assert_eq!(d.instances, peak);
        let d = feed(&mut s, &c, 96, 70, 0.7, 20);
        assert!(!d.panicking, "{d:?}");
        assert!(d.instances < peak);
    }

    #[test]
    fn a_new_function_is_judged_on_the_time_it_has_existed() {
        let c = ScalerConfig::default();
        let mut s = Scaler::default();
        // Two seconds of 7 concurrent requests: not diluted by a 60 s window.
        let d = feed(&mut s, &c, 0, 2, 7.0, 1);
        assert_eq!(d.instances, 10);
    }

    #[test]
    fn scale_up_is_rate_limited() {
        let c = ScalerConfig {
            max_scale_up_rate: 2.0,
            ..ScalerConfig::default()
        };
        let mut s = Scaler::default();
        let d = s.decide(&c, 1000, 70.0, 3);
        assert_eq!(d.instances, 6);
    }

    #[test]
    fn bad_observations_count_as_none() {
        let c = ScalerConfig::default();
        let mut s = Scaler::default();
        assert_eq!(s.decide(&c, 1000, f64::NAN, 0).instances, 0);
        assert_eq!(s.decide(&c, 2000, -4.0, 0).instances, 0);
    }

    #[test]
    fn idle_ticks_hold_nothing_and_still_count_as_zero() {
        let c = ScalerConfig::default();
        let mut s = Scaler::default();
        feed(&mut s, &c, 0, 60, 0.0, 0);
        assert_eq!(
            s.observed.capacity(),
            0,
            "an idle function keeps no observations"
        );
        // One busy tick among idle ones: the averages weigh it by its width.
        let d = s.decide(&c, 61_000, 6.0, 0);
        assert!((d.stable - 0.1).abs() < 1e-9, "{}", d.stable);
        assert!((d.panic - 1.0).abs() < 1e-9, "{}", d.panic);
        let d = feed(&mut s, &c, 61, 5, 0.0, 1);
        assert!((d.panic - 1.0).abs() < 1e-9, "{}", d.panic);
        let d = feed(&mut s, &c, 66, 1, 0.0, 1);
        assert_eq!(d.panic, 0.0, "the busy tick has left the panic window");
        // A tick observed late spans the whole gap since the last one.
        let d = s.decide(&c, 70_000, 3.0, 1);
        assert!((d.panic - 1.5).abs() < 1e-9, "3 over 3 s of 6: {}", d.panic);
        feed(&mut s, &c, 70, 61, 0.0, 1);
        assert_eq!(s.observed.capacity(), 0, "demand gone, memory gone");
    }
}
