//! Gust's events: every event, whatever triggered it, is accepted into a
//! durable per-function queue (acknowledged to its sender only once stored)
//! and delivered by one [`Dispatcher`] under one delivery policy
//! ([`gust_core::delivery`]): retries with backoff and jitter, a maximum
//! age, a dead-letter queue with redrive. Triggers only build envelopes and
//! call [`Events::submit`]; none has a delivery path of its own. Triggers
//! here: asynchronous invocation (the gateway), schedules ([`Scheduler`])
//! and key-value changes ([`ChangeFeed`]).
//!
//! This crate decides *when* an attempt happens and what follows it; it does
//! not run functions (an [`Invoker`] does that) and must not know about
//! HTTP servers or wasm.

mod dispatcher;
mod done;
mod kv_trigger;
mod retention;
mod scheduler;
mod sources;
mod webhook;
mod zone;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gust_core::cluster::Membership;
use gust_core::{Envelope, FunctionName, InvocationRecord, InvocationState, TenantId};
use gust_store::{MetaStore, QueueStore, StoreError};
use serde::{Deserialize, Serialize};

pub use dispatcher::{AttemptOutcome, Dispatcher, Invoker};
pub use kv_trigger::{ChangeFeed, KvTriggerRecord};
pub use scheduler::{ScheduleRecord, Scheduler};
pub use sources::{SourceMessage, SourceRecord, SourceStatus, SourceWatch, seal_context};
pub use webhook::{Verified, WebhookError, verify as verify_webhook};
pub use zone::TimeZone;

/// Errors callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("no invocation `{0}`")]
    NoSuchInvocation(String),
    #[error("no dead letter `{0}`")]
    NoSuchDeadLetter(String),
    #[error("no schedule `{0}`")]
    NoSuchSchedule(String),
    #[error("{0}")]
    InvalidSchedule(String),
    #[error("no trigger `{0}`")]
    NoSuchTrigger(String),
    #[error("no source `{0}` (see `gust source ls`)")]
    NoSuchSource(String),
    #[error("{0}")]
    InvalidTrigger(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An event that gave up, with why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub invocation_id: String,
    pub function: String,
    pub reason: gust_core::delivery::DeadReason,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub dead_at_ms: u64,
    /// The event as accepted (`[u32 header length][header][data]`).
    #[serde(with = "hex_bytes")]
    pub envelope: Vec<u8>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| serde::de::Error::custom("bad hex"))
            })
            .collect()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn queue_name(tenant: &TenantId, function: &FunctionName) -> String {
    format!("events/{tenant}/{function}")
}

pub(crate) fn invocation_key(tenant: &TenantId, id: &str) -> String {
    format!("inv/{tenant}/{id}")
}

fn schedule_key(tenant: &TenantId, function: &FunctionName, id: &str) -> String {
    format!("{}{tenant}/{function}/{id}", scheduler::PREFIX)
}

fn dead_letter_key(tenant: &TenantId, function: &FunctionName, id: &str) -> String {
    format!("dlq/{tenant}/{function}/{id}")
}

pub(crate) fn root_path() -> String {
    "/".to_string()
}

/// A trigger's request path: what the function sees, so it must look like one.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.chars().any(char::is_control) || path.contains(' ') {
        return Err(format!(
            "path `{path}` must start with `/` and hold no spaces or control characters"
        ));
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, StoreError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Makes the span an event with no trace context of its own is accepted
/// in (a schedule's tick, a KV change, a source's message, one sent to the
/// API without a believed `traceparent`), and gives that span's W3C
/// context (`traceparent`, `tracestate`) for the event to keep: so all its
/// attempts, and its destinations, are one trace. Set by the binary when
/// traces are on ([`Events::with_accept_span`]).
pub type AcceptSpan = Arc<dyn Fn(&Envelope) -> (Option<String>, Option<String>) + Send + Sync>;

/// The events front: submission, status, dead letters. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    ids: Arc<InvocationIds>,
    pub(crate) queue: Arc<dyn QueueStore>,
    pub(crate) kv: Arc<dyn MetaStore>,
    pub(crate) wake: Arc<dispatcher::Wake>,
    pub(crate) counters: Arc<Counters>,
    /// The live nodes: which one fires each schedule.
    pub(crate) members: Arc<dyn Membership>,
    /// Other nodes share the queues (cluster mode): backlogs are counted
    /// from the queues, not from what this node submitted and delivered.
    /// When false, the queues and the metadata are one store that makes
    /// writes durable in the order they are asked (the embedded store's
    /// single writer), which the dispatcher relies on to send two at once.
    pub(crate) shared: bool,
    /// In a cluster, where first attempts' successes are kept together.
    pub(crate) done: Option<Arc<done::DoneWriter>>,
    accept_span: Option<AcceptSpan>,
}

