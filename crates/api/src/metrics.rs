//! `/metrics`: the node's figures in the Prometheus text format (0.0.4),
//! encoded by `prometheus-client` (names, types, label escaping) from one
//! [`Snapshot`] taken per scrape.
//!
//! The data plane's figures come from the binary as [`DataPlaneStats`]
//! through a [`DataPlaneView`], so that the API does not depend on the
//! gateway; the runtime's, the event system's and the meter's it reads
//! from its own state.

use std::fmt;
use std::sync::Arc;

use gust_core::usage::UsageOutcome;
use gust_events::EventStats;
use gust_meter::{Histogram, MeterStats};
use gust_runtime::RuntimeStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::ApiState;

/// The `Content-Type` of what [`render`] writes.
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Takes the data plane's figures; supplied by the binary.
pub type DataPlaneView = Arc<dyn Fn() -> DataPlaneStats + Send + Sync>;

/// The data plane's counters and scaling, as `/metrics` shows them.
#[derive(Debug, Clone, Default)]
pub struct DataPlaneStats {
    /// Requests received.
    pub requests: u64,
    /// Responses by status class: index 0 is 1xx … index 4 is 5xx.
    pub responses_by_class: [u64; 5],
    /// Invocations admitted and not yet finished.
    pub in_flight: u64,
    pub invocations_completed: u64,
    pub invocations_failed: u64,
    /// Log records dropped (over a function's log rate, or the writer fell behind).
    pub logs_dropped: u64,
    /// WebSocket connections open on this node.
    pub websockets_open: u64,
    /// Functions deployed and serving.
    pub functions: u64,
    /// Functions whose component is in memory.
    pub functions_warm: u64,
    /// Functions loaded ahead of traffic or for provisioning.
    pub pre_warms: u64,
    /// Functions scaled to zero.
    pub unloads: u64,
    /// Requests that waited for their function to load.
    pub request_cold_starts: u64,
    /// Functions wanting instances or warm.
    pub active: Vec<FunctionScaling>,
    /// The event sources this node runs.
    pub sources: Vec<SourceFigures>,
}

/// One event source's counters, as `/metrics` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFigures {
    pub tenant: String,
    pub function: String,
    pub id: String,
    pub kind: &'static str,
    /// Messages taken from the broker, queued as events, recognised as
    /// redeliveries (not queued again), refused (over the event limit).
    pub received: u64,
    pub queued: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Connections that failed or ended.
    pub errors: u64,
    pub connected: bool,
    /// Stopped pulling: the function's backlog is at the source's limit.
    pub paused: bool,
    /// Messages waiting at the broker, where it reports them.
    pub lag: Option<u64>,
}

/// One function's scaling, as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionScaling {
    pub tenant: String,
    pub function: String,
    /// Instances its demand, keep-alive and provisioning want.
    pub desired: u32,
    /// Its component is in memory.
    pub warm: bool,
}

/// Everything one scrape shows.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) data_plane: DataPlaneStats,
    pub(crate) runtime: RuntimeStats,
    pub(crate) events: EventStats,
    /// The process's resident memory (`None`: not known on this system).
    pub(crate) resident_bytes: Option<u64>,
    /// `None`: metering is off.
    pub(crate) meter: Option<MeterStats>,
    /// What retention removed, by kind.
    pub(crate) pruned: Vec<(&'static str, u64)>,
    /// The data directory's size on disk, as of the last retention pass.
    pub(crate) data_dir_bytes: u64,
}

