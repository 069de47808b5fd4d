//! The scaling driver: every tick it reads each function's activity, asks
//! `gust_autoscale` what to do, and does it — unloads a function scaled to
//! zero (nothing of it stays in memory but its loaded version; its artifact stays
//! on disk), loads one its keep-alive pre-warms or its provisioning wants
//! — and keeps the recent decisions for `gust scale` and `/metrics`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gust_autoscale::{
    Decision, NodeConfig, Observation, Policy, Reading, Reason, ScaleEvent, ScaleStatus, Scaling,
};
use gust_runtime::Runtime;
use gust_store::BlobStore;

use crate::catalog::{Catalog, Loaded};

/// Microseconds on the clock activities count in (monotonic, never 0).
pub(crate) fn clock_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// One running instance, counted in its function's activity until dropped.
pub(crate) struct Running(Arc<gust_autoscale::Activity>);

impl Running {
    pub fn start(activity: &Arc<gust_autoscale::Activity>) -> Self {
        activity.start(clock_us());
        Self(activity.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.end(clock_us());
    }
}

/// Scale events kept per function.
const HISTORY: usize = 32;

/// How the node scales; chosen by the binary.
#[derive(Debug, Clone, Copy)]
pub struct ScaleConfig {
    /// How often every function's scaling is decided.
    pub tick: Duration,
    pub node: NodeConfig,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            node: NodeConfig::default(),
        }
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ScaleStats {
    /// Functions whose component is in memory.
    pub warm: u64,
    /// Functions known (deployed and serving).
    pub functions: u64,
    pub pre_warms: u64,
    pub unloads: u64,
    /// Requests that had to wait for their function to load.
    pub cold_starts: u64,
    /// (tenant, function, desired, warm) of functions wanting instances or warm.
    pub active: Vec<(String, String, u32, bool)>,
}

/// What the node did about a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    PreWarmed,
    Unloaded,
    ColdStart,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::PreWarmed => "pre_warmed",
            Action::Unloaded => "unloaded",
            Action::ColdStart => "cold_start",
        }
    }
}

struct FunctionScale {
    scaling: Scaling,
    last: Reading,
    decision: Option<Decision>,
    warm: bool,
    history: VecDeque<ScaleEvent>,
}

/// Scaling state of every function, and the clock activities count in.
///
/// A tick walks every function holding `functions`; a request never waits
/// for it: a cold start is noted in `cold` (a short lock) and applied by
/// the next tick or status read.
pub(crate) struct Autoscaler {
    config: ScaleConfig,
    functions: Mutex<HashMap<String, FunctionScale>>,
    /// Cold starts not yet applied: (function key, when in ms).
    cold: Mutex<Vec<(String, u64)>>,
    pre_warms: AtomicU64,
    unloads: AtomicU64,
    pub cold_starts: AtomicU64,
}

impl Autoscaler {
    pub fn new(config: ScaleConfig) -> Self {
        Self {
            config,
            functions: Mutex::default(),
            cold: Mutex::default(),
            pre_warms: AtomicU64::new(0),
            unloads: AtomicU64::new(0),
            cold_starts: AtomicU64::new(0),
        }
    }

    /// Records that a request found its function cold and loaded it: until
    /// the next tick, the last decision says so (one instance, in flight).
    pub fn cold_start(&self, loaded: &Loaded) {
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
        self.cold
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((loaded.key(), crate::now_ms()));
    }

