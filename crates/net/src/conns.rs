//! The connections a listener holds: how many in all and per client
//! address, and which are idle (no request in progress) since when. Pure
//! bookkeeping: the accept loop asks [`ConnTable::admit`] what to do with
//! a new connection and carries out the answer.
//!
//! When a limit is reached, the idlest connection that counts against it
//! (the one idle the longest) is closed to make room; a connection with a
//! request in progress is never closed. When every one is busy, the new
//! connection is refused.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

/// Connections a listener holds at once, at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// In all.
    pub per_listener: usize,
    /// From one client address.
    pub per_address: usize,
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit<T> {
    /// Serve it as `id`; first close the connection `evict` names, if any
    /// (it is already out of the table).
    Accept { id: u64, evict: Option<T> },
    /// Close it: the limit named is reached and no connection under it is idle.
    Refuse(Full),
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Listener,
    Address,
}

struct Entry<T> {
    address: IpAddr,
    /// Requests in progress on it.
    busy: u32,
    /// Since when it has had none (`None` while busy).
    idle_since: Option<Instant>,
    handle: T,
}

/// A listener's connections. `T` is what closes one (the caller's handle).
pub(crate) struct ConnTable<T> {
    limits: ConnectionLimits,
    entries: HashMap<u64, Entry<T>>,
    /// Idle connections, idlest first.
    idle: BTreeSet<(Instant, u64)>,
    per_address: HashMap<IpAddr, usize>,
    next_id: u64,
    /// Most connections held since the allocator was last trimmed.
    peak: usize,
}

/// Trim the allocator once a listener that held at least this many
/// connections is down to a quarter of them.
const TRIM_AFTER_PEAK: usize = 1024;

impl<T> ConnTable<T> {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits: ConnectionLimits {
                per_listener: limits.per_listener.max(1),
                per_address: limits.per_address.max(1),
            },
            entries: HashMap::new(),
            idle: BTreeSet::new(),
            per_address: HashMap::new(),
            next_id: 0,
            peak: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// A new connection from `address`, idle from `now`.
    pub fn admit(&mut self, address: IpAddr, now: Instant, handle: T) -> Admit<T> {
        let address = client_group(address);
        let from_address = self.per_address.get(&address).copied().unwrap_or(0);
        let mut evict = None;
        if from_address >= self.limits.per_address {
            match self.idlest(Some(address)) {
                Some(id) => evict = self.remove(id).map(|(handle, _)| handle),
                None => return Admit::Refuse(Full::Address),
            }
        } else if self.entries.len() >= self.limits.per_listener {
            match self.idlest(None) {
                Some(id) => evict = self.remove(id).map(|(handle, _)| handle),
                None => return Admit::Refuse(Full::Listener),
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                address,
                busy: 0,
                idle_since: Some(now),
                handle,
            },
        );
        self.idle.insert((now, id));
        *self.per_address.entry(address).or_insert(0) += 1;
        self.peak = self.peak.max(self.entries.len());
        Admit::Accept { id, evict }
    }

    /// The connection idle the longest, of `address` (a client group) or of any.
    fn idlest(&self, address: Option<IpAddr>) -> Option<u64> {
        self.idle
            .iter()
            .map(|&(_, id)| id)
            .find(|id| address.is_none_or(|a| self.entries.get(id).is_some_and(|e| e.address == a)))
    }

    /// A request started on `id`.
    pub fn busy(&mut self, id: u64) {
        if let Some(entry) = self.entries.get_mut(&id) {
            if let Some(since) = entry.idle_since.take() {
                self.idle.remove(&(since, id));
            }
            entry.busy += 1;
        }
    }

    /// A request on `id` ended (its response written or abandoned).
    pub fn done(&mut self, id: u64, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.busy = entry.busy.saturating_sub(1);
            if entry.busy == 0 && entry.idle_since.is_none() {
                entry.idle_since = Some(now);
                self.idle.insert((now, id));
            }
        }
    }

    /// The connection `id` closed (or was closed). Returns its handle, and
    /// whether now is the time to give freed memory back to the system.
    pub fn remove(&mut self, id: u64) -> Option<(T, bool)> {
        let entry = self.entries.remove(&id)?;
        if let Some(since) = entry.idle_since {
            self.idle.remove(&(since, id));
        }
        if let Some(n) = self.per_address.get_mut(&entry.address) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&entry.address);
            }
        }
        let trim = self.peak >= TRIM_AFTER_PEAK && self.entries.len() <= self.peak / 4;
        if trim {
            self.peak = self.entries.len();
        }
        Some((entry.handle, trim))
    }
}

