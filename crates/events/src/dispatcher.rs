//! The driver of the delivery policy: one worker per function queue claims
//! due events, runs attempts through the [`Invoker`] (up to the function's
//! concurrency), and applies the policy's decision to each result. A
//! worker lives while its queue holds events, and [`IDLE_END`] after.
//!
//! An ordering group's events run back to back: the acknowledgement of one
//! claims the next in the same write, and it runs under the same permit,
//! up to [`MAX_CHAIN`] in a row. On one node a success's status and its
//! acknowledgement are written side by side; if the ack is durable and the
//! status write keeps failing past its retries, the event is done and its
//! status stays what it was (the record, not the event, is lost). In a
//! cluster the status is durable before the ack is sent, and a first
//! attempt's success of an event accepted without a record is kept with
//! others' (`done.rs`).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gust_core::delivery::{AttemptResult, Decision, DeliveryPolicy};
use gust_core::{Envelope, FunctionName, InvocationRecord, InvocationState, TenantId};
use gust_store::Claimed;
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::{DeadLetter, Events, dead_letter_key, encode, invocation_key, now_ms};

/// Longest a worker sleeps without being woken (a safety net: it is woken
/// on every new event, and knows when its next retry or lease end is due).
const IDLE: Duration = Duration::from_secs(5);
/// A worker whose queue stayed empty this long ends: in a cluster an idle
/// worker reads its queue twice every [`IDLE`] on every node, and holds a
/// task and its state. The next enqueue (here or, by its wake, on another
/// node) or the periodic scan starts one again.
const IDLE_END: Duration = Duration::from_secs(60);
/// A claim lasts the function's timeout plus this, then the event is claimable again.
const LEASE_MARGIN_MS: u64 = 10_000;
/// For how long recording an attempt's outcome is tried again when the
/// store fails: within the lease's margin, so an attempt that ended within
/// its timeout is acknowledged before another node may claim it again.
const RECORD_RETRIES_FOR: Duration = Duration::from_millis(LEASE_MARGIN_MS * 7 / 10);
/// In a cluster, how long a node where the function is cold waits before
/// it claims: a node where it is warm (woken by the same enqueue) claims
/// first, unless it is busy or there is none.
pub const COLD_GRACE: Duration = Duration::from_millis(200);
/// In a cluster, how soon a worker woken for nothing claims again.
const RECHECK: Duration = Duration::from_millis(50);

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// The function's status, or the one the platform answered for it
    /// (404 gone, 500 trap, 503 no capacity, 504 timeout).
    pub status: u16,
    pub error: Option<String>,
    /// The function's response body (for an `on_success` destination).
    pub body: Bytes,
    /// The platform had no capacity to run the function (node or tenant
    /// at its limit): not an attempt; the event waits for capacity.
    pub not_run: bool,
}

/// Events of one ordering group run back to back under one permit, at most.
const MAX_CHAIN: u32 = 32;

/// How long an event that found no capacity waits before it is tried again.
const NO_CAPACITY_WAIT_MS: u64 = 100;

/// Runs one attempt of an event; implemented by the data plane.
#[async_trait]
pub trait Invoker: Send + Sync + 'static {
    /// Runs attempt `attempt` of `envelope`, which became due at `due_ms`
    /// (ms since the epoch; 0 for an event due once accepted).
    async fn deliver(&self, envelope: &Envelope, attempt: u32, due_ms: u64) -> AttemptOutcome;
    /// The function's delivery policy and timeout (ms); `None` if it is gone.
    fn policy(&self, tenant: &TenantId, function: &FunctionName) -> Option<(DeliveryPolicy, u64)>;
    /// Whether the function would start warm here (its component in memory).
    fn is_warm(&self, _tenant: &TenantId, _function: &FunctionName) -> bool {
        true
    }
}

/// Wakes workers when events arrive and tracks running attempts.
#[derive(Default)]
pub(crate) struct Wake {
    workers: Mutex<HashMap<String, Arc<Notify>>>,
    spawn: Mutex<Option<mpsc::UnboundedSender<String>>>,
    running: Mutex<HashSet<String>>,
    /// The node is stopping: workers claim nothing more and end.
    stopping: AtomicBool,
    /// Claims being made and attempts running (to their recorded outcome),
    /// and a wake for whoever waits for none.
    busy: AtomicUsize,
    idle: Notify,
    /// How long an empty queue's worker lives on, in ms (0: [`IDLE_END`]).
    idle_end_ms: AtomicU64,
}

