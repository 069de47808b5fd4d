//! Which nodes make up the platform right now, and the pure rules built on
//! that: which node owns a piece of recurring work (rendezvous hashing,
//! so a node joining or leaving moves only the work it takes or held) and
//! what share of a cluster-wide limit each node enforces.
//!
//! A single node is a cluster of one ([`OneNode`]); cluster mode's view
//! comes from the nodes' heartbeats, kept by the binary.

use std::sync::Arc;

/// The live nodes as this node sees them.
pub trait Membership: Send + Sync {
    /// This node's id.
    fn node(&self) -> &str;
    /// The ids of the nodes alive now, this one always among them, sorted.
    fn live(&self) -> Arc<[String]>;
    /// How many nodes are alive now (at least 1).
    fn count(&self) -> usize {
        self.live().len().max(1)
    }
    /// Whether [`Membership::live`] reflects the other nodes yet, and
    /// [`Membership::clock_outlier`] can be told: false while a node
    /// starting has not read their records (it would count itself alone
    /// and, say, claim every schedule's tick) or compared their clocks.
    fn settled(&self) -> bool {
        true
    }
    /// Whether this node's wall clock disagrees with most of the others'
    /// ([`clock_outlier`]): it must then not claim leased work (event
    /// leases and schedule ticks are judged by the claimant's clock).
    fn clock_outlier(&self) -> bool {
        false
    }
    /// The live nodes that may own recurring work (schedules): those whose
    /// clock agrees with this node's.
    fn owners(&self) -> Arc<[String]> {
        self.live()
    }
    /// When the platform last came up after being wholly down: when the
    /// longest-running of the live nodes (among [`Membership::owners`])
    /// started, by its own clock; `None` when it cannot be told (one node
    /// alone: its own start). Every node of a settled cluster answers the
    /// same, so work judged by it (a schedule's catch-up) is the same
    /// whichever node does it.
    fn up_since_ms(&self) -> Option<u64> {
        None
    }
}

/// A peer's clock offset from this node's (ms), from the offsets of its
/// last heartbeats (its stamp minus this node's clock when the heartbeat
/// arrived); `None` before two. A heartbeat held up in writing or
/// delivery only lowers its sample, so the highest is the estimate: a
/// slow store does not make a peer look behind unless every sample is
/// held up.
pub fn clock_offset(samples: &[i64]) -> Option<i64> {
    if samples.len() < 2 {
        return None;
    }
    samples.iter().copied().max()
}

/// Whether a node whose clock `off_peers` of its `peers` (the other live
/// nodes) find off by more than the bound is the one that is off: most of
/// them, and at least two (with one peer, which of the two is wrong
/// cannot be told, and both go on).
pub fn clock_outlier(peers: usize, off_peers: usize) -> bool {
    off_peers >= 2 && off_peers * 2 > peers
}

/// One node alone.
pub struct OneNode {
    node: String,
    live: Arc<[String]>,
}

impl OneNode {
    pub fn new(node: impl Into<String>) -> Self {
        let node = node.into();
        Self {
            live: Arc::from(vec![node.clone()]),
            node,
        }
    }
}

impl Membership for OneNode {
    fn node(&self) -> &str {
        &self.node
    }

    fn live(&self) -> Arc<[String]> {
        self.live.clone()
    }

    fn count(&self) -> usize {
        1
    }
}

/// The node among `nodes` that owns `key`: the one whose hash with the key
/// is highest. Every node computing it over the same set agrees, and the
/// owner of a key changes only when its owner leaves or a node that beats
/// it joins. `None` for an empty set.
pub fn owner<'a>(key: &str, nodes: &'a [String]) -> Option<&'a str> {
    nodes
        .iter()
        .max_by_key(|node| (weight(node, key), node.as_str()))
        .map(String::as_str)
}

/// A stable 64-bit weight of a (node, key) pair: [`crate::deploy::fnv1a`]
/// (with its finaliser, so nearby inputs spread) over both, with a
/// separator byte no name holds, so `("ab", "c")` and `("a", "bc")` differ.
fn weight(node: &str, key: &str) -> u64 {
    let mut bytes = Vec::with_capacity(node.len() + 1 + key.len());
    bytes.extend_from_slice(node.as_bytes());
    bytes.push(0xff);
    bytes.extend_from_slice(key.as_bytes());
    crate::deploy::fnv1a(&bytes)
}

/// The part of a cluster-wide `limit` one of `nodes` live nodes enforces:
/// an even share rounded up, so the nodes together admit at most
/// `limit + nodes - 1`, and never less than one (a limit of 1 on three
/// nodes admits up to three at once). A limit of 0 stays 0.
pub fn share(limit: u64, nodes: usize) -> u64 {
    let nodes = nodes.max(1) as u64;
    if limit == 0 {
        return 0;
    }
    limit.div_ceil(nodes).max(1)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_clock_offset_is_the_least_delayed_of_two_or_more_heartbeats() {
        assert_eq!(clock_offset(&[]), None);
        assert_eq!(clock_offset(&[-30_000]), None);
        // Behind by 30 s: every sample says so.
        assert_eq!(clock_offset(&[-30_050, -30_010, -30_200]), Some(-30_010));
        // One heartbeat held up 6 s by a slow store is not skew.
        assert_eq!(clock_offset(&[-6_000, -20, -35]), Some(-20));
        assert_eq!(clock_offset(&[29_900, 29_990]), Some(29_990));
    }

    #[test]
    fn a_clock_is_the_odd_one_out_only_against_a_majority_of_two_or_more() {
        assert!(!clock_outlier(0, 0));
        assert!(!clock_outlier(1, 1), "two nodes: either may be wrong");
        assert!(clock_outlier(2, 2));
        assert!(
            !clock_outlier(2, 1),
            "one peer off: that peer is the odd one"
        );
        assert!(!clock_outlier(4, 2), "half is not most");
        assert!(clock_outlier(4, 3));
    }

    use super::*;

    fn nodes(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_node_agrees_on_an_owner_and_it_is_one_of_them() {
        let all = nodes(&["a", "b", "c"]);
        let mut reversed = all.clone();
        reversed.reverse();
        for i in 0..100 {
            let key = format!("sched/t/f/{i}");
            let owner = owner(&key, &all).unwrap();
            assert!(all.iter().any(|n| n == owner));
            assert_eq!(super::owner(&key, &reversed), Some(owner));
        }
        assert_eq!(owner("k", &[]), None);
    }

    #[test]
    fn keys_spread_over_the_nodes() {
        let all = nodes(&["a", "b", "c"]);
        let mut counts = std::collections::HashMap::new();
        for i in 0..3000 {
            *counts
                .entry(owner(&format!("sched/t/f{i}/beat"), &all).unwrap())
                .or_insert(0) += 1;
        }
        for node in &all {
            let n = counts[node.as_str()];
            assert!((800..1200).contains(&n), "{node} owns {n} of 3000");
        }
    }

    #[test]
    fn a_node_leaving_moves_only_what_it_owned() {
        let all = nodes(&["a", "b", "c"]);
        let without_b = nodes(&["a", "c"]);
        for i in 0..500 {
            let key = format!("k{i}");
            let before = owner(&key, &all).unwrap();
            let after = owner(&key, &without_b).unwrap();
            if before != "b" {
                assert_eq!(before, after, "{key} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn shares_round_up_and_never_vanish() {
        assert_eq!(share(10, 3), 4);
        assert_eq!(share(9, 3), 3);
        assert_eq!(share(1, 3), 1);
        assert_eq!(share(0, 3), 0);
        assert_eq!(share(10, 1), 10);
        assert_eq!(share(10, 0), 10);
    }
}
