//! Leases: mutual exclusion between every process that shares one
//! [`MetaStore`] (the nodes of a cluster), for work that reads several
//! keys and then writes others, which no single compare-and-set covers
//! (taking route claims, collecting components nothing refers to).
//!
//! A lease is one key, `lease/<name>`, taken and given back only by
//! compare-and-set, which both backends make linearizable: whoever creates
//! it (or writes over a released or abandoned one) holds it. The holder
//! writes it again every third of its time to live, so a slow holder
//! keeps it; it gives it back by writing a released value over the
//! revision it last wrote, so it never undoes a lease that another holder
//! took meanwhile. A local mutex stands in front, so the tasks of one
//! process queue on it instead of polling the store against each other.
//!
//! A lease is abandoned when its revision has not changed for its time to
//! live, as measured by the waiter's own monotonic clock from when it
//! first saw that revision: no wall clock is compared across machines, so
//! clocks set apart (even by more than the time to live) do not end a
//! live lease early.
//!
//! ## The bound
//! A holder that cannot renew for its whole time to live loses the lease,
//! and a waiter takes it over while the first holder may still be
//! working: it learns so only at its next renewal, and what it does in
//! between is not excluded. Slowness alone does not do it (renewals run
//! in the background while the work waits on the store); it takes a
//! holder whose process is paused (a stop signal, a frozen VM, a swap
//! storm, a runtime whose threads are all blocked) for more than 20 s
//! after a renewal ([`Lease::TTL`] 30 s, renewals every 10 s) and which
//! then goes on writing. A holder cut off from the store loses the lease
//! the same way, but its own writes fail too (the NATS backend gives up
//! on a request after 5 s), so it cannot act on what it read.
//!
//! What a lost lease can break, per user: `uploading` — a deploy paused
//! that long between storing its component and writing its version
//! record, while another node removes the last function that ran the same
//! bytes, finds its component collected (the new version fails until the
//! same bytes are deployed again); `claiming` — two route changes
//! interleave: both refused, or two tenants each take a prefix of one
//! host; `revoking` — both of the last two admin tokens that never expire
//! are revoked. Each needs the pause and a conflicting change on another
//! node inside the same seconds; none happens while no process is paused.
//! A crashed holder delays everyone else by up to the time to live.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};
use tokio::time::Instant;

use crate::{Entry, MetaStore, StoreError};

/// Where leases are kept.
pub const LEASES_PREFIX: &str = "lease/";

/// A lease on one name, shared by every process on the same store. Clones
/// share the local queue.
#[derive(Clone)]
pub struct Lease {
    inner: Arc<Inner>,
}

struct Inner {
    kv: Arc<dyn MetaStore>,
    name: String,
    key: String,
    ttl: Duration,
    local: Arc<Mutex<()>>,
}

/// What the lease key holds.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// Who holds it (one acquisition: unique across processes); `None`:
    /// given back.
    holder: Option<String>,
    /// How long it stays held without a renewal (set by its holder).
    ttl_ms: u64,
}

/// How long a waiter sleeps between looks at a held lease, at first and
/// at most (doubling in between).
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// How soon a failed renewal is tried again.
const RETRY_RENEWAL: Duration = Duration::from_millis(500);

impl Lease {
    /// How long a lease is held without renewal (renewed every third of it).
    pub const TTL: Duration = Duration::from_secs(30);

    pub fn new(kv: Arc<dyn MetaStore>, name: &str) -> Self {
        Self::with_ttl(kv, name, Self::TTL)
    }