impl Snapshot {
    /// Takes every part's figures now.
    pub(crate) fn take(state: &ApiState) -> Self {
        Self {
            data_plane: (state.metrics)(),
            runtime: state.runtime.stats(),
            events: state.events.stats(),
            resident_bytes: resident_bytes(),
            meter: state.meter.as_ref().map(gust_meter::Meter::stats),
            pruned: state.retention.pruned().to_vec(),
            data_dir_bytes: state
                .retention
                .data_dir_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The Prometheus text of a snapshot.
pub(crate) fn render(snapshot: Snapshot) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The process's resident set, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

// Counters are named without `_total`: the encoder appends it to the
// family and sample names. Help texts are written as given.
impl Collector for Snapshot {
    fn encode(&self, mut out: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let g = &self.data_plane;
        let r = &self.runtime;
        let e = &self.events;
        let out = &mut out;
        one(
            out,
            "gust_requests",
            "Requests received on the data plane.",
            Counter,
            g.requests,
        )?;
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        labelled(
            out,
            "gust_responses",
            "Responses sent on the data plane, by status class.",
            Counter,
            classes
                .into_iter()
                .zip(g.responses_by_class)
                .map(|(class, n)| ([("class", class)], n)),
        )?;
        one(
            out,
            "gust_invocations_in_flight",
            "Invocations admitted and not yet finished.",
            Gauge,
            g.in_flight,
        )?;
        labelled(
            out,
            "gust_invocations",
            "Finished invocations, by result.",
            Counter,
            [
                ([("result", "completed")], g.invocations_completed),
                ([("result", "failed")], g.invocations_failed),
            ],
        )?;
        one(
            out,
            "gust_websocket_connections",
            "WebSocket connections open on this node.",
            Gauge,
            g.websockets_open,
        )?;
        one(
            out,
            "gust_logs_dropped",
            "Invocation log records dropped: over their function's log rate, or the writer fell behind.",
            Counter,
            g.logs_dropped,
        )?;
        labelled(
            out,
            "gust_retention_pruned",
            "Records and files removed by retention since start-up, by kind.",
            Counter,
            self.pruned.iter().map(|(kind, n)| ([("kind", *kind)], *n)),
        )?;
        one(
            out,
            "gust_data_dir_bytes",
            "Bytes on disk under the data directory, as of the last retention pass.",
            Gauge,
            self.data_dir_bytes,
        )?;
        one(
            out,
            "gust_compilations",
            "Components compiled from WebAssembly.",
            Counter,
            r.compilations,
        )?;
        one(
            out,
            "gust_artifact_loads",
            "Components loaded from a compiled artifact on disk.",
            Counter,
            r.artifact_loads,
        )?;
        one(
            out,
            "gust_components_loaded",
            "Components held in memory, ready to instantiate.",
            Gauge,
            r.loaded,
        )?;
        labelled(
            out,
            "gust_events",
            "Events, by what happened to them: accepted (durably queued), delivered, retried (an attempt failed and another is planned), dead_lettered.",
            Counter,
            [
                ([("outcome", "accepted")], e.accepted),
                ([("outcome", "delivered")], e.delivered),
                ([("outcome", "retried")], e.retried),
                ([("outcome", "dead_lettered")], e.dead_lettered),
            ],
        )?;
        one(
            out,
            "gust_instantiations",
            "Instances created.",
            Counter,
            r.instantiations,
        )?;
        one(
            out,
            "gust_cold_starts",
            "Invocations that first had to make their component ready (compile it, or load its artifact from disk).",
            Counter,
            r.compilations + r.artifact_loads,
        )?;
        one(
            out,
            "gust_functions",
            "Functions deployed and serving.",
            Gauge,
            g.functions,
        )?;
        one(
            out,
            "gust_functions_warm",
            "Functions whose component is in memory (the rest are scaled to zero).",
            Gauge,
            g.functions_warm,
        )?;
        labelled(
            out,
            "gust_scale_actions",
            "What the autoscaler did: pre_warm (loaded a function ahead of traffic or for provisioning), unload (scaled one to zero).",
            Counter,
            [
                ([("action", "pre_warm")], g.pre_warms),
                ([("action", "unload")], g.unloads),
            ],
        )?;
        one(
            out,
            "gust_request_cold_starts",
            "Requests that found their function scaled to zero and waited for it to load.",
            Counter,
            g.request_cold_starts,
        )?;
        labelled(
            out,
            "gust_function_desired_instances",
            "Instances a function's demand, keep-alive and provisioning want (functions wanting none and not warm are left out).",
            Gauge,
            g.active.iter().map(|f| (function(f), u64::from(f.desired))),
        )?;
        labelled(
            out,
            "gust_function_warm",
            "Whether a function's component is in memory (functions scaled to zero are left out).",
            Gauge,
            g.active.iter().map(|f| (function(f), u64::from(f.warm))),
        )?;
        sources(out, &g.sources)?;
        if let Some(rss) = self.resident_bytes {
            one(
                out,
                "gust_process_resident_bytes",
                "The server's resident memory.",
                Gauge,
                rss,
            )?;
        }
        if let Some(m) = &self.meter {
            meter(out, m)?;
        }
        Ok(())
    }
}

/// Each event source's counters, labelled by tenant, function, source and kind.
fn sources(out: &mut DescriptorEncoder, sources: &[SourceFigures]) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    let labels = |s: &'_ SourceFigures| {
        [
            ("tenant", s.tenant.clone()),
            ("function", s.function.clone()),
            ("source", s.id.clone()),
            ("kind", s.kind.to_string()),
        ]
    };
    labelled(
        out,
        "gust_source_messages",
        "Messages an event source took from its broker, by outcome: received, queued (as an event), duplicate (a redelivery recognised by its id), rejected (over the event size limit).",
        Counter,
        sources.iter().flat_map(|s| {
            [
                ("received", s.received),
                ("queued", s.queued),
                ("duplicate", s.duplicates),
                ("rejected", s.rejected),
            ]
            .map(|(outcome, n)| {
                let [a, b, c, d] = labels(s);
                ([a, b, c, d, ("outcome", outcome.to_string())], n)
            })
        }),
    )?;
    labelled(
        out,
        "gust_source_errors",
        "Connections of an event source that failed or ended (it reconnects with backoff).",
        Counter,
        sources.iter().map(|s| (labels(s), s.errors)),
    )?;
    labelled(
        out,
        "gust_source_connected",
        "Whether an event source is connected to its broker.",
        Gauge,
        sources.iter().map(|s| (labels(s), u64::from(s.connected))),
    )?;
    labelled(
        out,
        "gust_source_paused",
        "Whether an event source stopped pulling: its function's backlog is at the source's max_backlog, or the tenant at its event_backlog quota.",
        Gauge,
        sources.iter().map(|s| (labels(s), u64::from(s.paused))),
    )?;
    labelled(
        out,
        "gust_source_lag",
        "Messages waiting at an event source's broker, where the broker reports it (Redis: the group's lag and pending entries).",
        Gauge,
        sources.iter().filter_map(|s| Some((labels(s), s.lag?))),
    )?;
    Ok(())
}

/// A function's labels.
fn function(f: &FunctionScaling) -> [(&'static str, &str); 2] {
    [
        ("tenant", f.tenant.as_str()),
        ("function", f.function.as_str()),
    ]
}

/// The meter's figures: records written, the ledger's lag, attempts and
/// their histograms.
fn meter(out: &mut DescriptorEncoder, m: &MeterStats) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    one(
        out,
        "gust_usage_records",
        "Usage records written to the ledger.",
        Counter,
        m.written,
    )?;
    one(
        out,
        "gust_ledger_lag_records",
        "Finished invocations whose usage record is not durable yet.",
        Gauge,
        m.pending,
    )?;
    labelled(
        out,
        "gust_attempts",
        "Invocation attempts since start-up, by tenant, function and outcome (as metered).",
        Counter,
        m.attempts.iter().map(|(tenant, function, outcome, n)| {
            (
                [
                    ("tenant", tenant.as_str()),
                    ("function", function.as_str()),
                    ("outcome", outcome_name(*outcome)),
                ],
                *n,
            )
        }),
    )?;
    for (name, help, h) in [
        (
            "gust_invocation_duration_seconds",
            "Wall time of invocation attempts that ran.",
            &m.wall_seconds,
        ),
        (
            "gust_invocation_cpu_seconds",
            "Guest CPU time of invocation attempts that ran.",
            &m.cpu_seconds,
        ),
        (
            "gust_invocation_peak_memory_bytes",
            "Peak linear memory of invocation attempts that ran.",
            &m.peak_memory_bytes,
        ),
    ] {
        histogram(out, name, help, h)?;
    }
    Ok(())
}

/// A family of one sample without labels.
fn one(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: u64,
) -> fmt::Result {
    let metric = out.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(metric),
        _ => ConstGauge::new(value).encode(metric),
    }
}

