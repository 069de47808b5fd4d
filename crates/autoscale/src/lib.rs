//! Gust's scaling decisions: how many instances of a function its demand
//! needs (`scaler`, after Knative's autoscaler), when an idle function
//! leaves memory and when it comes back before it is called (`keepalive`:
//! fixed or learned), instances provisioned whatever the traffic, and how
//! these combine into one decision per function per tick ([`Scaling`]).
//! `activity` counts what the decisions observe, lock-free, on the request
//! path.
//!
//! Every decision is a pure function of plain data: no clock (the caller
//! passes the time), no IO, no tokio, wasmtime or hyper. The gateway's
//! driver calls them and acts (loads, unloads, reports); in a cluster the
//! same decisions will place functions on nodes.

pub mod activity;
pub mod canary;
pub mod keepalive;
pub mod scaler;
mod status;

use gust_core::scaling::{KeepAlive, Provisioned};

pub use activity::{Activity, Reading};
pub use keepalive::{Basis, IdleHistogram, LearnedConfig, Windows};
pub use scaler::{Demand, Scaler, ScalerConfig};
pub use status::{NodeScale, ScaleEvent, ScaleStatus};

/// A function's scaling settings, from its limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub keep_alive: KeepAlive,
    pub provisioned: Option<Provisioned>,
    /// The function's concurrency cap: never more instances than this.
    pub max_instances: Option<u32>,
}

/// The node's scaling settings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NodeConfig {
    pub scaler: ScalerConfig,
    pub learned: LearnedConfig,
    /// How long a function the policy lets go stays in memory anyway (a
    /// request in that time still finds it warm). On one node nothing
    /// else must be told first, so 0 by default.
    pub scale_to_zero_grace_ms: u64,
}

/// What was observed of a function at one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub now_ms: u64,
    /// Average concurrency since the last tick.
    pub concurrency: f64,
    pub in_flight: u32,
    /// How long it has been idle (`None` while in flight).
    pub idle_ms: Option<u64>,
    /// Instances warm now (on one node: 1 when the component is loaded).
    pub ready: u32,
    /// Day of the week (0 is Monday) and minute of the day, UTC.
    pub weekday: u8,
    pub minute_of_day: u16,
}

/// Why a function is warm or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Requests are running.
    InFlight,
    /// Idle, within its keep-alive.
    KeepAlive,
    /// Idle, pre-warmed ahead of its expected next invocation.
    PreWarm,
    /// Idle, but provisioned.
    Provisioned,
    /// Let go by its policy; within the scale-to-zero grace period.
    Grace,
    /// Scaled to zero.
    Idle,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InFlight => "in_flight",
            Reason::KeepAlive => "keep_alive",
            Reason::PreWarm => "pre_warm",
            Reason::Provisioned => "provisioned",
            Reason::Grace => "grace",
            Reason::Idle => "idle",
        }
    }
}

/// One decision about a function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Instances wanted (0: scaled to zero).
    pub desired: u32,
    pub reason: Reason,
    pub demand: Demand,
    pub windows: Windows,
    pub provisioned: u32,
}

/// One function's scaling state, fed one observation per tick.
#[derive(Debug, Clone, Default)]
pub struct Scaling {
    scaler: Scaler,
    history: IdleHistogram,
    /// The windows last computed, and for which keep-alive (computed
    /// again only when either changes).
    windows: Option<(KeepAlive, Windows)>,
    cold_since_ms: Option<u64>,
}

impl Scaling {
    /// Learns idle times that ended (ms).
    pub fn learn(&mut self, node: &NodeConfig, idle_times_ms: &[u64]) {
        for &idle in idle_times_ms {
            self.history.record(&node.learned, idle);
        }
        if !idle_times_ms.is_empty() {
            self.windows = None;
        }
    }

    pub fn history(&self) -> &IdleHistogram {
        &self.history
    }

