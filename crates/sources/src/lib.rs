//! Gust's event sources: the connectors that take messages from brokers
//! and databases teams already run (MQTT, Redis Streams, …) and turn each
//! into an event for a function, and the supervisor that runs one task per
//! source declared in the registry, restarts it with backoff when its
//! broker fails, and reports its state.
//!
//! The promise every connector keeps: a message is acknowledged to its
//! broker only after [`gust_events::Events::submit_from_source`] has put
//! its event durably in the function's queue, so a crash in between
//! redelivers rather than loses. A source stops pulling while its
//! function's queue holds `max_backlog` events or its tenant is at the
//! `event_backlog` quota (backpressure), and never holds more than
//! `prefetch` messages taken and not acknowledged.
//!
//! Sources reach only the addresses their tenant may: a private or
//! loopback address is refused for every tenant but the default (the
//! operator's own) unless `gust up --sources-private` allows it.
//!
//! Owns no storage of its own and must not depend on the gateway, the API
//! or wasm: events go through `gust-events` like every other trigger.

mod amqp;
mod ctx;
mod mqtt;
mod nats;
mod pgwire;
mod postgres;
mod redis_streams;
mod stats;
mod supervisor;
mod tls;

pub use stats::{SourceSample, SourceStats};
pub use supervisor::{BudgetCheck, Sources, SourcesConfig};

/// Why a source could not run (shown as its `last_error`).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The broker, its address or its answer.
    #[error("{0}")]
    Broker(String),
    /// Gust's own store: the message stays unacknowledged.
    #[error("queueing an event: {0}")]
    Events(#[from] gust_events::EventsError),
    /// A setting the source needs is wrong or missing (not retried soon).
    #[error("{0}")]
    Config(String),
}

impl SourceError {
    pub(crate) fn broker(e: impl std::fmt::Display) -> Self {
        SourceError::Broker(e.to_string())
    }
}
