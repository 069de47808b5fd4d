//! Signed webhooks: a request to a webhook source's endpoint becomes an
//! event only if its HMAC-SHA256 signature over the raw body checks out
//! (compared in constant time), in the style its sender uses:
//!
//! - GitHub: `X-Hub-Signature-256: sha256=<hex>`; `X-GitHub-Delivery` is
//!   the delivery's id (a redelivery keeps it, so it is queued once) and
//!   `X-GitHub-Event` its subject. GitHub signs no timestamp: a replayed
//!   delivery is recognised by its id.
//! - Stripe: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]`
//!   over `"<t>.<body>"`, refused when `t` is outside the replay window
//!   (any `v1` may match: Stripe sends several while a secret is rolled);
//!   the body's `id` is the event's id and its `type` the subject.
//!
//! The answer is 2xx only once the event is durably queued.

use gust_core::source::{SignatureStyle, SourceKind};
use gust_core::{FunctionName, TenantId};
use gust_store::SecretBox;
use ring::hmac;

use crate::sources::{SourceMessage, seal_context};
use crate::{Events, EventsError};

/// Why a webhook request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("no webhook source here")]
    NoSuchSource,
    #[error("{0}")]
    Unsigned(String),
    #[error(transparent)]
    Events(#[from] EventsError),
}

/// A verified delivery: its id (if the sender gave one) and subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub id: Option<String>,
    pub subject: Option<String>,
}

