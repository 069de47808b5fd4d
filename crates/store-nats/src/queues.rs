//! Work queues ([`QueueStore`]) on one stream, `<ns>_QUEUES`.
//!
//! A JetStream consumer keeps its own clock (ack wait, nak delays) and its
//! own attempt count, while the trait takes the caller's clock, counts
//! attempts only for claims that were tried (`defer` gives one back) and
//! holds a grouped message back until its group's earlier ones are
//! acknowledged. So no consumer owns the queue: the state of every message
//! lives in the stream itself, and every change of it is a compare-and-set.
//!
//! ## Layout
//! Events enqueued together (one enqueue batch, see [`Queues::writes`])
//! share one message, a pack: on a cluster syncing every write, the cost
//! of a write is per stored message, so a pack's claim, its releases and
//! acknowledgements are one write for many events. Its subject is
//! `<ns>.q.<queue>.<first>.<size>` (the queue's name is one base64url
//! token, so one queue's filter never matches another's): the sequence
//! numbers `first..first + size` it was made with. Its payload is its
//! events' payloads one after another; its header [`MEMBERS`] holds each
//! event's sequence number, payload length and state: when it is due
//! (not-before, or the end of its lease while claimed), the attempts so
//! far, the claimant's node name while claimed, its ordering group. A pack
//! of one is the event's own message, `<ns>.q.<queue>.<seq>`, its state in
//! headers of their own ([`DUE`], [`ATTEMPTS`], [`CLAIMANT`], [`GROUP`]):
//! named messages (`enqueue_once`) are always alone, and a queue written
//! before packs reads as packs of one. The stream keeps one message per
//! subject. A claim, release or defer publishes the pack again with the
//! new states, on condition that its last message is the one read
//! (`Nats-Expected-Last-Subject-Sequence`): of two nodes racing for one
//! event, the stream's leader lets exactly one through. An ack removes
//! the event from its pack, and purges the subject with the pack's last
//! event, which also fails any claim still racing for it. Changes of one
//! pack made while a write of it is in flight go together in the next
//! ([`Queues::changes`]); a node finds an event's pack in what it
//! claimed, else in the list of the queue's subjects.
//!
//! ## Sequence numbers
//! Per queue, from 1, never reused: a counter subject `<ns>.qn.<queue>`
//! holds the last one given. An enqueue with a grouped message publishes
//! the counter (advanced by the batch's size, on condition of its last
//! value) and the packs in one atomic batch (JetStream 2.12's atomic
//! publish): a grouped sequence number is visible exactly when its message
//! is, so a grouped message seen in a listing implies every earlier one of
//! its group is seen too, unless acknowledged. That is what makes ordering
//! groups exact: a grouped message is claimable when no earlier message
//! of its group is in the listing. Ungrouped events are numbered from a
//! block of [`BLOCK`] numbers the node reserved with one counter write
//! ([`Queues::blocks`]), and written without the counter: nodes enqueueing
//! to one queue at once do not take turns at it (a node whose idea of the
//! counter is stale loses every race to one whose is not). Their numbers
//! are unique and increase per node, not across nodes: claim order among
//! ungrouped events of different nodes follows their numbers, not their
//! arrival, and a block's unused numbers (a node restarted) are skipped.
//! Each message carries a `Nats-Msg-Id` that stays the same through the
//! retries of one enqueue: a try answered as refused may have been stored
//! (seen after a partition), and its retry is then refused as a
//! duplicate instead of storing the events twice.
//! A message enqueued with a name (`enqueue_once`: a trigger's invocation
//! id) carries a digest of its queue and name instead, the same for every
//! submission of it, from any node or process, so JetStream refuses a
//! second one within the stream's duplicate window ([`ONCE_WINDOW_MS`]).
//! An atomic batch with such a duplicate is refused as a whole, without
//! saying which message it was: its messages then go again one by one
//! (named messages are batched apart from unnamed ones, one per call, so
//! that no call's messages are ever split apart).
//!
//! ## Waking the other nodes
//! After each enqueue batch the queue's name goes out on the core NATS
//! subject `<ns>.qw` (not stored, at most once): every node's consumers
//! of that queue wake at once instead of at their next poll.
//!
//! ## Costs
//! A claim lists the queue, then writes one compare-and-set per pack it
//! claims from, concurrently. The listing is one direct multi-get (the last
//! message of each subject, with its payload, from one replica's store:
//! a read, no Raft entry), of the queue's front only when that is enough
//! (see [`Queues::candidates`]); a whole queue of more than 1,024 packs, too long
//! for one answer, is listed by an ordered consumer instead (headers only,
//! then one read per pack claimed from), whose creation and removal are
//! entries in the meta group's log: on a cluster syncing every write,
//! such a listing cost more than the claim itself. An enqueue of ungrouped
//! events is one message per pack (one atomic batch when several), and a
//! counter write per block; with a grouped one, one atomic batch with the
//! counter (two round trips); acks, releases
//! and defers of one pack are one read and one write (or purge) per write
//! in flight; `depth` and `queues` read the stream's subjects. Listing is
//! linear in the queue's length: a queue is meant to be drained, not to
//! hold a large backlog for long.
//!
//! ## Bounds
//! - Times are the callers' clocks: a node whose clock runs ahead sees a
//!   lease end early by that much, so nodes' clocks must agree within the
//!   lease's margin for a running attempt never to be claimed again.
//! - A release, defer or ack is not checked against the claimant (as on one
//!   node): a claimant whose lease ran out and whose message another node
//!   claimed can still end that claim.
//! - A listing may come from a replica that lags the leader (direct gets
//!   are on for this stream only, so any replica answers them): it is the
//!   state after some prefix of the stream, so a message it shows claimable
//!   may no longer be (the claim's compare-and-set, against the leader,
//!   refuses it) but a grouped message it shows first of its group is (an
//!   acknowledgement is never undone); `next_due` may be early by the lag.
//! - `depth` counts a pack's events until its last one is acknowledged:
//!   it exceeds what the queue holds by the events acknowledged from packs
//!   not yet empty (at most `PACK_MAX - 1` per pack).
//! - A pack claimed from moves to the stream's end: its events still due
//!   from their enqueue wait behind the front of the queue (see
//!   [`Queues::candidates`]) until a claim lists the whole queue.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};

use gust_store::{Claimed, Peeked, QueueStore, StoreError};

use crate::batch::Batch;
use crate::group::GroupCommit;
use crate::meta::{UNHEARD_RETRIES, refusal_code, unacknowledged};
use crate::{NatsOptions, NatsStore, backend, durable_stream, ensure_stream};

/// When the message is claimable (Unix ms): its not-before, or while it
/// is claimed, the end of its lease.
const DUE: &str = "Gust-Due";
/// Claims so far (the attempt number of the last claim).
const ATTEMPTS: &str = "Gust-Attempts";
/// The node holding the claim (`NatsOptions::client_name`); absent when unclaimed.
const CLAIMANT: &str = "Gust-Claimant";
/// The ordering group, base64url (a group is any string, a header value is not).
const GROUP: &str = "Gust-Group";
/// A pack's members, in sequence order, comma-separated, each
/// `seq:due:attempts:payload length:claimant:group` (the claimant
/// base64url, it and the group empty when absent).
const MEMBERS: &str = "Gust-Members";
/// Most events in one pack.
const PACK_MAX: usize = 64;
/// Most payload bytes in one pack (an event larger than this goes alone).
const PACK_MAX_BYTES: usize = 256 << 10;
/// Sequence numbers a node reserves for its ungrouped events at a time
/// (see [`Queues::blocks`]).
const BLOCK: u64 = 1024;
/// Most remembered places of claimed events (see [`Queues::placed`]).
const PLACED_MAX: usize = 100_000;

