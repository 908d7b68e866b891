//! `wsgate`: parses the command line, logs to stderr (stdout carries the SSH session), runs the
//! command, and turns an error into one stderr line and its exit code. Colour only when stderr
//! is a terminal and `NO_COLOR` is not set.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wsgate_client::cli::{Cli, Command};
use wsgate_client::error::colour_on_stderr;
use wsgate_client::{run, ssh_config};

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let colour = colour_on_stderr();
    // tungstenite logs every request it writes, headers and all (the token, a resume's
    // secret), at trace level: its lines are never shown, whatever WSGATE_LOG asks for.
    let mut filter =
        EnvFilter::try_from_env("WSGATE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    for quiet in ["tungstenite=off", "tokio_tungstenite=off"] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::SshConfig(a) => ssh_config::render(&a.into_options(), &ssh_config::program())
            .map(|block| print!("{block}")),
        Command::Proxy(a) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => a
                .into_options(std::env::var("WSGATE_TOKEN").ok())
                .and_then(|o| rt.block_on(run::proxy(&o))),
            Err(e) => {
                eprintln!("wsgate: cannot start: {e}");
                std::process::exit(1);
            }
        },
    };
    if let Err(e) = result {
        eprintln!("{}", e.report(colour));
        std::process::exit(e.exit_code());
    }
}
