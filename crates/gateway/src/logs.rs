//! Invocation logs: what each invocation printed, written to the log store
//! in batches off the request path. Logs are best effort: when the writer
//! falls behind by more than the queue holds, records are dropped and
//! counted, never blocking a request. (Usage records are not logs: they get
//! their own durable path.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use gust_core::{FunctionName, LogRecord, TenantId};
use gust_store::{LogStore, Registry};
use tokio::sync::mpsc;

const QUEUE: usize = 16 * 1024;
const BATCH: usize = 512;

#[derive(Clone)]
pub(crate) struct LogSink {
    tx: mpsc::Sender<(String, Bytes)>,
    pub dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// Starts the writer; it ends after every sink is dropped and the queue is written.
    pub fn start(store: Arc<dyn LogStore>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<(String, Bytes)>(QUEUE);
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                if let Err(e) = store.append(std::mem::take(&mut batch)).await {
                    tracing::error!(error = %e, "writing invocation logs failed");
                }
            }
        });
        (
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            writer,
        )
    }

    pub fn record(&self, tenant: &TenantId, name: &FunctionName, record: &LogRecord) {
        let Ok(bytes) = serde_json::to_vec(record) else {
            return;
        };
        let stream = Registry::log_stream(tenant, name);
        if self.tx.try_send((stream, Bytes::from(bytes))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