    /// A lease with another time to live (tests; work that runs long).
    pub fn with_ttl(kv: Arc<dyn MetaStore>, name: &str, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                kv,
                name: name.to_string(),
                key: format!("{LEASES_PREFIX}{name}"),
                ttl,
                local: Arc::default(),
            }),
        }
    }

    /// Waits until this process holds the lease, then keeps it (renewing
    /// in the background) until the guard is dropped or released. Waiting
    /// has no end of its own; the caller may give up (drop the future) at
    /// any point: the taking runs in a task of its own, which gives back
    /// what it took once it finds no one waiting for it.
    pub async fn acquire(&self) -> Result<LeaseGuard, StoreError> {
        let local = self.inner.local.clone().lock_owned().await;
        let (taken, taking) = oneshot::channel();
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(take_and_hold(self.inner.clone(), local, taken, stopped));
        match taking.await {
            Ok(Ok(())) => Ok(LeaseGuard { stop: Some(stop) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

/// Takes the lease (waiting while another holds it), says so through
/// `taken`, then holds it until `stopped`.
async fn take_and_hold(
    inner: Arc<Inner>,
    local: OwnedMutexGuard<()>,
    mut taken: oneshot::Sender<Result<(), StoreError>>,
    stopped: oneshot::Receiver<Option<oneshot::Sender<()>>>,
) {
    let holder = holder_id();
    let mine = match encode(&Record {
        holder: Some(holder.clone()),
        ttl_ms: millis(inner.ttl),
    }) {
        Ok(mine) => mine,
        Err(e) => {
            let _ = taken.send(Err(e));
            return;
        }
    };
    match take(&inner, &holder, &mine, &mut taken).await {
        // The caller gave up while waiting.
        Ok(None) => {}
        // If the caller is gone by now, `stopped` ends at once and the
        // lease is given back.
        Ok(Some(revision)) => {
            let _ = taken.send(Ok(()));
            hold(inner, holder, mine, revision, local, stopped).await;
        }
        Err(e) => {
            let _ = taken.send(Err(e));
        }
    }
}

/// Writes `mine` as the lease once it is free, given back or abandoned:
/// the revision written, or `None` if the caller gave up first (checked
/// between steps, never while a write is under way, so that a write the
/// store took is never left unheld).
async fn take(
    inner: &Inner,
    holder: &str,
    mine: &Bytes,
    taken: &mut oneshot::Sender<Result<(), StoreError>>,
) -> Result<Option<u64>, StoreError> {
    let mut backoff = FIRST_BACKOFF;
    // The revision a holder last wrote, and since when it has not changed.
    let mut watched: Option<(u64, Instant)> = None;
    loop {
        let current = inner.kv.get(&inner.key).await?;
        let expected = match &current {
            None => None,
            Some(entry) => match held_for(entry) {
                None => Some(entry.revision),
                Some(ttl) => match watched {
                    Some((revision, since))
                        if revision == entry.revision && since.elapsed() >= ttl =>
                    {
                        tracing::warn!(
                            lease = inner.name,
                            "taking over a lease whose holder has not renewed it for {ttl:?}"
                        );
                        Some(entry.revision)
                    }
                    _ => {
                        if watched.is_none_or(|(revision, _)| revision != entry.revision) {
                            watched = Some((entry.revision, Instant::now()));
                        }
                        tokio::select! {
                            () = taken.closed() => return Ok(None),
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            },
        };
        if taken.is_closed() {
            return Ok(None);
        }
        match inner
            .kv
            .compare_and_set(&inner.key, mine.clone(), expected)
            .await
        {
            Ok(revision) => return Ok(Some(revision)),
            // Another process took it first: look again.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => {
                return match inner.kv.get(&inner.key).await {
                    // The write landed though its answer was lost.
                    Ok(Some(entry)) if holder_of(&entry).as_deref() == Some(holder) => {
                        Ok(Some(entry.revision))
                    }
                    _ => Err(e),
                };
            }
        }
    }
}

/// Holds a [`Lease`] while it lives; dropping it gives the lease back
/// (in the background: [`LeaseGuard::release`] waits for it).
pub struct LeaseGuard {
    stop: Option<oneshot::Sender<Option<oneshot::Sender<()>>>>,
}

impl LeaseGuard {
    /// Gives the lease back and waits until the store has it.
    pub async fn release(mut self) {
        let (done, given_back) = oneshot::channel();
        if let Some(stop) = self.stop.take()
            && stop.send(Some(done)).is_ok()
        {
            let _ = given_back.await;
        }
    }
}

/// Renews the lease every third of its time to live until told to stop,
/// then gives it back, then lets the next local waiter in.
async fn hold(
    inner: Arc<Inner>,
    holder: String,
    mine: Bytes,
    mut revision: u64,
    local: OwnedMutexGuard<()>,
    mut stop: oneshot::Receiver<Option<oneshot::Sender<()>>>,
) {
    let every = inner.ttl / 3;
    // After a failed renewal, sooner: a store back from an outage sees the
    // renewal before a waiter's time runs out.
    let again = every.min(RETRY_RENEWAL);
    let mut wait = every;
    let mut held = true;
    let mut renewed = Instant::now();
    let done = loop {
        match tokio::time::timeout(wait, &mut stop).await {
            Ok(Ok(done)) => break done,
            // The guard was dropped.
            Ok(Err(_)) => break None,
            Err(_) if !held => {}
            Err(_) => match renew(&inner, &holder, &mine, revision).await {
                Ok(Some(now)) => {
                    revision = now;
                    renewed = Instant::now();
                    wait = every;
                }
                Ok(None) => {
                    held = false;
                    tracing::error!(
                        lease = inner.name,
                        "lost the lease: another process took it over after this one could not renew it for {:?}; what this holder does from now on is not excluded",
                        inner.ttl
                    );
                }
                Err(e) => {
                    wait = again;
                    tracing::warn!(
                        lease = inner.name,
                        error = %e,
                        unrenewed = ?renewed.elapsed(),
                        "could not renew the lease; trying again"
                    );
                }
            },
        }
    };
    if held {
        give_back(&inner, &holder, revision).await;
    }
    drop(local);
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// Writes the lease again over `revision`: its new revision, or `None`
/// if another holder has it.
async fn renew(
    inner: &Inner,
    holder: &str,
    mine: &Bytes,
    revision: u64,
) -> Result<Option<u64>, StoreError> {
    match inner
        .kv
        .compare_and_set(&inner.key, mine.clone(), Some(revision))
        .await
    {
        Ok(revision) => Ok(Some(revision)),
        Err(StoreError::Conflict { .. }) => {
            // An earlier renewal may have landed unanswered: then it is
            // still ours, at the revision that renewal wrote.
            let current = inner.kv.get(&inner.key).await?;
            Ok(current
                .filter(|entry| holder_of(entry).as_deref() == Some(holder))
                .map(|entry| entry.revision))
        }
        Err(e) => Err(e),
    }
}

/// Writes a released value over the holder's own revision only, so a
/// lease another process has taken over stays theirs.
async fn give_back(inner: &Inner, holder: &str, mut revision: u64) {
    let released = match encode(&Record {
        holder: None,
        ttl_ms: millis(inner.ttl),
    }) {
        Ok(released) => released,
        Err(e) => {
            tracing::error!(lease = inner.name, error = %e, "cannot encode a released lease");
            return;
        }
    };
    for _ in 0..3 {
        match inner
            .kv
            .compare_and_set(&inner.key, released.clone(), Some(revision))
            .await
        {
            Ok(_) => return,
            // Still ours (at another revision if a renewal landed
            // unanswered)? Then try again; else it is not ours to give.
            Err(_) => match inner.kv.get(&inner.key).await {
                Ok(Some(entry)) if holder_of(&entry).as_deref() == Some(holder) => {
                    revision = entry.revision;
                }
                Ok(_) => return,
                Err(_) => tokio::time::sleep(FIRST_BACKOFF).await,
            },
        }
    }
    tracing::warn!(
        lease = inner.name,
        "could not give the lease back; others take it over after {:?}",
        inner.ttl
    );
}

/// How long the lease in `entry` stays held without renewal; `None` if it
/// was given back. A value this build cannot read counts as held for the
/// default time, so a newer holder is not cut short.
fn held_for(entry: &Entry) -> Option<Duration> {
    match serde_json::from_slice::<Record>(&entry.value) {
        Ok(Record { holder: None, .. }) => None,
        Ok(Record {
            ttl_ms,
            holder: Some(_),
        }) => Some(Duration::from_millis(ttl_ms)),
        Err(_) => Some(Lease::TTL),
    }
}

fn holder_of(entry: &Entry) -> Option<String> {
    serde_json::from_slice::<Record>(&entry.value)
        .ok()
        .and_then(|r| r.holder)
}

fn encode(record: &Record) -> Result<Bytes, StoreError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A name for one acquisition, unique across processes: this process's
/// random id and a count.
fn holder_id() -> String {
    static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let process = PROCESS.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            // Without randomness: the process id and the start time tell
            // processes apart as well in practice.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            bytes[..4].copy_from_slice(&std::process::id().to_le_bytes());
            bytes[4..].copy_from_slice(&nanos.to_le_bytes());
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    format!("{process}-{}", COUNT.fetch_add(1, Ordering::Relaxed))
}