/// One claim or attempt under way, counted in [`Wake::busy`] until dropped.
struct Busy(Arc<Wake>);

impl Busy {
    fn new(wake: &Arc<Wake>) -> Self {
        wake.busy.fetch_add(1, Ordering::SeqCst);
        Busy(wake.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Wake {
    /// Workers claim nothing more: each ends at its next turn (woken now).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for notify in workers.values() {
            notify.notify_one();
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Waits until no claim is being made and no attempt runs, or until
    /// `within` passes; how many are still under way.
    pub async fn drained(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let busy = self.busy.load(Ordering::SeqCst);
            if busy == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.busy.load(Ordering::SeqCst);
            }
        }
    }

    pub fn notify(&self, queue: &str) {
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        match workers.get(queue) {
            Some(notify) => notify.notify_one(),
            None => {
                if let Some(spawn) = &*self.spawn.lock().unwrap_or_else(|p| p.into_inner()) {
                    let _ = spawn.send(queue.to_string());
                }
            }
        }
    }

    fn idle_end(&self) -> Duration {
        match self.idle_end_ms.load(Ordering::Relaxed) {
            0 => IDLE_END,
            ms => Duration::from_millis(ms),
        }
    }

    #[cfg(test)]
    pub(crate) fn set_idle_end(&self, end: Duration) {
        self.idle_end_ms
            .store(end.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Whether `queue` has a worker now.
    #[cfg(test)]
    pub(crate) fn has_worker(&self, queue: &str) -> bool {
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        workers.contains_key(queue)
    }

    /// Takes the worker that waits on `notify` off `queue`: a later
    /// [`Wake::notify`] starts a new one.
    fn retire(&self, queue: &str, notify: &Arc<Notify>) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if workers.get(queue).is_some_and(|n| Arc::ptr_eq(n, notify)) {
            workers.remove(queue);
        }
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn set_running(&self, id: &str, running: bool) {
        let mut set = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running {
            set.insert(id.to_string());
        } else {
            set.remove(id);
        }
    }
}

/// Delivers queued events until the process ends.
pub struct Dispatcher;

impl Dispatcher {
    /// Starts a worker for every queue that holds events now, and for every
    /// queue that gets one later (again after its worker ended idle).
    pub fn start(events: &Events, invoker: Arc<dyn Invoker>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        *events.wake.spawn.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        let events = events.clone();
        tokio::spawn(async move {
            match events.queue.queues().await {
                Ok(queues) => {
                    for queue in queues {
                        // This node's claims were made before it
                        // restarted: deliver those events again now
                        // rather than when their leases run out.
                        // What is queued counts towards its tenant's backlog.
                        if let (Some((tenant, _)), Ok(depth)) =
                            (parse_queue(&queue), events.queue.depth(&queue).await)
                        {
                            events.counters.add_backlog(&tenant, depth);
                        }
                        match events.queue.release_claims(&queue, now_ms()).await {
                            Ok(0) => {}
                            Ok(n) => {
                                tracing::info!(%queue, n, "redelivering events claimed before a restart")
                            }
                            Err(e) => {
                                tracing::error!(%queue, error = %e, "cannot release old claims")
                            }
                        }
                        let _ = tx.send(queue);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot list event queues"),
            }
            // Enqueues on the other nodes of a cluster wake the workers
            // here too, as their store reports them.
            match events.queue.enqueued_elsewhere().await {
                Ok(Some(mut enqueued)) => {
                    let wake = events.wake.clone();
                    tokio::spawn(async move {
                        while let Some(queue) = enqueued.recv().await {
                            wake.notify(&queue);
                        }
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "other nodes' events wake no worker here; they are found by polling")
                }
            }
            // Those wakes are best effort, and a queue a dead node filled
            // wakes nobody: look for new ones every IDLE, so that every
            // queued event is delivered.
            tokio::spawn({
                let events = events.clone();
                async move {
                    loop {
                        tokio::time::sleep(IDLE).await;
                        // In a cluster, one listing for both: the queues
                        // holding events and each tenant's backlog.
                        let queues = if events.shared {
                            let Ok(depths) = events.queue.depths().await else {
                                continue;
                            };
                            events.recount_backlogs(&depths);
                            depths.into_iter().map(|(queue, _)| queue).collect()
                        } else {
                            let Ok(queues) = events.queue.queues().await else {
                                continue;
                            };
                            queues
                        };
                        for queue in queues {
                            if tx.send(queue).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            while let Some(queue) = rx.recv().await {
                let notify = {
                    let mut workers = events
                        .wake
                        .workers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if workers.contains_key(&queue) {
                        continue;
                    }
                    let notify = Arc::new(Notify::new());
                    workers.insert(queue.clone(), notify.clone());
                    notify
                };
                tokio::spawn(work(events.clone(), invoker.clone(), queue, notify));
            }
        });
    }
}

pub(crate) fn parse_queue(queue: &str) -> Option<(TenantId, FunctionName)> {
    let rest = queue.strip_prefix("events/")?;
    let (tenant, function) = rest.split_once('/')?;
    Some((
        TenantId::new(tenant).ok()?,
        FunctionName::new(function).ok()?,
    ))
}

/// One function's worker.
async fn work(events: Events, invoker: Arc<dyn Invoker>, queue: String, notify: Arc<Notify>) {
    let Some((tenant, function)) = parse_queue(&queue) else {
        tracing::error!(%queue, "not an event queue name");
        return;
    };
    let concurrency = invoker
        .policy(&tenant, &function)
        .map_or(DeliveryPolicy::default().concurrency, |(p, _)| {
            p.concurrency
        });
    let slots = Arc::new(Semaphore::new(concurrency as usize));
    // The last wait ended with a wake (not its timeout).
    let mut woken = true;
    // Since when the queue was seen empty, look after look.
    let mut empty_since: Option<tokio::time::Instant> = None;
    let idle_end = events.wake.idle_end();
    loop {
        let Ok(first) = slots.clone().acquire_owned().await else {
            return;
        };
        // Counted before the check: a drain that saw none busy after the
        // stop cannot miss a claim made here.
        let claiming = Busy::new(&events.wake);
        if events.wake.stopping() {
            return;
        }
        // A lease is judged by the claimant's clock: a node whose clock is
        // off from the others' would claim what they still run (and one
        // starting does not know yet).
        if events.shared && (!events.members.settled() || events.members.clock_outlier()) {
            drop((first, claiming));
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Every node's worker wakes for a new event; where the function is
        // cold, it leaves the event a moment to a node where it is warm.
        if events.shared && !invoker.is_warm(&tenant, &function) {
            tokio::time::sleep(COLD_GRACE).await;
            if events.wake.stopping() {
                return;
            }
        }
        let (policy, timeout_ms) = invoker
            .policy(&tenant, &function)
            .unwrap_or((DeliveryPolicy::default(), 0));
        let max = 1 + slots.available_permits();
        let claimed = match events
            .queue
            .claim(&queue, now_ms(), timeout_ms + LEASE_MARGIN_MS, max)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::error!(%queue, error = %e, "claiming events failed");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            drop((first, claiming));
            // Sleep until the next retry or lease end, or a new event.
            let mut wait = match events.queue.next_due(&queue).await {
                Ok(Some(due)) => {
                    empty_since = None;
                    Duration::from_millis(due.saturating_sub(now_ms())).min(IDLE)
                }
                Ok(None) => {
                    let since = *empty_since.get_or_insert_with(tokio::time::Instant::now);
                    if !woken && since.elapsed() >= idle_end {
                        retire(&events, &queue, &notify).await;
                        return;
                    }
                    IDLE.min(idle_end.saturating_sub(since.elapsed()))
                }
                Err(_) => {
                    empty_since = None;
                    Duration::from_millis(100)
                }
            };
            // Woken by another node's enqueue, this node may have read a
            // replica that has not applied it yet: look once more soon.
            if events.shared && woken {
                wait = wait.min(RECHECK);
            }
            woken = tokio::time::timeout(wait, notify.notified()).await.is_ok();
            continue;
        }
        woken = false;
        empty_since = None;
        let mut permits = vec![first];
        while permits.len() < claimed.len() {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        for (item, permit) in claimed.into_iter().zip(permits) {
            let (events, invoker, queue, policy, tenant, function) = (
                events.clone(),
                invoker.clone(),
                queue.clone(),
                policy.clone(),
                tenant.clone(),
                function.clone(),
            );
            let busy = Busy::new(&events.wake);
            tokio::spawn(async move {
                // An ordering group's next event, claimed as this one was
                // acknowledged, runs next under the same permit, up to
                // MAX_CHAIN in a row (then the group waits its turn in
                // `claim` with the others).
                let mut next = Some((item, policy, timeout_ms));
                let mut ran = 0;
                while let Some((item, policy, timeout_ms)) = next.take() {
                    ran += 1;
                    let chain = (ran < MAX_CHAIN).then_some(timeout_ms + LEASE_MARGIN_MS);
                    let chained =
                        attempt(&events, invoker.as_ref(), &queue, &policy, item, chain).await;
                    next = chained.map(|item| {
                        let (policy, timeout_ms) = invoker
                            .policy(&tenant, &function)
                            .unwrap_or((policy, timeout_ms));
                        (item, policy, timeout_ms)
                    });
                }
                drop((permit, busy));
            });
        }
        drop(claiming);
    }
}

/// Ends the worker of an empty `queue`. An event enqueued after its last
/// look may have woken it as it left (a wake no worker waits on any
/// more): once the worker is off the queue, such a wake, or anything the
/// queue holds when looked at once more, hands it to a new worker. (In a
/// cluster the look may read a replica behind the enqueue: the wake
/// covers that.)
async fn retire(events: &Events, queue: &str, notify: &Arc<Notify>) {
    events.wake.retire(queue, notify);
    if events.wake.stopping() {
        return;
    }
    tracing::debug!(%queue, "event queue empty: its worker ends");
    // A wake stored for the worker completes at once; none: the timeout.
    let woken = tokio::time::timeout(Duration::ZERO, notify.notified())
        .await
        .is_ok();
    if woken || !matches!(events.queue.next_due(queue).await, Ok(None)) {
        events.wake.notify(queue);
    }
}

/// Runs one attempt and applies the policy to its result. Returns the
/// next event of its ordering group when that was claimed with this one's
/// acknowledgement (see [`QueueStore::ack_and_claim_next`], with `chain`:
/// its lease), which the caller runs next.
///
/// [`QueueStore::ack_and_claim_next`]: gust_store::QueueStore::ack_and_claim_next
async fn attempt(
    events: &Events,
    invoker: &dyn Invoker,
    queue: &str,
    policy: &DeliveryPolicy,
    item: Claimed,
    chain: Option<u64>,
) -> Option<Claimed> {
    let envelope = match Envelope::decode(&item.payload) {
        Ok(envelope) => envelope,
        Err(e) => {
            // Cannot be delivered in any attempt; keep it from blocking the queue.
            tracing::error!(%queue, seq = item.seq, error = %e, "dropping an undecodable event");
            let _ = events.queue.ack(queue, vec![item.seq]).await;
            return None;
        }
    };
    let id = envelope.invocation_id.clone();
    tracing::debug!(%queue, seq = item.seq, attempt = item.attempt, invocation_id = %id, "attempt claimed");
    events.wake.set_running(&id, true);
    let outcome = invoker.deliver(&envelope, item.attempt, item.due_ms).await;
    events.wake.set_running(&id, false);

    let now = now_ms();
    if outcome.not_run {
        let again = now + NO_CAPACITY_WAIT_MS / 2 + (NO_CAPACITY_WAIT_MS as f64 * jitter()) as u64;
        if let Err(e) = events.queue.defer(queue, item.seq, again).await {
            tracing::error!(%queue, invocation_id = %id, error = %e, "deferring an event failed");
        }
        events.wake.notify(queue);
        return None;
    }
    let result = AttemptResult::from_status(outcome.status);
    let decision = policy.decide(
        item.attempt,
        result,
        now.saturating_sub(envelope.accepted_ms),
        jitter(),
    );
    let mut record = InvocationRecord {
        invocation_id: id.clone(),
        function: envelope.function.to_string(),
        state: InvocationState::Succeeded,
        attempts: item.attempt,
        accepted_ms: envelope.accepted_ms,
        updated_ms: now,
        last_status: Some(outcome.status),
        last_error: outcome.error.clone(),
        retry_at_ms: None,
    };
    // Recording the outcome (status, destinations, acknowledgement) is
    // tried again for a few seconds when the store fails: a store that is
    // electing a new leader answers again within seconds, and an attempt
    // whose acknowledgement is given up runs once more when its lease
    // ends. Each step may be repeated (a status written twice, a
    // destination's event queued twice: at least once); none is skipped.
    let mut pause = Duration::from_millis(100);
    // The fast path's ack went through (only the status is repeated), and
    // the group's next event it claimed, if any.
    let mut acked = false;
    let mut chained: Option<Claimed> = None;
    let give_up = std::time::Instant::now() + RECORD_RETRIES_FOR;
    loop {
        let applied = async {
            let applied: Result<Option<Claimed>, gust_store::StoreError> = match decision.clone() {
                Decision::Done if !events.shared && policy.on_success.is_none() => {
                    // One node's store writes in the order it is asked,
                    // in group commits: the status and the ack go out
                    // together and are durable in that order (usually in
                    // one commit), which halves the commits an ordering
                    // group waits on between its events. Both may be
                    // repeated (the ack of a removed event is a no-op).
                    // A group's next event is claimed in the same write,
                    // unless the node is stopping.
                    let put = put_record(events, &envelope.tenant, &record);
                    if acked {
                        put.await?;
                    } else {
                        let ack = async {
                            match chain {
                                Some(lease_ms) if item.grouped && !events.wake.stopping() => {
                                    events
                                        .queue
                                        .ack_and_claim_next(queue, item.seq, now_ms(), lease_ms)
                                        .await
                                }
                                _ => events.queue.ack(queue, vec![item.seq]).await.map(|()| None),
                            }
                        };
                        let (put, ack) = tokio::join!(put, ack);
                        let ack = ack.map(|next| {
                            acked = true;
                            chained = next;
                        });
                        put?;
                        ack?;
                    }
                    events.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    events.counters.finish_one(&envelope.tenant);
                    if item.grouped && chained.is_none() {
                        events.wake.notify(queue);
                    }
                    Ok(chained.take())
                }
                Decision::Done => {
                    match &events.done {
                        // A first attempt of an event accepted without a
                        // record: its success is kept with others'.
                        Some(done) if item.attempt == 1 && !envelope.recorded => {
                            done.write(&envelope.tenant, record.clone()).await?;
                        }
                        _ => {
                            put_record(events, &envelope.tenant, &record).await?;
                        }
                    }
                    if let Some(target) = &policy.on_success {
                        let data = outcome.body.to_vec();
                        forward(
                            events,
                            &envelope,
                            target,
                            "dev.gust.invocation.succeeded",
                            data,
                        )
                        .await?;
                    }
                    events.queue.ack(queue, vec![item.seq]).await?;
                    events.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    events.counters.finish_one(&envelope.tenant);
                    // An ack can make the next event of an ordering group due.
                    if item.grouped {
                        events.wake.notify(queue);
                    }
                    Ok(None)
                }
                Decision::RetryAfter(delay) => {
                    record.state = InvocationState::Failed;
                    record.retry_at_ms = Some(now + delay);
                    put_record(events, &envelope.tenant, &record).await?;
                    events.queue.release(queue, item.seq, now + delay).await?;
                    events.counters.retried.fetch_add(1, Ordering::Relaxed);
                    // The worker may be asleep until a later time: it must see this retry.
                    events.wake.notify(queue);
                    Ok(None)
                }
                Decision::DeadLetter(reason) => {
                    let letter = DeadLetter {
                        invocation_id: id.clone(),
                        function: envelope.function.to_string(),
                        reason,
                        attempts: item.attempt,
                        last_status: Some(outcome.status),
                        last_error: outcome.error.clone(),
                        dead_at_ms: now,
                        envelope: item.payload.to_vec(),
                    };
                    events
                        .kv
                        .put(
                            &dead_letter_key(&envelope.tenant, &envelope.function, &id),
                            encode(&letter)?,
                        )
                        .await?;
                    record.state = InvocationState::DeadLettered;
                    put_record(events, &envelope.tenant, &record).await?;
                    if let Some(target) = &policy.on_failure {
                        let report = serde_json::json!({
                            "invocation_id": id,
                            "function": envelope.function.as_str(),
                            "reason": reason,
                            "attempts": item.attempt,
                            "last_status": outcome.status,
                            "last_error": outcome.error,
                        });
                        let data = report.to_string().into_bytes();
                        forward(
                            events,
                            &envelope,
                            target,
                            "dev.gust.invocation.failed",
                            data,
                        )
                        .await?;
                    }
                    events.queue.ack(queue, vec![item.seq]).await?;
                    if item.grouped {
                        events.wake.notify(queue);
                    }
                    events
                        .counters
                        .dead_lettered
                        .fetch_add(1, Ordering::Relaxed);
                    events.counters.finish_one(&envelope.tenant);
                    Ok(None)
                }
            };
            applied
        };
        // Each try ends by the deadline too: a store call may wait seconds.
        let left = give_up.saturating_duration_since(std::time::Instant::now());
        let applied = match tokio::time::timeout(left, applied).await {
            Ok(applied) => applied,
            Err(_) => Err(gust_store::StoreError::Unavailable(
                "recording the attempt went past its deadline".into(),
            )),
        };
        match applied {
            Ok(next) => return next,
            Err(e) if std::time::Instant::now() + pause < give_up => {
                tracing::warn!(%queue, invocation_id = %id, error = %e, "recording an attempt failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                // The claim's lease runs out and the event is tried again
                // (unless its ack went through: then its status is left
                // as it was). A successor claimed with the ack goes back
                // to the queue without counting an attempt.
                tracing::error!(%queue, invocation_id = %id, error = %e, "recording an attempt failed");
                if let Some(next) = chained.take() {
                    let _ = events.queue.defer(queue, next.seq, now_ms()).await;
                    events.wake.notify(queue);
                }
                return None;
            }
        }
    }
}

/// Sends an event about `source`'s outcome to a destination function. It
/// is queued before the source event is acknowledged: at least once.
async fn forward(
    events: &Events,
    source: &Envelope,
    target: &str,
    ty: &str,
    data: Vec<u8>,
) -> Result<(), gust_store::StoreError> {
    let Ok(target) = FunctionName::new(target) else {
        return Ok(());
    };
    let mut envelope = Events::envelope(
        source.tenant.clone(),
        target,
        events.next_invocation_id(),
        "/".to_string(),
        |_| None,
        data,
    );
    envelope.ty = ty.to_string();
    envelope.source = format!("/gust/functions/{}", source.function);
    envelope.subject = Some(source.invocation_id.clone());
    envelope.content_type = Some("application/json".to_string());
    // The destination's attempts join the source event's trace.
    envelope.traceparent.clone_from(&source.traceparent);
    envelope.tracestate.clone_from(&source.tracestate);
    events.submit(envelope).await.map_err(|e| match e {
        crate::EventsError::Store(e) => e,
        other => gust_store::StoreError::Backend(other.to_string()),
    })
}

async fn put_record(
    events: &Events,
    tenant: &TenantId,
    record: &InvocationRecord,
) -> Result<u64, gust_store::StoreError> {
    events
        .kv
        .put(
            &invocation_key(tenant, &record.invocation_id),
            encode(record)?,
        )
        .await
}

/// A number in [0, 1) for backoff jitter; no need for a strong generator.
fn jitter() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static STATE: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hash = STATE.get_or_init(RandomState::new).hash_one(n);
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retiring worker hands its queue to a new worker when a wake came
    /// for it as it left, or when the queue holds an event; when neither,
    /// the queue is left without a worker until its next event.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_retiring_worker_hands_on_a_wake_or_an_event_it_did_not_take() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(gust_store_embedded::EmbeddedStore::open(&dir.path().join("db")).unwrap());
        let events = Events::new(store.clone(), store);
        let (spawn, mut spawned) = mpsc::unbounded_channel();
        *events.wake.spawn.lock().unwrap() = Some(spawn);
        let tenant = TenantId::new("acme").unwrap();
        let queue = |name: &str| crate::queue_name(&tenant, &FunctionName::new(name).unwrap());
        let worker = |queue: &str| {
            let notify = Arc::new(Notify::new());
            let mut workers = events.wake.workers.lock().unwrap();
            workers.insert(queue.to_string(), notify.clone());
            notify
        };
        // Empty, no wake: nobody takes the queue over.
        let idle = queue("idle");
        let notify = worker(&idle);
        retire(&events, &idle, &notify).await;
        assert!(!events.wake.has_worker(&idle));
        assert!(spawned.try_recv().is_err());
        // A wake the worker never waited for (an enqueue whose write a
        // cluster's replica may not show yet).
        let woken = queue("woken");
        let notify = worker(&woken);
        events.wake.notify(&woken);
        retire(&events, &woken, &notify).await;
        assert_eq!(spawned.try_recv().ok(), Some(woken.clone()));
        // An event queued with no wake at all.
        let held = queue("held");
        let notify = worker(&held);
        let envelope = Events::envelope(
            tenant.clone(),
            FunctionName::new("held").unwrap(),
            "e1".into(),
            "/".into(),
            |_| None,
            Vec::new(),
        );
        events
            .queue
            .enqueue(&held, vec![Bytes::from(envelope.encode())], 0)
            .await
            .unwrap();
        retire(&events, &held, &notify).await;
        assert_eq!(spawned.try_recv().ok(), Some(held));
        assert!(spawned.try_recv().is_err());
        // Once the node stops, nothing is handed on.
        let stopped = queue("stopped");
        let notify = worker(&stopped);
        events.wake.notify(&stopped);
        events.wake.stop();
        retire(&events, &stopped, &notify).await;
        assert!(spawned.try_recv().is_err());
    }
}
