//! stdin/stdout registered with the reactor (not `tokio::io::stdin()`, which hands every read to
//! a blocking thread: the slowest stdio client measured used it). Pipes and sockets (what ssh
//! gives its ProxyCommand) are switched to non-blocking mode and polled by epoll; anything else
//! (ttys, regular files, /dev/null) falls back to tokio's blocking-thread stdio.
//!
//! Non-blocking mode is what makes the reactor work: a blocking fd that epoll reports readable
//! can still block in `read`, and on the client's single thread a blocked stdin read stops the
//! server's bytes from reaching stdout, so a peer waiting for them waits forever.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

pub type Input = Box<dyn AsyncRead + Unpin + Send>;
pub type Output = Box<dyn AsyncWrite + Unpin + Send>;

/// A copy of `fd` that epoll can poll, in non-blocking mode, if it is a pipe or a socket.
enum Pollable {
    Pipe(File),
    Socket(tokio::net::UnixStream),
}

fn pollable(fd: BorrowedFd<'_>) -> Option<Pollable> {
    let file = File::from(fd.try_clone_to_owned().ok()?);
    let kind = file.metadata().ok()?.file_type();
    if std::os::unix::fs::FileTypeExt::is_fifo(&kind) {
        // `pipe::{Receiver, Sender}::from_file` set O_NONBLOCK themselves.
        grow_pipe(&file);
        return Some(Pollable::Pipe(file));
    }
    if std::os::unix::fs::FileTypeExt::is_socket(&kind) {
        let sock = std::os::unix::net::UnixStream::from(OwnedFd::from(file));
        sock.set_nonblocking(true).ok()?;
        return tokio::net::UnixStream::from_std(sock)
            .ok()
            .map(Pollable::Socket);
    }
    None
}

/// Asks for a 1 MiB pipe buffer (Linux's default is 64 KiB): ssh can then hand over more per
/// write and we take more per read, so a bulk transfer wakes both processes less often. Best
/// effort: the kernel may refuse (`/proc/sys/fs/pipe-max-size`), and the pipe works either way.
fn grow_pipe(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETPIPE_SZ on a descriptor we own; no memory is passed to the kernel.
    let _ = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
}

fn input(fd: BorrowedFd<'_>) -> Option<Input> {
    match pollable(fd)? {
        Pollable::Pipe(f) => pipe::Receiver::from_file(f)
            .ok()
            .map(|r| Box::new(r) as Input),
        Pollable::Socket(s) => Some(Box::new(s)),
    }
}

fn output(fd: BorrowedFd<'_>) -> Option<Output> {
    match pollable(fd)? {
        Pollable::Pipe(f) => pipe::Sender::from_file(f)
            .ok()
            .map(|s| Box::new(s) as Output),
        Pollable::Socket(s) => Some(Box::new(s)),
    }
}

pub fn stdin() -> Input {
    input(std::io::stdin().as_fd()).unwrap_or_else(|| {
        tracing::debug!("stdin is not a pipe or socket; using a blocking reader");
        Box::new(tokio::io::stdin())
    })
}

pub fn stdout() -> Output {
    output(std::io::stdout().as_fd()).unwrap_or_else(|| {
        tracing::debug!("stdout is not a pipe or socket; using a blocking writer");
        Box::new(tokio::io::stdout())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt;

    /// With nothing left to read, a read must leave the thread free (here: for a timer), not
    /// block it until a byte comes. The first read fills the buffer exactly, which is when
    /// tokio keeps the fd marked readable and reads again without asking epoll: on a blocking
    /// fd that second read blocks. Pipes and socketpairs both start out blocking.
    async fn read_does_not_block(fd: BorrowedFd<'_>, mut writer: impl Write + Send + 'static) {
        let mut rx = input(fd).unwrap();
        let mut buf = [0u8; 8];
        writer.write_all(&buf).unwrap();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            writer.write_all(b"x").unwrap();
            writer
        });
        assert_eq!(rx.read(&mut buf).await.unwrap(), 8);
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_millis(50), rx.read(&mut buf)).await;
        assert!(r.is_err(), "the read returned instead of timing out: {r:?}");
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "the thread was blocked for {:?}",
            t.elapsed()
        );
        let _writer = late.join().unwrap();
        assert_eq!(rx.read(&mut buf).await.unwrap(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn blocking_pipe_becomes_pollable() {
        let (r, w) = std::io::pipe().unwrap();
        read_does_not_block(r.as_fd(), w).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn blocking_socketpair_becomes_pollable() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        read_does_not_block(a.as_fd(), b).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn regular_files_are_not_pollable() {
        let f = File::open("/proc/self/stat").unwrap();
        assert!(input(f.as_fd()).is_none());
    }
}
