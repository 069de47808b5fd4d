//! The request body as the guest reads it: capped at the function's limit
//! and cut off when the client stops sending.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use gust_runtime::GuestBody;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Wraps a request body with a byte limit and an idle timeout. Going over
/// the limit raises a flag the gateway reads to answer 413 whatever the
/// guest made of the error.
pub(crate) struct LimitedBody {
    inner: Incoming,
    remaining: u64,
    limit: u64,
    over_limit: Arc<AtomicBool>,
    idle: Duration,
    /// Created on the first wait only: most bodies arrive with their head.
    timer: Option<Pin<Box<Sleep>>>,
}

impl LimitedBody {
    pub fn new(inner: Incoming, limit: u64, idle: Duration, over_limit: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            remaining: limit,
            limit,
            over_limit,
            idle,
            timer: None,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = GuestBody;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, GuestBody>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer = None;
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.over_limit.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(GuestBody::TooLarge(this.limit))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(GuestBody::Io(e.to_string())))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + idle))
                });
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(GuestBody::Timeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
