//! `wsgate ssh-config`: the `~/.ssh/config` block that sends `ssh <cluster>.<suffix>` through
//! `wsgate proxy`. It writes no file (the user appends the block) and never writes a secret (a
//! proxy password, `--insecure-skip-tls-verify` or `--allow-plaintext` stay out).

use std::path::PathBuf;

use crate::endpoint::{self, DEFAULT_ENDPOINT};
use crate::error::ClientError;
use crate::proxy::{self, Setting};

/// What goes into the block: the server and the flags `wsgate proxy` is to be given.
#[derive(Debug)]
pub struct Options {
    /// The server URL, as for `wsgate proxy`.
    pub server: String,
    /// Hosts named `<cluster>.<suffix>` go through the gateway.
    pub suffix: String,
    /// The remote user name, if the block is to set one.
    pub user: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub kubeconfig: bool,
    pub context: Option<String>,
    pub token_in_subprotocol: bool,
    /// The endpoint path (`--endpoint`), written only when it is not the default.
    pub endpoint: String,
    /// `--header` values as given (`Name: value`).
    pub headers: Vec<String>,
    /// `--proxy` as given: a URL without credentials, or `none`.
    pub proxy: Option<String>,
}

/// The running binary's path, for the ProxyCommand (`wsgate` if the OS cannot say).
pub fn program() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "wsgate".to_string())
}

/// The block, with `program` as the ProxyCommand's program.
pub fn render(o: &Options, program: &str) -> Result<String, ClientError> {
    // Validates the URL the same way `proxy` will.
    endpoint::build(&o.server, "example", 0, &o.endpoint)?;
    let q = |s: &str| {
        if s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/:._-=@%+,".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let mut cmd = vec![q(program), "proxy".into(), q(&o.server), "%h".into()];
    if let Some(f) = &o.ca_file {
        cmd.extend(["--ca-file".into(), q(&f.display().to_string())]);
    }
    if let Some(f) = &o.token_file {
        cmd.extend(["--token-file".into(), q(&f.display().to_string())]);
    }
    if o.kubeconfig {
        cmd.push("--kubeconfig".into());
    }
    if let Some(ctx) = &o.context {
        cmd.extend(["--context".into(), q(ctx)]);
    }
    if o.token_in_subprotocol {
        cmd.push("--token-in-subprotocol".into());
    }
    if o.endpoint != DEFAULT_ENDPOINT {
        cmd.extend(["--endpoint".into(), q(&o.endpoint)]);
    }
    for h in &o.headers {
        cmd.extend(["--header".into(), q(h)]);
    }
    if let Some(p) = &o.proxy {
        if let Setting::Flag(parsed) = proxy::setting_from_flag(Some(p))? {
            if parsed.has_credentials() {
                return Err(ClientError::Usage(
                    "--proxy with a user name or password is not written into ssh's config: export https_proxy in the environment instead".into(),
                ));
            }
        }
        cmd.extend(["--proxy".into(), q(p)]);
    }
    let mut out = format!(
        "# wsgate: `ssh <cluster>.{s}` reaches that cluster through {server}\nHost *.{s}\n    ProxyCommand {cmd}\n    ServerAliveInterval 30\n    ServerAliveCountMax 3\n",
        s = o.suffix,
        server = o.server,
        cmd = cmd.join(" ")
    );
    if let Some(u) = &o.user {
        out.push_str(&format!("    User {u}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(server: &str) -> Options {
        Options {
            server: server.into(),
            suffix: "wsgate".into(),
            user: None,
            ca_file: None,
            token_file: None,
            kubeconfig: false,
            context: None,
            token_in_subprotocol: false,
            endpoint: DEFAULT_ENDPOINT.into(),
            headers: Vec::new(),
            proxy: None,
        }
    }

    #[test]
    fn the_block() {
        let o = Options {
            ca_file: Some("/etc/ca dir/ca.pem".into()),
            token_file: Some("/t".into()),
            user: Some("ubuntu".into()),
            ..options("https://gw.example.com")
        };
        let block = render(&o, "/usr/local/bin/wsgate").unwrap();
        assert_eq!(
            block,
            "# wsgate: `ssh <cluster>.wsgate` reaches that cluster through https://gw.example.com\n\
             Host *.wsgate\n    \
             ProxyCommand /usr/local/bin/wsgate proxy https://gw.example.com %h --ca-file '/etc/ca dir/ca.pem' --token-file /t\n    \
             ServerAliveInterval 30\n    \
             ServerAliveCountMax 3\n    \
             User ubuntu\n"
        );
        let o = Options {
            kubeconfig: true,
            context: Some("kind-dev".into()),
            token_in_subprotocol: true,
            endpoint: "ssh/{cluster}".into(),
            headers: vec!["Cookie: a=b".into()],
            ..options("http://127.0.0.1:8080")
        };
        let block = render(&o, "wsgate").unwrap();
        assert!(block.contains(
            "    ProxyCommand wsgate proxy http://127.0.0.1:8080 %h --kubeconfig --context kind-dev --token-in-subprotocol --endpoint 'ssh/{cluster}' --header 'Cookie: a=b'\n"
        ), "{block}");
    }

    #[test]
    fn a_proxy_but_never_its_password() {
        let block = |proxy: &str| {
            let o = Options {
                proxy: Some(proxy.into()),
                ..options("https://gw")
            };
            render(&o, "wsgate")
        };
        let b = block("socks5h://proxy.corp:1080").unwrap();
        assert!(
            b.contains(
                "ProxyCommand wsgate proxy https://gw %h --proxy socks5h://proxy.corp:1080\n"
            ),
            "{b}"
        );
        assert!(block("none").unwrap().contains(" --proxy none\n"));
        let e = block("http://me:hunter2@proxy.corp:3128").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
