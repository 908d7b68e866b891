//! `wsgate ssh-config` names the binary that ran it, by its canonical path, as the
//! ProxyCommand: what `cargo install` put in `~/.cargo/bin` (or wherever it is) is what ssh
//! will run, whatever `PATH` ssh has. The path is written so that ssh's `%` expansion and then
//! the shell give it back intact.
// A test crate: its helpers may panic (clippy only exempts `#[test]` functions themselves).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

/// A fresh directory under Cargo's scratch space for integration tests, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ssh-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The ProxyCommand line `program ssh-config https://gw.example.com` writes.
fn proxy_command(program: &Path) -> String {
    let out = Command::new(program)
        .args(["ssh-config", "https://gw.example.com", "--token-file", "/t"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let block = String::from_utf8(out.stdout).unwrap();
    block
        .lines()
        .find_map(|l| l.strip_prefix("    ProxyCommand "))
        .unwrap_or_else(|| panic!("no ProxyCommand in {block}"))
        .to_string()
}

/// The words the shell gets from a ProxyCommand line after ssh's token expansion, for host
/// `prod.wsgate`.
fn words_run(line: &str) -> Vec<String> {
    let mut expanded = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            expanded.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => expanded.push('%'),
            Some('h') => expanded.push_str("prod.wsgate"),
            other => panic!("ssh would refuse the token %{other:?} in {line}"),
        }
    }
    let out = Command::new("sh")
        .args(["-c", &format!("printf '%s\\n' {expanded}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_proxy_command_is_this_binary() {
    let line = proxy_command(Path::new(BIN));
    let canonical = std::fs::canonicalize(BIN).unwrap();
    assert_eq!(
        words_run(&line),
        [
            canonical.to_str().unwrap(),
            "proxy",
            "https://gw.example.com",
            "prod.wsgate",
            "--token-file",
            "/t"
        ]
    );
}

/// Run through a symlink (a `bin/` directory of links), the block names the file itself.
#[test]
fn a_symlink_is_resolved() {
    let dir = Scratch::new("links");
    let link = dir.0.join("wsgate");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let line = proxy_command(&link);
    let canonical = std::fs::canonicalize(BIN).unwrap();
    assert_eq!(words_run(&line)[0], canonical.to_str().unwrap(), "{line}");
}

/// An installed binary's directory may hold spaces, quotes, `$` and `%`: ssh and the shell
/// still get its path back.
#[test]
fn an_awkward_install_path_survives_ssh_and_the_shell() {
    let dir = Scratch::new("it's my $HOME 100%h");
    let installed = dir.0.join("wsgate");
    if std::fs::hard_link(BIN, &installed).is_err() {
        std::fs::copy(BIN, &installed).unwrap();
    }
    let line = proxy_command(&installed);
    let canonical = std::fs::canonicalize(&installed).unwrap();
    let words = words_run(&line);
    assert_eq!(words[0], canonical.to_str().unwrap(), "{line}");
    assert_eq!(
        words[1..4],
        ["proxy", "https://gw.example.com", "prod.wsgate"]
    );
}
