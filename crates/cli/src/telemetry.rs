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
//! An export is bounded by the exporter's timeout
//! (`OTEL_EXPORTER_OTLP_TIMEOUT`); `OTEL_BSP_EXPORT_TIMEOUT` is not read
//! by the SDK's thread-based batch processor.
//!
//! Off, no tracer provider is installed and the data plane makes no span
//! (`gust_gateway::trace`). On, the data plane's spans go through a batch
//! processor (on its own thread) to an exporter on the runtime: Gust's
//! own protobuf encoder and async reqwest client (`crate::otlp`) for
//! `http/protobuf` without compression, the default; `opentelemetry-otlp`'s
//! for `http/json` or compression. The W3C trace-context propagator is
//! registered explicitly (the global default propagates nothing).

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

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

/// A span exporter whose exports run on a tokio runtime, for the batch
/// processor's thread (which waits for each export to finish).
#[derive(Debug)]
struct OnRuntime<E> {
    exporter: std::sync::Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let exporter = self.exporter.clone();
        let export = self
            .runtime
            .spawn(async move { exporter.export(batch).await });
        async move {
            export
                .await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn shutdown(&self) -> OTelSdkResult {
        self.exporter.shutdown()
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // The processor's thread hands the resource over before its first
        // export (spans end only once the provider is installed), and an
        // export's clone is gone once it finished: this is the only
        // reference then.
        match std::sync::Arc::get_mut(&mut self.exporter) {
            Some(exporter) => exporter.set_resource(resource),
            None => tracing::warn!(
                "the trace exporter is busy: spans are exported without the service's name"
            ),
        }
    }
}

/// `opentelemetry-otlp`'s HTTP exporter, for what `crate::otlp` does not
/// do (JSON, compression).
fn library_exporter(endpoint: Option<&str>) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint.to_owned());
    }
    // OTLP/HTTP's default is protobuf (the exporter's, with JSON built in,
    // would be JSON: larger and slower to encode).
    if std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_none()
        && std::env::var_os("OTEL_EXPORTER_OTLP_PROTOCOL").is_none()
    {
        exporter = exporter.with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    }
    exporter
        .build()
        .context("cannot set up the OTLP trace exporter (check --otlp-endpoint and the OTEL_EXPORTER_OTLP_* variables)")
}

/// The SDK's batch processor on its own thread: ending a span queues it
/// without waking anyone (the async-runtime processor woke its task for
/// every span, a cross-thread wake-up per request); the export itself
/// runs on this runtime, where the async reqwest client lives.
fn processor<E: SpanExporter + 'static>(
    exporter: E,
) -> opentelemetry_sdk::trace::BatchSpanProcessor {
    opentelemetry_sdk::trace::BatchSpanProcessor::builder(OnRuntime {
        exporter: std::sync::Arc::new(exporter),
        runtime: tokio::runtime::Handle::current(),
    })
    .build()
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
        .from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    let Some(endpoint) = endpoint(otlp_endpoint) else {
        return Ok(Telemetry { provider: None });
    };

    let env = |name: &str| std::env::var(name).ok();
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
    // OTLP/HTTP protobuf without compression (the default) goes through
    // Gust's own encoder (`crate::otlp`); anything else through the
    // library's exporter.
    let processor = match crate::otlp::Config::from_env(endpoint.as_deref(), env) {
        Some(config) => processor(crate::otlp::ProtoExporter::new(config)?),
        None => processor(library_exporter(endpoint.as_deref())?),
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    opentelemetry::global::set_tracer_provider(provider.clone());
    // The data plane's spans come from the SDK's tracer itself, not through
    // the global one (which boxes every span once more).
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "gust");
    gust_gateway::trace::install(move |builder, parent| {
        use opentelemetry::trace::{TraceContextExt as _, Tracer as _};
        parent.with_span(tracer.build_with_context(builder, parent))
    });
    tracing::info!(
        endpoint = endpoint.as_deref().unwrap_or("(from OTEL_EXPORTER_OTLP_*)"),
        "exporting traces over OTLP/HTTP"
    );
    Ok(Telemetry {
        provider: Some(provider),
    })
}
