//! The request body as the guest reads it: capped at the function's limit
//! and cut off when the client stops sending.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use gust_runtime::GuestBody;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// What went wrong with a request body, if anything; shared between the
/// body (which the guest reads) and the gateway (which answers for it).
#[derive(Clone, Default)]
pub(crate) struct BodyFault(Arc<AtomicU8>);

impl BodyFault {
    const TOO_LARGE: u8 = 1;
    const STALLED: u8 = 2;

    fn set(&self, fault: u8) {
        self.0.store(fault, Ordering::Relaxed);
    }

    pub fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TOO_LARGE
    }

    pub fn stalled(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::STALLED
    }

    /// The status the gateway answers instead of the guest's, if any.
    pub fn status(&self) -> Option<u16> {
        match self.0.load(Ordering::Relaxed) {
            Self::TOO_LARGE => Some(413),
            Self::STALLED => Some(408),
            _ => None,
        }
    }
}

/// Wraps a request body with a byte limit and an idle timeout. Going over
/// the limit or stalling records a [`BodyFault`] so that the gateway answers
/// 413 or 408 whatever the guest made of the error it saw.
///
/// A guest may answer without reading the whole body. Closing the
/// connection then, with the client still sending, makes the kernel reset
/// it and the client can lose the answer; so what the guest left unread is
/// read and discarded in the background (up to the limit, while it keeps
/// arriving) and the connection ends cleanly.
pub(crate) struct LimitedBody {
    /// `None` once handed to the drain on drop.
    inner: Option<Incoming>,
    remaining: u64,
    limit: u64,
    fault: BodyFault,
    idle: Duration,
    /// Created on the first wait only: most bodies arrive with their head.
    timer: Option<Pin<Box<Sleep>>>,
}

impl LimitedBody {
    pub fn new(inner: Incoming, limit: u64, idle: Duration, fault: BodyFault) -> Self {
        Self {
            inner: Some(inner),
            remaining: limit,
            limit,
            fault,
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
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer = None;
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.fault.set(BodyFault::TOO_LARGE);
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
                this.fault.set(BodyFault::STALLED);
                Poll::Ready(Some(Err(GuestBody::Timeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for LimitedBody {
    fn drop(&mut self) {
        let faulted = self.fault.too_large() || self.fault.stalled();
        if let Some(inner) = self.inner.take()
            && !inner.is_end_stream()
            && !faulted
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let idle = self.idle;
            runtime.spawn(async move {
                let _ = crate::pipeline::read_capped(inner, 0, idle).await;
            });
        }
    }
}
