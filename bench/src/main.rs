//! `wsgate-bench`: the load side of `make bench` (bench/bench.py drives it and prints the tables).
//!
//! Written in Rust so the load generator is never the slowest part of what it measures: a
//! Python pusher tops out far below raw loopback TCP.

mod drive;
mod http;
mod relay;
mod sessions;
mod target;

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

/// Load tools for wsgate's benchmarks. Every measuring command prints one JSON object on stdout.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The TCP server behind every bridge: per connection, a 9-byte header (mode byte, u64 count)
    /// says whether to swallow `count` bytes and acknowledge them (`P`) or echo (`E`).
    Target {
        /// Where to listen; the bound address is printed on stdout.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Push random bytes to the target through a direct TCP connection or a stdio command, and
    /// time until the target has acknowledged every byte.
    Push {
        /// Bytes to push.
        #[arg(long)]
        bytes: u64,
        #[command(flatten)]
        via: drive::Via,
    },
    /// Round trips of small messages through the path (echoed by the target); also the time from
    /// starting the path to the first byte echoed.
    Pingpong {
        /// Round trips.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Bytes per message.
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[command(flatten)]
        via: drive::Via,
    },
    /// An HTTP/1.1 upstream for Envoy: `200 ok` to plain requests, `101` to upgrades (then holds
    /// the connection). Says in `x-bench-auth` whether the request carried `Authorization`.
    HttpBackend {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Closed-loop HTTP load at fixed concurrency: keep-alive GETs, or WebSocket handshakes (one
    /// new connection each).
    Load(http::LoadArgs),
    /// Write this many random bytes to stdout (the data ssh sends in the SSH benchmark).
    Random {
        #[arg(long)]
        bytes: u64,
    },
    /// The copy-only ceiling's server: relays each connection to `to`, no WebSocket.
    RelayServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
        /// Unmask what the client sends, as a WebSocket server must (pair with the client's
        /// `--mask`).
        #[arg(long)]
        unmask: bool,
    },
    /// The copy-only ceiling's stdio client: stdin → `to` → stdout, no WebSocket.
    RelayClient {
        #[arg(long)]
        to: SocketAddr,
        /// Mask what it sends, as a WebSocket client must (pair with the server's `--unmask`).
        #[arg(long)]
        mask: bool,
    },
    /// Open many WebSocket sessions to a sidecar, each bridged to the target and checked with
    /// one echoed byte, then hold them until stdin closes.
    Sessions(sessions::SessionArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let report = match cli.cmd {
            Cmd::Target { listen } => return target::serve(listen).await,
            Cmd::HttpBackend { listen } => return http::backend(listen).await,
            Cmd::Push { bytes, via } => drive::push(&via, bytes).await?,
            Cmd::Pingpong { count, size, via } => drive::pingpong(&via, count, size).await?,
            Cmd::Load(args) => http::load(&args).await?,
            Cmd::Sessions(args) => sessions::run(&args).await?,
            Cmd::RelayServer { listen, to, unmask } => {
                return relay::serve(listen, to, unmask).await
            }
            Cmd::RelayClient { to, mask } => return relay::client(to, mask).await,
            Cmd::Random { bytes } => return drive::random_to_stdout(bytes).await,
        };
        println!("{report}");
        Ok(())
    })
}
