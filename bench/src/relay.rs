//! The copy-only ceiling: a stdio client and a TCP relay with no WebSocket between them.
//!
//! Any stdio bridge in the bench path (pusher → pipe → client → TCP → server → TCP → target)
//! pays for the same four processes on the same CPUs, the same pipe and loopback copies and the
//! same wake-ups; these two pay for nothing else. Their throughput is what a bridge could reach
//! on this machine if framing, masking and its own bookkeeping cost nothing, so the distance
//! from a real bridge to this row is the part the bridge's code can still win.
//!
//! With `--mask` on the client and `--unmask` on the server they also XOR the upstream bytes
//! with a mask key, as RFC 6455 obliges every WebSocket client and server to (the key is fixed
//! here; both ends keep its phase across reads, so the target gets the bytes back): the floor of
//! any WebSocket bridge on this machine, framing and bookkeeping aside.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsgate_proto::wsframe::{apply_mask, mask_from};

/// Bytes per read: as large as the bridges' own reads, so the comparison is about work, not
/// about batch size.
const CHUNK: usize = 256 * 1024;

/// The masking relay's key: any key costs the same, and both ends must agree on it.
const MASK: [u8; 4] = [0x5A, 0xC3, 0x96, 0x0F];

/// Copies until EOF, then shuts the writer down; XORs what it copies with [`MASK`] if `masked`
/// (the mask's phase carried from read to read, as in one long frame).
async fn pump<R, W>(mut r: R, mut w: W, masked: bool) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0usize;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        if masked {
            apply_mask(&mut buf[..n], mask_from(MASK, done));
            done = done.wrapping_add(n);
        }
        w.write_all(&buf[..n]).await?;
    }
}

/// The server half: every accepted connection is relayed to `to`, both ways (the upstream
/// direction unmasked if `unmask`).
pub async fn serve(listen: SocketAddr, to: SocketAddr, unmask: bool) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("{}", listener.local_addr()?);
    loop {
        let (sock, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(up) = TcpStream::connect(to).await else {
                return;
            };
            let _ = sock.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let (cr, cw) = sock.into_split();
            let (ur, uw) = up.into_split();
            let _ = tokio::join!(pump(cr, uw, unmask), pump(ur, cw, false));
        });
    }
}

/// The client half: stdin → `to`, `to` → stdout, with stdin and stdout polled by epoll (as
/// `wsgate proxy` does), until both directions have ended; stdin masked if `mask`.
pub async fn client(to: SocketAddr, mask: bool) -> anyhow::Result<()> {
    let sock = TcpStream::connect(to).await?;
    sock.set_nodelay(true)?;
    let (r, w) = sock.into_split();
    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    // The same 1 MiB pipe buffer `wsgate proxy` asks for, so both read the pusher alike.
    // SAFETY: F_SETPIPE_SZ on a descriptor we own; no memory is passed to the kernel.
    let _ = unsafe { libc::fcntl(stdin.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let stdin = tokio::net::unix::pipe::Receiver::from_owned_fd(stdin)?;
    let stdout = tokio::net::unix::pipe::Sender::from_owned_fd(
        std::io::stdout().as_fd().try_clone_to_owned()?,
    )?;
    let (a, b) = tokio::join!(pump(stdin, w, mask), pump(r, stdout, false));
    a?;
    b?;
    Ok(())
}
