//! The gateway as the events' invoker: an event is delivered to its
//! function's `live` alias through the same admission and run as a
//! request ([`Invoker for Gateway`](gust_events::Invoker)), and a request
//! sent as an event (`Gust-Invocation-Type: Event`) is queued for that
//! delivery ([`submit_event`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use gust_core::delivery::DeliveryPolicy;
use gust_core::usage::Trigger;
use gust_core::{Envelope, deploy};
use gust_events::{AttemptOutcome, Events, Invoker};
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt as _;

use crate::catalog;
use crate::error::GatewayError;
use crate::metering;
use crate::pipeline::{CappedRead, read_capped, reject_unread, run};
use crate::{Gateway, GatewayBody, Shared};

/// Accepts a request as an event for later delivery: `202` once it is
/// durably queued. CloudEvents attributes come from `ce-*` headers when
/// the client sends them (binary mode), else Gust fills them in.
/// `depth`: 0 from a client; from another function, how deep its call is
/// (its trace context is then the host's own, always believed).
pub(crate) async fn submit_event<B>(
    shared: &Arc<Shared>,
    loaded: &Arc<catalog::Loaded>,
    request: Request<B>,
    path: String,
    declared_length: Option<u64>,
    id: &str,
    depth: u32,
) -> Result<Response<GatewayBody>, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let backlog = shared.events.backlog(&loaded.tenant);
    if let Err(error) = shared.access.admit_event(&loaded.tenant, backlog) {
        return Err(reject_unread(shared, request, error).await);
    }
    // An event is a request to the function too: its body limit applies.
    let limit = shared
        .config
        .max_event_bytes
        .min(loaded.limits.max_body_bytes);
    if declared_length.is_some_and(|len| len > limit) {
        return Err(GatewayError::EventTooLarge { limit });
    }
    let (parts, body) = request.into_parts();
    let data = read_capped(body, limit, shared.config.body_idle_timeout)
        .await
        .map_err(|fault| match fault {
            CappedRead::TooLarge => GatewayError::EventTooLarge { limit },
            CappedRead::Stalled => GatewayError::BodyStalled,
        })?;
    let mut envelope = Events::envelope(
        loaded.tenant.clone(),
        loaded.name.clone(),
        id.to_string(),
        path,
        |name| parts.headers.get(name).and_then(|v| v.to_str().ok()),
        data.to_vec(),
    );
    envelope.depth = depth;
    let trace = &shared.config.trace;
    let trusted = depth > 0 || trace.trust_client;
    let span = trace.accepting(&parts.headers, trusted, loaded, id);
    if !span.is_off() {
        (envelope.traceparent, envelope.tracestate) = span.stored();
    }
    let submitted = shared.events.submit(envelope).await;
    drop(span);
    submitted.map_err(|e| match e {
        gust_events::EventsError::Store(full @ gust_store::StoreError::DiskFull { .. }) => {
            GatewayError::DiskFull(format!("the event was not accepted: {full}"))
        }
        e => {
            tracing::error!(invocation_id = id, error = %e, "could not queue an event");
            GatewayError::EventNotStored
        }
    })?;
    let body = format!("{{\"invocation_id\":\"{id}\",\"state\":\"queued\"}}\n");
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = http::StatusCode::ACCEPTED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[async_trait::async_trait]
impl Invoker for Gateway {
    async fn deliver(&self, envelope: &Envelope, attempt: u32, due_ms: u64) -> AttemptOutcome {
        let shared = &self.shared;
        let id = envelope.invocation_id.as_str();
        let served = shared
            .catalog
            .get(envelope.tenant.as_str(), envelope.function.as_str());
        // Events go to `live`, split as its requests are.
        let random = || deploy::fnv1a(format!("{id}#{attempt}").as_bytes());
        let Some(loaded) = served
            .as_ref()
            .and_then(|s| s.pick(deploy::LIVE, || None, random).cloned())
        else {
            return AttemptOutcome {
                status: 404,
                error: Some(format!("function `{}` no longer exists", envelope.function)),
                body: Bytes::new(),
                not_run: false,
            };
        };
        let mut request = Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://localhost{}", envelope.path))
            .header("ce-specversion", "1.0")
            .header("ce-id", &envelope.id)
            .header("ce-source", &envelope.source)
            .header("ce-type", &envelope.ty)
            .header("ce-time", gust_core::time::rfc3339(envelope.time_ms))
            .header("gust-invocation-id", id)
            .header("gust-attempt", attempt.to_string());
        if let Some(subject) = &envelope.subject {
            request = request.header("ce-subject", subject);
        }
        // The CloudEvents distributed-tracing attributes: the context the
        // event was accepted in (the guest's own is in `traceparent`).
        if let Some(traceparent) = &envelope.traceparent {
            request = request.header("ce-traceparent", traceparent);
        }
        if let Some(tracestate) = &envelope.tracestate {
            request = request.header("ce-tracestate", tracestate);
        }
        if let Some(content_type) = &envelope.content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let body = http_body_util::Full::new(Bytes::from(envelope.data.clone()))
            .map_err(|never: Infallible| match never {});
        let request = match request.body(body) {
            Ok(request) => request,
            Err(e) => {
                return AttemptOutcome {
                    status: 400,
                    error: Some(format!("the event's attributes are not valid headers: {e}")),
                    body: Bytes::new(),
                    not_run: false,
                };
            }
        };
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let metered = metering::Attempt {
            id,
            attempt,
            trigger: Trigger::of_origin(envelope.origin.as_deref()),
            request_bytes: envelope.data.len() as u64,
            fault: None,
            depth: envelope.depth,
        };
        let start = shared.config.trace.start_event(envelope, due_ms);
        match run(shared, &loaded, request, metered, start).await {
            Ok(response) => {
                let status = response.status().as_u16();
                // The attempt is over when the function has sent its whole answer.
                match response.into_body().collect().await {
                    Ok(collected) => AttemptOutcome {
                        status,
                        error: None,
                        body: collected.to_bytes(),
                        not_run: false,
                    },
                    Err(e) => AttemptOutcome {
                        status: 500,
                        error: Some(format!("the response body failed: {e}")),
                        body: Bytes::new(),
                        not_run: false,
                    },
                }
            }
            Err(error) => {
                // No room to run it now is not a failed attempt: the event
                // waits in its queue until capacity frees.
                let not_run = matches!(
                    error,
                    GatewayError::Refused(_)
                        | GatewayError::Draining
                        | GatewayError::QuotaExceeded { .. }
                );
                let (status, reason) = error.describe(id);
                AttemptOutcome {
                    status: status.as_u16(),
                    error: Some(reason),
                    body: Bytes::new(),
                    not_run,
                }
            }
        }
    }

    fn policy(
        &self,
        tenant: &gust_core::TenantId,
        function: &gust_core::FunctionName,
    ) -> Option<(DeliveryPolicy, u64)> {
        self.shared
            .catalog
            .get(tenant.as_str(), function.as_str())
            .map(|s| (s.live.delivery.clone(), s.live.limits.timeout_ms))
    }

    fn is_warm(&self, tenant: &gust_core::TenantId, function: &gust_core::FunctionName) -> bool {
        self.shared
            .catalog
            .get(tenant.as_str(), function.as_str())
            .is_some_and(|s| s.live.is_warm())
    }
}
