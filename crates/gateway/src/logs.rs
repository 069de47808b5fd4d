//! Invocation logs: what each invocation printed, written to the log store
//! in batches off the request path. Logs are best effort: when the writer
//! falls behind by more than the queue holds, records are dropped and
//! counted, never blocking a request. (Usage records are not logs: they get
//! their own durable path.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use gust_core::{FunctionName, LogRecord, TenantId};
use gust_store::{LogStore, Registry};
use tokio::sync::mpsc;

const QUEUE: usize = 16 * 1024;
const BATCH: usize = 512;
/// Bytes of log records waiting to be written, at most.
const QUEUE_BYTES: usize = 32 << 20;

#[derive(Clone)]
pub(crate) struct LogSink {
    tx: mpsc::Sender<(String, Bytes)>,
    queued_bytes: Arc<AtomicUsize>,
    pub dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// Starts the writer; it ends when every sink is dropped, or when
    /// `close` is notified, after writing what is queued.
    pub fn start(
        store: Arc<dyn LogStore>,
        close: Arc<tokio::sync::Notify>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<(String, Bytes)>(QUEUE);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let queued = queued_bytes.clone();
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let closing = tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => n == 0,
                    () = close.notified() => {
                        while let Ok(record) = rx.try_recv() {
                            batch.push(record);
                        }
                        true
                    }
                };
                if !batch.is_empty() {
                    let bytes: usize = batch.iter().map(|(_, b)| b.len()).sum();
                    if let Err(e) = store.append(std::mem::take(&mut batch)).await {
                        tracing::error!(error = %e, "writing invocation logs failed");
                    }
                    queued.fetch_sub(bytes, Ordering::Relaxed);
                }
                if closing {
                    break;
                }
            }
        });
        (
            Self {
                tx,
                queued_bytes,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            writer,
        )
    }

    pub fn record(&self, tenant: &TenantId, name: &FunctionName, record: &LogRecord) {
        let Ok(bytes) = serde_json::to_vec(record) else {
            return;
        };
        let len = bytes.len();
        if self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let stream = Registry::log_stream(tenant, name);
        if self.tx.try_send((stream, Bytes::from(bytes))).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