    /// The scaling state, with the cold starts noted since it was last read.
    fn functions(&self) -> std::sync::MutexGuard<'_, HashMap<String, FunctionScale>> {
        let mut functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let cold = std::mem::take(&mut *self.cold.lock().unwrap_or_else(|p| p.into_inner()));
        for (key, at_ms) in cold {
            let Some(f) = functions.get_mut(&key) else {
                continue;
            };
            f.warm = true;
            let desired = f.decision.as_mut().map_or(1, |d| {
                d.desired = d.desired.max(1);
                d.reason = Reason::InFlight;
                d.desired
            });
            push(
                &mut f.history,
                ScaleEvent {
                    at_ms,
                    desired,
                    warm: true,
                    reason: Reason::InFlight.as_str().into(),
                    action: Some(Action::ColdStart.as_str().into()),
                },
            );
        }
        functions
    }

    /// Decides every function's scaling once and acts on it; how many
    /// functions it unloaded.
    fn tick(&self, catalog: &Catalog, runtime: &Runtime, blobs: &Arc<dyn BlobStore>) -> u64 {
        let all = catalog.all();
        let now_ms = crate::now_ms();
        let (weekday, minute_of_day) = gust_core::time::weekday_and_minute(now_ms);
        let now_us = clock_us();
        let node = &self.config.node;
        let keys: Vec<String> = all.iter().map(|s| s.live.key()).collect();
        let mut functions = self.functions();
        let mut unloads = 0;
        if functions.len() > all.len() || keys.iter().any(|k| !functions.contains_key(k)) {
            let live: std::collections::HashSet<&String> = keys.iter().collect();
            functions.retain(|key, _| live.contains(key));
        }
        for (served, key) in all.into_iter().zip(keys) {
            // The function's `live` version stands for it; its other
            // versions (aliases, a canary) leave memory with it.
            let loaded = &served.live;
            let reading = loaded.activity.read(now_us);
            let f = functions.entry(key).or_insert_with(|| FunctionScale {
                scaling: Scaling::default(),
                last: reading,
                decision: None,
                warm: false,
                history: VecDeque::new(),
            });
            f.scaling.learn(node, &loaded.activity.take_idle_times());
            let warm = loaded.is_warm();
            let seen = Observation {
                now_ms,
                concurrency: reading.concurrency_since(&f.last),
                in_flight: reading.in_flight,
                idle_ms: reading.idle_ms(),
                ready: if warm { reading.in_flight.max(1) } else { 0 },
                weekday,
                minute_of_day,
            };
            f.last = reading;
            let policy = Policy {
                keep_alive: loaded.limits.keep_alive,
                provisioned: loaded.limits.provisioned,
                max_instances: loaded.limits.concurrency_cap(),
            };
            let decision = f.scaling.decide(node, &policy, &seen);
            let mut action = None;
            if decision.desired == 0 && reading.in_flight == 0 {
                let mut unloaded = false;
                for r in served.versions() {
                    unloaded |= r.unload();
                }
                if unloaded {
                    unloads += 1;
                    self.unloads.fetch_add(1, Ordering::Relaxed);
                    action = Some(Action::Unloaded);
                }
            } else if decision.desired > 0 && !warm && reading.in_flight == 0 {
                self.pre_warms.fetch_add(1, Ordering::Relaxed);
                action = Some(Action::PreWarmed);
                // Every version it serves (a canary too, so that cold
                // starts do not weigh on its latency alone).
                for loaded in served.versions().into_iter().filter(|r| !r.is_warm()) {
                    let (runtime, blobs) = (runtime.clone(), blobs.clone());
                    tokio::spawn(async move {
                        if let Err(e) = loaded.prepared(&runtime, blobs.as_ref()).await {
                            tracing::warn!(function = %loaded.name, error = %e, "pre-warming failed");
                        }
                    });
                }
            }
            let warm_now = match action {
                Some(Action::Unloaded) => false,
                Some(_) => true,
                None => warm,
            };
            let changed = f
                .decision
                .is_none_or(|d| d.desired != decision.desired || d.reason != decision.reason)
                || f.warm != warm_now;
            if changed || action.is_some() {
                push(
                    &mut f.history,
                    ScaleEvent {
                        at_ms: now_ms,
                        desired: decision.desired,
                        warm: warm_now,
                        reason: decision.reason.as_str().into(),
                        action: action.map(|a| a.as_str().into()),
                    },
                );
            }
            f.warm = warm_now;
            f.decision = Some(decision);
        }
        unloads
    }

    /// `<tenant>/<function>`'s scaling, if it is deployed.
    pub fn status(&self, catalog: &Catalog, tenant: &str, name: &str) -> Option<ScaleStatus> {
        let loaded = catalog.get(tenant, name)?.live.clone();
        let reading = loaded.activity.read(clock_us());
        let functions = self.functions();
        let f = functions.get(&loaded.key());
        let decision = f.and_then(|f| f.decision);
        Some(ScaleStatus {
            function: name.to_string(),
            desired: decision.map_or(u32::from(loaded.is_warm()), |d| d.desired),
            warm: loaded.is_warm(),
            running: reading.in_flight,
            reason: decision.map_or("new", |d| d.reason.as_str()).into(),
            keep_alive: loaded.limits.keep_alive.to_string(),
            basis: decision.map_or("", |d| d.windows.basis.as_str()).into(),
            prewarm_ms: decision.map_or(0, |d| d.windows.prewarm_ms),
            keep_ms: decision.map_or(0, |d| d.windows.keep_ms),
            idle_samples: f.map_or(0, |f| f.scaling.history().samples()),
            provisioned: decision.map_or(0, |d| d.provisioned),
            provisioned_setting: loaded.limits.provisioned.map(|p| p.to_string()),
            stable_concurrency: decision.map_or(0.0, |d| d.demand.stable),
            panic_concurrency: decision.map_or(0.0, |d| d.demand.panic),
            panicking: decision.is_some_and(|d| d.demand.panicking),
            history: f
                .map(|f| f.history.iter().cloned().collect())
                .unwrap_or_default(),
            nodes: Vec::new(),
        })
    }

    pub fn stats(&self, catalog: &Catalog) -> ScaleStats {
        let all = catalog.all();
        let functions = self.functions();
        let mut stats = ScaleStats {
            functions: all.len() as u64,
            pre_warms: self.pre_warms.load(Ordering::Relaxed),
            unloads: self.unloads.load(Ordering::Relaxed),
            cold_starts: self.cold_starts.load(Ordering::Relaxed),
            ..ScaleStats::default()
        };
        for served in all {
            let loaded = &served.live;
            let warm = loaded.is_warm();
            stats.warm += u64::from(warm);
            let desired = functions
                .get(&loaded.key())
                .and_then(|f| f.decision)
                .map_or(0, |d| d.desired);
            if warm || desired > 0 {
                stats.active.push((
                    loaded.tenant.to_string(),
                    loaded.name.to_string(),
                    desired,
                    warm,
                ));
            }
        }
        stats
    }
}