/// JetStream's error codes for a failed `Nats-Expected-Last-Subject-Sequence`.
const WRONG_LAST_SEQUENCE: u64 = 10071;
const WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;
/// JetStream's error codes for a message whose `Nats-Msg-Id` it stored
/// (in an atomic batch), or is storing, within the duplicate window.
const DUPLICATE_IN_BATCH: u64 = 10201;
const DUPLICATE_IN_PROCESS: u64 = 10158;
/// For how long the stream refuses a `Nats-Msg-Id` it stored: what
/// `enqueue_once` promises (JetStream's default duplicate window).
pub(crate) const ONCE_WINDOW_MS: u64 = 120_000;
/// Most messages one atomic batch may hold (the server's limit).
const MAX_BATCH: usize = 1000;
/// Most bytes of payloads one direct listing may carry (past it, the
/// answer is cut short and the queue listed by a consumer instead).
const LISTING_MAX_BYTES: usize = 8 << 20;
/// How long a listing waits for its next message before it checks
/// whether it has them all.
const LISTING_IDLE: std::time::Duration = std::time::Duration::from_millis(200);
/// Compare-and-set attempts before a write reports the contention.
const RETRIES: usize = 64;
/// For how long after a claim lost a race to another node this node's
/// claims on that queue spread out (see [`spread`]).
const CONTENDED_FOR: std::time::Duration = std::time::Duration::from_secs(5);
/// A spread claim picks among this many times `max` of the first claimable.
const SPREAD: usize = 4;
/// A claim reads the first `SPREAD × max` plus this many messages of the
/// queue (more stand in for those a lagging listing shows claimable).
const FRONT_SPARE: usize = 16;

/// The queues' stream, and what this node remembers of it.
pub(crate) struct Queues {
    /// For single writes of enqueues (the counter, a pack alone).
    js: jetstream::Context,
    stream: stream::Stream,
    /// Its name, for direct gets.
    stream_name: String,
    /// `<ns>.q`: messages.
    base: String,
    /// `<ns>.qn`: per-queue counters.
    counters: String,
    /// `<ns>.qw`: core NATS (not stored): a queue's name after each
    /// enqueue to it, for the other nodes' consumers.
    wakes: String,
    /// This node's name, written into its claims.
    claimant: String,
    /// Per queue, the counter's last message as this node last saw it
    /// (its stream sequence, the last number given): an enqueue's guess,
    /// corrected by the compare-and-set when another node moved it.
    counter_cache: Mutex<HashMap<String, (u64, u64)>>,
    /// Enqueues of this node, per queue, written together while one batch
    /// of that queue is in flight (a group commit): concurrent
    /// submissions share one counter advance instead of racing for it.
    writes: Arc<GroupCommit<Pending, Option<u64>>>,
    /// Per queue: when a claim on it last lost a race.
    lost_race: Mutex<HashMap<String, std::time::Instant>>,
    /// The pack of each event this node claimed and has not changed
    /// since (a pack never moves): an acknowledgement or release finds it
    /// here, else in a listing of the queue's subjects. Cleared past
    /// [`PLACED_MAX`] (events claimed here and finished elsewhere).
    placed: Mutex<HashMap<(String, u64), PackId>>,
    /// Changes of one pack's events (acknowledgements, releases), written
    /// together while one write of that pack is in flight: one
    /// read-modify-write for all of them.
    changes: Arc<GroupCommit<(u64, Change), bool>>,
    /// Per queue, the sequence numbers this node reserved and has not
    /// given yet, `[next, end)`: ungrouped events are numbered from them
    /// without a write of the counter each.
    blocks: Mutex<HashMap<String, (u64, u64)>>,
    /// Most events in one pack ([`PACK_MAX`]; tests set fewer).
    pack_max: std::sync::atomic::AtomicUsize,
}

pub(crate) async fn open(
    js: &jetstream::Context,
    options: &NatsOptions,
) -> Result<Queues, StoreError> {
    let base = format!("{}.q", options.namespace);
    let counters = format!("{}.qn", options.namespace);
    let mut config = durable_stream(
        options,
        "QUEUES",
        vec![format!("{base}.>"), format!("{counters}.>")],
    );
    config.max_messages_per_subject = 1;
    config.discard = stream::DiscardPolicy::Old;
    config.allow_atomic_publish = true;
    // Listings are direct multi-gets, which any replica answers (see
    // "Bounds" for what a lagging one means); every other read names the
    // leader (`STREAM.MSG.GET`).
    config.allow_direct = true;
    // What `enqueue_once` promises rests on it (JetStream's default, said
    // here so that it is ours).
    config.duplicate_window = std::time::Duration::from_millis(ONCE_WINDOW_MS);
    let stream_name = config.name.clone();
    let stream = ensure_stream(js, config).await?;
    Ok(Queues {
        js: js.clone(),
        stream,
        stream_name,
        base,
        counters,
        wakes: format!("{}.qw", options.namespace),
        claimant: options.client_name.clone(),
        counter_cache: Mutex::new(HashMap::new()),
        writes: Arc::new(GroupCommit::new(MAX_BATCH - 1)),
        lost_race: Mutex::new(HashMap::new()),
        placed: Mutex::new(HashMap::new()),
        blocks: Mutex::new(HashMap::new()),
        changes: Arc::new(GroupCommit::new(MAX_BATCH)),
        pack_max: std::sync::atomic::AtomicUsize::new(PACK_MAX),
    })
}

/// One message waiting for an enqueue batch (see [`Queues::writes`]).
#[derive(Debug, Clone)]
struct Pending {
    payload: Bytes,
    state: State,
    /// Its `Nats-Msg-Id` when the caller named it (`enqueue_once`).
    once: Option<String>,
}

/// What one enqueue batch came to.
enum Appended {
    /// Per message, its sequence number; `None` for a named message the
    /// queue already held (within the duplicate window).
    Stored(Vec<Option<u64>>),
    /// Refused because one of its named messages was stored before, not
    /// known which: each message goes again alone.
    Split,
}

/// The `Nats-Msg-Id` of a message named `id` in `queue`: a digest, so that
/// any name fits in a header and names of different queues never meet.
fn once_id(queue: &str, id: &str) -> String {
    let digest = gust_store::digest_of(format!("{}:{queue}{id}", queue.len()).as_bytes());
    format!("o{}", digest.trim_start_matches("sha256:"))
}

/// A message's state, as its headers hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    due: u64,
    attempts: u32,
    claimant: Option<String>,
    group: Option<String>,
}

impl State {
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(DUE, self.due.to_string().as_str());
        headers.insert(ATTEMPTS, self.attempts.to_string().as_str());
        if let Some(claimant) = &self.claimant {
            headers.insert(CLAIMANT, claimant.as_str());
        }
        if let Some(group) = &self.group {
            headers.insert(GROUP, group.as_str());
        }
        headers
    }

    fn read(headers: Option<&HeaderMap>) -> Result<State, StoreError> {
        let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let number = |name: &str| -> Result<u64, StoreError> {
            get(name)
                .ok_or_else(|| StoreError::Corrupt(format!("a queued message has no {name}")))?
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("a queued message's {name}: {e}")))
        };
        Ok(State {
            due: number(DUE)?,
            attempts: u32::try_from(number(ATTEMPTS)?)
                .map_err(|e| StoreError::Corrupt(format!("a queued message's {ATTEMPTS}: {e}")))?,
            claimant: get(CLAIMANT).map(str::to_string),
            group: get(GROUP).map(str::to_string),
        })
    }
}

