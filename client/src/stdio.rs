//! stdin/stdout registered with the reactor (not `tokio::io::stdin()`, which hands every read to
//! a blocking thread: the slowest stdio client measured used it). Pipes, sockets and ttys are
//! made non-blocking and polled by epoll; what epoll refuses (regular files, /dev/null) falls
//! back to tokio's blocking-thread stdio.

use std::os::fd::AsFd;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

pub type Input = Box<dyn AsyncRead + Unpin + Send>;
pub type Output = Box<dyn AsyncWrite + Unpin + Send>;

pub fn stdin() -> Input {
    let file = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from);
    match file.map(pipe::Receiver::from_file_unchecked) {
        Ok(Ok(rx)) => Box::new(rx),
        _ => {
            tracing::debug!("stdin is not pollable; using a blocking reader");
            Box::new(tokio::io::stdin())
        }
    }
}

pub fn stdout() -> Output {
    let file = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from);
    match file.map(pipe::Sender::from_file_unchecked) {
        Ok(Ok(tx)) => Box::new(tx),
        _ => {
            tracing::debug!("stdout is not pollable; using a blocking writer");
            Box::new(tokio::io::stdout())
        }
    }
}
