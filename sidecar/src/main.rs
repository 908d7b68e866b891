//! `wsgate-sidecar`: reads its settings (flags, `WSGATE_*` environment, optional config file),
//! sets up the log (stderr), binds, and runs the server ([`wsgate_sidecar::run`]) until
//! SIGTERM or Ctrl-C.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use tracing_subscriber::util::SubscriberInitExt;
use wsgate_sidecar::settings::{Args, SettingsError};
use wsgate_sidecar::{Config, Listeners};

fn main() -> ExitCode {
    // Flags, then the environment, then the config file; an unknown WSGATE_* name stops here.
    let args = match Args::load(std::env::args_os(), std::env::vars_os()) {
        Ok(args) => args,
        // Usage errors, --help and --version: clap prints them and picks the exit code.
        Err(SettingsError::Clap(e)) => e.exit(),
        Err(e) => return fail(e.into()),
    };
    match start(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Says why the sidecar stops on stderr (also before the log is set up), on one line: the
/// library's errors carry their causes in their messages, `main`'s contexts come before them.
fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("Error: {e:#}");
    ExitCode::FAILURE
}

fn start(args: &Args) -> anyhow::Result<()> {
    let config = Config::from_args(args)?;
    let colour = std::io::stderr().is_terminal();
    wsgate_sidecar::logs::subscriber(&args.log, args.log_format, colour, std::io::stderr)
        .map_err(|e| {
            anyhow!(
                "--log (WSGATE_LOG): {:?} is not a log filter: {e}",
                args.log
            )
        })?
        .try_init()
        .context("setting up the log")?;
    if let Some(open_files) = raise_open_files_limit() {
        // A descriptor per connection, a second per session (its target), and a few for the
        // listeners, the Kubernetes client and the log.
        let wanted = config.server.max_connections + config.server.max_sessions + 64;
        if open_files < wanted as libc::rlim_t {
            tracing::warn!(
                open_files,
                wanted,
                "the open files limit (RLIMIT_NOFILE) is below what --max-connections and \
                 --max-sessions can use: past it, accepts fail; raise the limit or lower them"
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listeners = Listeners {
            sessions: bind_deep(args.listen)
                .with_context(|| format!("binding --listen {}", args.listen))?,
            admin: tokio::net::TcpListener::bind(args.admin_listen)
                .await
                .with_context(|| format!("binding --admin-listen {}", args.admin_listen))?,
        };
        wsgate_sidecar::run(listeners, config, shutdown_signal()).await?;
        Ok(())
    })
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