/// Checks a request's signature; `header` looks up a request header by
/// lowercase name.
pub fn verify<'h>(
    style: SignatureStyle,
    secret: &[u8],
    header: impl Fn(&str) -> Option<&'h str>,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<Verified, String> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    match style {
        SignatureStyle::Github => {
            let given = header("x-hub-signature-256")
                .ok_or("missing X-Hub-Signature-256 (sha256=<hex HMAC of the body>)")?;
            let hex = given
                .trim()
                .strip_prefix("sha256=")
                .ok_or("X-Hub-Signature-256 must be `sha256=<hex>`")?;
            let tag = from_hex(hex).ok_or("X-Hub-Signature-256 is not hex")?;
            hmac::verify(&key, body, &tag)
                .map_err(|_| "X-Hub-Signature-256 does not match the body")?;
            Ok(Verified {
                id: header("x-github-delivery").map(str::to_string),
                subject: header("x-github-event").map(str::to_string),
            })
        }
        SignatureStyle::Stripe => {
            let given = header("stripe-signature")
                .ok_or("missing Stripe-Signature (t=<unix seconds>,v1=<hex>)")?;
            let mut timestamp = None;
            let mut tags = Vec::new();
            for part in given.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
                    Some(("v1", hex)) => tags.extend(from_hex(hex)),
                    _ => {}
                }
            }
            let t = timestamp.ok_or("Stripe-Signature has no `t=<unix seconds>`")?;
            if tags.is_empty() {
                return Err("Stripe-Signature has no `v1=<hex>`".into());
            }
            let mut signed = Vec::with_capacity(body.len() + 12);
            signed.extend_from_slice(t.to_string().as_bytes());
            signed.push(b'.');
            signed.extend_from_slice(body);
            if !tags
                .iter()
                .any(|tag| hmac::verify(&key, &signed, tag).is_ok())
            {
                return Err("Stripe-Signature does not match the body".into());
            }
            if now_s.abs_diff(t) > tolerance_s {
                return Err(format!(
                    "Stripe-Signature's timestamp is {} s from now, outside the replay window of {tolerance_s} s",
                    now_s.abs_diff(t)
                ));
            }
            let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
            let field = |name: &str| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get(name))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            Ok(Verified {
                id: field("id"),
                subject: field("type"),
            })
        }
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Events {
    /// Accepts a webhook request for the source `id` of `function`: checks
    /// its signature, then queues it. Returns the invocation id and whether
    /// it is new (a redelivery of an accepted id is not queued again).
    pub async fn receive_webhook<'h>(
        &self,
        secrets: &SecretBox,
        tenant: &TenantId,
        function: &FunctionName,
        id: &str,
        header: impl Fn(&str) -> Option<&'h str>,
        body: Vec<u8>,
    ) -> Result<bool, WebhookError> {
        let record = match self.source(tenant, function, id).await {
            Ok(record) if record.kind == SourceKind::Webhook => record,
            Ok(_) | Err(EventsError::NoSuchSource(_)) => return Err(WebhookError::NoSuchSource),
            Err(e) => return Err(e.into()),
        };
        let sealed = record.spec.secret.as_deref().unwrap_or_default();
        let secret = secrets
            .open(&seal_context(tenant, function, id, "secret"), sealed)
            .map_err(|e| WebhookError::Unsigned(format!("the source's secret: {e}")))?;
        let style = record.spec.style.unwrap_or_default();
        let tolerance = record
            .spec
            .tolerance_secs
            .unwrap_or(gust_core::source::DEFAULT_TOLERANCE_SECS);
        let verified = verify(
            style,
            secret.as_bytes(),
            &header,
            &body,
            crate::now_ms() / 1000,
            tolerance,
        )
        .map_err(WebhookError::Unsigned)?;
        let style_name = match style {
            SignatureStyle::Github => "github",
            SignatureStyle::Stripe => "stripe",
        };
        let message = SourceMessage {
            id: verified.id,
            ty: format!("dev.gust.webhook.{style_name}"),
            source: format!("/gust/webhooks/{tenant}/{function}/{id}"),
            subject: verified.subject,
            ordering_key: None,
            content_type: header("content-type").map(str::to_string),
            data: body,
        };
        Ok(self.submit_from_source(&record, message).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], message: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        hmac::sign(&key, message)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn headers<'a>(pairs: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    #[test]
    fn github_style() {
        let body = br#"{"zen":"hi"}"#;
        let good = [
            (
                "x-hub-signature-256",
                format!("sha256={}", sign(b"s", body)),
            ),
            ("x-github-delivery", "d-1".to_string()),
            ("x-github-event", "push".to_string()),
        ];
        let verified = verify(SignatureStyle::Github, b"s", headers(&good), body, 0, 300).unwrap();
        assert_eq!(verified.id.as_deref(), Some("d-1"));
        assert_eq!(verified.subject.as_deref(), Some("push"));
        // Another secret, another body, a missing or malformed header.
        assert!(verify(SignatureStyle::Github, b"t", headers(&good), body, 0, 300).is_err());
        assert!(verify(SignatureStyle::Github, b"s", headers(&good), b"{}", 0, 300).is_err());
        assert!(verify(SignatureStyle::Github, b"s", headers(&[]), body, 0, 300).is_err());
        let bare = [("x-hub-signature-256", sign(b"s", body))];
        assert!(verify(SignatureStyle::Github, b"s", headers(&bare), body, 0, 300).is_err());
    }

    #[test]
    fn stripe_style_with_its_replay_window() {
        let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
        let t = 1_700_000_000u64;
        let signed = |t: u64, secret: &[u8]| {
            let mut m = format!("{t}.").into_bytes();
            m.extend_from_slice(body);
            sign(secret, &m)
        };
        let header = [(
            "stripe-signature",
            format!("t={t},v1={},v1={}", signed(t, b"old"), signed(t, b"s")),
        )];
        let verified = verify(
            SignatureStyle::Stripe,
            b"s",
            headers(&header),
            body,
            t + 10,
            300,
        )
        .unwrap();
        assert_eq!(verified.id.as_deref(), Some("evt_1"));
        assert_eq!(verified.subject.as_deref(), Some("invoice.paid"));
        let late = verify(
            SignatureStyle::Stripe,
            b"s",
            headers(&header),
            body,
            t + 301,
            300,
        );
        assert!(late.unwrap_err().contains("replay window"));
        // The timestamp is signed: moving it breaks the signature.
        let moved = [(
            "stripe-signature",
            format!("t={},v1={}", t + 400, signed(t, b"s")),
        )];
        assert!(
            verify(
                SignatureStyle::Stripe,
                b"s",
                headers(&moved),
                body,
                t + 400,
                300
            )
            .unwrap_err()
            .contains("does not match")
        );
        assert!(verify(SignatureStyle::Stripe, b"x", headers(&header), body, t, 300).is_err());
    }
}
