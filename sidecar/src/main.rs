//! `wsgate-sidecar`: reads its settings (flags, `WSGATE_*` environment, optional config file),
//! sets up logging (stderr), binds, and runs the server until SIGTERM or Ctrl-C.

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use wsgate_sidecar::config::{Args, AuthMode, ConfigError, LogFormat};

fn main() -> anyhow::Result<()> {
    // Flags, then the environment, then the config file; an unknown WSGATE_* name stops here.
    let args = match Args::load(std::env::args_os(), std::env::vars_os()) {
        Ok(args) => args,
        // Usage errors, --help and --version: clap prints them and picks the exit code.
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    // `--log` (WSGATE_LOG) picks the levels; the guard over it keeps the Kubernetes client's
    // HTTP stack from logging bodies (tokens) whatever `--log` says.
    let filter = EnvFilter::try_new(&args.log)
        .with_context(|| format!("--log (WSGATE_LOG): {:?} is not a log filter", args.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let guard = wsgate_sidecar::kube::log_guard();
    match args.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(guard)
            .init(),
        LogFormat::Text => builder.finish().with(guard).init(),
    }
    let sidecar = args.build().await?;
    if let Some(open_files) = raise_open_files_limit() {
        // A descriptor per connection, a second per session (its target), and a few for the
        // listeners, the Kubernetes client and the log.
        let wanted = args.max_connections + args.max_sessions + 64;
        if open_files < wanted as libc::rlim_t {
            tracing::warn!(
                open_files,
                wanted,
                "the open files limit (RLIMIT_NOFILE) is below what --max-connections and \
                 --max-sessions can use: past it, accepts fail; raise the limit or lower them"
            );
        }
    }
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

/// Raises the soft limit on open files to the hard one, as Go programs do at start: container
/// runtimes may start a process at a soft limit of 1024 (with a far higher hard one), which
/// would cap the sidecar well below `--max-connections`. Returns the soft limit in force, if
/// it can be read.
fn raise_open_files_limit() -> Option<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` that we own and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` that we own. It fails (and changes nothing)
        // where the hard limit is not a valid soft one (macOS: unlimited).
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Some(limit.rlim_cur)
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