/// A family of a sample per label set (its descriptor alone if none).
fn labelled<L: EncodeLabelSet>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = out.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}

/// A histogram from the meter's cumulative buckets (the encoder takes
/// each bucket's own count and adds `+Inf` itself).
fn histogram(out: &mut DescriptorEncoder, name: &str, help: &str, h: &Histogram) -> fmt::Result {
    let mut below = 0;
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|(bound, cumulative)| {
            let own = cumulative.saturating_sub(below);
            below = *cumulative;
            (*bound, own)
        })
        .collect();
    out.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
}

/// An outcome as the API and the ledger spell it (`error_status`, ...).
fn outcome_name(outcome: UsageOutcome) -> &'static str {
    match outcome {
        UsageOutcome::Success => "success",
        UsageOutcome::ErrorStatus => "error_status",
        UsageOutcome::Trapped => "trapped",
        UsageOutcome::TimedOut => "timed_out",
        UsageOutcome::Rejected => "rejected",
        UsageOutcome::Aborted => "aborted",
        UsageOutcome::Cancelled => "cancelled",
        UsageOutcome::Incomplete => "incomplete",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node with one function of each kind of name, and a meter.
    fn snapshot() -> Snapshot {
        Snapshot {
            data_plane: DataPlaneStats {
                requests: 7,
                responses_by_class: [0, 5, 0, 1, 1],
                in_flight: 2,
                invocations_completed: 6,
                invocations_failed: 1,
                logs_dropped: 3,
                websockets_open: 5,
                functions: 2,
                functions_warm: 1,
                pre_warms: 4,
                unloads: 1,
                request_cold_starts: 1,
                active: vec![FunctionScaling {
                    tenant: "default".into(),
                    function: "hello".into(),
                    desired: 2,
                    warm: true,
                }],
                sources: vec![SourceFigures {
                    tenant: "default".into(),
                    function: "hello".into(),
                    id: "orders".into(),
                    kind: "redis",
                    received: 5,
                    queued: 4,
                    duplicates: 1,
                    rejected: 0,
                    errors: 2,
                    connected: true,
                    paused: false,
                    lag: Some(3),
                }],
            },
            runtime: RuntimeStats {
                compilations: 1,
                artifact_loads: 2,
                instantiations: 9,
                loaded: 1,
            },
            events: EventStats {
                accepted: 4,
                delivered: 3,
                retried: 1,
                dead_lettered: 0,
            },
            resident_bytes: Some(4096),
            meter: Some(MeterStats {
                written: 8,
                pending: 0,
                attempts: vec![
                    ("default".into(), "hello".into(), UsageOutcome::Success, 6),
                    (
                        "default".into(),
                        "hello".into(),
                        UsageOutcome::ErrorStatus,
                        1,
                    ),
                ],
                wall_seconds: Histogram {
                    buckets: vec![(0.0001, 0), (0.001, 4), (1.0, 7)],
                    sum: 0.25,
                    count: 7,
                },
                cpu_seconds: Histogram {
                    buckets: vec![(0.5, 7)],
                    sum: 0.0,
                    count: 7,
                },
                peak_memory_bytes: Histogram {
                    buckets: vec![(1_048_576.0, 7)],
                    sum: 7_340_032.0,
                    count: 7,
                },
            }),
            pruned: vec![("statuses", 12), ("blobs", 1)],
            data_dir_bytes: 65536,
        }
    }

    #[test]
    fn every_figure_is_exposed_under_its_name_type_and_help() {
        let expected = r#"# HELP gust_requests_total Requests received on the data plane.
# TYPE gust_requests_total counter
gust_requests_total 7
# HELP gust_responses_total Responses sent on the data plane, by status class.
# TYPE gust_responses_total counter
gust_responses_total{class="1xx"} 0
gust_responses_total{class="2xx"} 5
gust_responses_total{class="3xx"} 0
gust_responses_total{class="4xx"} 1
gust_responses_total{class="5xx"} 1
# HELP gust_invocations_in_flight Invocations admitted and not yet finished.
# TYPE gust_invocations_in_flight gauge
gust_invocations_in_flight 2
# HELP gust_invocations_total Finished invocations, by result.
# TYPE gust_invocations_total counter
gust_invocations_total{result="completed"} 6
gust_invocations_total{result="failed"} 1
# HELP gust_websocket_connections WebSocket connections open on this node.
# TYPE gust_websocket_connections gauge
gust_websocket_connections 5
# HELP gust_logs_dropped_total Invocation log records dropped: over their function's log rate, or the writer fell behind.
# TYPE gust_logs_dropped_total counter
gust_logs_dropped_total 3
# HELP gust_retention_pruned_total Records and files removed by retention since start-up, by kind.
# TYPE gust_retention_pruned_total counter
gust_retention_pruned_total{kind="statuses"} 12
gust_retention_pruned_total{kind="blobs"} 1
# HELP gust_data_dir_bytes Bytes on disk under the data directory, as of the last retention pass.
# TYPE gust_data_dir_bytes gauge
gust_data_dir_bytes 65536
# HELP gust_compilations_total Components compiled from WebAssembly.
# TYPE gust_compilations_total counter
gust_compilations_total 1
# HELP gust_artifact_loads_total Components loaded from a compiled artifact on disk.
# TYPE gust_artifact_loads_total counter
gust_artifact_loads_total 2
# HELP gust_components_loaded Components held in memory, ready to instantiate.
# TYPE gust_components_loaded gauge
gust_components_loaded 1
# HELP gust_events_total Events, by what happened to them: accepted (durably queued), delivered, retried (an attempt failed and another is planned), dead_lettered.
# TYPE gust_events_total counter
gust_events_total{outcome="accepted"} 4
gust_events_total{outcome="delivered"} 3
gust_events_total{outcome="retried"} 1
gust_events_total{outcome="dead_lettered"} 0
# HELP gust_instantiations_total Instances created.
# TYPE gust_instantiations_total counter
gust_instantiations_total 9
# HELP gust_cold_starts_total Invocations that first had to make their component ready (compile it, or load its artifact from disk).
# TYPE gust_cold_starts_total counter
gust_cold_starts_total 3
# HELP gust_functions Functions deployed and serving.
# TYPE gust_functions gauge
gust_functions 2
# HELP gust_functions_warm Functions whose component is in memory (the rest are scaled to zero).
# TYPE gust_functions_warm gauge
gust_functions_warm 1
# HELP gust_scale_actions_total What the autoscaler did: pre_warm (loaded a function ahead of traffic or for provisioning), unload (scaled one to zero).
# TYPE gust_scale_actions_total counter
gust_scale_actions_total{action="pre_warm"} 4
gust_scale_actions_total{action="unload"} 1
# HELP gust_request_cold_starts_total Requests that found their function scaled to zero and waited for it to load.
# TYPE gust_request_cold_starts_total counter
gust_request_cold_starts_total 1
# HELP gust_function_desired_instances Instances a function's demand, keep-alive and provisioning want (functions wanting none and not warm are left out).
# TYPE gust_function_desired_instances gauge
gust_function_desired_instances{tenant="default",function="hello"} 2
# HELP gust_function_warm Whether a function's component is in memory (functions scaled to zero are left out).
# TYPE gust_function_warm gauge
gust_function_warm{tenant="default",function="hello"} 1
# HELP gust_source_messages_total Messages an event source took from its broker, by outcome: received, queued (as an event), duplicate (a redelivery recognised by its id), rejected (over the event size limit).
# TYPE gust_source_messages_total counter
gust_source_messages_total{tenant="default",function="hello",source="orders",kind="redis",outcome="received"} 5
gust_source_messages_total{tenant="default",function="hello",source="orders",kind="redis",outcome="queued"} 4
gust_source_messages_total{tenant="default",function="hello",source="orders",kind="redis",outcome="duplicate"} 1
gust_source_messages_total{tenant="default",function="hello",source="orders",kind="redis",outcome="rejected"} 0
# HELP gust_source_errors_total Connections of an event source that failed or ended (it reconnects with backoff).
# TYPE gust_source_errors_total counter
gust_source_errors_total{tenant="default",function="hello",source="orders",kind="redis"} 2
# HELP gust_source_connected Whether an event source is connected to its broker.
# TYPE gust_source_connected gauge
gust_source_connected{tenant="default",function="hello",source="orders",kind="redis"} 1
# HELP gust_source_paused Whether an event source stopped pulling: its function's backlog is at the source's max_backlog, or the tenant at its event_backlog quota.
# TYPE gust_source_paused gauge
gust_source_paused{tenant="default",function="hello",source="orders",kind="redis"} 0
# HELP gust_source_lag Messages waiting at an event source's broker, where the broker reports it (Redis: the group's lag and pending entries).
# TYPE gust_source_lag gauge
gust_source_lag{tenant="default",function="hello",source="orders",kind="redis"} 3
# HELP gust_process_resident_bytes The server's resident memory.
# TYPE gust_process_resident_bytes gauge
gust_process_resident_bytes 4096
# HELP gust_usage_records_total Usage records written to the ledger.
# TYPE gust_usage_records_total counter
gust_usage_records_total 8
# HELP gust_ledger_lag_records Finished invocations whose usage record is not durable yet.
# TYPE gust_ledger_lag_records gauge
gust_ledger_lag_records 0
# HELP gust_attempts_total Invocation attempts since start-up, by tenant, function and outcome (as metered).
# TYPE gust_attempts_total counter
gust_attempts_total{tenant="default",function="hello",outcome="success"} 6
gust_attempts_total{tenant="default",function="hello",outcome="error_status"} 1
# HELP gust_invocation_duration_seconds Wall time of invocation attempts that ran.
# TYPE gust_invocation_duration_seconds histogram
gust_invocation_duration_seconds_bucket{le="0.0001"} 0
gust_invocation_duration_seconds_bucket{le="0.001"} 4
gust_invocation_duration_seconds_bucket{le="1"} 7
gust_invocation_duration_seconds_bucket{le="+Inf"} 7
gust_invocation_duration_seconds_sum 0.25
gust_invocation_duration_seconds_count 7
# HELP gust_invocation_cpu_seconds Guest CPU time of invocation attempts that ran.
# TYPE gust_invocation_cpu_seconds histogram
gust_invocation_cpu_seconds_bucket{le="0.5"} 7
gust_invocation_cpu_seconds_bucket{le="+Inf"} 7
gust_invocation_cpu_seconds_sum 0.0
gust_invocation_cpu_seconds_count 7
# HELP gust_invocation_peak_memory_bytes Peak linear memory of invocation attempts that ran.
# TYPE gust_invocation_peak_memory_bytes histogram
gust_invocation_peak_memory_bytes_bucket{le="1.048576e+06"} 7
gust_invocation_peak_memory_bytes_bucket{le="+Inf"} 7
gust_invocation_peak_memory_bytes_sum 7340032.0
gust_invocation_peak_memory_bytes_count 7
"#;
        let text = render(snapshot()).unwrap();
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn families_without_samples_keep_their_descriptor_and_metering_off_hides_the_meter() {
        let text = render(Snapshot::default()).unwrap();
        assert!(
            text.contains(
                "# TYPE gust_function_desired_instances gauge\n# HELP gust_function_warm "
            )
        );
        assert!(!text.contains("gust_process_resident_bytes"));
        assert!(!text.contains("gust_attempts_total"));
        assert!(text.ends_with("gust_source_lag gauge\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut snapshot = Snapshot::default();
        snapshot.data_plane.active.push(FunctionScaling {
            tenant: "a\"b".into(),
            function: "c\\d\ne".into(),
            desired: 1,
            warm: false,
        });
        snapshot.meter = Some(MeterStats {
            attempts: vec![("q\"".into(), "\\".into(), UsageOutcome::TimedOut, 2)],
            ..MeterStats::default()
        });
        let text = render(snapshot).unwrap();
        for line in [
            r#"gust_function_desired_instances{tenant="a\"b",function="c\\d\ne"} 1"#,
            r#"gust_function_warm{tenant="a\"b",function="c\\d\ne"} 0"#,
            r#"gust_attempts_total{tenant="q\"",function="\\",outcome="timed_out"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
    }

    #[test]
    fn outcomes_are_named_as_the_api_spells_them() {
        use UsageOutcome::*;
        for outcome in [
            Success,
            ErrorStatus,
            Trapped,
            TimedOut,
            Rejected,
            Aborted,
            Cancelled,
            Incomplete,
        ] {
            let json = serde_json::to_value(outcome).unwrap();
            assert_eq!(Some(outcome_name(outcome)), json.as_str());
        }
    }
}