/// One event of a listing.
#[derive(Debug, Clone)]
struct Item {
    seq: u64,
    state: State,
    /// The stream sequence of its pack's message, when listed with
    /// payloads (0: not known).
    at: u64,
    /// Its payload, when listed with payloads.
    payload: Option<Bytes>,
    /// The pack that holds it.
    pack: PackId,
}

/// Where a pack is: its first sequence number and how many events it was
/// made with (its subject says both; members leave it, none join).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PackId {
    first: u64,
    size: u64,
}

impl PackId {
    /// The subject's tokens after the queue's: `<first>` for a pack of
    /// one (each event's own message, as before packs), `<first>.<size>`.
    fn parse(rest: &str) -> Option<PackId> {
        match rest.split_once('.') {
            None => Some(PackId {
                first: rest.parse().ok()?,
                size: 1,
            }),
            Some((first, size)) => Some(PackId {
                first: first.parse().ok()?,
                size: size.parse().ok().filter(|n| *n > 1)?,
            }),
        }
    }

    fn contains(&self, seq: u64) -> bool {
        seq >= self.first && seq - self.first < self.size
    }
}

/// One event in a pack.
#[derive(Debug, Clone)]
struct Member {
    seq: u64,
    state: State,
    payload: Bytes,
}

/// One stored message: the events one enqueue batch wrote together, each
/// with its own state, so that a claim, release or acknowledgement of
/// several of them is one write.
#[derive(Debug, Clone)]
struct Pack {
    id: PackId,
    /// Its message's stream sequence (0: not known).
    at: u64,
    members: Vec<Member>,
}

impl Pack {
    /// A stored message of pack `id`: a pack of one holds its state in
    /// [`DUE`], [`ATTEMPTS`], [`CLAIMANT`] and [`GROUP`] and its payload
    /// whole; a larger one its members' states in [`MEMBERS`] and their
    /// payloads one after another. Without `payload` (a headers-only
    /// listing), the members' payloads are empty.
    fn read(
        id: PackId,
        at: u64,
        headers: Option<&HeaderMap>,
        payload: Option<Bytes>,
    ) -> Result<Pack, StoreError> {
        let Some(members) = headers.and_then(|h| h.get(MEMBERS)) else {
            return Ok(Pack {
                id,
                at,
                members: vec![Member {
                    seq: id.first,
                    state: State::read(headers)?,
                    payload: payload.unwrap_or_default(),
                }],
            });
        };
        let corrupt = |what: &str| StoreError::Corrupt(format!("pack {}: {what}", id.first));
        let mut offset = 0usize;
        let mut out = Vec::new();
        for entry in members.as_str().split(',').filter(|e| !e.is_empty()) {
            let fields: Vec<&str> = entry.split(':').collect();
            let [seq, due, attempts, len, claimant, group] = fields[..] else {
                return Err(corrupt(&format!("member `{entry}`")));
            };
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|e| corrupt(&format!("`{entry}`: {e}")))
            };
            let len = usize::try_from(number(len)?).map_err(|e| corrupt(&e.to_string()))?;
            let claimant = match claimant {
                "" => None,
                b64 => Some(
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(b64)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| corrupt(&format!("claimant of `{entry}`")))?,
                ),
            };
            let end = offset
                .checked_add(len)
                .ok_or_else(|| corrupt(&format!("member `{entry}`")))?;
            let payload = match &payload {
                Some(body) => body
                    .get(offset..end)
                    .map(|b| body.slice_ref(b))
                    .ok_or_else(|| corrupt("shorter than its members"))?,
                None => Bytes::new(),
            };
            offset = end;
            out.push(Member {
                seq: number(seq)?,
                state: State {
                    due: number(due)?,
                    attempts: u32::try_from(number(attempts)?)
                        .map_err(|e| corrupt(&e.to_string()))?,
                    claimant,
                    group: (!group.is_empty()).then(|| group.to_string()),
                },
                payload,
            });
        }
        if out.iter().any(|m| !id.contains(m.seq)) {
            return Err(corrupt("a member outside its range"));
        }
        Ok(Pack {
            id,
            at,
            members: out,
        })
    }

    /// Its message's headers and payload (see [`Pack::read`]).
    fn encode(&self) -> (HeaderMap, Bytes) {
        if let ([only], 1) = (&self.members[..], self.id.size) {
            return (only.state.headers(), only.payload.clone());
        }
        let mut entries = String::new();
        let mut body =
            bytes::BytesMut::with_capacity(self.members.iter().map(|m| m.payload.len()).sum());
        for m in &self.members {
            use std::fmt::Write as _;
            let claimant = m
                .state
                .claimant
                .as_deref()
                .map(|c| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c))
                .unwrap_or_default();
            let _ = write!(
                entries,
                "{}{}:{}:{}:{}:{claimant}:{}",
                if entries.is_empty() { "" } else { "," },
                m.seq,
                m.state.due,
                m.state.attempts,
                m.payload.len(),
                m.state.group.as_deref().unwrap_or_default(),
            );
            body.extend_from_slice(&m.payload);
        }
        let mut headers = HeaderMap::new();
        headers.insert(MEMBERS, entries.as_str());
        (headers, body.freeze())
    }

    /// Its members as listed (payloads only when `payloads`).
    fn items(&self, payloads: bool) -> impl Iterator<Item = Item> + '_ {
        self.members.iter().map(move |m| Item {
            seq: m.seq,
            state: m.state.clone(),
            at: if payloads { self.at } else { 0 },
            payload: payloads.then(|| m.payload.clone()),
            pack: self.id,
        })
    }

    /// The pack again from its listed members, when they were listed with
    /// their payloads (a listing holds every member of each pack listed).
    fn from_items(id: PackId, items: &[&Item]) -> Option<Pack> {
        let at = items.first()?.at;
        let mut members = Vec::with_capacity(items.len());
        for item in items {
            if item.at != at || at == 0 {
                return None;
            }
            members.push(Member {
                seq: item.seq,
                state: item.state.clone(),
                payload: item.payload.clone()?,
            });
        }
        members.sort_unstable_by_key(|m| m.seq);
        Some(Pack { id, at, members })
    }
}

/// A change of one event of a pack.
#[derive(Debug, Clone, Copy)]
enum Change {
    Ack,
    /// Claimable again from `not_before`; with `refund`, the claim does
    /// not count as an attempt.
    Unclaim {
        not_before: u64,
        refund: bool,
    },
}

/// The messages claimable at `now`, in claim order (due time, then
/// sequence), at most `max`: an ungrouped message once due, a grouped one
/// once due and the first of its group still queued.
fn claimable(items: &[Item], now: u64, max: usize) -> Vec<u64> {
    let mut due: Vec<(u64, u64)> = heads(items)
        .filter(|item| item.state.due <= now)
        .map(|item| (item.state.due, item.seq))
        .collect();
    due.sort_unstable();
    due.into_iter().take(max).map(|(_, seq)| seq).collect()
}

