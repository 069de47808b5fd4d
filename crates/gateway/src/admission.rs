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
//! slots; the others share what is left, fairly between tenants: a tenant
//! may always fill its fair share (the shared slots divided by the
//! tenants running something), and borrow idle slots beyond it only while
//! a headroom of an eighth of the shared slots stays free for the others.
//! One tenant flooding the node therefore holds at most seven eighths of
//! it, and as the others arrive its part shrinks to its share while its
//! running invocations finish ([`fair_admit`] is the rule, pure). Each
//! running instance also reserves its memory limit from the node's
//! memory budget, shared between tenants by the same rule in bytes
//! ([`fair_admit_memory`]); past it, 503 as well.
//!
//! A refusal is a [`Refusal`], which says why; `error.rs` turns it into a
//! status, a `Retry-After` and the message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use gust_core::Limits;
use gust_core::cluster::{Membership, share};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request may not run now. Each case tells the client to retry:
/// none is the request's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// Every slot of the node runs an instance.
    #[error("the server is at its concurrency limit; retry shortly")]
    NodeFull,
    /// The node is busy and the tenant runs its share of it already.
    #[error(
        "the server is busy and this function's tenant uses its share of its instances and memory already; retry shortly"
    )]
    OverShare,
    /// The memory running instances may reserve is taken.
    #[error(
        "the server's memory for running functions is taken by the instances running now; retry shortly"
    )]
    MemoryFull,
    /// The function runs its limit of instances and its queue is full.
    #[error(
        "function `{function}` is at its concurrency limit `{setting}` ({limit}) and {depth} requests already wait (`queue_depth`); retry later"
    )]
    QueueFull {
        function: String,
        setting: &'static str,
        limit: Cap,
        depth: u32,
        retry_after_s: u64,
    },
    /// The function runs its limit of instances and none freed in time.
    #[error(
        "function `{function}` is at its concurrency limit `{setting}` ({limit}); no instance freed within {waited_ms} ms (`queue_wait_ms`); retry later"
    )]
    QueueTimedOut {
        function: String,
        setting: &'static str,
        limit: Cap,
        waited_ms: u64,
        retry_after_s: u64,
    },
}

/// A function's concurrency limit as one node enforces it: the whole
/// limit alone, an even share of it among the cluster's live nodes
/// ([`gust_core::cluster::share`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cap {
    pub limit: u32,
    pub here: u32,
    pub nodes: usize,
}

impl std::fmt::Display for Cap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.nodes <= 1 {
            write!(f, "{}", self.limit)
        } else {
            write!(
                f,
                "{} across {} nodes, {} on this one",
                self.limit, self.nodes, self.here
            )
        }
    }
}

impl Refusal {
    /// Seconds the client is told to wait before retrying.
    pub(crate) fn retry_after_s(&self) -> u64 {
        match self {
            Refusal::QueueFull { retry_after_s, .. }
            | Refusal::QueueTimedOut { retry_after_s, .. } => (*retry_after_s).max(1),
            Refusal::NodeFull | Refusal::OverShare | Refusal::MemoryFull => 1,
        }
    }
}

/// Which refusal a shared slot denied by [`fair_admit`] gets: the tenant's
/// own share is used up (`running` of `limit` slots with `active`
/// tenants), or the node is simply full.
pub(crate) fn slot_refusal(running: u32, limit: u32, active: u32) -> Refusal {
    if running >= limit.div_ceil(active.max(2)) {
        Refusal::OverShare
    } else {
        Refusal::NodeFull
    }
}

/// Which refusal memory denied by [`fair_admit_memory`] gets: past the
/// tenant's share of `budget` (`tenant_reserved` + `need`), or the budget
/// is taken.
pub(crate) fn memory_refusal(tenant_reserved: u64, need: u64, budget: u64, active: u32) -> Refusal {
    let share = budget / u64::from(active.max(2));
    if tenant_reserved.saturating_add(need) > share {
        Refusal::OverShare
    } else {
        Refusal::MemoryFull
    }
}