    pub fn decide(&mut self, node: &NodeConfig, policy: &Policy, seen: &Observation) -> Decision {
        let windows = match self.windows {
            Some((keep_alive, windows)) if keep_alive == policy.keep_alive => windows,
            _ => {
                let windows = keepalive::windows(policy.keep_alive, &node.learned, &self.history);
                self.windows = Some((policy.keep_alive, windows));
                windows
            }
        };
        let demand = self
            .scaler
            .decide(&node.scaler, seen.now_ms, seen.concurrency, seen.ready);
        let provisioned = provisioned_at(
            policy.provisioned.as_ref(),
            seen.weekday,
            seen.minute_of_day,
        );
        // A keep-alive keeps what is loaded; it loads nothing (after a
        // restart, a function is not "recently used"). Pre-warming does.
        let by_policy = if seen.in_flight > 0 {
            Some(Reason::InFlight)
        } else {
            seen.idle_ms
                .filter(|&idle| windows.warm_after(idle))
                .and_then(|_| {
                    if windows.prewarm_ms > 0 {
                        Some(Reason::PreWarm)
                    } else {
                        (seen.ready > 0).then_some(Reason::KeepAlive)
                    }
                })
        };
        let reason = match by_policy {
            Some(reason) => {
                self.cold_since_ms = None;
                reason
            }
            None if provisioned > 0 => Reason::Provisioned,
            None => {
                let since = *self.cold_since_ms.get_or_insert(seen.now_ms);
                if seen.ready > 0 && seen.now_ms < since.saturating_add(node.scale_to_zero_grace_ms)
                {
                    Reason::Grace
                } else {
                    Reason::Idle
                }
            }
        };
        let desired = match reason {
            Reason::Idle => 0,
            _ => demand.instances.max(1).max(provisioned),
        };
        Decision {
            desired: policy.max_instances.map_or(desired, |max| desired.min(max)),
            reason,
            demand,
            windows,
            provisioned,
        }
    }
}