/// The file descriptors this process may open: its soft `RLIMIT_NOFILE`,
/// raised first to the hard limit (a server's usual start-up step).
pub fn fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), maximum) = (limit.current, limit.maximum)
        && maximum.is_none_or(|max| max > current)
    {
        // Unlimited hard limits are capped; the kernel's own cap applies anyway.
        let raised = maximum.unwrap_or(1 << 20).min(1 << 20);
        let wanted = rustix::process::Rlimit {
            current: Some(raised),
            maximum,
        };
        if raised > current && setrlimit(Resource::Nofile, wanted).is_ok() {
            limit = wanted;
        }
    }
    limit.current.unwrap_or(1 << 20)
}

/// The listen backlog tokio asks for; the kernel caps it at
/// `net.core.somaxconn`.
const BACKLOG: u32 = 1024;

/// What to tell the operator when the kernel holds fewer connections
/// waiting to be accepted than the listeners ask for (`somaxconn`, read
/// from `/proc/sys/net/core/somaxconn`; 128 on kernels before 5.4): a
/// burst of new connections past it is dropped at the handshake and its
/// clients wait about a second for their SYN to be sent again. Measured
/// (bench/README.md, session 34): with 64, the first wave of 256
/// connections on a fresh node waited 1,008–1,228 ms at p99 in 3 runs of
/// 3; with 4,096, none did.
pub fn backlog_warning(somaxconn: u32) -> Option<String> {
    (somaxconn < BACKLOG).then(|| {
        format!(
            "net.core.somaxconn is {somaxconn}: a burst of more than about {somaxconn} new connections at once leaves the ones past it waiting about a second (the kernel drops their handshake); raise it to at least {BACKLOG} (sysctl -w net.core.somaxconn=4096, and in /etc/sysctl.d to keep it)"
        )
    })
}

/// The kernel's cap on a listener's backlog, where it can be read.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Connection limits that keep both listeners below `fd_limit` with a
/// reserve for everything else (storage, artifacts, compile workers,
/// outbound calls): the data plane's and the control API's.
pub fn default_limits(fd_limit: u64) -> (ConnectionLimits, ConnectionLimits) {
    /// An idle connection costs ~20 KiB; past this, memory, not descriptors, runs out.
    const DATA_MAX: u64 = 10_000;
    // A client may well open a few thousand at once (a load test, a batch
    // of key writes, every user behind one proxy); these bound a flood
    // of them, not normal use.
    const API_MAX: u64 = 4_096;
    const PER_ADDRESS: u64 = 4_096;
    let reserve = (fd_limit / 8).max(256);
    let budget = fd_limit.saturating_sub(reserve).max(16);
    let data = (budget * 3 / 4).clamp(8, DATA_MAX) as usize;
    let api = (budget / 4).clamp(4, API_MAX) as usize;
    (
        ConnectionLimits {
            per_listener: data,
            per_address: data.min(PER_ADDRESS as usize),
        },
        ConnectionLimits {
            per_listener: api,
            per_address: api,
        },
    )
}