/// Whether a tenant running `tenant_running` instances on the shared
/// slots may start one more, when `in_use` of `limit` shared slots run
/// and `active` tenants (at least this one) run something.
pub(crate) fn fair_admit(in_use: u32, limit: u32, tenant_running: u32, active: u32) -> bool {
    if in_use >= limit {
        return false;
    }
    // Shared with one more tenant even when alone: the headroom is what
    // the next tenant to arrive finds free.
    let share = limit.div_ceil(active.max(2));
    // Nodes of fewer than 8 slots keep no headroom: one slot of two
    // would halve a small node for a tenant alone.
    let headroom = limit / 8;
    tenant_running < share || in_use + headroom < limit
}

/// How long a request refused because its tenant is over its share waits
/// before it hears so: a client that retries at once (a flood) costs the
/// node a sleeping connection, not a core spent refusing it, and the other
/// tenants keep the CPU. Well below the `Retry-After` it is told.
pub(crate) const OVER_SHARE_DELAY: Duration = Duration::from_millis(250);

/// What an instance with memory limit `limit` reserves from the node's
/// memory budget. The node's slot count is already sized for a typical
/// instance ([`TYPICAL_INSTANCE_BYTES`] each, see `gust up
/// --max-in-flight`), which a function within the default limit is
/// counted as; what a larger limit allows beyond the default is reserved
/// in full. So a few functions with gigabytes each cannot take the
/// machine's memory, while small functions keep the node's full slot
/// count.
pub(crate) fn memory_reservation(limit: u64) -> u64 {
    limit.saturating_sub(gust_core::Limits::DEFAULT_MEMORY_BYTES) + TYPICAL_INSTANCE_BYTES
}

/// The memory a typical instance uses, as the node's slot count assumes.
pub(crate) const TYPICAL_INSTANCE_BYTES: u64 = 8 << 20;

/// One tenant's instances running on the node's shared slots.
#[derive(Default)]
pub(crate) struct TenantShare {
    running: AtomicU32,
    /// Bytes its running instances reserve.
    memory: AtomicU64,
}

/// Whether a tenant whose running instances reserve `tenant_reserved`
/// bytes may reserve `need` more, when `reserved` of the node's `budget`
/// are taken and `active` tenants run something: the rule of
/// [`fair_admit`], in bytes. An instance larger than the whole budget
/// still runs when nothing else does.
pub(crate) fn fair_admit_memory(
    reserved: u64,
    budget: u64,
    tenant_reserved: u64,
    need: u64,
    active: u32,
) -> bool {
    if reserved == 0 {
        return true;
    }
    let after = reserved.saturating_add(need);
    if after > budget {
        return false;
    }
    let share = budget / u64::from(active.max(2));
    let headroom = budget / 8;
    tenant_reserved.saturating_add(need) <= share || after.saturating_add(headroom) <= budget
}

/// The node's instance slots: those set aside by reservations, and the
/// shared rest; and the memory running instances may reserve.
pub(crate) struct NodeSlots {
    limit: u32,
    /// The `reserved_concurrency` of each function served that has one.
    reservations: std::sync::RwLock<Arc<[u32]>>,
    /// The live nodes: each sets aside its share of every reservation.
    members: Arc<dyn Membership>,
    /// Σ of this node's shares of the reservations, and the number of
    /// live nodes it was summed for (`usize::MAX`: not yet).
    reserved: AtomicU32,
    reserved_for: AtomicUsize,
    /// Running on the shared slots, and on reserved ones.
    shared: AtomicU32,
    on_reserved: AtomicU32,
    /// Tenants with something running on the shared slots.
    active_tenants: AtomicU32,
    /// Bytes running instances may reserve (their memory limits), and
    /// those reserved.
    memory_budget: u64,
    memory_reserved: AtomicU64,
}