/// Instances `provisioned` asks for on `weekday` (0 is Monday) at
/// `minute_of_day` (UTC). A span that ends before it starts runs past
/// midnight: its early hours belong to the day before.
pub fn provisioned_at(provisioned: Option<&Provisioned>, weekday: u8, minute_of_day: u16) -> u32 {
    let Some(p) = provisioned else { return 0 };
    let Some(hours) = p.hours else {
        return p.instances;
    };
    let on = |day: u8| hours.days & (1 << (day % 7)) != 0;
    let inside = if hours.from_minute < hours.to_minute {
        on(weekday) && (hours.from_minute..hours.to_minute).contains(&minute_of_day)
    } else {
        (on(weekday) && minute_of_day >= hours.from_minute)
            || (on((weekday + 6) % 7) && minute_of_day < hours.to_minute)
    };
    if inside { p.instances } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(now_ms: u64, in_flight: u32, idle_ms: Option<u64>, ready: u32) -> Observation {
        Observation {
            now_ms,
            concurrency: f64::from(in_flight),
            in_flight,
            idle_ms,
            ready,
            weekday: 2,
            minute_of_day: 600,
        }
    }

    fn fixed(ms: u64) -> Policy {
        Policy {
            keep_alive: KeepAlive::Fixed { idle_ms: ms },
            provisioned: None,
            max_instances: None,
        }
    }

    #[test]
    fn busy_then_kept_alive_then_scaled_to_zero() {
        let node = NodeConfig::default();
        let mut s = Scaling::default();
        let d = s.decide(&node, &fixed(5000), &seen(1000, 3, None, 1));
        assert_eq!(d.reason, Reason::InFlight);
        assert!(d.desired >= 3);
        let d = s.decide(&node, &fixed(5000), &seen(5000, 0, Some(4000), 1));
        assert_eq!(d.reason, Reason::KeepAlive);
        assert!(d.desired >= 1);
        let d = s.decide(&node, &fixed(5000), &seen(6000, 0, Some(5000), 1));
        assert_eq!((d.reason, d.desired), (Reason::Idle, 0));
    }

    #[test]
    fn a_keep_alive_keeps_but_never_loads() {
        let node = NodeConfig::default();
        let mut s = Scaling::default();
        let d = s.decide(&node, &fixed(600_000), &seen(1000, 0, Some(10), 0));
        assert_eq!((d.reason, d.desired), (Reason::Idle, 0));
    }

    #[test]
    fn the_grace_period_delays_scale_to_zero_of_a_loaded_function() {
        let node = NodeConfig {
            scale_to_zero_grace_ms: 2000,
            ..NodeConfig::default()
        };
        let mut s = Scaling::default();
        let p = fixed(0);
        assert_eq!(
            s.decide(&node, &p, &seen(1000, 0, Some(10), 1)).reason,
            Reason::Grace
        );
        assert_eq!(
            s.decide(&node, &p, &seen(2500, 0, Some(1510), 1)).reason,
            Reason::Grace
        );
        assert_eq!(
            s.decide(&node, &p, &seen(3000, 0, Some(2010), 1)).reason,
            Reason::Idle
        );
        // Nothing is loaded just to sit out a grace period.
        let mut cold = Scaling::default();
        assert_eq!(
            cold.decide(&node, &p, &seen(1000, 0, Some(10), 0)).reason,
            Reason::Idle
        );
    }

    #[test]
    fn provisioned_instances_stay_whatever_the_traffic() {
        let node = NodeConfig::default();
        let mut s = Scaling::default();
        let p = Policy {
            provisioned: Some("2".parse().unwrap()),
            ..fixed(0)
        };
        let d = s.decide(&node, &p, &seen(1000, 0, Some(3_600_000), 0));
        assert_eq!((d.reason, d.desired), (Reason::Provisioned, 2));
    }

    #[test]
    fn provisioned_hours_follow_the_week() {
        let office: Provisioned = "2@mon-fri 09:00-17:00".parse().unwrap();
        assert_eq!(provisioned_at(Some(&office), 0, 9 * 60), 2);
        assert_eq!(provisioned_at(Some(&office), 4, 17 * 60 - 1), 2);
        assert_eq!(provisioned_at(Some(&office), 4, 17 * 60), 0);
        assert_eq!(provisioned_at(Some(&office), 5, 12 * 60), 0);
        assert_eq!(provisioned_at(Some(&office), 2, 8 * 60 + 59), 0);
        let night: Provisioned = "1@fri 22:00-06:00".parse().unwrap();
        assert_eq!(provisioned_at(Some(&night), 4, 23 * 60), 1);
        assert_eq!(
            provisioned_at(Some(&night), 5, 5 * 60),
            1,
            "Saturday early is Friday's night"
        );
        assert_eq!(
            provisioned_at(Some(&night), 4, 5 * 60),
            0,
            "Friday early is Thursday's night"
        );
        assert_eq!(provisioned_at(None, 0, 0), 0);
    }

    #[test]
    fn max_concurrency_caps_the_instances() {
        let node = NodeConfig::default();
        let mut s = Scaling::default();
        let p = Policy {
            max_instances: Some(2),
            ..fixed(1000)
        };
        let d = s.decide(&node, &p, &seen(1000, 9, None, 1));
        assert_eq!(d.desired, 2);
    }

    #[test]
    fn a_learned_policy_unloads_then_prewarms() {
        let node = NodeConfig::default();
        let mut s = Scaling::default();
        s.learn(&node, &[30 * 60_000 + 30_000; 20]);
        let p = Policy {
            keep_alive: KeepAlive::Learned,
            ..fixed(0)
        };
        let d = s.decide(&node, &p, &seen(1000, 0, Some(60_000), 1));
        assert_eq!((d.reason, d.desired), (Reason::Idle, 0));
        let d = s.decide(&node, &p, &seen(2000, 0, Some(30 * 60_000), 0));
        assert_eq!(d.reason, Reason::PreWarm);
        assert_eq!(d.desired, 1);
        // What it learns next moves the window.
        s.learn(&node, &[60 * 60_000 + 30_000; 40]);
        let d = s.decide(&node, &p, &seen(3000, 0, Some(30 * 60_000), 0));
        assert_eq!(d.reason, Reason::Idle);
        assert_eq!(d.windows.prewarm_ms, 59 * 60_000 + 30_000);
    }
}
