//! Function-to-function calls: a guest's outgoing `wasi:http` request to
//! `http://gust.internal/<name>[:alias]/…` is served in process, as a
//! request to that function of the same tenant would be (its alias and
//! split, its body limit, the tenant's rate and budgets, admission), metered as an invocation of its own
//! (trigger `call`) while the caller's record counts an outbound request.
//! Calls nest at most [`MAX_DEPTH`] deep (508 past it), so a loop of calls
//! ends. A call with `Gust-Invocation-Type: Event` is queued as an event
//! for the callee (202), as the same request from a client would be; the
//! event keeps the call's depth, so its delivery's calls count on from it
//! and a function that keeps queueing events for itself is stopped too.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use gust_core::TenantId;
use gust_core::usage::Trigger;
use gust_core::{deploy, path};
use gust_runtime::{CallBody, GuestBody, LOCAL_HOST, LocalCalls};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;

use crate::error::GatewayError;
use crate::invoker::submit_event;
use crate::pipeline::run;
use crate::{GatewayBody, Shared, metering};

/// Calls nested deeper than this are answered 508.
pub(crate) const MAX_DEPTH: u32 = 8;

/// One invocation's calls: to its tenant's functions, one level deeper.
pub(crate) struct TenantCalls {
    pub shared: Arc<Shared>,
    pub tenant: TenantId,
    /// How deep the calls this invocation makes are (1: it was called from outside).
    pub depth: u32,
    /// The application version the caller serves in: a call to another
    /// member's plain URL runs that member's version of the same release.
    pub app: Option<crate::catalog::AppTag>,
}

impl LocalCalls for TenantCalls {
    fn call(
        &self,
        request: Request<CallBody>,
    ) -> Pin<Box<dyn Future<Output = Response<CallBody>> + Send>> {
        let shared = self.shared.clone();
        let tenant = self.tenant.clone();
        let depth = self.depth;
        let app = self.app.clone();
        Box::pin(async move { call(&shared, &tenant, depth, app.as_ref(), request).await })
    }
}

async fn call(
    shared: &Arc<Shared>,
    tenant: &TenantId,
    depth: u32,
    app: Option<&crate::catalog::AppTag>,
    request: Request<CallBody>,
) -> Response<GatewayBody> {
    let id = shared.events.next_invocation_id();
    if depth > MAX_DEPTH {
        return plain(
            StatusCode::LOOP_DETECTED,
            &format!("calls between functions nest at most {MAX_DEPTH} deep"),
        );
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    if path_and_query.starts_with(crate::websocket::PREFIX) {
        return crate::websocket::command(shared, tenant, request).await;
    }
    let mut request = request;
    crate::websocket::strip_reserved(request.headers_mut());
    let Some((name, tail)) = path::split_function_path(&path_and_query) else {
        return plain(
            StatusCode::NOT_FOUND,
            &format!("name the function: http://{LOCAL_HOST}/<name>/…"),
        );
    };
    let (name, alias) = deploy::split_qualifier(name);
    let Some(served) = shared.catalog.get(tenant.as_str(), name) else {
        return GatewayError::NoSuchFunction(name.to_string()).into_response(&id);
    };
    // Within an application, the caller's release: never a mix of two.
    let pinned = app
        .filter(|_| alias == deploy::LIVE)
        .and_then(|tag| served.at_app_version(tag));
    let Some(loaded) = pinned
        .or_else(|| served.pick(alias, || None, || deploy::fnv1a(id.as_bytes())))
        .cloned()
    else {
        let error = GatewayError::NoSuchAlias {
            function: name.to_string(),
            alias: alias.to_string(),
        };
        return error.into_response(&id);
    };
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > loaded.limits.max_body_bytes) {
        let error = GatewayError::BodyTooLarge {
            limit: loaded.limits.max_body_bytes,
        };
        return error.into_response(&id);
    }
    let guest_path = path::guest_path(tail).into_owned();
    let (mut parts, body) = request.into_parts();
    parts.uri = match format!("http://{LOCAL_HOST}{guest_path}").parse() {
        Ok(uri) => uri,
        Err(_) => {
            return GatewayError::BadRequest("the call's path is not a valid URI")
                .into_response(&id);
        }
    };
    // The callee's tenant rate and budgets hold as for any request.
    let budget = loaded.limits.monthly_budget_micros;
    let function = budget.map(|budget| (loaded.name.as_str(), budget));
    if let Err(error) = shared
        .access
        .admit(&loaded.tenant, function, shared.meter.as_ref())
    {
        return error.into_response(&id);
    }
    // Sent as an event: queued for the callee, answered 202 once durable
    // (its body read within the event's limit, as from a client).
    let asynchronous = parts
        .headers
        .get(crate::INVOCATION_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"event"));
    if asynchronous {
        if alias != deploy::LIVE {
            let error = GatewayError::EventToAlias {
                alias: alias.to_string(),
            };
            return error.into_response(&id);
        }
        let request = Request::from_parts(parts, body);
        let mut response =
            match submit_event(shared, &loaded, request, guest_path, declared, &id, depth).await {
                Ok(response) => response,
                Err(error) => error.into_response(&id),
            };
        crate::set_request_id(response.headers_mut(), id);
        return response;
    }
    // Over its body limit, the callee reads an error, as from a client.
    let limit = loaded.limits.max_body_bytes;
    let body = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                GuestBody::TooLarge(limit)
            } else {
                GuestBody::Io(e.to_string())
            }
        });
    let attempt = metering::Attempt {
        id: &id,
        attempt: 1,
        trigger: Trigger::Call,
        request_bytes: declared.unwrap_or(0),
        fault: None,
        depth,
    };
    // The caller's host wrote its trace context: always believed.
    let start = shared.config.trace.start(&parts.headers, true, alias);
    let mut response = match run(
        shared,
        &loaded,
        Request::from_parts(parts, body),
        attempt,
        start,
    )
    .await
    {
        Ok(response) => response,
        Err(error) => error.into_response(&id),
    };
    let headers = response.headers_mut();
    headers.insert(crate::VERSION_HEADER, loaded.version_header.clone());
    crate::set_request_id(headers, id);
    response
}

/// A short text answer made here (not by a guest).
fn plain(status: StatusCode, message: &str) -> Response<GatewayBody> {
    let body = http_body_util::Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}