#[derive(Default)]
pub(crate) struct Counters {
    /// Events queued and not yet finished (delivered or dead-lettered), per tenant.
    pub backlog: std::sync::Mutex<std::collections::HashMap<TenantId, u64>>,
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventStats {
    pub accepted: u64,
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

impl Counters {
    pub(crate) fn add_backlog(&self, tenant: &TenantId, n: u64) {
        let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        *backlog.entry(tenant.clone()).or_default() += n;
    }

    pub(crate) fn finish_one(&self, tenant: &TenantId) {
        let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = backlog.get_mut(tenant) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Events {
    /// Events of `tenant` queued and not yet finished: the number the
    /// tenant's `event_backlog` quota bounds.
    pub fn backlog(&self, tenant: &TenantId) -> u64 {
        let backlog = self
            .counters
            .backlog
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        backlog.get(tenant).copied().unwrap_or(0)
    }

    pub fn new(queue: Arc<dyn QueueStore>, kv: Arc<dyn MetaStore>) -> Self {
        Self {
            ids: Arc::new(InvocationIds::new()),
            queue,
            kv,
            wake: Arc::new(dispatcher::Wake::default()),
            counters: Arc::new(Counters::default()),
            members: Arc::new(gust_core::cluster::OneNode::new("local")),
            shared: false,
            done: None,
            accept_span: None,
        }
    }

    /// Gives each event accepted without a trace context the one
    /// `accept_span` makes (traces are on).
    pub fn with_accept_span(mut self, accept_span: AcceptSpan) -> Self {
        self.accept_span = Some(accept_span);
        self
    }

    /// Makes this node one of a cluster's, whose queues and schedules are
    /// shared with the nodes `members` lists as alive: each schedule fires
    /// on one of them, and backlogs are recounted from the queues.
    pub fn in_cluster(mut self, members: Arc<dyn Membership>) -> Self {
        self.done = Some(Arc::new(done::DoneWriter::new(
            self.kv.clone(),
            members.node(),
        )));
        self.members = members;
        self.shared = true;
        self
    }

    /// The node that fires a schedule's ticks, as this node sees it (in a
    /// cluster; `None` on a node alone).
    pub fn schedule_owner(&self, record: &ScheduleRecord) -> Option<String> {
        self.shared
            .then(|| scheduler::owner(self.members.as_ref(), &scheduler::tick_key(record)))
    }

    /// Sets each tenant's backlog to what its queues hold (`depths`, just
    /// listed), in cluster mode: the other nodes submit and deliver too.
    /// What this node counted since the listing is lost until the next.
    pub(crate) fn recount_backlogs(&self, depths: &[(String, u64)]) {
        let mut counted: std::collections::HashMap<TenantId, u64> = Default::default();
        for (queue, depth) in depths {
            if let Some((tenant, _)) = dispatcher::parse_queue(queue) {
                *counted.entry(tenant).or_default() += depth;
            }
        }
        *self
            .counters
            .backlog
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = counted;
    }

    /// Stops delivering: no event is claimed from now on (on this node;
    /// in a cluster the others go on). Attempts already running go on to
    /// their recorded outcome: wait for them with [`Events::drain`].
    pub fn stop_delivering(&self) {
        self.wake.stop();
    }

    /// Waits until every attempt this node runs has ended and its outcome
    /// is recorded, or until `within` passes; returns how many were still
    /// under way (their events are delivered again once their leases end).
    pub async fn drain(&self, within: std::time::Duration) -> usize {
        self.wake.drained(within).await
    }

    pub fn stats(&self) -> EventStats {
        let c = &self.counters;
        EventStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        }
    }

    /// Stores a schedule for a function (replacing one with the same id).
    pub async fn add_schedule(&self, record: ScheduleRecord) -> Result<(), EventsError> {
        let schedule = gust_core::schedule::Schedule::parse(&record.expr)
            .map_err(|e| EventsError::InvalidSchedule(e.to_string()))?;
        check_path(&record.path).map_err(EventsError::InvalidSchedule)?;
        let zone = TimeZone::parse(&record.tz).map_err(EventsError::InvalidSchedule)?;
        if schedule.next_after(now_ms(), &zone).is_none() {
            return Err(EventsError::InvalidSchedule(format!(
                "`{}` never fires (no date matches)",
                record.expr
            )));
        }
        let key = schedule_key(&record.tenant, &record.function, &record.id);
        self.kv.put(&key, encode(&record)?).await?;
        Ok(())
    }

    pub async fn schedules(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
    ) -> Result<Vec<ScheduleRecord>, EventsError> {
        let entries = self
            .kv
            .list(&format!("{}{tenant}/{function}/", scheduler::PREFIX))
            .await?;
        Ok(entries
            .iter()
            .map(|e| decode(&e.value))
            .collect::<Result<_, _>>()?)
    }

    pub async fn remove_schedule(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
        id: &str,
    ) -> Result<(), EventsError> {
        match self.kv.delete(&schedule_key(tenant, function, id)).await? {
            Some(_) => Ok(()),
            None => Err(EventsError::NoSuchSchedule(id.to_string())),
        }
    }

    /// A new invocation id: unique on this node across restarts, for
    /// synchronous and asynchronous invocations alike.
    pub fn next_invocation_id(&self) -> String {
        self.ids.next()
    }

    /// The envelope of an event sent over HTTP: CloudEvents attributes come
    /// from `ce-*` headers when the sender set them (binary mode), else Gust
    /// fills them in; `path` is what the function will see.
    pub fn envelope<'h>(
        tenant: TenantId,
        function: FunctionName,
        invocation_id: String,
        path: String,
        header: impl Fn(&str) -> Option<&'h str>,
        data: Vec<u8>,
    ) -> Envelope {
        let now = now_ms();
        let owned = |name: &str| header(name).map(str::to_string);
        Envelope {
            id: owned("ce-id").unwrap_or_else(|| invocation_id.clone()),
            source: owned("ce-source").unwrap_or_else(|| format!("/gust/functions/{function}")),
            ty: owned("ce-type").unwrap_or_else(|| "dev.gust.invocation".to_string()),
            subject: owned("ce-subject"),
            time_ms: now,
            content_type: owned("content-type"),
            accepted_ms: now,
            path,
            traceparent: None,
            tracestate: None,
            depth: 0,
            origin: None,
            recorded: false,
            data,
            tenant,
            function,
            invocation_id,
        }
    }

    /// Accepts an event for its function: returns once it is durably stored.
    ///
    /// The work runs in its own task, so a caller that goes away half way
    /// (a client hanging up) cannot leave a status without its event.
    pub async fn submit(&self, envelope: Envelope) -> Result<(), EventsError> {
        self.submit_in(envelope, None).await
    }

    /// Like [`Events::submit`], optionally in an ordering group: events of
    /// one group are delivered one at a time in submission order (an event
    /// waits for the one before it to succeed or be dead-lettered). Skipped if an
    /// invocation with this id was already accepted: for triggers that give
    /// events deterministic ids and may submit one again after a crash.
    pub async fn submit_once(
        &self,
        envelope: Envelope,
        group: Option<String>,
    ) -> Result<(), EventsError> {
        let key = invocation_key(&envelope.tenant, &envelope.invocation_id);
        if self.kv.get(&key).await?.is_some() {
            return Ok(());
        }
        // Its status may be missing although it was queued (a submission
        // whose answer was lost, or a process stopped between the two
        // writes): the queue itself refuses the id a second time, within
        // its window.
        self.submit_with(envelope, group, Once::ById).await
    }

    async fn submit_in(
        &self,
        envelope: Envelope,
        group: Option<String>,
    ) -> Result<(), EventsError> {
        self.submit_with(envelope, group, Once::Fresh).await
    }

    async fn submit_with(
        &self,
        envelope: Envelope,
        group: Option<String>,
        once: Once,
    ) -> Result<(), EventsError> {
        let this = self.clone();
        tokio::spawn(async move { this.store_many(vec![envelope], group, once).await })
            .await
            .map_err(|_| EventsError::Store(StoreError::Closed))?
    }

    /// Stores `envelopes` (of one function) with one enqueue, in order
    /// (with [`Once::ById`], one enqueue each, skipping an id the queue
    /// already holds); then each one's status (not for [`Once::Fresh`]).
    pub(crate) async fn store_many(
        &self,
        mut envelopes: Vec<Envelope>,
        group: Option<String>,
        once: Once,
    ) -> Result<(), EventsError> {
        if let Some(accept_span) = &self.accept_span {
            for envelope in envelopes.iter_mut().filter(|e| e.traceparent.is_none()) {
                (envelope.traceparent, envelope.tracestate) = accept_span(envelope);
            }
        }
        let Some(first) = envelopes.first() else {
            return Ok(());
        };
        // The queue entries go first, then each status is created unless
        // the dispatcher already wrote a later one (it may deliver the
        // event in between). So a status, once there, means the event is
        // queued: `submit_once` relies on that.
        let queue = queue_name(&first.tenant, &first.function);
        let tenant = first.tenant.clone();
        for envelope in &mut envelopes {
            envelope.recorded = once != Once::Fresh;
        }
        let payloads: Vec<Bytes> = envelopes.iter().map(|e| Bytes::from(e.encode())).collect();
        let mut n = envelopes.len() as u64;
        match (once, group) {
            (Once::ById, group) => {
                for (envelope, payload) in envelopes.iter().zip(payloads) {
                    let stored = self
                        .queue
                        .enqueue_once(
                            &queue,
                            group.as_deref(),
                            &envelope.invocation_id,
                            payload,
                            0,
                        )
                        .await?;
                    if stored.is_none() {
                        tracing::info!(%queue, invocation_id = %envelope.invocation_id, "an event submitted again was already queued; not queued twice");
                        n -= 1;
                    }
                }
            }
            (Once::No | Once::Fresh, Some(group)) => {
                self.queue
                    .enqueue_ordered(&queue, &group, payloads, 0)
                    .await?;
            }
            (Once::No | Once::Fresh, None) => {
                self.queue.enqueue(&queue, payloads, 0).await?;
            }
        }
        // Once queued, the event is accepted whatever becomes of its
        // status: an error now would have the client (or a trigger,
        // through `submit_once`, which finds no status) queue it again, a
        // second copy run as attempt 1. The status is tried for a second,
        // then left to the first attempt, which writes its own. A fresh
        // event has none until then: its queue entry stands for it, one
        // replicated write fewer per event in a cluster.
        let mut writes = tokio::task::JoinSet::new();
        let statuses = if once == Once::Fresh {
            Vec::new()
        } else {
            envelopes
        };
        for envelope in statuses {
            let kv = self.kv.clone();
            writes.spawn(async move {
                let record = InvocationRecord {
                    invocation_id: envelope.invocation_id.clone(),
                    function: envelope.function.to_string(),
                    state: InvocationState::Queued,
                    attempts: 0,
                    accepted_ms: envelope.accepted_ms,
                    updated_ms: envelope.accepted_ms,
                    last_status: None,
                    last_error: None,
                    retry_at_ms: None,
                };
                let key = invocation_key(&envelope.tenant, &envelope.invocation_id);
                let Ok(status) = encode(&record) else {
                    return;
                };
                let mut pause = std::time::Duration::from_millis(100);
                for left in (0..4).rev() {
                    match kv.compare_and_set(&key, status.clone(), None).await {
                        Ok(_) | Err(StoreError::Conflict { .. }) => break,
                        Err(e) if left == 0 => {
                            tracing::warn!(invocation_id = %envelope.invocation_id, error = %e, "an event is queued but its status could not be written; its first attempt writes it");
                        }
                        Err(_) => {
                            tokio::time::sleep(pause).await;
                            pause *= 2;
                        }
                    }
                }
            });
        }
        while writes.join_next().await.is_some() {}
        self.counters.accepted.fetch_add(n, Ordering::Relaxed);
        self.counters.add_backlog(&tenant, n);
        self.wake.notify(&queue);
        Ok(())
    }

    /// The status of one invocation: its record, or while an event
    /// submitted without one waits for its first attempt to end, its
    /// queue entry (looked for in the tenant's queues), or once that
    /// attempt succeeded in a cluster, its status among others' (see
    /// `done.rs`).
    pub async fn invocation(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<InvocationRecord, EventsError> {
        let key = invocation_key(tenant, id);
        let mut record = match self.kv.get(&key).await? {
            Some(entry) => decode(&entry.value)?,
            None => match self.queued_invocation(tenant, id).await? {
                Some(record) => record,
                // Its first attempt may have ended since the record was
                // looked for: then its status is in one place or the other.
                None => match self.done_status(tenant, id).await? {
                    Some(done) => done,
                    None => decode(
                        &self
                            .kv
                            .get(&key)
                            .await?
                            .ok_or_else(|| EventsError::NoSuchInvocation(id.to_string()))?
                            .value,
                    )?,
                },
            },
        };
        if self.wake.is_running(id) {
            record.state = InvocationState::Running;
        }
        Ok(record)
    }

    /// `id`'s status among the successes kept together (in a cluster).
    async fn done_status(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<InvocationRecord>, EventsError> {
        if self.done.is_none() {
            return Ok(None);
        }
        Ok(done::find(&self.kv, tenant, id).await?)
    }

    /// Invocation `id` of `tenant` as its queue entry tells it, if one of
    /// the tenant's queues holds it.
    async fn queued_invocation(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<InvocationRecord>, EventsError> {
        for queue in self.queue.queues().await? {
            if dispatcher::parse_queue(&queue).is_none_or(|(t, _)| &t != tenant) {
                continue;
            }
            let mut found = None;
            self.queue
                .peek(&queue, &mut |peeked| {
                    found = queued_record(&peeked).filter(|r| r.invocation_id == id);
                    found.is_none()
                })
                .await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// The most recent asynchronous invocations of a function, newest first.
    pub async fn invocations(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
        limit: usize,
    ) -> Result<Vec<InvocationRecord>, EventsError> {
        let mut records: Vec<InvocationRecord> = self
            .kv
            .list(&format!("inv/{tenant}/"))
            .await?
            .iter()
            .filter_map(|e| decode::<InvocationRecord>(&e.value).ok())
            .filter(|r| r.function == function.as_str())
            .collect();
        if self.done.is_some() {
            // A record of its own is later than a success kept with others
            // (a second attempt's, after the first one's ack was lost); a
            // success written twice counts once.
            let mut known: std::collections::HashSet<String> =
                records.iter().map(|r| r.invocation_id.clone()).collect();
            let mut done = done::all(&self.kv, tenant).await?;
            done.sort_by_key(|r| std::cmp::Reverse(r.updated_ms));
            for record in done {
                if record.function == function.as_str()
                    && known.insert(record.invocation_id.clone())
                {
                    records.push(record);
                }
            }
        }
        // Events waiting for their first attempt without a record: the
        // newest `limit` of them.
        let known: std::collections::HashSet<String> =
            records.iter().map(|r| r.invocation_id.clone()).collect();
        let mut queued = Vec::new();
        let newest_first = |records: &mut Vec<InvocationRecord>| {
            records.sort_by_key(|r| std::cmp::Reverse(r.accepted_ms));
            records.truncate(limit);
        };
        self.queue
            .peek(&queue_name(tenant, function), &mut |peeked| {
                if let Some(record) =
                    queued_record(&peeked).filter(|r| !known.contains(&r.invocation_id))
                {
                    queued.push(record);
                    if queued.len() > limit.saturating_mul(2).max(64) {
                        newest_first(&mut queued);
                    }
                }
                true
            })
            .await?;
        records.extend(queued);
        records.sort_by_key(|r| std::cmp::Reverse(r.accepted_ms));
        records.truncate(limit);
        for record in &mut records {
            if self.wake.is_running(&record.invocation_id) {
                record.state = InvocationState::Running;
            }
        }
        Ok(records)
    }

    /// A function's dead letters, oldest first.
    pub async fn dead_letters(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
    ) -> Result<Vec<DeadLetter>, EventsError> {
        let entries = self.kv.list(&format!("dlq/{tenant}/{function}/")).await?;
        let mut letters: Vec<DeadLetter> = entries
            .iter()
            .map(|e| decode(&e.value))
            .collect::<Result<_, _>>()?;
        letters.sort_by_key(|l| l.dead_at_ms);
        Ok(letters)
    }

    /// Puts dead letters back in the queue for a fresh set of attempts:
    /// one (`Some(id)`) or all. Returns how many were redriven.
    pub async fn redrive(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
        only: Option<&str>,
    ) -> Result<usize, EventsError> {
        let letters = match only {
            Some(id) => {
                let entry = self
                    .kv
                    .get(&dead_letter_key(tenant, function, id))
                    .await?
                    .ok_or_else(|| EventsError::NoSuchDeadLetter(id.to_string()))?;
                vec![decode::<DeadLetter>(&entry.value)?]
            }
            None => self.dead_letters(tenant, function).await?,
        };
        let queue = queue_name(tenant, function);
        for letter in &letters {
            let mut envelope = Envelope::decode(&letter.envelope)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            // A redriven event gets its full age budget again, and keeps
            // the status record written below current.
            envelope.accepted_ms = now_ms();
            envelope.recorded = true;
            let record = InvocationRecord {
                invocation_id: letter.invocation_id.clone(),
                function: function.to_string(),
                state: InvocationState::Queued,
                attempts: 0,
                accepted_ms: envelope.accepted_ms,
                updated_ms: envelope.accepted_ms,
                last_status: letter.last_status,
                last_error: letter.last_error.clone(),
                retry_at_ms: None,
            };
            self.kv
                .put(
                    &invocation_key(tenant, &letter.invocation_id),
                    encode(&record)?,
                )
                .await?;
            self.queue
                .enqueue(&queue, vec![Bytes::from(envelope.encode())], 0)
                .await?;
            self.counters.add_backlog(tenant, 1);
            self.kv
                .delete(&dead_letter_key(tenant, function, &letter.invocation_id))
                .await?;
        }
        self.wake.notify(&queue);
        Ok(letters.len())
    }
}

/// What the status of a queued event is while it has no record: queued,
/// or running while claimed (`None`: not an event's envelope).
fn queued_record(peeked: &gust_store::Peeked) -> Option<InvocationRecord> {
    let envelope = Envelope::decode(&peeked.payload).ok()?;
    let running = peeked.claimed && peeked.attempts > 0;
    Some(InvocationRecord {
        invocation_id: envelope.invocation_id,
        function: envelope.function.to_string(),
        state: if running {
            InvocationState::Running
        } else {
            InvocationState::Queued
        },
        // Attempts made so far: not the one running.
        attempts: peeked.attempts - u32::from(running),
        accepted_ms: envelope.accepted_ms,
        updated_ms: envelope.accepted_ms,
        last_status: None,
        last_error: None,
        retry_at_ms: None,
    })
}

/// Whether a submission may store an event its queue already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Once {
    /// A new event that nothing looks up by id to skip it (an HTTP or API
    /// submission, a destination): no status is written on acceptance,
    /// its queue entry stands for it until its first attempt ends (see
    /// [`Events::invocation`]).
    Fresh,
    /// Every submission is a new event, its status written on acceptance
    /// (a source looks its ids up to skip a redelivery).
    No,
    /// The invocation id names the event: the queue stores it once within
    /// its window ([`QueueStore::enqueue_once`]).
    ById,
}

/// Invocation ids: the process start time and a counter, in hex. Unique
/// across restarts of one node and sortable by start within a run.
struct InvocationIds {
    start_ms: u64,
    next: AtomicU64,
}

impl InvocationIds {
    fn new() -> Self {
        Self {
            start_ms: now_ms(),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        use std::fmt::Write as _;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Sized once: `format!` would grow it twice on the way.
        let mut id = String::with_capacity(20);
        let _ = write!(id, "{:011x}{:09x}", self.start_ms, n);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers each attempt with the next status of its list (then 200).
    struct Answers(std::sync::Mutex<std::collections::VecDeque<u16>>);

    #[async_trait::async_trait]
    impl Invoker for Answers {
        async fn deliver(&self, _: &Envelope, _: u32, _: u64) -> AttemptOutcome {
            let status = self.0.lock().unwrap().pop_front().unwrap_or(200);
            AttemptOutcome {
                status,
                error: None,
                body: Bytes::new(),
                not_run: false,
            }
        }

        fn policy(
            &self,
            _: &TenantId,
            _: &FunctionName,
        ) -> Option<(gust_core::delivery::DeliveryPolicy, u64)> {
            let policy = gust_core::delivery::DeliveryPolicy {
                initial_backoff_ms: 10,
                max_backoff_ms: 10,
                ..Default::default()
            };
            Some((policy, 1_000))
        }
    }

    /// In a cluster, a first attempt's success of an event accepted
    /// without a record is kept with others': no record of its own, yet
    /// found by id and listed; a success after a retry, and an event
    /// accepted with its record (a source's), keep records of their own;
    /// retention removes the kept entry once its statuses are old.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_cluster_keeps_first_attempt_successes_together() {
        let dir = tempfile::tempdir().unwrap();
        let events = one_node_cluster(dir.path());
        let (tenant, function) = acme_f();
        // The first delivered event fails once, then succeeds.
        Dispatcher::start(
            &events,
            Arc::new(Answers(std::sync::Mutex::new([500].into()))),
        );
        let envelope = |id: &str| plain(&tenant, &function, id.to_string());
        events.submit(envelope("retried00")).await.unwrap();
        let retried = wait_for(&events, &tenant, "retried00").await;
        assert_eq!(retried.attempts, 2);
        let mut fresh = Vec::new();
        for _ in 0..20 {
            let id = events.next_invocation_id();
            events.submit(envelope(&id)).await.unwrap();
            fresh.push(id);
        }
        events
            .store_many(vec![envelope("sourced00")], None, Once::No)
            .await
            .unwrap();
        for id in fresh.iter().chain(["sourced00".to_string()].iter()) {
            let record = wait_for(&events, &tenant, id).await;
            assert_eq!(
                (record.attempts, record.last_status),
                (1, Some(200)),
                "{id}"
            );
        }
        let own = |id: &str| {
            let key = invocation_key(&tenant, id);
            let kv = events.kv.clone();
            async move { kv.get(&key).await.unwrap().is_some() }
        };
        assert!(own("retried00").await, "a retried success keeps its record");
        assert!(own("sourced00").await, "a recorded event keeps its record");
        for id in &fresh {
            assert!(!own(id).await, "{id} has a record of its own");
        }
        let kept = events.kv.list(done::PREFIX).await.unwrap();
        assert!(
            !kept.is_empty() && kept.len() <= fresh.len(),
            "{} entries for {} successes",
            kept.len(),
            fresh.len()
        );
        let listed = events.invocations(&tenant, &function, 100).await.unwrap();
        let mut ids: Vec<&str> = listed.iter().map(|r| r.invocation_id.as_str()).collect();
        ids.sort_unstable();
        let mut expected: Vec<&str> = fresh.iter().map(String::as_str).collect();
        expected.extend(["retried00", "sourced00"]);
        expected.sort_unstable();
        assert_eq!(ids, expected);
        assert!(listed.iter().all(|r| r.state == InvocationState::Succeeded));
        // Old enough for retention: the kept entries go, the records too.
        let removed = events
            .prune_statuses(now_ms() + 1, 0, std::time::Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(removed, kept.len() as u64 + 2);
        assert!(events.kv.list(done::PREFIX).await.unwrap().is_empty());
        assert!(matches!(
            events.invocation(&tenant, &fresh[0]).await,
            Err(EventsError::NoSuchInvocation(_))
        ));
    }

    /// A success written twice among others' (its write tried again) is
    /// listed once, and a record of its own, from a later attempt after
    /// the first one's acknowledgement was lost, wins over it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_record_of_its_own_is_later_than_a_success_kept_with_others() {
        let dir = tempfile::tempdir().unwrap();
        let events = one_node_cluster(dir.path());
        let (tenant, function) = acme_f();
        let done = events.done.clone().unwrap();
        let success = |id: &str, attempts: u32, updated_ms: u64| InvocationRecord {
            invocation_id: id.into(),
            function: function.to_string(),
            state: InvocationState::Succeeded,
            attempts,
            accepted_ms: 1_000,
            updated_ms,
            last_status: Some(200),
            last_error: None,
            retry_at_ms: None,
        };
        for (id, updated_ms) in [("once00", 2_000), ("once00", 2_001), ("again0", 2_000)] {
            done.write(&tenant, success(id, 1, updated_ms))
                .await
                .unwrap();
        }
        events
            .kv
            .put(
                &invocation_key(&tenant, "again0"),
                encode(&success("again0", 2, 9_000)).unwrap(),
            )
            .await
            .unwrap();
        let listed = events.invocations(&tenant, &function, 10).await.unwrap();
        let mut seen: Vec<(&str, u32, u64)> = listed
            .iter()
            .map(|r| (r.invocation_id.as_str(), r.attempts, r.updated_ms))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, [("again0", 2, 9_000), ("once00", 1, 2_001)]);
        let again = events.invocation(&tenant, "again0").await.unwrap();
        assert_eq!(again.attempts, 2);
        let once = events.invocation(&tenant, "once00").await.unwrap();
        assert_eq!(once.updated_ms, 2_001);
    }

    /// An empty queue's worker ends once its idle time has passed, and
    /// the queue's next event starts another, which delivers it.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_empty_queues_worker_ends_and_its_next_event_starts_another() {
        let dir = tempfile::tempdir().unwrap();
        // A cluster's: there an idle worker reads the shared store.
        let events = one_node_cluster(dir.path());
        events
            .wake
            .set_idle_end(std::time::Duration::from_millis(300));
        let (tenant, function) = acme_f();
        let queue = queue_name(&tenant, &function);
        Dispatcher::start(&events, Arc::new(Answers(Default::default())));
        let submit = |id: String| {
            let (events, envelope) = (events.clone(), plain(&tenant, &function, id));
            async move { events.submit(envelope).await.unwrap() }
        };
        let worker_ends = || async {
            for _ in 0..500 {
                if !events.wake.has_worker(&queue) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("the worker of an empty queue lives on");
        };
        for round in 0..2 {
            let id = events.next_invocation_id();
            submit(id.clone()).await;
            // The second round's event is delivered only if it started a
            // worker: the first round's has ended.
            let record = wait_for(&events, &tenant, &id).await;
            assert_eq!(record.attempts, 1, "round {round}");
            worker_ends().await;
        }
    }

    /// The tenant and function these tests queue for.
    fn acme_f() -> (TenantId, FunctionName) {
        (
            TenantId::new("acme").unwrap(),
            FunctionName::new("f").unwrap(),
        )
    }

    /// An event for `tenant`'s `function` with id `id`, for path `/`.
    fn plain(tenant: &TenantId, function: &FunctionName, id: String) -> Envelope {
        Events::envelope(
            tenant.clone(),
            function.clone(),
            id,
            "/".into(),
            |_| None,
            Vec::new(),
        )
    }

    /// Events on an embedded store in `dir`, as a cluster of one node.
    fn one_node_cluster(dir: &std::path::Path) -> Events {
        let store = Arc::new(gust_store_embedded::EmbeddedStore::open(&dir.join("db")).unwrap());
        Events::new(store.clone(), store)
            .in_cluster(Arc::new(gust_core::cluster::OneNode::new("n1")))
    }

    /// `id`'s status once it succeeded (within 10 s).
    async fn wait_for(events: &Events, tenant: &TenantId, id: &str) -> InvocationRecord {
        for _ in 0..1_000 {
            if let Ok(record) = events.invocation(tenant, id).await
                && record.state == InvocationState::Succeeded
            {
                return record;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{id} did not succeed");
    }

    /// A queue longer than the list keeps while it reads (twice the limit,
    /// at least 64), events accepted in another order than queued: the
    /// list is the newest `limit` of the queued events and the written
    /// records together, newest first.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_invocation_list_keeps_the_newest_of_a_long_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(gust_store_embedded::EmbeddedStore::open(&dir.path().join("db")).unwrap());
        let events = Events::new(store.clone(), store.clone());
        let (tenant, function) = acme_f();
        // No dispatcher runs: every event stays queued, without a record.
        for i in 0..200u64 {
            let mut envelope = plain(&tenant, &function, format!("q{i:03}"));
            // A permutation of 0..200: the newest are spread over the queue.
            envelope.accepted_ms = 10_000 + (i * 37) % 200;
            events.submit(envelope).await.unwrap();
        }
        // A finished one with a record, newer than all of them, and one of
        // another function.
        for (id, function, accepted_ms) in [("done", "f", 20_000), ("other", "g", 30_000)] {
            let record = InvocationRecord {
                invocation_id: id.into(),
                function: function.into(),
                state: InvocationState::Succeeded,
                attempts: 1,
                accepted_ms,
                updated_ms: accepted_ms,
                last_status: Some(200),
                last_error: None,
                retry_at_ms: None,
            };
            let key = invocation_key(&tenant, id);
            store.put(&key, encode(&record).unwrap()).await.unwrap();
        }

        let list = events.invocations(&tenant, &function, 5).await.unwrap();
        let seen: Vec<(String, u64)> = list
            .iter()
            .map(|r| (r.invocation_id.clone(), r.accepted_ms))
            .collect();
        // Accepted at 10,199 … 10,196: the i with i * 37 ≡ 199 … 196 (mod 200).
        let queued = |k: u64| {
            let i = (0..200u64).find(|i| (i * 37) % 200 == k).unwrap();
            (format!("q{i:03}"), 10_000 + k)
        };
        let mut expected = vec![("done".to_string(), 20_000)];
        expected.extend((196..200).rev().map(queued));
        assert_eq!(seen, expected);
        assert!(list[1..].iter().all(|r| r.state == InvocationState::Queued));
    }
}
