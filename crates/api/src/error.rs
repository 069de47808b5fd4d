//! API errors: each becomes a status code and a JSON body
//! `{"error": {"code": "...", "message": "..."}}` here and nowhere else.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gust_core::FunctionName;
use gust_core::kv::KvError;
use gust_events::EventsError;
use gust_runtime::DeployError;
use gust_store::{AccountsError, BucketsError, RegistryError, StoreError};
use serde::{Deserialize, Serialize};

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code: `not_found`, `invalid_component`, …
    pub code: String,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    InvalidComponent(#[from] DeployError),
    #[error("{0}")]
    NotFound(String),
    /// A function the tenant does not have: the one message every command
    /// shows for it. `near` is one of the tenant's own functions whose name
    /// is close (never another tenant's).
    #[error("function `{name}` does not exist{}", did_you_mean(.near.as_deref()))]
    NoSuchFunction { name: String, near: Option<String> },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Registry(RegistryError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Events(#[from] EventsError),
    #[error("{0}")]
    Buckets(#[from] BucketsError),
    #[error("{0}")]
    Accounts(#[from] AccountsError),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Over a tenant quota; the message names it.
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    Internal(String),
}

/// Marks a response that answers "this function does not exist", with the
/// function's name: the authentication middleware names a near function
/// in it only when it is the function the path names (a 404 about, say, a
/// deploy's missing destination keeps its own message).
#[derive(Debug, Clone)]
pub(crate) struct MissingFunction(pub String);

/// A registry error; a missing function becomes the one answer every
/// command gives for it.
impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NoSuchFunction(name) => ApiError::no_such_function(&name),
            e => ApiError::Registry(e),
        }
    }
}

impl ApiError {
    /// The answer for a function the caller's tenant does not have.
    pub(crate) fn no_such_function(name: &FunctionName) -> Self {
        ApiError::NoSuchFunction {
            name: name.to_string(),
            near: None,
        }
    }

    /// The store refused a write because the disk is full.
    fn disk_full(&self) -> bool {
        matches!(self.store_error(), Some(StoreError::DiskFull { .. }))
    }

    /// The shared storage is out of reach for now (a cluster without quorum).
    fn unavailable(&self) -> bool {
        matches!(self.store_error(), Some(StoreError::Unavailable(_)))
    }

    fn store_error(&self) -> Option<&StoreError> {
        Some(match self {
            ApiError::Store(e)
            | ApiError::Registry(RegistryError::Store(e))
            | ApiError::Buckets(BucketsError::Store(e))
            | ApiError::Accounts(AccountsError::Store(e))
            | ApiError::Events(EventsError::Store(e)) => e,
            _ => return None,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            e if e.disk_full() => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            e if e.unavailable() => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::InvalidComponent(DeployError::Storage(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage")
            }
            ApiError::InvalidComponent(_) => (StatusCode::BAD_REQUEST, "invalid_component"),
            ApiError::NotFound(_)
            | ApiError::NoSuchFunction { .. }
            | ApiError::Registry(
                RegistryError::NoSuchFunction(_)
                | RegistryError::NoSuchAlias { .. }
                | RegistryError::NoSuchVersion { .. }
                | RegistryError::NoSuchApp(_),
            ) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_)
            | ApiError::Registry(
                RegistryError::AlreadyExists(_)
                | RegistryError::Refused(_)
                | RegistryError::RouteTaken { .. },
            ) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Registry(RegistryError::Store(StoreError::Conflict { .. })) => {
                (StatusCode::CONFLICT, "conflict")
            }
            ApiError::Events(EventsError::InvalidSchedule(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_schedule")
            }
            ApiError::Events(EventsError::InvalidTrigger(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_trigger")
            }
            ApiError::Buckets(BucketsError::Invalid(KvError::ValueTooLarge(_))) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::Buckets(BucketsError::Invalid(_)) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Buckets(BucketsError::NotACounter(_)) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Events(
                EventsError::NoSuchInvocation(_)
                | EventsError::NoSuchDeadLetter(_)
                | EventsError::NoSuchSchedule(_)
                | EventsError::NoSuchTrigger(_)
                | EventsError::NoSuchSource(_),
            ) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::QuotaExceeded(_) | ApiError::Buckets(BucketsError::Quota { .. }) => {
                (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
            }
            ApiError::Accounts(AccountsError::TenantExists(_)) => {
                (StatusCode::CONFLICT, "conflict")
            }
            ApiError::Accounts(AccountsError::LastAdminToken(_)) => {
                (StatusCode::CONFLICT, "last_admin_token")
            }
            ApiError::Accounts(AccountsError::NoSuchTenant(_) | AccountsError::NoSuchToken(_)) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ApiError::Internal(_) | ApiError::Accounts(AccountsError::Store(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            ApiError::Registry(_)
            | ApiError::Store(_)
            | ApiError::Events(_)
            | ApiError::Buckets(BucketsError::Store(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage")
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "control API request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: self.to_string(),
            },
        };
        let missing = match &self {
            ApiError::NoSuchFunction { name, .. } => Some(name.clone()),
            ApiError::Registry(RegistryError::NoSuchFunction(name)) => Some(name.to_string()),
            _ => None,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(name) = missing {
            response.extensions_mut().insert(MissingFunction(name));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("2"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

fn did_you_mean(near: Option<&str>) -> String {
    match near {
        Some(near) => format!(": did you mean `{near}`? (see `gust ls`)"),
        None => " (see `gust ls`)".to_string(),
    }
}

/// The name among `names` closest to `name` (a typo of it): at most two
/// edits away and fewer edits than either name has letters; on a tie, the
/// first in order.
pub(crate) fn near_name<'a>(
    name: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let length = name.chars().count();
    names
        .into_iter()
        .filter(|candidate| *candidate != name)
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(d, candidate)| *d <= 2 && *d < length.min(candidate.chars().count()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, candidate)| candidate)
}

/// The Levenshtein distance: how many letters must be inserted, removed
/// or replaced to turn `a` into `b`.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // One row of the table at a time: row[j] is the distance between the
    // part of `a` seen so far and the first j letters of `b`.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let replaced = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = replaced.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Answers that axum gives before a handler runs (a path segment that is
/// not a number, a body that is not JSON, ...) come as plain text: they
/// are given the JSON error body every other answer has, with their status.
pub(crate) async fn json_rejections(response: Response) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !status.is_client_error() || !plain {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "bad_request",
    };
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message: text,
        },
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_too_large_for_its_memory_names_the_real_flag() {
        let message = ApiError::from(DeployError::TooMuchMemory {
            initial: 2,
            limit: 1,
        })
        .to_string();
        assert!(message.contains("`--memory-mb`"), "{message}");
        assert!(!message.contains("`--memory`"), "{message}");
    }

    #[tokio::test]
    async fn plain_text_rejections_become_json_errors() {
        let plain = (StatusCode::BAD_REQUEST, "Invalid URL: not a u64").into_response();
        let response = json_rejections(plain).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body.error.code, "bad_request");
        assert_eq!(body.error.message, "Invalid URL: not a u64");
        // JSON answers and successes pass untouched.
        let ok = (StatusCode::OK, "fine").into_response();
        assert_eq!(json_rejections(ok).await.status(), StatusCode::OK);
    }

    #[test]
    fn edit_distance_counts_insertions_removals_and_replacements() {
        assert_eq!(edit_distance("hello", "hello"), 0);
        assert_eq!(edit_distance("hello", "helo"), 1);
        assert_eq!(edit_distance("helo", "hello"), 1);
        assert_eq!(edit_distance("hello", "jello"), 1);
        assert_eq!(edit_distance("hello", "hlelo"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn a_near_name_is_at_most_two_edits_away_and_the_closest() {
        let names = ["hello", "help", "world", "api-v2"];
        assert_eq!(near_name("helo", names), Some("hello"));
        assert_eq!(near_name("api-v1", names), Some("api-v2"));
        assert_eq!(near_name("wrld", names), Some("world"));
        assert_eq!(near_name("hellp", names), Some("hello"));
        assert_eq!(near_name("nosuch", names), None);
        assert_eq!(near_name("x", ["y", "xy"]), None);
        assert_eq!(near_name("hello", ["hello"]), None);
        assert_eq!(near_name("anything", []), None);
    }

    #[test]
    fn a_missing_function_reads_the_same_with_a_next_step() {
        let plain = ApiError::NoSuchFunction {
            name: "nosuch".into(),
            near: None,
        };
        assert_eq!(
            plain.to_string(),
            "function `nosuch` does not exist (see `gust ls`)"
        );
        let near = ApiError::NoSuchFunction {
            name: "helo".into(),
            near: Some("hello".into()),
        };
        assert_eq!(
            near.to_string(),
            "function `helo` does not exist: did you mean `hello`? (see `gust ls`)"
        );
        assert_eq!(near.into_response().status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn revoking_the_last_admin_token_is_a_conflict() {
        let response =
            ApiError::Accounts(AccountsError::LastAdminToken("abc".into())).into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
    }
}
