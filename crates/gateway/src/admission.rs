//! Per-function concurrency: at most `max_concurrency` instances of a
//! function run at once; past that a request waits in a bounded queue
//! (`queue_depth` waiting, each for at most `queue_wait_ms`) and is then
//! refused with 429 and `Retry-After`. Events never wait here: refused,
//! they stay in their queue until capacity frees.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use gust_core::Limits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::GatewayError;

/// The running instances of one function, and the requests waiting for one.
pub(crate) struct FunctionGate {
    limit: u32,
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
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            permits: Arc::new(Semaphore::new(limit as usize)),
            waiting: AtomicU32::new(0),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
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
        let limit = self.limit;
        let retry_after_s = limits.queue_wait_ms.div_ceil(1000).max(1);
        let depth = if wait { limits.queue_depth } else { 0 };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= depth {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(GatewayError::QuotaExceeded {
                message: format!(
                    "function `{function}` is at its concurrency limit `max_concurrency` ({limit}) and {depth} requests already wait (`queue_depth`); retry later"
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
                    "function `{function}` is at its concurrency limit `max_concurrency` ({limit}); no instance freed within {} ms (`queue_wait_ms`); retry later",
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
        let gate = Arc::new(FunctionGate::new(2));
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
}
