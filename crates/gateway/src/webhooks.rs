//! Webhook sources on the data plane: `POST /_gust/webhooks/<tenant>/
//! <function>/<source>`. No function name starts with `_`, so the prefix
//! never shadows one, and it is answered before any host claim. The
//! request needs no token: its HMAC signature (checked in `gust-events`
//! with the source's sealed secret) is its authentication. The answer is
//! 202 only once the event is durably queued; a redelivery of an id
//! already accepted is answered 202 too (`"duplicate": true`) and not
//! queued again. Whether a source exists is not told apart from a wrong
//! address (both 404), and a wrong signature is 401.

use std::sync::Arc;

use bytes::Bytes;
use gust_core::{FunctionName, TenantId};
use gust_events::{EventsError, WebhookError};
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::BodyExt as _;

use crate::error::GatewayError;
use crate::pipeline::{CappedRead, read_capped, reject_unread};
use crate::{GatewayBody, Shared};

pub(crate) const PREFIX: &str = "/_gust/webhooks/";

pub(crate) async fn receive<B>(
    shared: &Arc<Shared>,
    request: Request<B>,
) -> Result<Response<GatewayBody>, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let path = request.uri().path();
    let target = path.strip_prefix(PREFIX).and_then(|rest| {
        let mut parts = rest.split('/');
        let (tenant, function, id) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || id.is_empty() || id.len() > 63 {
            return None;
        }
        Some((
            TenantId::new(tenant).ok()?,
            FunctionName::new(function).ok()?,
            id.to_string(),
        ))
    });
    let Some((tenant, function, id)) = target else {
        return Err(reject_unread(shared, request, GatewayError::NoSuchWebhook).await);
    };
    if request.method() != Method::POST {
        return Err(reject_unread(shared, request, GatewayError::MethodNotAllowed).await);
    }
    let Some(served) = shared.catalog.get(tenant.as_str(), function.as_str()) else {
        return Err(reject_unread(shared, request, GatewayError::NoSuchWebhook).await);
    };
    // New work: refused once the tenant or the function spent its budget,
    // or the backlog is full. Not charged to the tenant's request rate:
    // anyone may post here before the signature is checked, and must not
    // use up the tenant's rate.
    let budget = served.live.limits.monthly_budget_micros;
    let backlog = shared.events.backlog(&tenant);
    let admitted = shared
        .access
        .within_budget(
            &tenant,
            budget.map(|budget| (function.as_str(), budget)),
            shared.meter.as_ref(),
            crate::now_ms(),
        )
        .and_then(|()| shared.access.admit_event(&tenant, backlog));
    if let Err(error) = admitted {
        return Err(reject_unread(shared, request, error).await);
    }
    let limit = shared
        .config
        .max_event_bytes
        .min(served.live.limits.max_body_bytes);
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        let error = GatewayError::EventTooLarge { limit };
        return Err(reject_unread(shared, request, error).await);
    }
    let (parts, body) = request.into_parts();
    let body = read_capped(body, limit, shared.config.body_idle_timeout)
        .await
        .map_err(|fault| match fault {
            CappedRead::TooLarge => GatewayError::EventTooLarge { limit },
            CappedRead::Stalled => GatewayError::BodyStalled,
        })?;
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let received = shared
        .events
        .receive_webhook(
            &shared.secrets,
            &tenant,
            &function,
            &id,
            header,
            body.to_vec(),
        )
        .await;
    let new = match received {
        Ok(new) => new,
        Err(WebhookError::NoSuchSource) => return Err(GatewayError::NoSuchWebhook),
        Err(WebhookError::Unsigned(why)) => return Err(GatewayError::Unsigned(why)),
        Err(WebhookError::Events(EventsError::Store(
            full @ gust_store::StoreError::DiskFull { .. },
        ))) => {
            return Err(GatewayError::DiskFull(format!(
                "the event was not accepted: {full}"
            )));
        }
        Err(WebhookError::Events(e)) => {
            tracing::error!(%tenant, %function, source = %id, error = %e, "could not queue a webhook's event");
            return Err(GatewayError::EventNotStored);
        }
    };
    let body = format!("{{\"state\":\"queued\",\"duplicate\":{}}}\n", !new);
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
