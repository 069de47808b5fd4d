//! The control API, called in process: the dashboard's only way to read
//! or change anything. Each call carries the session's token (and, for an
//! admin looking at another tenant, the tenant header), so the API's
//! authentication, roles, tenant scoping and audit log apply to the
//! dashboard exactly as to the CLI.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde::de::DeserializeOwned;
use tower::ServiceExt as _;

use crate::session::Session;

/// The largest answer a page reads.
const MAX_ANSWER: usize = 16 << 20;

#[derive(Clone)]
pub struct Api(pub axum::Router);

/// An answer that is not a success, with the API's own message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl Api {
    /// Calls `path` (with its query) as the session; the body of a
    /// success, or the API's error.
    pub async fn call(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<bytes::Bytes, Failure> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", session.token));
        if let Some(tenant) = &session.viewing {
            request = request.header(gust_api::TENANT_HEADER, tenant.as_str());
        }
        let request = match body {
            Some(json) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json.to_string())),
            None => request.body(Body::empty()),
        }
        .map_err(|e| Failure::internal(e.to_string()))?;
        let response = self
            .0
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| Failure::internal(e.to_string()))?;
        let status = response.status();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| Failure::internal(format!("reading the API's answer: {e}")))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<gust_api::ErrorBody>(&bytes)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(Failure { status, message })
    }

    /// `GET path`, parsed.
    pub async fn get<T: DeserializeOwned>(
        &self,
        session: &Session,
        path: &str,
    ) -> Result<T, Failure> {
        let bytes = self.call(session, Method::GET, path, None).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::internal(format!("the API's answer to {path}: {e}")))
    }

    /// `POST path` with an optional JSON body.
    pub async fn post(
        &self,
        session: &Session,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<bytes::Bytes, Failure> {
        self.call(session, Method::POST, path, body).await
    }
}

/// A path segment or query value, percent-encoded.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(encode("fn-1_x.y~"), "fn-1_x.y~");
    }
}
