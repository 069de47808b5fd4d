//! Requests from one node of a cluster to another named node, answered
//! by that node: for state only one node holds (a WebSocket connection is
//! held by the node its client reached). Nothing is stored: a request
//! goes to the node while it listens, at most once, and its asker gets
//! the answer, an error saying no such node listens, or a timeout.
//!
//! One node alone has no relay (`None` where one is taken): there is no
//! other node to ask.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// What a node runs for each request it is sent on a topic: the request's
/// bytes in, the answer's bytes out.
pub type RelayHandler =
    Arc<dyn Fn(Bytes) -> Pin<Box<dyn Future<Output = Bytes> + Send>> + Send + Sync>;

/// Why a request through the relay got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    /// No node of that name listens on the topic (it is gone, or never was).
    #[error("node `{0}` is not listening")]
    NoNode(String),
    /// The node did not answer in time (it is stopped, overloaded or cut off).
    #[error("node `{node}` did not answer within {waited:?}")]
    Timeout { node: String, waited: Duration },
    /// The request is larger than the relay carries.
    #[error("the request is too large for the relay ({0} bytes)")]
    TooLarge(usize),
    /// The relay itself cannot be reached now.
    #[error("the relay is unavailable ({0}); retry shortly")]
    Unavailable(String),
}

/// Requests between the nodes of one cluster. Node names and topics are
/// letters, digits, `-` and `_`; anything else is refused before it is sent.
#[async_trait]
pub trait NodeRelay: Send + Sync {
    /// Sends `request` to what `node` serves on `topic`, and waits at most
    /// `timeout` for its answer.
    async fn ask(
        &self,
        node: &str,
        topic: &str,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RelayError>;

    /// Runs `handler` for every request sent to `node` on `topic`, from
    /// now until the process ends; each answer goes back to its asker.
    async fn serve(&self, node: &str, topic: &str, handler: RelayHandler)
    -> Result<(), RelayError>;
}

/// Whether `name` can name a node or a topic on the relay: 1 to 64
/// letters, digits, `-` and `_` (what `--node-id` accepts).
pub fn relay_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_names_are_what_node_ids_may_be() {
        for good in ["a", "node-1", "gust_b", &"x".repeat(64)] {
            assert!(relay_name(good), "{good}");
        }
        for bad in ["", "a.b", "a*", ">", "a b", "é", &"x".repeat(65)] {
            assert!(!relay_name(bad), "{bad}");
        }
    }
}
