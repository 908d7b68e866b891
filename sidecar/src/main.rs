//! `wsgate-sidecar`: reads an optional config file into the environment, parses flags, sets up
//! logging (stderr), binds, and runs the server until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use wsgate_sidecar::config::{read_config_file, Args, AuthMode, LogFormat};

fn main() -> anyhow::Result<()> {
    // The config file sets WSGATE_* variables that are not already set, before any thread
    // exists (so setting the environment is safe) and before clap reads it.
    let from_flag = std::env::args()
        .skip_while(|a| a != "--config")
        .nth(1)
        .or_else(|| std::env::args().find_map(|a| a.strip_prefix("--config=").map(String::from)))
        .or_else(|| std::env::var("WSGATE_CONFIG").ok());
    if let Some(path) = from_flag {
        for (k, v) in read_config_file(std::path::Path::new(&path))? {
            if std::env::var_os(&k).is_none() {
                std::env::set_var(k, v);
            }
        }
    }
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("WSGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    let sidecar = args.build().await?;
    if args.auth == AuthMode::None {
        tracing::warn!(
            "authentication is OFF (--auth none): anyone who reaches {} can open SSH sessions",
            args.listen
        );
    }
    let listener =
        bind_deep(args.listen).with_context(|| format!("binding --listen {}", args.listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", args.admin_listen))?;
    wsgate_sidecar::run(listener, admin, sidecar, shutdown_signal()).await?;
    Ok(())
}

/// Binds with a deep accept queue (the kernel caps it at `net.core.somaxconn`): a burst of
/// clients (every session of a node reconnecting at once) waits in the queue instead of having
/// SYNs dropped, which costs each dropped client a 1 s retransmit. tokio's `bind` asks for 128
/// (mio 1.x, as std does).
fn bind_deep(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(8192)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
