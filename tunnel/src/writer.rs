//! One connection's write side: byte segments queued whole and written in order, as few
//! `writev`s as the connection takes. It never waits by itself: `flush` keeps its progress
//! between calls (cancel-safe), so the engine polls it as one `select!` arm among its timers and
//! a peer that stops reading stalls only that arm.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Segments gathered into one `writev` at most (Linux's `IOV_MAX` is 1024); also how many frames
/// one pass over the read buffer hands on, and how many the peer's queue may hold before the
/// peer is read from again.
pub(crate) const MAX_SLICES: usize = 256;

/// Segments gathered on the stack for a short queue (the usual case: a frame or a read's worth
/// of payloads), so the common write does not fill a `MAX_SLICES` array first.
const FEW: usize = 8;

pub(crate) struct Writer<W> {
    io: W,
    /// What is still to go, in order: whole frames for the peer, session bytes for the local
    /// side. Each segment shares the buffer it was read into, so nothing is copied to queue it.
    queue: VecDeque<Bytes>,
    /// How much of the front segment is out.
    done: usize,
    /// Bytes written in all: whether a peer with frames waiting takes any (the keepalive), and
    /// the session byte counts.
    written: u64,
    /// Bytes went out since the last `poll_flush`: a buffering writer (TLS) may still hold some.
    unflushed: bool,
    /// A close frame is queued: RFC 6455 allows nothing after it, not even the reply to a close
    /// that crossed ours.
    closed: bool,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub(crate) fn new(io: W) -> Self {
        Writer {
            io,
            queue: VecDeque::new(),
            done: 0,
            written: 0,
            unflushed: false,
            closed: false,
        }
    }

    /// Queues a segment (dropped once a close frame is queued).
    pub(crate) fn push(&mut self, segment: Bytes) {
        if !self.closed && !segment.is_empty() {
            self.queue.push_back(segment);
        }
    }

    /// Queues the close frame: the last thing this writer sends.
    pub(crate) fn push_close(&mut self, frame: Bytes) {
        self.push(frame);
        self.closed = true;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Nothing waits to be written or flushed.
    pub(crate) fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.unflushed
    }

    /// Segments waiting.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Writes until everything queued is out and flushed. Cancel-safe: dropped, it keeps what
    /// it wrote, and the next call goes on from there.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await
    }

    /// Writes what the connection takes now, without waiting for it to take more (most writes
    /// complete at once: trying now saves a turn of the loop).
    pub(crate) fn try_flush(&mut self) -> io::Result<()> {
        match self.poll_drain(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }

    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let n = if self.queue.len() <= FEW {
                ready!(self.poll_gather::<FEW>(cx))?
            } else {
                ready!(self.poll_gather::<MAX_SLICES>(cx))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// One `writev` of up to `N` queued segments.
    fn poll_gather<const N: usize>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); N];
        let mut n = 0;
        for (slot, segment) in slices.iter_mut().zip(&self.queue) {
            let from = if n == 0 { self.done } else { 0 };
            *slot = IoSlice::new(segment.get(from..).unwrap_or_default());
            n += 1;
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n])
    }

    fn advance(&mut self, mut n: usize) {
        self.written += n as u64;
        self.unflushed = true;
        while let Some(front) = self.queue.front() {
            let left = front.len() - self.done;
            if n < left {
                self.done += n;
                return;
            }
            n -= left;
            self.done = 0;
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn segments_go_out_whole_and_in_order_through_a_small_pipe() {
        // 600 segments through a 7-byte pipe: many partial writes, more than one gather each.
        let (w, mut r) = tokio::io::duplex(7);
        let mut out = Writer::new(w);
        let segments: Vec<Vec<u8>> = (0..600u32)
            .map(|i| (0..i % 5 + 1).map(|j| (i + j) as u8).collect())
            .collect();
        for s in &segments {
            out.push(Bytes::copy_from_slice(s));
        }
        out.push(Bytes::new());
        let want = segments.concat();
        let read = async {
            let mut got = vec![0u8; want.len()];
            r.read_exact(&mut got).await.unwrap();
            got
        };
        let (written, got) = tokio::join!(out.flush(), read);
        written.unwrap();
        assert_eq!(got, want);
        assert!(out.is_idle());
        assert_eq!(out.written(), want.len() as u64);
    }

    #[tokio::test]
    async fn a_cancelled_flush_keeps_its_progress() {
        // The reader takes 3 bytes at a time; each flush is cut off as soon as it would wait.
        let (w, mut r) = tokio::io::duplex(3);
        let mut out = Writer::new(w);
        out.push(Bytes::from_static(b"hello "));
        out.push(Bytes::from_static(b"world"));
        let mut got = Vec::new();
        while !out.is_idle() {
            out.try_flush().unwrap();
            let mut b = [0u8; 3];
            let n = r.read(&mut b).await.unwrap();
            got.extend_from_slice(&b[..n]);
        }
        drop(out);
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
    }

    #[tokio::test]
    async fn nothing_is_queued_after_the_close() {
        let (w, mut r) = tokio::io::duplex(64);
        let mut out = Writer::new(w);
        out.push_close(Bytes::from_static(b"close"));
        out.push(Bytes::from_static(b"late"));
        out.flush().await.unwrap();
        out.shutdown().await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"close");
        assert!(out.is_closed());
    }
}
