//! The relay between nodes on core NATS request/reply: a node serves a
//! topic on `<namespace>.relay.<node>.<topic>`, and a request to it is a
//! NATS request on that subject. Nothing goes through JetStream: a request
//! is delivered at most once, to the node while it is subscribed, and is
//! lost with its answer if the node dies; the asker sees a timeout.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use gust_store::{NodeRelay, RelayError, RelayHandler, relay_name};

use crate::NatsStore;

impl NatsStore {
    /// The subject `node` serves `topic` on; `None` when either is not a
    /// name (it could not be one subject token).
    fn relay_subject(&self, node: &str, topic: &str) -> Option<String> {
        (relay_name(node) && relay_name(topic))
            .then(|| format!("{}.relay.{node}.{topic}", self.options.namespace))
    }
}

#[async_trait]
impl NodeRelay for NatsStore {
    async fn ask(
        &self,
        node: &str,
        topic: &str,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RelayError> {
        let Some(subject) = self.relay_subject(node, topic) else {
            return Err(RelayError::NoNode(node.to_string()));
        };
        let size = request.len();
        let sent = self.client.send_request(
            subject,
            async_nats::Request::new()
                .payload(request)
                .timeout(Some(timeout)),
        );
        // The client's own timeout covers the wait for the answer; this one
        // also covers a connection that is down and buffering.
        let answer = match tokio::time::timeout(timeout, sent).await {
            Ok(answer) => answer,
            Err(_) => {
                return Err(RelayError::Timeout {
                    node: node.to_string(),
                    waited: timeout,
                });
            }
        };
        answer.map(|message| message.payload).map_err(|error| {
            use async_nats::RequestErrorKind as Kind;
            match error.kind() {
                Kind::NoResponders => RelayError::NoNode(node.to_string()),
                Kind::TimedOut => RelayError::Timeout {
                    node: node.to_string(),
                    waited: timeout,
                },
                Kind::MaxPayloadExceeded => RelayError::TooLarge(size),
                Kind::InvalidSubject | Kind::Other => RelayError::Unavailable(error.to_string()),
            }
        })
    }

    async fn serve(
        &self,
        node: &str,
        topic: &str,
        handler: RelayHandler,
    ) -> Result<(), RelayError> {
        let Some(subject) = self.relay_subject(node, topic) else {
            return Err(RelayError::NoNode(node.to_string()));
        };
        let mut requests = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| RelayError::Unavailable(e.to_string()))?;
        // The server has the subscription once this returns; the other
        // servers of the cluster learn of it a moment later.
        self.client
            .flush()
            .await
            .map_err(|e| RelayError::Unavailable(e.to_string()))?;
        let client = self.client.clone();
        // The client subscribes again by itself after a reconnect, so the
        // stream ends only with the client.
        tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let Some(reply) = message.reply else {
                    continue;
                };
                let handler = handler.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let answer = handler(message.payload).await;
                    if let Err(error) = client.publish(reply, answer).await {
                        tracing::debug!(%error, "a relay answer was not sent");
                    }
                });
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::testkit;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_request_reaches_the_node_it_names_and_only_that_node() {
        let Some(here) = testkit::store().await else {
            return;
        };
        let there = testkit::store_beside(&here).await;
        let wait = Duration::from_secs(2);
        // Nobody serves `b` yet.
        let before = here.ask("b", "echo", Bytes::from_static(b"x"), wait).await;
        assert!(
            matches!(before, Err(RelayError::NoNode(ref n)) if n == "b"),
            "{before:?}"
        );

        for (store, node) in [(&there, "b"), (&here, "a")] {
            let handler: RelayHandler = Arc::new(move |request: Bytes| {
                Box::pin(async move {
                    let mut answer = node.as_bytes().to_vec();
                    answer.extend_from_slice(b":");
                    answer.extend_from_slice(&request);
                    Bytes::from(answer)
                })
            });
            store.serve(node, "echo", handler).await.unwrap();
        }
        // Each server of the cluster learns of a subscription on another
        // a moment after it was made.
        async fn answered(from: &NatsStore, node: &str, request: &'static [u8]) -> Bytes {
            for _ in 0..50 {
                match from
                    .ask(
                        node,
                        "echo",
                        Bytes::from_static(request),
                        Duration::from_secs(2),
                    )
                    .await
                {
                    Err(RelayError::NoNode(_)) => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    answer => return answer.unwrap(),
                }
            }
            panic!("node {node} never listened");
        }
        assert_eq!(
            answered(&here, "b", b"hi").await,
            Bytes::from_static(b"b:hi")
        );
        assert_eq!(
            answered(&there, "a", b"yo").await,
            Bytes::from_static(b"a:yo")
        );
        // Another topic, or a name that is not one, reaches nobody.
        for (node, topic) in [("b", "other"), ("*", "echo"), ("b.x", "echo"), ("b", ">")] {
            let asked = here.ask(node, topic, Bytes::new(), wait).await;
            assert!(
                matches!(asked, Err(RelayError::NoNode(_))),
                "{node} {topic}: {asked:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_node_that_does_not_answer_in_time_is_a_timeout() {
        let Some(store) = testkit::store().await else {
            return;
        };
        let handler: RelayHandler = Arc::new(|_| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Bytes::new()
            })
        });
        store.serve("slow", "echo", handler).await.unwrap();
        let asked = store
            .ask("slow", "echo", Bytes::new(), Duration::from_millis(300))
            .await;
        assert!(
            matches!(asked, Err(RelayError::Timeout { .. })),
            "{asked:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_request_over_the_servers_payload_limit_is_too_large_and_never_sent() {
        let Some(store) = testkit::store().await else {
            return;
        };
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = seen.clone();
        let handler: RelayHandler = Arc::new(move |request: Bytes| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { request })
        });
        store.serve("big", "echo", handler).await.unwrap();
        // The test servers take 8 MiB.
        let limit = 8 << 20;
        let asked = store
            .ask(
                "big",
                "echo",
                Bytes::from(vec![b'x'; limit + 1]),
                Duration::from_secs(2),
            )
            .await;
        assert!(
            matches!(asked, Err(RelayError::TooLarge(n)) if n == limit + 1),
            "{asked:?}"
        );
        // What fits goes through, and only it reached the handler.
        let fits = store
            .ask(
                "big",
                "echo",
                Bytes::from(vec![b'y'; 1 << 20]),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(fits.len(), 1 << 20);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
