//! Concurrency limits.
//!
//! Per function: at most `max_concurrency` (or `reserved_concurrency`)
//! instances of a function run at once; past that a request waits in a
//! bounded queue (`queue_depth` waiting, each for at most `queue_wait_ms`)
//! and is then refused with 429 and `Retry-After`. Events never wait here:
//! refused, they stay in their queue until capacity frees.
//!
//! Per node ([`NodeSlots`]): instances running at once, never waited for
//! (503 past it). Functions with a reservation run on their reserved
//! slots; the others share what is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use gust_core::Limits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::GatewayError;

/// The node's instance slots: those set aside by reservations, and the
/// shared rest.
pub(crate) struct NodeSlots {
    limit: u32,
    /// Σ `reserved_concurrency` of the functions served.
    reserved: AtomicU32,
    /// Running on the shared slots, and on reserved ones.
    shared: AtomicU32,
    on_reserved: AtomicU32,
}

/// A slot taken; given back when dropped.
pub(crate) struct NodeSlot {
    slots: Arc<NodeSlots>,
    reserved: bool,
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        let count = if self.reserved {
            &self.slots.on_reserved
        } else {
            &self.slots.shared
        };
        count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl NodeSlots {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            reserved: AtomicU32::new(0),
            shared: AtomicU32::new(0),
            on_reserved: AtomicU32::new(0),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The fewest slots reservations must leave shared.
    pub fn unreserved_floor(&self) -> u32 {
        (self.limit / 10).max(1)
    }

    pub fn set_reserved(&self, reserved: u32) {
        self.reserved.store(reserved, Ordering::Release);
    }

    /// Slots in use.
    pub fn in_use(&self) -> u32 {
        self.shared.load(Ordering::Acquire) + self.on_reserved.load(Ordering::Acquire)
    }

    /// A slot for a function with a reservation (its own gate bounds it),
    /// or a shared one if one is free.
    pub fn take(self: &Arc<Self>, reserved: bool) -> Option<NodeSlot> {
        if reserved {
            self.on_reserved.fetch_add(1, Ordering::AcqRel);
        } else {
            let shared = self
                .limit
                .saturating_sub(self.reserved.load(Ordering::Acquire))
                .max(self.unreserved_floor());
            if self.shared.fetch_add(1, Ordering::AcqRel) >= shared {
                self.shared.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        }
        Some(NodeSlot {
            slots: self.clone(),
            reserved,
        })
    }
}

/// The running instances of one function, and the requests waiting for one.
pub(crate) struct FunctionGate {
    limit: u32,
    /// The setting `limit` comes from, for messages.
    setting: &'static str,
    permits: Arc<Semaphore>,
    waiting: AtomicU32,
}

/// Takes one waiting place back when dropped (served, refused or cancelled).
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl FunctionGate {
    pub fn new(limit: u32, setting: &'static str) -> Self {
        Self {
            limit,
            setting,
            permits: Arc::new(Semaphore::new(limit as usize)),
            waiting: AtomicU32::new(0),
        }
    }

    /// Whether `other` enforces the same limit from the same setting.
    pub fn same_limit(&self, other: &FunctionGate) -> bool {
        (self.limit, self.setting) == (other.limit, other.setting)
    }

    /// A place to run, waiting for one if `wait` (else refused at once).
    pub async fn enter(
        &self,
        function: &str,
        limits: &Limits,
        wait: bool,
    ) -> Result<OwnedSemaphorePermit, GatewayError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let (limit, setting) = (self.limit, self.setting);
        let retry_after_s = limits.queue_wait_ms.div_ceil(1000).max(1);
        let depth = if wait { limits.queue_depth } else { 0 };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= depth {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(GatewayError::QuotaExceeded {
                message: format!(
                    "function `{function}` is at its concurrency limit `{setting}` ({limit}) and {depth} requests already wait (`queue_depth`); retry later"
                ),
                retry_after_s,
            });
        }
        let _waiting = Waiting(&self.waiting);
        let waited = Duration::from_millis(limits.queue_wait_ms);
        match tokio::time::timeout(waited, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(GatewayError::QuotaExceeded {
                message: format!(
                    "function `{function}` is at its concurrency limit `{setting}` ({limit}); no instance freed within {} ms (`queue_wait_ms`); retry later",
                    limits.queue_wait_ms
                ),
                retry_after_s,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(error: GatewayError) -> String {
        match error {
            GatewayError::QuotaExceeded { message, .. } => message,
            other => panic!("{other:?}"),
        }
    }

    fn limits(depth: u32, wait_ms: u64) -> Limits {
        Limits {
            max_concurrency: Some(2),
            queue_depth: depth,
            queue_wait_ms: wait_ms,
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn waits_in_a_bounded_queue_then_refuses() {
        let gate = Arc::new(FunctionGate::new(2, "max_concurrency"));
        let limits = limits(1, 100);
        let a = gate.enter("f", &limits, true).await.unwrap();
        let _b = gate.enter("f", &limits, true).await.unwrap();
        // An event never waits.
        assert!(gate.enter("f", &limits, false).await.is_err());
        // One may wait; a second waiter is refused at once.
        let waiter = {
            let gate = gate.clone();
            let limits = limits.clone();
            tokio::spawn(async move { gate.enter("f", &limits, true).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let full = message(gate.enter("f", &limits, true).await.unwrap_err());
        assert!(full.contains("already wait"), "{full}");
        // A place frees within the wait: the waiter runs.
        drop(a);
        let _c = waiter.await.unwrap().unwrap();
        // None frees: refused after the wait, with the reason.
        let late = message(gate.enter("f", &limits, true).await.unwrap_err());
        assert!(late.contains("within 100 ms"), "{late}");
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }

    #[test]
    fn reservations_leave_the_others_the_rest_of_the_node() {
        let node = Arc::new(NodeSlots::new(10));
        node.set_reserved(7);
        let shared: Vec<_> = (0..3).map(|_| node.take(false).unwrap()).collect();
        assert!(node.take(false).is_none(), "3 shared slots only");
        // A function with a reservation still runs (its gate bounds it).
        let reserved = node.take(true).unwrap();
        assert_eq!(node.in_use(), 4);
        drop(shared);
        drop(reserved);
        assert_eq!(node.in_use(), 0);
        // However much is reserved, a tenth of the node stays shared.
        node.set_reserved(10);
        let one = node.take(false).unwrap();
        assert!(node.take(false).is_none());
        drop(one);
    }
}