/// A slot taken; given back when dropped.
pub(crate) struct NodeSlot {
    slots: Arc<NodeSlots>,
    tenant: Option<Arc<TenantShare>>,
    memory: u64,
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        match &self.tenant {
            Some(tenant) => {
                self.slots.shared.fetch_sub(1, Ordering::AcqRel);
                tenant.memory.fetch_sub(self.memory, Ordering::AcqRel);
                if tenant.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.slots.active_tenants.fetch_sub(1, Ordering::AcqRel);
                }
            }
            None => {
                self.slots.on_reserved.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.slots
            .memory_reserved
            .fetch_sub(self.memory, Ordering::AcqRel);
    }
}

impl NodeSlots {
    pub fn new(limit: u32, memory_budget: u64, members: Arc<dyn Membership>) -> Self {
        Self {
            limit,
            reservations: std::sync::RwLock::new(Arc::from(Vec::new())),
            members,
            reserved: AtomicU32::new(0),
            reserved_for: AtomicUsize::new(usize::MAX),
            shared: AtomicU32::new(0),
            on_reserved: AtomicU32::new(0),
            active_tenants: AtomicU32::new(0),
            memory_budget,
            memory_reserved: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The fewest slots reservations must leave shared.
    pub fn unreserved_floor(&self) -> u32 {
        (self.limit / 10).max(1)
    }

    /// The reservations of the functions served (one number each).
    pub fn set_reservations(&self, reservations: Vec<u32>) {
        *self.reservations.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(reservations);
        self.reserved_for.store(usize::MAX, Ordering::Release);
    }

    /// Slots this node sets aside: its share of each reservation (as a
    /// function's gate admits it here), summed again when the number of
    /// live nodes or the reservations change.
    fn reserved(&self) -> u32 {
        let nodes = self.members.count();
        if self.reserved_for.load(Ordering::Acquire) != nodes {
            let reservations = self
                .reservations
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let total: u64 = reservations
                .iter()
                .map(|r| share(u64::from(*r), nodes))
                .sum();
            self.reserved
                .store(u32::try_from(total).unwrap_or(u32::MAX), Ordering::Release);
            self.reserved_for.store(nodes, Ordering::Release);
        }
        self.reserved.load(Ordering::Acquire)
    }

    /// Slots in use.
    pub fn in_use(&self) -> u32 {
        self.shared.load(Ordering::Acquire) + self.on_reserved.load(Ordering::Acquire)
    }

    /// A slot for a function with a reservation (`tenant: None`: its own
    /// gate bounds it), or a shared one if the tenant's fair share allows
    /// (see the module doc); and `memory` bytes of the node's budget.
    pub fn take(
        self: &Arc<Self>,
        tenant: Option<&Arc<TenantShare>>,
        memory: u64,
    ) -> Result<NodeSlot, Refusal> {
        let reserved = self.memory_reserved.fetch_add(memory, Ordering::AcqRel);
        let Some(tenant) = tenant else {
            // Its own reservation bounds its slots; the memory is the node's.
            self.on_reserved.fetch_add(1, Ordering::AcqRel);
            let slot = NodeSlot {
                slots: self.clone(),
                tenant: None,
                memory,
            };
            return if fair_admit_memory(reserved, self.memory_budget, 0, memory, 1) {
                Ok(slot)
            } else {
                Err(Refusal::MemoryFull)
            };
        };
        let limit = self
            .limit
            .saturating_sub(self.reserved())
            .max(self.unreserved_floor());
        let mine = tenant.running.fetch_add(1, Ordering::AcqRel);
        let mine_memory = tenant.memory.fetch_add(memory, Ordering::AcqRel);
        let active = if mine == 0 {
            self.active_tenants.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.active_tenants.load(Ordering::Acquire)
        };
        let in_use = self.shared.fetch_add(1, Ordering::AcqRel);
        // Everything counts as taken from here; `Drop` gives it all back.
        let slot = NodeSlot {
            slots: self.clone(),
            tenant: Some(tenant.clone()),
            memory,
        };
        if !fair_admit(in_use, limit, mine, active) {
            Err(slot_refusal(mine, limit, active))
        } else if !fair_admit_memory(reserved, self.memory_budget, mine_memory, memory, active) {
            Err(memory_refusal(
                mine_memory,
                memory,
                self.memory_budget,
                active,
            ))
        } else {
            Ok(slot)
        }
    }
}

/// The running instances of one function, and the requests waiting for one.
/// In a cluster each node runs its share of the limit, resized as nodes
/// come and go (at the next request after the change).
pub(crate) struct FunctionGate {
    /// The function's limit, cluster-wide.
    limit: u32,
    /// The setting `limit` comes from, for messages.
    setting: &'static str,
    permits: Arc<Semaphore>,
    waiting: AtomicU32,
    members: Arc<dyn Membership>,
    /// How many live nodes the permits were last sized for.
    sized_for: AtomicUsize,
    /// The permits this node's share holds (taken back ones included
    /// until running instances return them).
    here: AtomicU32,
    /// Held while the share is resized, so two resizes never interleave.
    resizing: std::sync::Mutex<()>,
}

/// Takes one waiting place back when dropped (served, refused or cancelled).
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl FunctionGate {
    pub fn new(limit: u32, setting: &'static str, members: Arc<dyn Membership>) -> Self {
        let nodes = members.count();
        let here = share(u64::from(limit), nodes) as u32;
        Self {
            limit,
            setting,
            permits: Arc::new(Semaphore::new(here as usize)),
            waiting: AtomicU32::new(0),
            members,
            sized_for: AtomicUsize::new(nodes),
            here: AtomicU32::new(here),
            resizing: std::sync::Mutex::new(()),
        }
    }

    /// Whether `other` enforces the same limit from the same setting.
    pub fn same_limit(&self, other: &FunctionGate) -> bool {
        (self.limit, self.setting) == (other.limit, other.setting)
    }

    /// The limit as this node enforces it now.
    fn cap(&self) -> Cap {
        Cap {
            limit: self.limit,
            here: self.here.load(Ordering::Acquire),
            nodes: self.sized_for.load(Ordering::Acquire),
        }
    }

    /// Resizes this node's share when the number of live nodes changed:
    /// permits are added at once; taken back from those free now, and the
    /// rest as running instances return theirs.
    fn fit(&self) {
        let nodes = self.members.count();
        if self.sized_for.load(Ordering::Acquire) == nodes {
            return;
        }
        let _resizing = self.resizing.lock().unwrap_or_else(|p| p.into_inner());
        if self.sized_for.swap(nodes, Ordering::AcqRel) == nodes {
            return;
        }
        let to = share(u64::from(self.limit), nodes) as u32;
        let from = self.here.swap(to, Ordering::AcqRel);
        if to > from {
            self.permits.add_permits((to - from) as usize);
        } else if from > to {
            let owed = from - to;
            let forgotten = self.permits.forget_permits(owed as usize) as u32;
            let rest = owed - forgotten;
            if rest > 0
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                let permits = self.permits.clone();
                runtime.spawn(async move {
                    if let Ok(taken) = permits.acquire_many_owned(rest).await {
                        taken.forget();
                    }
                });
            }
        }
    }

    /// A place to run, waiting for one if `wait` (else refused at once).
    pub async fn enter(
        &self,
        function: &str,
        limits: &Limits,
        wait: bool,
    ) -> Result<OwnedSemaphorePermit, Refusal> {
        self.fit();
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let (limit, setting) = (self.cap(), self.setting);
        let retry_after_s = limits.queue_wait_ms.div_ceil(1000).max(1);
        let depth = if wait { limits.queue_depth } else { 0 };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= depth {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::QueueFull {
                function: function.to_string(),
                setting,
                limit,
                depth,
                retry_after_s,
            });
        }
        let _waiting = Waiting(&self.waiting);
        let waited = Duration::from_millis(limits.queue_wait_ms);
        match tokio::time::timeout(waited, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refusal::QueueTimedOut {
                function: function.to_string(),
                setting,
                limit,
                waited_ms: limits.queue_wait_ms,
                retry_after_s,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(refusal: Refusal) -> String {
        assert!(
            matches!(
                refusal,
                Refusal::QueueFull { .. } | Refusal::QueueTimedOut { .. }
            ),
            "{refusal:?}"
        );
        refusal.to_string()
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
        let gate = Arc::new(FunctionGate::new(2, "max_concurrency", alone()));
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

    fn alone() -> Arc<dyn Membership> {
        Arc::new(gust_core::cluster::OneNode::new("a"))
    }

    /// Nodes that come and go as a test says.
    struct Nodes(std::sync::Mutex<Vec<String>>);

    impl Membership for Nodes {
        fn node(&self) -> &str {
            "a"
        }
        fn live(&self) -> Arc<[String]> {
            Arc::from(self.0.lock().unwrap().clone())
        }
    }

    #[tokio::test]
    async fn in_a_cluster_each_node_runs_its_share_resized_as_nodes_come_and_go() {
        let nodes = Arc::new(Nodes(std::sync::Mutex::new(vec![
            "a".into(),
            "b".into(),
            "c".into(),
        ])));
        let gate = FunctionGate::new(5, "max_concurrency", nodes.clone());
        let limits = limits(0, 10);
        // 5 across 3 nodes: 2 here.
        let mut running = vec![
            gate.enter("f", &limits, false).await.unwrap(),
            gate.enter("f", &limits, false).await.unwrap(),
        ];
        let refused = message(gate.enter("f", &limits, false).await.unwrap_err());
        assert!(
            refused.contains("(5 across 3 nodes, 2 on this one)"),
            "{refused}"
        );
        // c dies: 3 here.
        nodes.0.lock().unwrap().pop();
        running.push(gate.enter("f", &limits, false).await.unwrap());
        assert!(gate.enter("f", &limits, false).await.is_err());
        // Alone: the whole limit.
        nodes.0.lock().unwrap().pop();
        running.push(gate.enter("f", &limits, false).await.unwrap());
        running.push(gate.enter("f", &limits, false).await.unwrap());
        let refused = message(gate.enter("f", &limits, false).await.unwrap_err());
        assert!(refused.contains("(5)"), "{refused}");
        // Both back while 5 run here: none more until 3 of them finish.
        nodes.0.lock().unwrap().extend(["b".into(), "c".into()]);
        assert!(gate.enter("f", &limits, false).await.is_err());
        running.truncate(2);
        tokio::task::yield_now().await;
        assert!(gate.enter("f", &limits, false).await.is_err());
        running.pop();
        assert!(gate.enter("f", &limits, false).await.is_ok());
    }

    #[test]
    fn reservations_leave_the_others_the_rest_of_the_node() {
        let node = Arc::new(NodeSlots::new(10, u64::MAX, alone()));
        let tenant = Arc::new(TenantShare::default());
        let other = Arc::new(TenantShare::default());
        node.set_reservations(vec![3, 4]);
        // A small node keeps no headroom: a tenant alone fills its 3.
        let shared: Vec<_> = (0..3)
            .map(|_| node.take(Some(&tenant), 0).unwrap())
            .collect();
        assert!(node.take(Some(&tenant), 0).is_err(), "3 shared slots only");
        assert!(node.take(Some(&other), 0).is_err(), "3 shared slots only");
        // A function with a reservation still runs (its gate bounds it).
        let reserved = node.take(None, 0).unwrap();
        assert_eq!(node.in_use(), 4);
        drop(shared);
        drop(reserved);
        assert_eq!(node.in_use(), 0);
        // However much is reserved, a tenth of the node stays shared.
        node.set_reservations(vec![10]);
        let one = node.take(Some(&tenant), 0).unwrap();
        assert!(node.take(Some(&tenant), 0).is_err());
        drop(one);
        assert_eq!(tenant.running.load(Ordering::Acquire), 0);
        assert_eq!(node.active_tenants.load(Ordering::Acquire), 0);
    }

    #[test]
    fn in_a_cluster_a_node_sets_aside_its_share_of_each_reservation() {
        let nodes = Arc::new(Nodes(std::sync::Mutex::new(vec![
            "a".into(),
            "b".into(),
            "c".into(),
        ])));
        let node = Arc::new(NodeSlots::new(20, u64::MAX, nodes.clone()));
        let tenant = Arc::new(TenantShare::default());
        // What a tenant alone gets of the shared slots: all but an eighth.
        let fill = || {
            let mut taken = Vec::new();
            while let Ok(slot) = node.take(Some(&tenant), 0) {
                taken.push(slot);
            }
            taken.len()
        };
        // 9 and 4 reserved across 3 nodes: 3 + 2 set aside here, 15 shared.
        node.set_reservations(vec![9, 4]);
        assert_eq!(fill(), 15 - 15 / 8);
        // c dies: 5 + 2 set aside, 13 shared.
        nodes.0.lock().unwrap().pop();
        assert_eq!(fill(), 13 - 13 / 8);
        // Reservations gone: all 20 shared.
        node.set_reservations(Vec::new());
        assert_eq!(fill(), 20 - 20 / 8);
        assert_eq!(node.in_use(), 0);
    }

    #[test]
    fn large_memory_limits_reserve_what_they_allow_beyond_the_default() {
        assert_eq!(memory_reservation(32 << 20), TYPICAL_INSTANCE_BYTES);
        assert_eq!(memory_reservation(128 << 20), TYPICAL_INSTANCE_BYTES);
        assert_eq!(
            memory_reservation(4096 << 20),
            ((4096 - 128) << 20) + TYPICAL_INSTANCE_BYTES
        );
    }

    #[test]
    fn the_fair_share_rule() {
        // Alone, a tenant borrows idle slots up to the headroom.
        assert!(fair_admit(0, 1000, 0, 1));
        assert!(fair_admit(600, 1000, 600, 1));
        assert!(fair_admit(873, 1000, 873, 1));
        assert!(!fair_admit(875, 1000, 875, 1));
        // Another tenant still gets in, up to its share.
        assert!(fair_admit(875, 1000, 0, 2));
        assert!(fair_admit(999, 1000, 124, 2));
        assert!(!fair_admit(1000, 1000, 0, 2), "never past the node");
        // Once the node is busy, the flooder waits for its share.
        assert!(!fair_admit(990, 1000, 870, 2));
        assert!(fair_admit(990, 1000, 499, 2));
        // Small nodes: a share is at least one slot; below 8 slots a
        // tenant alone may fill the node.
        assert!(fair_admit(0, 1, 0, 1));
        assert!(!fair_admit(1, 1, 0, 2));
        assert!(fair_admit(1, 4, 0, 3));
        assert!(fair_admit(1, 2, 1, 1));
        assert!(!fair_admit(7, 8, 7, 1), "from 8 slots on, one stays free");
    }

    #[test]
    fn a_flooding_tenant_leaves_room_for_the_others() {
        let node = Arc::new(NodeSlots::new(80, u64::MAX, alone()));
        let (flood, quiet) = (
            Arc::new(TenantShare::default()),
            Arc::new(TenantShare::default()),
        );
        let mut held = Vec::new();
        while let Ok(slot) = node.take(Some(&flood), 0) {
            held.push(slot);
        }
        assert_eq!(held.len(), 70, "seven eighths");
        let theirs: Vec<_> = (0..10)
            .map(|_| node.take(Some(&quiet), 0).unwrap())
            .collect();
        assert!(node.take(Some(&quiet), 0).is_err(), "the node is full");
        // Half of the flooder's runs end: it borrows again, but leaves the
        // headroom, which the other tenant (under its share) may take.
        held.truncate(35);
        while let Ok(slot) = node.take(Some(&flood), 0) {
            held.push(slot);
        }
        assert_eq!(held.len(), 60);
        let more: Vec<_> = (0..10)
            .map(|_| node.take(Some(&quiet), 0).unwrap())
            .collect();
        assert_eq!(node.in_use(), 80);
        drop((theirs, more));
        drop(held);
        assert_eq!(node.in_use(), 0);
    }

    #[test]
    fn running_instances_reserve_the_nodes_memory() {
        let node = Arc::new(NodeSlots::new(100, 300, alone()));
        let tenant = Arc::new(TenantShare::default());
        let a = node.take(Some(&tenant), 128).unwrap();
        let b = node.take(None, 128).unwrap();
        assert!(matches!(
            node.take(Some(&tenant), 128),
            Err(Refusal::OverShare)
        ));
        assert_eq!(node.in_use(), 2);
        drop(a);
        let c = node.take(Some(&tenant), 128).unwrap();
        drop(b);
        drop(c);
        // Two tenants: one alone borrows up to the headroom, the other
        // still finds its share.
        let node = Arc::new(NodeSlots::new(100, 800, alone()));
        let quiet = Arc::new(TenantShare::default());
        let mut held = Vec::new();
        while let Ok(slot) = node.take(Some(&tenant), 100) {
            held.push(slot);
        }
        assert_eq!(held.len(), 7, "7 of 8 hundreds, an eighth left");
        let theirs = node.take(Some(&quiet), 100).unwrap();
        assert!(node.take(Some(&quiet), 100).is_err(), "the budget is spent");
        drop((held, theirs));
        assert_eq!(quiet.memory.load(Ordering::Acquire), 0);
        assert_eq!(tenant.memory.load(Ordering::Acquire), 0);
        // One instance larger than the whole budget still runs alone.
        let node = Arc::new(NodeSlots::new(100, 64, alone()));
        let _big = node.take(Some(&tenant), 128).unwrap();
        assert!(node.take(Some(&tenant), 1).is_err());
    }

    #[test]
    fn a_refused_slot_names_whose_fault_it_is() {
        // 80 shared slots, two tenants: a share is 40.
        assert_eq!(slot_refusal(40, 80, 2), Refusal::OverShare);
        assert_eq!(slot_refusal(39, 80, 2), Refusal::NodeFull);
        // Alone, a tenant's share is still half: the headroom is the next one's.
        assert_eq!(slot_refusal(70, 80, 1), Refusal::OverShare);
        assert_eq!(slot_refusal(0, 1, 1), Refusal::NodeFull);
    }

    #[test]
    fn refused_memory_names_whose_fault_it_is() {
        // 800 bytes, two tenants: a share is 400.
        assert_eq!(memory_refusal(300, 100, 800, 2), Refusal::MemoryFull);
        assert_eq!(memory_refusal(300, 101, 800, 2), Refusal::OverShare);
        assert_eq!(memory_refusal(0, 100, 800, 4), Refusal::MemoryFull);
        assert_eq!(memory_refusal(150, 100, 800, 4), Refusal::OverShare);
    }

    #[test]
    fn refusals_say_when_to_retry() {
        let queue_full = Refusal::QueueFull {
            function: "f".into(),
            setting: "max_concurrency",
            limit: Cap {
                limit: 2,
                here: 2,
                nodes: 1,
            },
            depth: 64,
            retry_after_s: 0,
        };
        assert_eq!(queue_full.retry_after_s(), 1, "never 0");
        let timed_out = Refusal::QueueTimedOut {
            function: "f".into(),
            setting: "reserved_concurrency",
            limit: Cap {
                limit: 2,
                here: 2,
                nodes: 1,
            },
            waited_ms: 2500,
            retry_after_s: 3,
        };
        assert_eq!(timed_out.retry_after_s(), 3);
        assert_eq!(
            timed_out.to_string(),
            "function `f` is at its concurrency limit `reserved_concurrency` (2); no instance freed within 2500 ms (`queue_wait_ms`); retry later"
        );
        for refusal in [Refusal::NodeFull, Refusal::OverShare, Refusal::MemoryFull] {
            assert_eq!(refusal.retry_after_s(), 1);
        }
    }
}