/// Reorders claim picks so that nodes racing for one queue mostly take
/// different packs: the first `SPREAD × max` picks are ranked by a hash
/// of their pack (`pack_of`) and `node`, in sequence order within a pack
/// (the rest follow in order). Only after a claim lost a race: a node
/// alone claims in strict order.
fn spread(picks: &mut [u64], node: &str, max: usize, pack_of: impl Fn(u64) -> u64) {
    let window = picks.len().min(max.saturating_mul(SPREAD));
    picks[..window].sort_by_key(|seq| {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        (node, pack_of(*seq)).hash(&mut hasher);
        (hasher.finish(), *seq)
    });
}

/// When the next message becomes claimable: the earliest due time of the
/// messages no group holds back.
fn next_due(items: &[Item]) -> Option<u64> {
    heads(items).map(|item| item.state.due).min()
}

/// The messages not held back by an earlier one of their group.
fn heads(items: &[Item]) -> impl Iterator<Item = &Item> {
    let mut first: HashMap<&str, u64> = HashMap::new();
    for item in items {
        if let Some(group) = &item.state.group {
            let seq = first.entry(group.as_str()).or_insert(item.seq);
            *seq = (*seq).min(item.seq);
        }
    }
    items.iter().filter(move |item| match &item.state.group {
        Some(group) => first.get(group.as_str()) == Some(&item.seq),
        None => true,
    })
}

/// How an enqueue batch's `items` go into packs: each pack's size, in
/// order. A named message goes alone (its `Nats-Msg-Id` is its own);
/// others together, up to `max` events and [`PACK_MAX_BYTES`].
fn pack_sizes(items: &[Pending], max: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let (mut n, mut bytes) = (0usize, 0usize);
    for item in items {
        let len = item.payload.len();
        if n > 0 && (item.once.is_some() || n >= max || bytes + len > PACK_MAX_BYTES) {
            sizes.push(n);
            (n, bytes) = (0, 0);
        }
        n += 1;
        bytes += len;
        if item.once.is_some() {
            sizes.push(n);
            (n, bytes) = (0, 0);
        }
    }
    if n > 0 {
        sizes.push(n);
    }
    sizes
}

/// The pack of `items`, numbered from `first`, as enqueued.
fn new_pack(first: u64, items: &[Pending]) -> Pack {
    Pack {
        id: PackId {
            first,
            size: items.len() as u64,
        },
        at: 0,
        members: items
            .iter()
            .zip(first..)
            .map(|(item, seq)| Member {
                seq,
                state: item.state.clone(),
                payload: item.payload.clone(),
            })
            .collect(),
    }
}

/// A queue's name as one subject token.
fn queue_token(queue: &str) -> String {
    if queue.is_empty() {
        "=".into()
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(queue)
    }
}

fn queue_of_token(token: &str) -> Result<String, StoreError> {
    if token == "=" {
        return Ok(String::new());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| StoreError::Corrupt(format!("queue token `{token}`: {e}")))?;
    String::from_utf8(bytes).map_err(|e| StoreError::Corrupt(format!("queue token `{token}`: {e}")))
}

impl Queues {
    /// The subject of pack `id`.
    fn subject(&self, queue: &str, id: PackId) -> String {
        match id.size {
            1 => format!("{}.{}.{}", self.base, queue_token(queue), id.first),
            n => format!("{}.{}.{}.{n}", self.base, queue_token(queue), id.first),
        }
    }

    /// Pack `id`'s message with its payload, if it has one still.
    async fn read_pack(&self, queue: &str, id: PackId) -> Result<Option<Pack>, StoreError> {
        let Some(message) = self.last(&self.subject(queue, id)).await? else {
            return Ok(None);
        };
        Pack::read(
            id,
            message.sequence,
            Some(&message.headers),
            Some(message.payload),
        )
        .map(Some)
    }

    fn counter_subject(&self, queue: &str) -> String {
        format!("{}.{}", self.counters, queue_token(queue))
    }