/// Whom a per-address limit counts a connection against: an IPv4 client
/// by its address, an IPv6 one by its /64 (one subscriber's network hands
/// out any number of addresses within it), an IPv4-mapped one as IPv4.
pub fn client_group(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_small_somaxconn_is_named_with_what_to_do_and_a_large_one_is_not() {
        let warning = backlog_warning(128).unwrap();
        assert!(warning.contains("somaxconn is 128"), "{warning}");
        assert!(
            warning.contains("sysctl -w net.core.somaxconn="),
            "{warning}"
        );
        assert_eq!(backlog_warning(1024), None);
        assert_eq!(backlog_warning(4096), None);
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let mut t = table(100, 2);
        let now = Instant::now();
        let v6 = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(matches!(
            t.admit(v6("2001:db8:1:2::1"), now, 1),
            Admit::Accept { evict: None, .. }
        ));
        assert!(matches!(
            t.admit(v6("2001:db8:1:2:ffff::9"), now, 2),
            Admit::Accept { evict: None, .. }
        ));
        // A third from the same /64 takes the idlest of the two's place.
        assert!(matches!(
            t.admit(v6("2001:db8:1:2:abcd::1"), now, 3),
            Admit::Accept { evict: Some(_), .. }
        ));
        // Another /64 is another client.
        assert!(matches!(
            t.admit(v6("2001:db8:1:3::1"), now, 4),
            Admit::Accept { evict: None, .. }
        ));
        assert_eq!(client_group(v6("::ffff:10.0.0.1")), v6("10.0.0.1"));
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn table(per_listener: usize, per_address: usize) -> ConnTable<u32> {
        ConnTable::new(ConnectionLimits {
            per_listener,
            per_address,
        })
    }

    fn accepted(admit: Admit<u32>) -> (u64, Option<u32>) {
        match admit {
            Admit::Accept { id, evict } => (id, evict),
            Admit::Refuse(full) => panic!("refused: {full:?}"),
        }
    }

    #[test]
    fn the_idlest_of_the_same_address_makes_room() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut conns = table(100, 2);
        let (a, _) = accepted(conns.admit(ip(1), at(0), 1));
        let (_, _) = accepted(conns.admit(ip(1), at(1), 2));
        accepted(conns.admit(ip(2), at(2), 3));
        // `a` served a request and went idle again later than the second.
        conns.busy(a);
        conns.done(a, at(5));
        let (_, evict) = accepted(conns.admit(ip(1), at(6), 4));
        assert_eq!(
            evict,
            Some(2),
            "the connection idle longest, of that address"
        );
        assert_eq!(conns.len(), 3);
        // Another address is not affected by the first one's limit.
        assert_eq!(accepted(conns.admit(ip(3), at(7), 5)).1, None);
    }

    #[test]
    fn busy_connections_are_never_closed_and_new_ones_are_refused() {
        let now = Instant::now();
        let mut conns = table(100, 2);
        let (a, _) = accepted(conns.admit(ip(1), now, 1));
        let (b, _) = accepted(conns.admit(ip(1), now, 2));
        conns.busy(a);
        conns.busy(b);
        assert_eq!(conns.admit(ip(1), now, 3), Admit::Refuse(Full::Address));
        // Two requests on one connection: idle only after both.
        conns.busy(b);
        conns.done(b, now);
        assert_eq!(conns.admit(ip(1), now, 3), Admit::Refuse(Full::Address));
        conns.done(b, now);
        assert_eq!(accepted(conns.admit(ip(1), now, 3)).1, Some(2));
    }

    #[test]
    fn the_listener_limit_closes_the_idlest_of_any_address() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut conns = table(3, 3);
        let (a, _) = accepted(conns.admit(ip(1), at(0), 1));
        accepted(conns.admit(ip(2), at(1), 2));
        let (c, _) = accepted(conns.admit(ip(3), at(2), 3));
        conns.busy(a);
        let (d, evict) = accepted(conns.admit(ip(4), at(3), 4));
        assert_eq!(evict, Some(2));
        conns.busy(c);
        conns.busy(d);
        assert_eq!(conns.admit(ip(5), at(4), 5), Admit::Refuse(Full::Listener));
        // A closed connection frees its place and its address's.
        assert_eq!(conns.remove(a).map(|(h, _)| h), Some(1));
        assert_eq!(conns.remove(a), None, "removed once");
        assert_eq!(accepted(conns.admit(ip(1), at(5), 6)).1, None);
        assert_eq!(conns.len(), 3);
    }

    #[test]
    fn memory_is_trimmed_once_a_crowd_has_left() {
        let now = Instant::now();
        let mut conns = table(5000, 5000);
        let ids: Vec<u64> = (0..2000)
            .map(|i| accepted(conns.admit(ip((i % 200) as u8), now, 0)).0)
            .collect();
        let trims: Vec<bool> = ids.iter().map(|&id| conns.remove(id).unwrap().1).collect();
        assert_eq!(trims.iter().filter(|&&t| t).count(), 1, "one trim");
        assert!(trims[1499], "at a quarter of the peak (500 of 2000 left)");
        // Few connections never trim.
        let (id, _) = accepted(conns.admit(ip(1), now, 0));
        assert!(!conns.remove(id).unwrap().1);
    }

    #[test]
    fn defaults_stay_below_the_descriptor_limit_with_a_reserve() {
        for fds in [256, 1024, 4096, 65_536, 1 << 20] {
            let (data, api) = default_limits(fds);
            let held = (data.per_listener + api.per_listener) as u64;
            assert!(held + 128 <= fds.max(256), "{fds}: {data:?} {api:?}");
            assert!(data.per_address <= data.per_listener);
            assert!(api.per_listener >= 4 && data.per_listener >= 8);
        }
        assert_eq!(default_limits(1024).0.per_listener, 576);
        assert_eq!(default_limits(1 << 20).0.per_listener, 10_000);
    }
}
