//! When an invocation must stop, as it runs.
//!
//! Until its response head is out, an invocation has its wall-clock
//! timeout (`timeout_ms`). An HTTP request's response may then stream for
//! as long as the guest keeps producing: the deadline becomes the earlier
//! of the stream's total limit (`stream_max_ms` after the head) and its
//! idle limit (`stream_idle_ms` after the last part the server took).
//! "Taken" is what counts, so a client that stops reading stalls the
//! guest's writes and is cut by the same idle limit (a slow reader holds an
//! instance no longer than a silent guest). An event's run keeps its
//! timeout to its end: its lease is sized by it.
//!
//! The deadline is read by the epoch callback on every tick and by the
//! timer that stops a guest waiting on the host, and moved by the response
//! body as parts go out: plain atomics, nanoseconds since the start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Not yet: the response head has not gone out.
const NOT_YET: u64 = u64::MAX;

/// Which limit stopped an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    #[error("function timed out after {0} ms")]
    Timeout(u64),
    #[error("the response stream was idle for longer than {0} ms")]
    Idle(u64),
    #[error("the response stream ran past its limit of {0} ms")]
    Total(u64),
}

/// One invocation's moving deadline (see the module docs).
#[derive(Debug)]
pub(crate) struct Deadline {
    started: Instant,
    timeout: u64,
    /// `None`: the run keeps its timeout to the end (an event).
    stream: Option<(u64, u64)>,
    /// Since `started`, when the head went out, or [`NOT_YET`].
    head: AtomicU64,
    /// Since `started`, when the server last took a part of the body.
    progress: AtomicU64,
    /// The task that runs the guest, woken when the deadline moves
    /// earlier (the head went out) so that its timer is set again.
    runner: futures_util::task::AtomicWaker,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Deadline {
    /// `stream`: the idle and total limits of a streamed response, or
    /// `None` for a run that keeps `timeout` to its end.
    pub(crate) fn new(
        started: Instant,
        timeout: Duration,
        stream: Option<(Duration, Duration)>,
    ) -> Self {
        Self {
            started,
            timeout: ns(timeout),
            stream: stream.map(|(idle, max)| (ns(idle), ns(max))),
            head: AtomicU64::new(NOT_YET),
            progress: AtomicU64::new(0),
            runner: futures_util::task::AtomicWaker::new(),
        }
    }

    fn since_start(&self, now: Instant) -> u64 {
        ns(now.saturating_duration_since(self.started))
    }

    /// The response head went out (now): the stream limits take over.
    pub(crate) fn head_sent(&self) {
        if self.stream.is_some() {
            self.head_sent_at(Instant::now());
        }
    }

    fn head_sent_at(&self, now: Instant) {
        if self.stream.is_some() {
            let at = self.since_start(now);
            self.progress.store(at, Ordering::Relaxed);
            self.head.store(at, Ordering::Relaxed);
            self.runner.wake();
        }
    }

    /// The server took a part of the body (now). A run that keeps its
    /// timeout reads no clock for it.
    pub(crate) fn progressed(&self) {
        if self.stream.is_some() {
            self.progressed_at(Instant::now());
        }
    }

    fn progressed_at(&self, now: Instant) {
        if self.stream.is_some() {
            self.progress
                .fetch_max(self.since_start(now), Ordering::Relaxed);
        }
    }

    /// When the run must stop (since the start), and which limit that is.
    fn limit(&self) -> (u64, Cut) {
        let head = self.head.load(Ordering::Relaxed);
        match self.stream {
            Some((idle, max)) if head != NOT_YET => {
                let total = head.saturating_add(max);
                let quiet = self
                    .progress
                    .load(Ordering::Relaxed)
                    .max(head)
                    .saturating_add(idle);
                if quiet < total {
                    (quiet, Cut::Idle(idle / 1_000_000))
                } else {
                    (total, Cut::Total(max / 1_000_000))
                }
            }
            _ => (self.timeout, Cut::Timeout(self.timeout / 1_000_000)),
        }
    }

    /// When the run must stop, as it stands.
    pub(crate) fn at(&self) -> Instant {
        self.started + Duration::from_nanos(self.limit().0)
    }

    /// The limit that stops the run at `now`, if one does.
    pub(crate) fn passed(&self, now: Instant) -> Option<Cut> {
        let (at, cut) = self.limit();
        (self.since_start(now) >= at).then_some(cut)
    }

    /// The limit that would stop the run now (what a timer that fired reports).
    pub(crate) fn current(&self) -> Cut {
        self.limit().1
    }
}

/// Polls `run` until it ends, or `Err` with the limit once the deadline
/// (plus `margin`) passes; the deadline is looked at again whenever its
/// timer fires (a stream that made progress runs on) or it moved earlier.
pub(crate) async fn within<F: Future>(
    run: F,
    deadline: &Deadline,
    margin: Duration,
) -> Result<F::Output, Cut> {
    let mut run = std::pin::pin!(run);
    let timer = tokio::time::sleep_until((deadline.at() + margin).into());
    let mut timer = std::pin::pin!(timer);
    // The limit the timer is set for: a streamed run's moves earlier once.
    let mut set_for = deadline.at();
    std::future::poll_fn(move |cx| {
        if let std::task::Poll::Ready(out) = run.as_mut().poll(cx) {
            return std::task::Poll::Ready(Ok(out));
        }
        if deadline.stream.is_some() {
            deadline.runner.register(cx.waker());
            let at = deadline.at();
            if at < set_for {
                set_for = at;
                timer.as_mut().reset((at + margin).into());
            }
        }
        while timer.as_mut().poll(cx).is_ready() {
            set_for = deadline.at();
            let at = set_for + margin;
            if Instant::now() >= at {
                return std::task::Poll::Ready(Err(deadline.current()));
            }
            timer.as_mut().reset(at.into());
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_event_keeps_its_timeout_whatever_it_sends() {
        let t0 = Instant::now();
        let d = Deadline::new(t0, 100 * MS, None);
        d.head_sent_at(t0 + 10 * MS);
        d.progressed_at(t0 + 90 * MS);
        assert_eq!(d.passed(t0 + 99 * MS), None);
        assert_eq!(d.passed(t0 + 100 * MS), Some(Cut::Timeout(100)));
    }

    #[test]
    fn a_stream_runs_past_the_timeout_while_it_makes_progress() {
        let t0 = Instant::now();
        let d = Deadline::new(t0, 100 * MS, Some((50 * MS, 1000 * MS)));
        assert_eq!(d.passed(t0 + 100 * MS), Some(Cut::Timeout(100)));
        d.head_sent_at(t0 + 20 * MS);
        // The idle limit counts from the head, then from each part.
        assert_eq!(d.passed(t0 + 69 * MS), None);
        assert_eq!(d.passed(t0 + 70 * MS), Some(Cut::Idle(50)));
        for at in (60..=1000).step_by(40) {
            d.progressed_at(t0 + at * MS);
            assert_eq!(d.passed(t0 + (at + 10) * MS), None, "at {at} ms");
        }
        // A part from the past moves nothing back.
        d.progressed_at(t0 + 30 * MS);
        assert_eq!(d.passed(t0 + 1019 * MS), None);
        // The total limit holds however busy the stream is.
        d.progressed_at(t0 + 1019 * MS);
        assert_eq!(d.passed(t0 + 1020 * MS), Some(Cut::Total(1000)));
        assert_eq!(d.at(), t0 + 1020 * MS);
    }

    #[tokio::test]
    async fn the_timer_follows_a_deadline_that_moves() {
        let t0 = Instant::now();
        let d = Deadline::new(t0, 10 * MS, Some((100 * MS, 10_000 * MS)));
        d.head_sent_at(t0);
        let feed = async {
            for _ in 0..5 {
                tokio::time::sleep(20 * MS).await;
                d.progressed();
            }
            std::future::pending::<()>().await
        };
        let ran = within(feed, &d, MS).await;
        assert_eq!(ran, Err(Cut::Idle(100)));
        // Past the first idle limit: the timer was moved by the parts.
        assert!(Instant::now() - t0 >= 200 * MS);
        let done = within(std::future::ready(3), &d, MS).await;
        assert_eq!(done, Ok(3));

        // A timer set for a long timeout follows the head's earlier limit.
        let t0 = Instant::now();
        let d = Deadline::new(t0, 60_000 * MS, Some((100 * MS, 10_000 * MS)));
        let head = async {
            tokio::time::sleep(20 * MS).await;
            d.head_sent();
            std::future::pending::<()>().await
        };
        assert_eq!(within(head, &d, MS).await, Err(Cut::Idle(100)));
        assert!(Instant::now() - t0 < 5_000 * MS);
    }
}
