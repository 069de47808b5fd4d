//! JetStream's atomic batch publish (server 2.12+, a stream with
//! `allow_atomic_publish`): every message of a batch is stored, in
//! consecutive sequences with nothing of another writer in between, or
//! none is. async-nats 0.51 has only the header names, so the protocol is
//! here: each message carries the batch's id and its place in it; the
//! first is a request, answered (empty) once the leader has opened the
//! batch, or refused; the middle ones are plain publishes, staged by the
//! leader in order; the last carries the commit and is answered with the
//! batch's acknowledgement (its last sequence and how many were stored)
//! or the refusal of all of it. A batch never committed is dropped by the
//! server (after 10 s), so an error before the commit wrote nothing.

use std::hash::{BuildHasher as _, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use gust_store::StoreError;

use crate::meta::unacknowledged;

/// What became of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Batch {
    /// Stored: the stream sequence of its last message (the others
    /// precede it, consecutively).
    Stored(u64),
    /// Refused as a whole (a failed condition, a limit): nothing stored.
    Refused { code: u64, description: String },
    /// No server took its first message: the stream has no leader, or its
    /// subjects are not known yet where this client is connected (just
    /// after it was created). Nothing stored.
    Unheard,
}

/// An id no other batch of any node uses (the leader keeps a batch apart
/// by it until its commit).
pub(crate) fn batch_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = KEYS.get_or_init(RandomState::new).hash_one(n);
    format!("g{random:016x}{n:x}")
}

/// Publishes `messages` as one atomic batch (at most the servers'
/// `limits { batch { max_msgs } }`, 1,000 by default).
pub(crate) async fn publish(
    client: &async_nats::Client,
    messages: Vec<(String, HeaderMap, Bytes)>,
) -> Result<Batch, StoreError> {
    let id = batch_id();
    let n = messages.len();
    for (i, (subject, mut headers, payload)) in messages.into_iter().enumerate() {
        headers.insert(async_nats::header::NATS_BATCH_ID, id.as_str());
        headers.insert(
            async_nats::header::NATS_BATCH_SEQUENCE,
            (i + 1).to_string().as_str(),
        );
        let last = i + 1 == n;
        if last {
            headers.insert(
                async_nats::header::NATS_BATCH_COMMIT,
                async_nats::header::NATS_BATCH_COMMIT_FINAL,
            );
        }
        if i > 0 && !last {
            client
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| StoreError::Unavailable(format!("a batch could not be sent: {e}")))?;
            continue;
        }
        let reply = match client.request_with_headers(subject, headers, payload).await {
            Ok(reply) => reply,
            Err(e) if i == 0 && e.kind() == RequestErrorKind::NoResponders => {
                return Ok(Batch::Unheard);
            }
            Err(e) if last => return Err(unacknowledged(e)),
            Err(e) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot start a batch: {e}"
                )));
            }
        };
        match reply_of(&reply.payload)? {
            Reply::Opened if !last => {}
            Reply::Stored { seq, count } if last => {
                if count != n as u64 {
                    return Err(StoreError::Backend(format!(
                        "JetStream stored {count} of a batch of {n}"
                    )));
                }
                return Ok(Batch::Stored(seq));
            }
            Reply::Refused { code, description } => {
                return Ok(Batch::Refused { code, description });
            }
            Reply::Opened | Reply::Stored { .. } => {
                return Err(StoreError::Backend(
                    "JetStream answered a batch out of turn".into(),
                ));
            }
        }
    }
    Err(StoreError::Backend("an empty batch".into()))
}

enum Reply {
    Opened,
    Stored { seq: u64, count: u64 },
    Refused { code: u64, description: String },
}

fn reply_of(payload: &[u8]) -> Result<Reply, StoreError> {
    if payload.is_empty() {
        return Ok(Reply::Opened);
    }
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        unacknowledged(format!(
            "an unreadable answer {:?}: {e}",
            String::from_utf8_lossy(payload)
        ))
    })?;
    if let Some(error) = value.get("error") {
        return Ok(Reply::Refused {
            code: error["err_code"].as_u64().unwrap_or(0),
            description: error["description"].as_str().unwrap_or("").to_string(),
        });
    }
    match value["seq"].as_u64() {
        Some(seq) => Ok(Reply::Stored {
            seq,
            // A single message's acknowledgement has no count.
            count: value["count"].as_u64().unwrap_or(1),
        }),
        None => Err(unacknowledged(format!("an unexpected answer: {value}"))),
    }
}
