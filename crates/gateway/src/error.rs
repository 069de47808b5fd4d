//! Every way a data-plane request can fail, and the one place each becomes a
//! status code with a short plain-text reason. Bodies never carry host
//! internals: those go to the server log under the invocation id.

use bytes::Bytes;
use gust_runtime::InvokeError;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};

use crate::GatewayBody;
use crate::admission::Refusal;
use crate::catalog::LoadError;

#[derive(Debug)]
pub(crate) enum GatewayError {
    NoRoute,
    NoSuchFunction(String),
    NoSuchAlias {
        function: String,
        alias: String,
    },
    EventToAlias {
        alias: String,
    },
    BadRequest(&'static str),
    BodyTooLarge {
        limit: u64,
    },
    BodyStalled,
    EventTooLarge {
        limit: u64,
    },
    EventNotStored,
    /// The store refuses writes: the disk is full.
    DiskFull(String),
    /// No room to run it now: the node, the tenant's share of it, or the
    /// function's own concurrency limit.
    Refused(Refusal),
    Draining,
    /// The system's random source failed (a WebSocket connection needs an id).
    NoRandomness,
    Load {
        function: String,
        error: LoadError,
    },
    Invoke {
        function: String,
        error: InvokeError,
    },
    /// A valid token that may not call this function.
    Forbidden(String),
    /// A webhook request whose signature does not check out.
    Unsigned(String),
    /// No webhook source at this address.
    NoSuchWebhook,
    /// A webhook endpoint asked with another method than POST.
    MethodNotAllowed,
    /// Over a tenant quota: the message names it.
    QuotaExceeded {
        message: String,
        retry_after_s: u64,
    },
}

impl From<Refusal> for GatewayError {
    fn from(refusal: Refusal) -> Self {
        GatewayError::Refused(refusal)
    }
}

/// The node's own limits answer 503 (the server is busy); a function's
/// concurrency limit answers 429, like the tenant's quotas.
fn refusal_status(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::NodeFull | Refusal::OverShare | Refusal::MemoryFull => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Refusal::QueueFull { .. } | Refusal::QueueTimedOut { .. } => StatusCode::TOO_MANY_REQUESTS,
    }
}

impl GatewayError {
    pub fn into_response(self, invocation_id: &str) -> Response<GatewayBody> {
        let retry_after = match &self {
            GatewayError::QuotaExceeded { retry_after_s, .. } => (*retry_after_s).max(1),
            GatewayError::Refused(refusal) => refusal.retry_after_s(),
            _ => 1,
        };
        let (status, text) = self.describe(invocation_id);
        let mut response = Response::new(
            Full::new(Bytes::from(text + "\n"))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }

    /// The status code alone (what `describe` answers), without logging.
    pub fn status_code(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute
            | GatewayError::NoSuchFunction(_)
            | GatewayError::NoSuchAlias { .. } => StatusCode::NOT_FOUND,
            GatewayError::EventToAlias { .. } => StatusCode::BAD_REQUEST,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::Unsigned(_) => StatusCode::UNAUTHORIZED,
            GatewayError::NoSuchWebhook => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Refused(refusal) => refusal_status(refusal),
            GatewayError::BodyTooLarge { .. } | GatewayError::EventTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            GatewayError::BodyStalled => StatusCode::REQUEST_TIMEOUT,
            GatewayError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            GatewayError::EventNotStored
            | GatewayError::Draining
            | GatewayError::NoRandomness
            | GatewayError::Invoke {
                error: InvokeError::Overloaded,
                ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Invoke {
                error: InvokeError::TimedOut { .. } | InvokeError::StreamCut(_),
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Load { .. } | GatewayError::Invoke { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The status code and the reason a person reads, for a response body
    /// or an event's `last_error`. Host-side details are logged, not told.
    pub fn describe(self, invocation_id: &str) -> (StatusCode, String) {
        match self {
            GatewayError::NoRoute => (
                StatusCode::NOT_FOUND,
                "no function is named in this path: call /<function-name>/...".to_string(),
            ),
            GatewayError::NoSuchFunction(name) => (
                StatusCode::NOT_FOUND,
                // The same words whether it does not exist or is private
                // and the caller may not see it (see `Access::authorize`).
                format!(
                    "no function named `{name}` is deployed here, or it is private and this request carries no token of its tenant that may see it (`Authorization: Bearer <token>`; see `gust ls`)"
                ),
            ),
            GatewayError::NoSuchAlias { function, alias } => (
                StatusCode::NOT_FOUND,
                format!(
                    "function `{function}` has no alias `{alias}` (see `gust alias ls {function}`)"
                ),
            ),
            GatewayError::EventToAlias { alias } => (
                StatusCode::BAD_REQUEST,
                format!(
                    "events go to a function's `live` alias; send this one without `:{alias}` (or point `live` at the version you want)"
                ),
            ),
            GatewayError::BadRequest(why) => (StatusCode::BAD_REQUEST, why.to_string()),
            GatewayError::Forbidden(why) => (StatusCode::FORBIDDEN, why),
            GatewayError::Unsigned(why) => (
                StatusCode::UNAUTHORIZED,
                format!("the webhook's signature was refused: {why}"),
            ),
            GatewayError::NoSuchWebhook => (
                StatusCode::NOT_FOUND,
                "no webhook source at this address (see `gust source ls <function>`)".to_string(),
            ),
            GatewayError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "a webhook endpoint takes POST only".to_string(),
            ),
            GatewayError::QuotaExceeded { message, .. } => (StatusCode::TOO_MANY_REQUESTS, message),
            GatewayError::BodyTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than this function's limit of {limit} bytes"),
            ),
            GatewayError::BodyStalled => (
                StatusCode::REQUEST_TIMEOUT,
                "the request body stopped arriving before it was complete".to_string(),
            ),
            GatewayError::EventTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an event's payload may be at most {limit} bytes"),
            ),
            GatewayError::EventNotStored => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the event could not be stored; it was not accepted, retry shortly".to_string(),
            ),
            GatewayError::DiskFull(message) => (StatusCode::INSUFFICIENT_STORAGE, message),
            GatewayError::Refused(refusal) => (refusal_status(&refusal), refusal.to_string()),
            GatewayError::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down; retry shortly".to_string(),
            ),
            GatewayError::NoRandomness => {
                tracing::error!("the system's random source failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server cannot make a connection id now; retry shortly".to_string(),
                )
            }
            GatewayError::Load { function, error } => {
                tracing::error!(%invocation_id, %function, %error, "could not load function");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "function `{function}` could not be loaded (invocation {invocation_id})"
                    ),
                )
            }
            GatewayError::Invoke { function, error } => match error {
                InvokeError::TimedOut { .. } | InvokeError::StreamCut(_) => (
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("function `{function}`: {error}"),
                ),
                InvokeError::Overloaded => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no instance slot is free; retry shortly".to_string(),
                ),
                InvokeError::Internal(detail) => {
                    tracing::error!(%invocation_id, %function, %detail, "invocation failed inside the host");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!(
                            "function `{function}` failed inside the platform (invocation {invocation_id})"
                        ),
                    )
                }
                InvokeError::Trapped(_)
                | InvokeError::MemoryExceeded { .. }
                | InvokeError::NoResponse
                | InvokeError::Failed(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("function `{function}`: {error}"),
                ),
            },
        }
    }
}