    /// The subject's last message, if it has one.
    async fn last(&self, subject: &str) -> Result<Option<StreamMessage>, StoreError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    /// The queue's messages with their state and payload in one direct
    /// get (answered by one replica from its store, a read under its lock:
    /// no consumer created, no Raft entry). All of them (`front: None`:
    /// the last message of each subject under the queue's filter, at most
    /// 1,024 subjects), or the first `front` in stream order (the next
    /// messages under the filter from the first: the stream keeps one per
    /// subject). `None` when the queue holds more messages than one answer
    /// may carry, or when no server answers direct gets (a node of an
    /// older version turned them off); else the messages and whether they
    /// are all.
    async fn list_direct(
        &self,
        client: &async_nats::Client,
        queue: &str,
        front: Option<usize>,
    ) -> Result<Option<(Vec<Item>, bool)>, StoreError> {
        let prefix = format!("{}.{}.", self.base, queue_token(queue));
        let inbox = client.new_inbox();
        let mut answers = client.subscribe(inbox.clone()).await.map_err(backend)?;
        let request = match front {
            None => serde_json::json!({
                "multi_last": [format!("{prefix}>")],
                "max_bytes": LISTING_MAX_BYTES,
            }),
            Some(front) => serde_json::json!({
                "next_by_subj": format!("{prefix}>"),
                "batch": front.max(1),
                "max_bytes": LISTING_MAX_BYTES,
            }),
        };
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.stream_name),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(backend)?;
        let mut items = Vec::new();
        let deadline = tokio::time::Instant::now() + crate::REQUEST_TIMEOUT;
        loop {
            let answer = tokio::time::timeout_at(deadline, answers.next())
                .await
                .map_err(|_| StoreError::Unavailable("a queue listing timed out".into()))?
                .ok_or(StoreError::Closed)?;
            if let Some(status) = answer.status {
                return match status.as_u16() {
                    // The end: complete unless the answer was cut short
                    // (or does not say).
                    204 => {
                        let pending = answer
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("Nats-Num-Pending"))
                            .and_then(|v| v.as_str().parse::<u64>().ok());
                        Ok(Some((items, pending == Some(0))))
                    }
                    // No message under the filter: "No Results" for all,
                    // "Message Not Found" for a front (for all, that one
                    // means a message failed to load).
                    404 if items.is_empty()
                        && (front.is_some()
                            || answer
                                .description
                                .as_deref()
                                .is_some_and(|d| d.eq_ignore_ascii_case("no results"))) =>
                    {
                        Ok(Some((items, true)))
                    }
                    // Too many subjects for one answer; no replica serves
                    // direct gets.
                    413 | 503 => Ok(None),
                    code => Err(StoreError::Unavailable(format!(
                        "a queue listing was refused ({code} {})",
                        answer.description.as_deref().unwrap_or("")
                    ))),
                };
            }
            let headers = answer.headers.as_ref();
            let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
            let subject = header("Nats-Subject").unwrap_or_default();
            let id = subject
                .strip_prefix(prefix.as_str())
                .and_then(PackId::parse)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("`{subject}` is not a queued message"))
                })?;
            let at = header("Nats-Sequence")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| StoreError::Corrupt("a listed message has no sequence".into()))?;
            items.extend(Pack::read(id, at, headers, Some(answer.payload))?.items(true));
        }
    }

    /// Every message of the queue with its state, headers only, from an
    /// ordered consumer: for a queue too long for [`Queues::list_direct`].
    async fn list(&self, queue: &str) -> Result<Vec<Item>, StoreError> {
        let prefix = format!("{}.{}.", self.base, queue_token(queue));
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{prefix}>"),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(backend)?;
        let mut pending = consumer.cached_info().num_pending;
        let mut items = BTreeMap::new();
        if pending == 0 {
            return Ok(Vec::new());
        }
        let mut messages = consumer.messages().await.map_err(backend)?;
        let deadline = tokio::time::Instant::now() + crate::REQUEST_TIMEOUT;
        while pending > 0 {
            let next = tokio::time::timeout(LISTING_IDLE, messages.next()).await;
            let Ok(next) = next else {
                // The consumer's count can include messages acknowledged
                // since (it may run on a replica that applied the purge
                // after counting): the listing is whole once it holds
                // every message the stream holds now.
                if self.listed_all(&prefix, &items).await? {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(StoreError::Backend("the queue listing stalled".into()));
                }
                continue;
            };
            let message = next.ok_or(StoreError::Closed)?.map_err(backend)?;
            let info = message.info().map_err(backend)?;
            pending = info.pending;
            let id = message
                .subject
                .strip_prefix(prefix.as_str())
                .and_then(PackId::parse)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("`{}` is not a queued message", message.subject))
                })?;
            // A later change of a subject replaces what was read of it.
            let pack = Pack::read(id, 0, message.headers.as_ref(), None)?;
            items.insert(id.first, pack.items(false).collect::<Vec<_>>());
        }
        Ok(items.into_values().flatten().collect())
    }

    /// Every message of the queue with its state: in one direct multi-get
    /// with payloads, or from a consumer with headers only when the queue
    /// is too long for that.
    async fn items(
        &self,
        client: &async_nats::Client,
        queue: &str,
    ) -> Result<Vec<Item>, StoreError> {
        match self.list_direct(client, queue, None).await? {
            // Cut short only by the answer's size limit.
            Some((mut items, true)) => {
                items.sort_unstable_by_key(|item| item.seq);
                Ok(items)
            }
            _ => self.list(queue).await,
        }
    }

    /// Messages of the queue from which a claim of `max` can choose: the
    /// front of the queue in stream order when that holds `max` claimable
    /// ones, all due from their enqueue (not before 0), and no grouped
    /// message; else all of them.
    ///
    /// A message rewritten since its enqueue (claimed, released, deferred)
    /// moves to the end of the stream, so the front holds the messages
    /// waiting since they were enqueued: an ungrouped one is claimable on
    /// its own state alone, and one due at 0 comes first in claim order
    /// (due time, then sequence) before any message after the front but
    /// one released or deferred to 0 (a bound: such a message waits
    /// behind the front). A grouped one may wait behind an earlier message
    /// of its group outside the front: only the whole queue says.
    async fn candidates(
        &self,
        client: &async_nats::Client,
        queue: &str,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let front = max.saturating_mul(SPREAD).saturating_add(FRONT_SPARE);
        let Some((mut items, all)) = self.list_direct(client, queue, Some(front)).await? else {
            // No direct gets served: the consumer.
            return self.list(queue).await;
        };
        items.sort_unstable_by_key(|item| item.seq);
        if all {
            return Ok(items);
        }
        let due_from_start = |seq: &u64| {
            items
                .iter()
                .find(|item| item.seq == *seq)
                .is_some_and(|item| item.state.due == 0)
        };
        let picks = claimable(&items, now_ms, max);
        if items.iter().all(|item| item.state.group.is_none())
            && picks.len() >= max
            && picks.iter().all(due_from_start)
        {
            return Ok(items);
        }
        self.items(client, queue).await
    }

    fn lost_race(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        self.lost_race.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a claim on `queue` lost a race lately.
    fn contended(&self, queue: &str) -> bool {
        self.lost_race()
            .get(queue)
            .is_some_and(|at| at.elapsed() < CONTENDED_FOR)
    }

    /// Whether `packs` holds every message under `prefix` now.
    async fn listed_all(
        &self,
        prefix: &str,
        packs: &BTreeMap<u64, Vec<Item>>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .subjects(&format!("{prefix}>"))
            .await?
            .iter()
            .all(|subject| {
                subject
                    .strip_prefix(prefix)
                    .and_then(PackId::parse)
                    .is_some_and(|id| packs.contains_key(&id.first))
            }))
    }

    /// The packs of `queue` (from a listing of its subjects).
    async fn pack_ids(&self, queue: &str) -> Result<Vec<PackId>, StoreError> {
        let prefix = format!("{}.{}.", self.base, queue_token(queue));
        self.subjects(&format!("{prefix}>"))
            .await?
            .iter()
            .map(|subject| {
                subject
                    .strip_prefix(prefix.as_str())
                    .and_then(PackId::parse)
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("`{subject}` is not a queued message"))
                    })
            })
            .collect()
    }

    /// Publishes the pack's new state on condition that its message is
    /// still the one read (`pack.at`); `false` when another write came
    /// first.
    async fn rewrite(
        &self,
        js: &jetstream::Context,
        queue: &str,
        pack: &Pack,
    ) -> Result<bool, StoreError> {
        let (mut headers, payload) = pack.encode();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            pack.at.to_string().as_str(),
        );
        let ack = js
            .publish_with_headers(self.subject(queue, pack.id), headers, payload)
            .await
            .map_err(backend)?;
        match ack.await {
            Ok(_) => Ok(true),
            Err(e) => match refusal_code(&e) {
                Some(WRONG_LAST_SEQUENCE | WRONG_LAST_SEQUENCE_CONSTANT) => Ok(false),
                Some(_) => Err(StoreError::Backend(format!(
                    "JetStream refused the write: {e}"
                ))),
                None => Err(unacknowledged(e)),
            },
        }
    }

    /// The queue's counter: its last message's stream sequence (0: none)
    /// and the last sequence number given.
    async fn counter(&self, queue: &str, fresh: bool) -> Result<(u64, u64), StoreError> {
        if !fresh && let Some(known) = self.cache().get(queue) {
            return Ok(*known);
        }
        let read = match self.last(&self.counter_subject(queue)).await? {
            None => (0, 0),
            Some(message) => {
                let text = std::str::from_utf8(&message.payload).unwrap_or_default();
                let last = text.parse().map_err(|e| {
                    StoreError::Corrupt(format!("the counter of queue `{queue}` ({text:?}): {e}"))
                })?;
                (message.sequence, last)
            }
        };
        self.cache().insert(queue.to_string(), read);
        Ok(read)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        self.counter_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends up to `MAX_BATCH - 1` events in one batch with the
    /// counter, packed (see [`pack_sizes`]); if a named one was stored
    /// before, each goes alone (a batch of named messages holds one
    /// message per call, so no call's messages are split apart).
    async fn append_chunk(
        &self,
        client: &async_nats::Client,
        queue: &str,
        items: &[Pending],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let sizes = pack_sizes(
            items,
            self.pack_max.load(std::sync::atomic::Ordering::Relaxed),
        );
        if items.iter().all(|item| item.state.group.is_none()) {
            return self.append_from_block(client, queue, items, &sizes).await;
        }
        // Each pack carries one id through every try: a try that was
        // stored although its answer said otherwise (seen when a stream
        // leader rejoined after a partition: refused, yet stored) makes
        // the next try a duplicate, which JetStream refuses as such,
        // instead of a second copy of every event in it. A named message
        // (always a pack of its own) has the id every call naming it has.
        let msg_ids: Vec<String> = {
            let batch = crate::batch::batch_id();
            let mut offset = 0;
            sizes
                .iter()
                .enumerate()
                .map(|(i, size)| {
                    let first = &items[offset];
                    offset += size;
                    match (&first.once, size) {
                        (Some(once), 1) => once.clone(),
                        _ => format!("{batch}.{i}"),
                    }
                })
                .collect()
        };
        match self
            .append_batch(client, queue, items, &sizes, &msg_ids)
            .await?
        {
            Appended::Stored(seqs) => Ok(seqs),
            Appended::Split => {
                tracing::debug!(%queue, n = items.len(), "an enqueue batch held a message stored before; each goes alone");
                let mut seqs = Vec::with_capacity(items.len());
                for (item, id) in items.iter().zip(&msg_ids) {
                    let alone = std::slice::from_ref(item);
                    match self
                        .append_batch(client, queue, alone, &[1], std::slice::from_ref(id))
                        .await?
                    {
                        Appended::Stored(seq) => seqs.extend(seq),
                        Appended::Split => {
                            return Err(StoreError::Backend(format!(
                                "queue `{queue}`: a message alone was refused as a duplicate it is not"
                            )));
                        }
                    }
                }
                Ok(seqs)
            }
        }
    }

    /// Appends ungrouped `items`, in packs of `sizes`, numbered from this
    /// node's block: one message when they make one pack (a named one
    /// each alone), else one atomic batch. A try that fails goes again
    /// with the same numbers and `Nats-Msg-Id`s, so a try stored although
    /// its answer was lost is refused as a duplicate, not stored twice.
    async fn append_from_block(
        &self,
        client: &async_nats::Client,
        queue: &str,
        items: &[Pending],
        sizes: &[usize],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let first = self.reserve(queue, items.len() as u64).await?;
        let batch = crate::batch::batch_id();
        let mut messages = Vec::with_capacity(sizes.len());
        let mut offset = 0;
        for (i, size) in sizes.iter().enumerate() {
            let pack = new_pack(first + offset as u64, &items[offset..offset + size]);
            let msg_id = match (&items[offset].once, size) {
                (Some(once), 1) => once.clone(),
                _ => format!("{batch}.{i}"),
            };
            offset += size;
            let (mut headers, payload) = pack.encode();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
            messages.push((self.subject(queue, pack.id), headers, payload));
        }
        let seqs =
            |stored: bool| (first..first + items.len() as u64).map(move |s| stored.then_some(s));
        let named = items.iter().any(|item| item.once.is_some());
        let written = if named || messages.len() == 1 {
            // Each message alone (a named one is refused as a duplicate
            // alone, never with others).
            let writes =
                futures_util::future::join_all(messages.into_iter().map(
                    |(subject, headers, payload)| self.publish_one(subject, headers, payload),
                ))
                .await;
            let mut stored = Vec::with_capacity(items.len());
            for (written, size) in writes.into_iter().zip(sizes) {
                let fresh = written?;
                stored.extend(std::iter::repeat_n(fresh, *size));
            }
            stored
                .into_iter()
                .zip(seqs(true))
                .map(|(fresh, seq)| seq.filter(|_| fresh))
                .collect()
        } else {
            self.publish_packs(client, queue, messages).await?;
            seqs(true).collect()
        };
        // Best effort: the others poll too.
        let _ = client
            .publish(self.wakes.clone(), Bytes::from(queue.to_string()))
            .await;
        Ok(written)
    }

    /// `n` sequence numbers from this node's block of `queue`, the first
    /// returned: a new block when that one has too few left (the counter
    /// moved on by it, on condition of its last value; the rest of the
    /// old one is never given).
    async fn reserve(&self, queue: &str, n: u64) -> Result<u64, StoreError> {
        let take = |blocks: &mut HashMap<String, (u64, u64)>| {
            let (next, end) = blocks.get_mut(queue)?;
            (*end - *next >= n).then(|| {
                *next += n;
                *next - n
            })
        };
        if let Some(first) = take(&mut self.blocks_of()) {
            return Ok(first);
        }
        let size = n.max(BLOCK);
        for attempt in 0..RETRIES {
            if attempt > 0 {
                crate::back_off(attempt).await;
            }
            let (counter_seq, last) = self.counter(queue, attempt > 0).await?;
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                counter_seq.to_string().as_str(),
            );
            let ack = self
                .js
                .publish_with_headers(
                    self.counter_subject(queue),
                    headers,
                    Bytes::from((last + size).to_string()),
                )
                .await
                .map_err(backend)?;
            match ack.await {
                Ok(ack) => {
                    self.cache()
                        .insert(queue.to_string(), (ack.sequence, last + size));
                    self.blocks_of()
                        .insert(queue.to_string(), (last + 1 + n, last + 1 + size));
                    return Ok(last + 1);
                }
                Err(e) => match refusal_code(&e) {
                    Some(WRONG_LAST_SEQUENCE | WRONG_LAST_SEQUENCE_CONSTANT) => {}
                    None if e.kind()
                        == async_nats::jetstream::context::PublishErrorKind::StreamNotFound => {}
                    Some(_) => {
                        return Err(StoreError::Backend(format!(
                            "JetStream refused the write: {e}"
                        )));
                    }
                    None => {
                        self.cache().remove(queue);
                        return Err(unacknowledged(e));
                    }
                },
            }
        }
        Err(StoreError::Backend(format!(
            "queue `{queue}`: reserving sequence numbers was refused {RETRIES} times (other nodes enqueueing at once, or the stream without a leader); try again"
        )))
    }

    fn blocks_of(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes one message, again while no server takes it (nothing
    /// written) or an earlier try with its `Nats-Msg-Id` is in process;
    /// `false` when the stream held that id already (an unnamed message's
    /// earlier try, a named one's earlier submission).
    async fn publish_one(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<bool, StoreError> {
        let mut last_error = None;
        for attempt in 0..UNHEARD_RETRIES {
            if attempt > 0 {
                crate::back_off(attempt).await;
            }
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
                .map_err(backend)?;
            match ack.await {
                Ok(ack) => return Ok(!ack.duplicate),
                // Not stored: the same message again.
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::context::PublishErrorKind::StreamNotFound
                        || refusal_code(&e) == Some(DUPLICATE_IN_PROCESS) =>
                {
                    last_error = Some(e.to_string());
                }
                Err(e) => match refusal_code(&e) {
                    Some(_) => {
                        return Err(StoreError::Backend(format!(
                            "JetStream refused the write: {e}"
                        )));
                    }
                    None => return Err(unacknowledged(e)),
                },
            }
        }
        Err(unacknowledged(last_error.unwrap_or_default()))
    }

    /// Publishes `messages` (packs) as one atomic batch, again while no
    /// server takes it or an earlier try is still in process; a try
    /// refused as a duplicate was stored by an earlier one.
    async fn publish_packs(
        &self,
        client: &async_nats::Client,
        queue: &str,
        messages: Vec<(String, HeaderMap, Bytes)>,
    ) -> Result<(), StoreError> {
        for attempt in 0..RETRIES {
            if attempt > 0 {
                crate::back_off(attempt).await;
            }
            match crate::batch::publish(client, messages.clone()).await? {
                Batch::Stored(_) => return Ok(()),
                Batch::Refused {
                    code: DUPLICATE_IN_BATCH,
                    ..
                } => {
                    tracing::warn!(%queue, "an enqueue whose answer was lost was stored; not stored again");
                    return Ok(());
                }
                Batch::Refused {
                    code: DUPLICATE_IN_PROCESS,
                    ..
                }
                | Batch::Unheard => {}
                Batch::Refused { code, description } => {
                    return Err(StoreError::Backend(format!(
                        "JetStream refused a batch ({code}): {description}"
                    )));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "queue `{queue}`: no server stored the enqueue after {RETRIES} tries; try again"
        )))
    }

    /// One batch of `items` with the counter, in packs of `sizes`, each
    /// under its id in `msg_ids`, tried until it is stored or refused for
    /// good.
    async fn append_batch(
        &self,
        client: &async_nats::Client,
        queue: &str,
        items: &[Pending],
        sizes: &[usize],
        msg_ids: &[String],
    ) -> Result<Appended, StoreError> {
        let n = items.len() as u64;
        let named = items.iter().any(|item| item.once.is_some());
        debug_assert!(
            !named || items.iter().all(|item| item.once.is_some()),
            "named and unnamed messages share no batch"
        );
        // Where each refused try would have put the messages: one of
        // them holds them if a later try is refused as a duplicate.
        let mut refused_at: Vec<u64> = Vec::new();
        let mut fresh = false;
        for attempt in 0..RETRIES {
            if fresh {
                crate::back_off(attempt).await;
            }
            let (counter_seq, last) = self.counter(queue, fresh).await?;
            let mut counter_headers = HeaderMap::new();
            counter_headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                counter_seq.to_string().as_str(),
            );
            let mut batch = Vec::with_capacity(items.len() + 1);
            batch.push((
                self.counter_subject(queue),
                counter_headers,
                Bytes::from((last + n).to_string()),
            ));
            let mut offset = 0;
            for (size, msg_id) in sizes.iter().zip(msg_ids) {
                let pack = new_pack(last + 1 + offset as u64, &items[offset..offset + size]);
                offset += size;
                let (mut headers, payload) = pack.encode();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
                batch.push((self.subject(queue, pack.id), headers, payload));
            }
            let outcome = crate::batch::publish(client, batch).await;
            match outcome {
                Ok(Batch::Stored(final_seq)) => {
                    tracing::debug!(%queue, attempt, from = last + 1, n, final_seq, "an enqueue batch stored");
                    // The batch's messages (the counter, then one per
                    // pack) have consecutive stream sequences.
                    let counter_at = final_seq - sizes.len() as u64;
                    self.cache()
                        .insert(queue.to_string(), (counter_at, last + n));
                    // Best effort: the others poll too.
                    let _ = client
                        .publish(self.wakes.clone(), Bytes::from(queue.to_string()))
                        .await;
                    return Ok(Appended::Stored((last + 1..=last + n).map(Some).collect()));
                }
                // Named messages (a batch holds only named ones, or none):
                // one of them was stored before, by this call's earlier
                // try or by another call; which one, the refusal does not
                // say. Alone, it is the one.
                Ok(Batch::Refused {
                    code: DUPLICATE_IN_BATCH,
                    ..
                }) if named => {
                    self.cache().remove(queue);
                    if n == 1 {
                        tracing::debug!(%queue, "a named message was stored before; not stored again");
                        return Ok(Appended::Stored(vec![None]));
                    }
                    return Ok(Appended::Split);
                }
                // An earlier try was stored after all: its messages are
                // the answer.
                Ok(Batch::Refused {
                    code: DUPLICATE_IN_BATCH,
                    ..
                }) if !refused_at.is_empty() => {
                    self.cache().remove(queue);
                    let first = &items[..sizes[0]];
                    let stored = self.stored_try(queue, &refused_at, first).await?;
                    tracing::warn!(%queue, from = stored.map(|s| s + 1), n, "an enqueue whose answer said refused was stored after all; not stored again");
                    return match stored {
                        Some(stored) => Ok(Appended::Stored(
                            (stored + 1..=stored + n).map(Some).collect(),
                        )),
                        None => Err(StoreError::Unavailable(format!(
                            "queue `{queue}`: the messages were stored by an earlier try whose answer said otherwise (a NATS leader change), at sequence numbers not known here"
                        ))),
                    };
                }
                // An earlier try is still being stored (or failing): ask
                // again once it is settled.
                Ok(Batch::Refused {
                    code: DUPLICATE_IN_PROCESS,
                    ..
                }) => {
                    tracing::debug!(%queue, attempt, "an earlier try of this enqueue is still in process; asking again");
                    fresh = true;
                }
                // Another node moved the counter first.
                Ok(
                    outcome @ Batch::Refused {
                        code: WRONG_LAST_SEQUENCE | WRONG_LAST_SEQUENCE_CONSTANT,
                        ..
                    },
                ) => {
                    tracing::debug!(%queue, attempt, from = last + 1, n, ?outcome, "an enqueue batch was refused; trying again");
                    refused_at.push(last);
                    fresh = true;
                }
                // No leader yet: nothing reached a stream.
                Ok(Batch::Unheard) => {
                    tracing::debug!(%queue, attempt, "an enqueue batch was unheard; trying again");
                    fresh = true;
                }
                Ok(Batch::Refused { code, description }) => {
                    return Err(StoreError::Backend(format!(
                        "JetStream refused a batch ({code}): {description}"
                    )));
                }
                Err(e) => {
                    self.cache().remove(queue);
                    return Err(e);
                }
            }
        }
        Err(StoreError::Backend(format!(
            "queue `{queue}`: the enqueue was refused {RETRIES} times (other nodes enqueueing at once, or the stream without a leader); try again"
        )))
    }

    /// Of the tries refused at `refused_at` (the last sequence number each
    /// read), the one whose first pack is of `first`: the only one if
    /// there was one, else the one whose first pack's subject holds that
    /// payload now (`None` if none does: delivered and acknowledged since,
    /// say).
    async fn stored_try(
        &self,
        queue: &str,
        refused_at: &[u64],
        first: &[Pending],
    ) -> Result<Option<u64>, StoreError> {
        if let [only] = refused_at {
            return Ok(Some(*only));
        }
        for last in refused_at.iter().rev() {
            let pack = new_pack(last + 1, first);
            let held = self.last(&self.subject(queue, pack.id)).await?;
            if held.is_some_and(|m| m.payload == pack.encode().1) {
                return Ok(Some(*last));
            }
        }
        Ok(None)
    }

    /// Appends to `queue`, in one batch with whatever other enqueues of
    /// this node wait for the same queue (see [`Queues::writes`]).
    async fn append(
        self: &Arc<Self>,
        client: &async_nats::Client,
        queue: &str,
        group: Option<&str>,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let group = group.map(|g| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(g));
        let state = State {
            due: not_before_ms,
            attempts: 0,
            claimant: None,
            group,
        };
        let items = payloads
            .into_iter()
            .map(|payload| Pending {
                payload,
                state: state.clone(),
                once: None,
            })
            .collect();
        self.submit(client, &format!("u{queue}"), queue, items)
            .await?
            .into_iter()
            .map(|seq| {
                seq.ok_or_else(|| {
                    StoreError::Backend(format!(
                        "queue `{queue}`: an unnamed message was taken for a duplicate"
                    ))
                })
            })
            .collect()
    }

    /// Appends one message named `id` unless `queue` stored one under that
    /// name within the duplicate window (`None`).
    pub(crate) async fn append_once(
        self: &Arc<Self>,
        client: &async_nats::Client,
        queue: &str,
        group: Option<&str>,
        id: &str,
        payload: Bytes,
        not_before_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let item = Pending {
            payload,
            state: State {
                due: not_before_ms,
                attempts: 0,
                claimant: None,
                group: group.map(|g| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(g)),
            },
            once: Some(once_id(queue, id)),
        };
        // Named messages are batched apart from unnamed ones: a batch
        // refused for a duplicate name goes again one message at a time,
        // which must never split an unnamed call's messages.
        Ok(self
            .submit(client, &format!("n{queue}"), queue, vec![item])
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    /// Writes `items` to `queue` in one batch with whatever other enqueues
    /// of this node wait under the same `key` (`u<queue>` for unnamed
    /// messages, `n<queue>` for named ones: never another queue's).
    async fn submit(
        self: &Arc<Self>,
        client: &async_nats::Client,
        key: &str,
        queue: &str,
        items: Vec<Pending>,
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let (this, client, name) = (self.clone(), client.clone(), queue.to_string());
        self.writes
            .submit(key, items, move |items: Vec<Pending>| {
                let (this, client, queue) = (this.clone(), client.clone(), name.clone());
                async move {
                    // One batch, or one per `MAX_BATCH - 1` messages of a
                    // single large call.
                    let mut seqs = Vec::with_capacity(items.len());
                    for batch in items.chunks(MAX_BATCH - 1) {
                        seqs.extend(this.append_chunk(&client, &queue, batch).await?);
                    }
                    Ok(seqs)
                }
            })
            .await
    }

    /// Claims the events `seqs` of pack `id` that are still due, in one
    /// write, unless another write to the pack gets there first (then
    /// none). `listed` are the pack's members as listed: with their
    /// payloads, the write is on condition that the pack is still as
    /// listed; else it is read first.
    #[allow(clippy::too_many_arguments)]
    async fn claim_pack(
        &self,
        js: &jetstream::Context,
        queue: &str,
        id: PackId,
        listed: &[&Item],
        seqs: &[u64],
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let pack = match Pack::from_items(id, listed) {
            Some(pack) => Some(pack),
            None => self.read_pack(queue, id).await?,
        };
        let Some(mut pack) = pack else {
            return Ok(Vec::new());
        };
        let mut claimed = Vec::new();
        for member in pack.members.iter_mut() {
            if !seqs.contains(&member.seq) || member.state.due > now_ms {
                continue;
            }
            let due_ms = member.state.due;
            let state = &mut member.state;
            state.attempts += 1;
            state.due = now_ms.saturating_add(lease_ms);
            state.claimant = Some(self.claimant.clone());
            claimed.push(Claimed {
                seq: member.seq,
                attempt: state.attempts,
                due_ms,
                payload: member.payload.clone(),
                grouped: state.group.is_some(),
            });
        }
        if claimed.is_empty() || !self.rewrite(js, queue, &pack).await? {
            return Ok(Vec::new());
        }
        let mut placed = self.placed();
        if placed.len() >= PLACED_MAX {
            placed.clear();
        }
        for c in &claimed {
            placed.insert((queue.to_string(), c.seq), id);
        }
        Ok(claimed)
    }

    fn placed(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), PackId>> {
        self.placed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pack holding event `seq` of `queue`, if the queue holds it.
    async fn pack_of(&self, queue: &str, seq: u64) -> Result<Option<PackId>, StoreError> {
        if let Some(id) = self.placed().get(&(queue.to_string(), seq)) {
            return Ok(Some(*id));
        }
        Ok(self
            .pack_ids(queue)
            .await?
            .into_iter()
            .find(|id| id.contains(seq)))
    }

    /// Makes `change` to event `seq` of `queue`, in one write with the
    /// other changes to its pack waiting meanwhile; `false` when the queue
    /// no longer holds it.
    async fn change(
        self: &Arc<Self>,
        js: &jetstream::Context,
        queue: &str,
        seq: u64,
        change: Change,
    ) -> Result<bool, StoreError> {
        let Some(id) = self.pack_of(queue, seq).await? else {
            return Ok(false);
        };
        self.placed().remove(&(queue.to_string(), seq));
        let key = self.subject(queue, id);
        let (this, js, name) = (self.clone(), js.clone(), queue.to_string());
        let done = self
            .changes
            .submit(&key, vec![(seq, change)], move |changes| {
                let (this, js, queue) = (this.clone(), js.clone(), name.clone());
                async move { this.apply(&js, &queue, id, changes).await }
            })
            .await?;
        Ok(done.first().copied().unwrap_or(false))
    }

    /// Applies `changes` to pack `id`: one read, then one conditional
    /// write (or a purge once no member is left), again while another
    /// write came between. Per change, whether its event was there.
    async fn apply(
        &self,
        js: &jetstream::Context,
        queue: &str,
        id: PackId,
        changes: Vec<(u64, Change)>,
    ) -> Result<Vec<bool>, StoreError> {
        let subject = self.subject(queue, id);
        // A pack of one acknowledged: nothing of it stays to read.
        if let ([(seq, Change::Ack)], 1) = (&changes[..], id.size) {
            self.purge(&subject).await?;
            return Ok(vec![*seq == id.first]);
        }
        for attempt in 0..RETRIES {
            if attempt > 0 {
                crate::back_off(attempt).await;
            }
            let Some(mut pack) = self.read_pack(queue, id).await? else {
                return Ok(vec![false; changes.len()]);
            };
            let mut found = Vec::with_capacity(changes.len());
            for (seq, change) in &changes {
                let Some(i) = pack.members.iter().position(|m| m.seq == *seq) else {
                    found.push(false);
                    continue;
                };
                found.push(true);
                match *change {
                    Change::Ack => {
                        pack.members.remove(i);
                    }
                    Change::Unclaim { not_before, refund } => {
                        let state = &mut pack.members[i].state;
                        state.due = not_before;
                        state.claimant = None;
                        if refund {
                            state.attempts = state.attempts.saturating_sub(1);
                        }
                    }
                }
            }
            if !found.contains(&true) {
                return Ok(found);
            }
            // Its last member gone: no other write can still need the
            // pack (a claim of a member acknowledged here, whose lease
            // ran out, is ended by it as on one node).
            if pack.members.is_empty() {
                self.purge(&subject).await?;
                return Ok(found);
            }
            if self.rewrite(js, queue, &pack).await? {
                return Ok(found);
            }
        }
        Err(StoreError::Conflict {
            key: subject,
            expected: None,
            found: None,
        })
    }

    async fn purge(&self, subject: &str) -> Result<(), StoreError> {
        self.stream
            .purge()
            .filter(subject)
            .await
            .map(drop)
            .map_err(backend)
    }

    /// The stream's subjects under `filter`, with their message counts.
    async fn subjects(&self, filter: &str) -> Result<Vec<String>, StoreError> {
        let info = self
            .stream
            .info_with_subjects(filter)
            .await
            .map_err(backend)?;
        info.map_ok(|(subject, _)| subject)
            .try_collect()
            .await
            .map_err(backend)
    }
}

mod store;
#[cfg(test)]
mod tests;
