//! `wsgate`: parses the command line, logs to stderr (stdout carries the SSH session), runs the
//! command, and turns an error into one stderr line and its exit code. Colour only when stderr
//! is a terminal and `NO_COLOR` is not set.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wsgate_client::cli::{self, Cli, Command};
use wsgate_client::error::colour_on_stderr;

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let colour = colour_on_stderr();
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(
            EnvFilter::try_from_env("WSGATE_LOG").unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::SshConfig(a) => {
            let program = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "wsgate".to_string());
            cli::ssh_config(&a, &program).map(|block| print!("{block}"))
        }
        Command::Proxy(a) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(cli::proxy(a)),
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
