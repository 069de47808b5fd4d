//! The byte stream hyper serves, wrapped: it makes hyper's own answer to a
//! request head over the size limit a readable 431, and closes such a
//! connection gently (lingering), so the client reads that answer instead
//! of a connection reset.
//!
//! hyper answers a head past `max_header_size` itself, before any service
//! sees the request, with a bare `431` and no body, and drops the
//! connection at once; a client still sending its headers then gets a
//! reset, which discards the answer. Here that bare answer is replaced by
//! one with a message, and the connection is then shut down for writing
//! and its input read and discarded for a moment before it is closed, as
//! web servers do ("lingering close").

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::Slot;

/// How long, and for how many bytes, a refused client's input is drained.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

enum Writing {
    /// Everything hyper writes goes through.
    Through,
    /// Our 431 is going out in place of hyper's bare one (`len` bytes long).
    Replacing { answer: Vec<u8>, written: usize },
    /// The 431 is out; nothing else is written.
    Answered,
}

pub(crate) struct Guarded<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    inner: Option<S>,
    max_header_bytes: usize,
    writing: Writing,
    /// The connection's place in its listener's table, held until it is closed.
    slot: Option<Slot>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Guarded<S> {
    pub fn new(inner: S, max_header_bytes: usize, slot: Slot) -> Self {
        Self {
            inner: Some(inner),
            max_header_bytes,
            writing: Writing::Through,
            slot: Some(slot),
        }
    }

    fn inner(&mut self) -> io::Result<&mut S> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

/// The answer to a request whose line and headers are over `max` bytes.
pub(crate) fn too_large_answer(max: usize) -> Vec<u8> {
    let message = format!(
        "Request header fields too large: the request line and headers together may take at most {max} bytes on this server; send fewer or smaller headers.\n"
    );
    format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{message}",
        message.len()
    )
    .into_bytes()
}

/// Whether `buf` is hyper's own answer to an oversized head: a 431 with no
/// body and no header but the ones hyper adds (a service's 431 always
/// carries more, and the gateway's and the API's always do).
pub(crate) fn is_bare_431(buf: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(buf) else {
        return false;
    };
    let Some(head) = text.strip_suffix("\r\n\r\n") else {
        return false;
    };
    let mut lines = head.split("\r\n");
    if !lines
        .next()
        .is_some_and(|status| status.starts_with("HTTP/1.1 431 ") || status == "HTTP/1.1 431")
    {
        return false;
    }
    lines.all(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => value == "0",
            "date" => true,
            "connection" => value.eq_ignore_ascii_case("close"),
            _ => false,
        }
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Pin::new(this.inner()?).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Writing::Through = this.writing {
            if !is_bare_431(buf) {
                return Pin::new(this.inner()?).poll_write(cx, buf);
            }
            this.writing = Writing::Replacing {
                answer: too_large_answer(this.max_header_bytes),
                written: 0,
            };
        }
        loop {
            let Writing::Replacing { answer, written } = &mut this.writing else {
                // Answered: whatever else hyper writes is dropped.
                return Poll::Ready(Ok(buf.len()));
            };
            if *written == answer.len() {
                this.writing = Writing::Answered;
                return Poll::Ready(Ok(buf.len()));
            }
            let inner = this
                .inner
                .as_mut()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
            let n = ready!(Pin::new(inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()?).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Guarded<S> {
    fn drop(&mut self) {
        if !matches!(self.writing, Writing::Answered) {
            return;
        }
        let (Some(stream), slot) = (self.inner.take(), self.slot.take()) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream, slot));
        }
    }
}

/// Shuts `stream` for writing, then reads and discards what the client
/// still sends for a moment, so that its unread input does not make the
/// close a reset that loses the answer. The connection keeps its place
/// (`slot`) meanwhile.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, slot: Option<Slot>) {
    let drain = async {
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
        let mut buf = vec![0u8; 16 << 10];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_431_is_replaced() {
        assert!(is_bare_431(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 10:00:00 GMT\r\n\r\n"
        ));
        assert!(is_bare_431(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        ));
        // A service's own 431s (with a body, or a header of its own) go through.
        assert!(!is_bare_431(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 5\r\n\r\n"
        ));
        assert!(!is_bare_431(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nx-request-id: 1\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!is_bare_431(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\nbody"
        ));
        assert!(!is_bare_431(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!is_bare_431(b"HTTP/1.1 4310 X\r\n\r\n"));
    }

    #[test]
    fn the_answer_names_the_limit_and_is_well_formed() {
        let answer = String::from_utf8(too_large_answer(65_536)).unwrap_or_default();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("65536 bytes"), "{body}");
    }
}
