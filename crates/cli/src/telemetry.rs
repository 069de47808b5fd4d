//! What `gust up` tells the outside about itself besides `/metrics`: logs
//! on stderr, and traces over OTLP/HTTP when an endpoint is given.
//!
//! Traces are configured the standard OpenTelemetry way: the endpoint from
//! `--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` (the base URL;
//! `/v1/traces` is added) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as
//! is), and the exporter's and SDK's own variables (`OTEL_SERVICE_NAME`,
//! default `gust`; `OTEL_EXPORTER_OTLP_PROTOCOL`, `http/protobuf` or
//! `http/json`; `OTEL_EXPORTER_OTLP_HEADERS`; `OTEL_TRACES_SAMPLER`…).
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn them off.
//!
//! Off, no OpenTelemetry layer is installed: the host's trace spans (the
//! `gust_trace` target, which the log output never shows) have no
//! subscriber interested in them, so creating one costs a check of its
//! call site's cached interest and nothing more. On, spans go through a
//! batch processor on the runtime to the exporter's async reqwest client,
//! and the W3C trace-context propagator is registered explicitly (the
//! global default propagates nothing).

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The target of every trace span the host makes (`gust_gateway::trace`).
const TRACE_TARGET: &str = "gust_trace";

/// The trace exporter, while traces are on.
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub(crate) fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered (waiting at most `timeout`).
    pub(crate) async fn shutdown(self, timeout: Duration) {
        let Some(provider) = self.provider else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout));
        match tokio::time::timeout(timeout + Duration::from_secs(1), done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the last spans were not exported"),
            _ => tracing::warn!("the last spans were not exported in time"),
        }
    }
}

/// Where spans go: the flag's base URL, else what the environment says;
/// `None` when traces are off.
fn endpoint(flag: Option<&str>) -> Option<Option<String>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    if let Some(base) = flag.filter(|f| !f.trim().is_empty()) {
        return Some(Some(format!("{}/v1/traces", base.trim_end_matches('/'))));
    }
    // The exporter reads these itself.
    (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some())
    .then_some(None)
}

/// Installs the logger (filtered by `GUST_LOG` in `EnvFilter` syntax,
/// `info` when unset; directives that do not parse are skipped with a
/// warning rather than silencing the logs) and, when an endpoint is
/// configured, the trace exporter. Must run inside the tokio runtime.
pub(crate) fn init(otlp_endpoint: Option<&str>, node: Option<&str>) -> anyhow::Result<Telemetry> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::INFO.into())
        .with_env_var("GUST_LOG")
        .from_env_lossy()
        // Spans for traces are not log lines.
        .add_directive(format!("{TRACE_TARGET}=off").parse()?);
    let Some(endpoint) = endpoint(otlp_endpoint) else {
        // The logger alone, filtered as a whole: no per-layer filtering.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init();
        return Ok(Telemetry { provider: None });
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);

    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(endpoint) = &endpoint {
        exporter = exporter.with_endpoint(endpoint.clone());
    }
    // OTLP/HTTP's default is protobuf (the exporter's, with JSON built in,
    // would be JSON: larger and slower to encode).
    if std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_none()
        && std::env::var_os("OTEL_EXPORTER_OTLP_PROTOCOL").is_none()
    {
        exporter = exporter.with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    }
    let exporter = exporter
        .build()
        .context("cannot set up the OTLP trace exporter (check --otlp-endpoint and the OTEL_EXPORTER_OTLP_* variables)")?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("gust");
    }
    if let Some(node) = node {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            node.to_string(),
        ));
    }
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    opentelemetry::global::set_tracer_provider(provider.clone());
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("gust"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_level(false)
        .with_target(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(TRACE_TARGET, tracing::Level::INFO),
        );
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    tracing::info!(
        endpoint = endpoint.as_deref().unwrap_or("(from OTEL_EXPORTER_OTLP_*)"),
        "exporting traces over OTLP/HTTP"
    );
    Ok(Telemetry {
        provider: Some(provider),
    })
}