fn push(history: &mut VecDeque<ScaleEvent>, event: ScaleEvent) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(event);
}

/// The least time between two trims of the allocator, and the most while
/// functions are still being unloaded.
const TRIM_AT_MOST: Duration = Duration::from_secs(1);
const TRIM_AT_LEAST: Duration = Duration::from_secs(5);

/// Whether to trim the allocator now: `untrimmed` functions unloaded
/// since the last trim, `since` ago; `unloading`: the last tick unloaded some.
fn time_to_trim(untrimmed: u64, unloading: bool, since: Duration) -> bool {
    untrimmed > 0 && since >= TRIM_AT_MOST && (!unloading || since >= TRIM_AT_LEAST)
}

/// Runs the autoscaler's ticks until the process ends. A tick walks every
/// function (tens of milliseconds at ten thousand): it runs on the
/// blocking pool, never on a thread that serves requests.
///
/// What unloaded functions leave is given back to the system once a tick
/// unloads nothing more (a trim walks the heap: tens of milliseconds at
/// ten thousand functions, so at most every [`TRIM_AT_MOST`], and every
/// [`TRIM_AT_LEAST`] while unloads go on): glibc would keep the freed
/// pages, and a node of ten thousand idle functions would hold 2.5 times
/// the memory it uses.
pub(crate) async fn drive(
    scaler: Arc<Autoscaler>,
    catalog: Arc<Catalog>,
    runtime: Runtime,
    blobs: Arc<dyn BlobStore>,
) {
    let mut ticks = tokio::time::interval(scaler.config.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut untrimmed = 0u64;
    let mut unloading = false;
    let mut trimmed = Instant::now();
    loop {
        ticks.tick().await;
        let (scaler, catalog, runtime, blobs) = (
            scaler.clone(),
            catalog.clone(),
            runtime.clone(),
            blobs.clone(),
        );
        let trim = time_to_trim(untrimmed, unloading, trimmed.elapsed());
        let tick = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let unloads = scaler.tick(&catalog, &runtime, &blobs);
            let took = started.elapsed();
            if trim {
                gust_net::trim_allocator();
            }
            (unloads, took, started.elapsed() - took)
        });
        match tick.await {
            Ok((unloads, took, trim_took)) => {
                if trim {
                    untrimmed = 0;
                    trimmed = Instant::now();
                    tracing::debug!(took_us = trim_took.as_micros() as u64, "allocator trimmed");
                }
                untrimmed += unloads;
                unloading = unloads > 0;
                tracing::trace!(took_us = took.as_micros() as u64, unloads, "scale tick");
            }
            Err(e) => tracing::error!(error = %e, "a scale tick failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_is_trimmed_once_unloads_settle_and_never_more_than_once_a_second() {
        let ms = Duration::from_millis;
        assert!(!time_to_trim(0, false, ms(60_000)), "nothing unloaded");
        assert!(time_to_trim(3, false, ms(1_000)), "unloads are over");
        assert!(!time_to_trim(3, false, ms(999)), "trimmed a moment ago");
        assert!(!time_to_trim(3, true, ms(4_999)), "unloads go on");
        assert!(time_to_trim(3, true, ms(5_000)), "but not for ever");
    }
}
