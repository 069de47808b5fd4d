//! What the scaler observes of a function, counted on the request path
//! without a lock: requests in flight, the integral of
//! concurrency over time (so a tick learns the average concurrency, not a
//! sample of it), and the idle periods that ended.
//!
//! The caller supplies the time (microseconds on a monotonic clock of its
//! choosing, starting above zero), so this stays free of clocks and IO.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// In-flight count in the low bits of `state`, the time it last changed above.
const COUNT_BITS: u32 = 16;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Idle periods shorter than this are not idle times worth learning from.
const MIN_IDLE_US: u64 = 10_000;
/// Idle times kept between two ticks, at most (more are dropped).
const MAX_PENDING_IDLE: usize = 1024;

#[derive(Debug)]
pub struct Activity {
    /// `(since_us << 16) | in_flight`.
    state: AtomicU64,
    /// ∫ in_flight dt in µs, up to `since_us` (wrapping).
    area_us: AtomicU64,
    ran: AtomicBool,
    idle_ms: Mutex<Vec<u64>>,
}

/// A reading of an [`Activity`] at one time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    pub at_us: u64,
    pub in_flight: u32,
    area_us: u64,
    /// When in flight last dropped to zero (or the activity began).
    idle_since_us: u64,
}

impl Reading {
    /// Average concurrency between `earlier` and `self`.
    pub fn concurrency_since(&self, earlier: &Reading) -> f64 {
        let span = self.at_us.saturating_sub(earlier.at_us);
        if span == 0 {
            return f64::from(self.in_flight);
        }
        self.area_us.wrapping_sub(earlier.area_us) as f64 / span as f64
    }

    /// How long the function has been idle, in ms; `None` while in flight.
    pub fn idle_ms(&self) -> Option<u64> {
        (self.in_flight == 0).then(|| self.at_us.saturating_sub(self.idle_since_us) / 1000)
    }
}

impl Activity {
    pub fn new(now_us: u64) -> Self {
        Self {
            state: AtomicU64::new(now_us << COUNT_BITS),
            area_us: AtomicU64::new(0),
            ran: AtomicBool::new(false),
            idle_ms: Mutex::new(Vec::new()),
        }
    }

    /// Moves the in-flight count by `delta` at `now_us`; returns the count
    /// and the time of the last change before this one.
    fn change(&self, now_us: u64, delta: i64) -> (u64, u64) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let (since, count) = (current >> COUNT_BITS, current & COUNT_MASK);
            let at = now_us.max(since);
            let next_count = count.saturating_add_signed(delta).min(COUNT_MASK);
            let next = (at << COUNT_BITS) | next_count;
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.area_us
                        .fetch_add(count.wrapping_mul(at - since), Ordering::AcqRel);
                    return (count, since);
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// A request started.
    pub fn start(&self, now_us: u64) {
        let (before, since) = self.change(now_us, 1);
        if before == 0 && self.ran.swap(true, Ordering::AcqRel) {
            let idle = now_us.saturating_sub(since);
            if idle >= MIN_IDLE_US
                && let Ok(mut pending) = self.idle_ms.lock()
                && pending.len() < MAX_PENDING_IDLE
            {
                pending.push(idle / 1000);
            }
        }
    }

    /// A request ended.
    pub fn end(&self, now_us: u64) {
        self.change(now_us, -1);
    }

    pub fn read(&self, now_us: u64) -> Reading {
        let state = self.state.load(Ordering::Acquire);
        let area = self.area_us.load(Ordering::Acquire);
        let (since, count) = (state >> COUNT_BITS, state & COUNT_MASK);
        let at = now_us.max(since);
        Reading {
            at_us: at,
            in_flight: count as u32,
            area_us: area.wrapping_add(count.wrapping_mul(at - since)),
            idle_since_us: since,
        }
    }

    /// The idle times (ms) that ended since the last call.
    pub fn take_idle_times(&self) -> Vec<u64> {
        self.idle_ms
            .lock()
            .map(|mut pending| std::mem::take(&mut *pending))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_averaged_over_time() {
        let a = Activity::new(1);
        let r0 = a.read(1_000_000);
        a.start(1_000_000);
        a.start(1_250_000);
        a.end(1_500_000);
        // 0.25 s at 1, 0.25 s at 2, 0.5 s at 1 → 1.25 on average.
        let r1 = a.read(2_000_000);
        assert!((r1.concurrency_since(&r0) - 1.25).abs() < 1e-9);
        assert_eq!(r1.in_flight, 1);
        assert_eq!(r1.idle_ms(), None);
        a.end(2_000_000);
        let r2 = a.read(3_000_000);
        assert_eq!(r2.concurrency_since(&r1), 0.0);
        assert_eq!(r2.idle_ms(), Some(1000));
    }

    #[test]
    fn idle_periods_are_recorded_once_the_function_has_run() {
        let a = Activity::new(1);
        a.start(5_000_000);
        a.end(5_100_000);
        a.start(7_100_000);
        a.start(7_100_500);
        a.end(7_200_000);
        a.end(7_200_000);
        // A 5 ms gap is not an idle time.
        a.start(7_205_000);
        a.end(7_300_000);
        assert_eq!(a.take_idle_times(), vec![2000]);
        assert!(a.take_idle_times().is_empty());
    }
}
