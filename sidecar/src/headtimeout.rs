//! A deadline on the request head: a connection that has not sent a complete HTTP request head
//! (through the blank line) in time is closed.
//!
//! axum's `serve` gives hyper no timer, so hyper's own header-read timeout never fires; without
//! this, a client that trickles header bytes, or sends nothing at all, holds a connection and a
//! file descriptor forever (slowloris). Once the head is in, the deadline is gone: an upgraded
//! WebSocket session is not limited by it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// An accepted connection whose reads fail with `TimedOut` if the request head is late.
pub struct HeadDeadline<T> {
    inner: T,
    /// `None` once a complete head (`\r\n\r\n`) has been read.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How much of `\r\n\r\n` the bytes read so far end with (0 to 3).
    matched: u8,
}

impl<T> HeadDeadline<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        HeadDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            matched: 0,
        }
    }

    /// Follows the bytes read; disarms the deadline at the end of the head.
    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.matched = match (self.matched, b) {
                (2, b'\r') => 3,
                (_, b'\r') => 1,
                (1, b'\n') => 2,
                (3, b'\n') => {
                    self.deadline = None;
                    return;
                }
                _ => 0,
            };
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not complete in time",
                )));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_some() && matches!(r, Poll::Ready(Ok(()))) {
            this.scan(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The session listener: TCP_NODELAY and a head deadline on every accepted connection.
pub struct HeadTimeoutListener {
    inner: TcpListener,
    timeout: Duration,
}

impl HeadTimeoutListener {
    pub fn new(inner: TcpListener, timeout: Duration) -> Self {
        HeadTimeoutListener { inner, timeout }
    }
}

impl axum::serve::Listener for HeadTimeoutListener {
    type Io = HeadDeadline<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = tcp.set_nodelay(true);
        (HeadDeadline::new(tcp, self.timeout), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_times_out() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = HeadDeadline::new(server, Duration::from_secs(10));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(conn.read(&mut buf).await.unwrap() > 0);
        // Nothing more comes: the next read fails once the deadline passes.
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_head_disarms_the_deadline() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = HeadDeadline::new(server, Duration::from_secs(10));
        // The blank line split across writes, as TCP may deliver it.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 26);
        client.write_all(b"\n").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        // A WebSocket session idle for an hour afterwards is not cut.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        client.write_all(b"frame").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 5);
    }
}
