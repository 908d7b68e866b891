//! The target server: what `sshd` is in production, a byte sink and an echo here.
//!
//! Protocol: the target sends [`BANNER`]; the client sends a 9-byte [`header`], then data.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Header mode: swallow `count` bytes, then answer with the count (8 bytes, big-endian).
pub const PUSH: u8 = b'P';
/// Header mode: echo everything until EOF.
pub const ECHO: u8 = b'E';

/// What the target says first on every connection, as `sshd` sends its banner: `wsgate proxy`
/// chooses its framing from the server's first frame, so the server must speak first.
pub const BANNER: &[u8] = b"BENCH-1\n";

/// The 9-byte header that opens every connection to the target.
pub fn header(mode: u8, count: u64) -> [u8; 9] {
    let mut h = [0u8; 9];
    h[0] = mode;
    h[1..].copy_from_slice(&count.to_be_bytes());
    h
}

pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    // A deep accept queue, as the sidecar's: a burst of sessions (table 4 opens 1 000 at once)
    // must measure the sidecar, not a 128-deep queue here dropping SYNs into 1 s retransmits.
    let sock = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.bind(listen)?;
    let listener = sock.listen(4096)?;
    println!("{}", listener.local_addr()?);
    loop {
        let (sock, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = handle(sock).await {
                eprintln!("target: {e}");
            }
        });
    }
}

async fn handle(mut sock: TcpStream) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    sock.write_all(BANNER).await?;
    let mut h = [0u8; 9];
    sock.read_exact(&mut h).await?;
    let mut count = u64::from_be_bytes([h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]]);
    match h[0] {
        PUSH => {
            let total = count;
            let mut buf = vec![0u8; 256 * 1024];
            while count > 0 {
                let n = sock.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::Error::other(format!(
                        "EOF with {count} bytes to go"
                    )));
                }
                count = count.saturating_sub(n as u64);
            }
            sock.write_all(&total.to_be_bytes()).await?;
            // Hold the connection until the other side is done.
            while sock.read(&mut buf).await? > 0 {}
        }
        ECHO => {
            // Small: idle sessions in the scale test each hold one of these.
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = sock.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                sock.write_all(&buf[..n]).await?;
            }
        }
        m => return Err(std::io::Error::other(format!("unknown mode {m}"))),
    }
    Ok(())
}
