//! `wsgate ssh-config`: the `~/.ssh/config` block that sends `ssh <cluster>.<suffix>` through
//! `wsgate proxy`, with this very binary as the ProxyCommand. It writes no file (the user
//! appends the block) and never writes a secret (a proxy password, `--insecure-skip-tls-verify`
//! or `--allow-plaintext` stay out).

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

/// The running binary's canonical path, for the ProxyCommand: `cargo install`'s
/// `~/.cargo/bin/wsgate` writes that path, whatever `PATH` ssh runs with. When the OS cannot
/// say (or the path is not UTF-8), `wsgate`, for ssh's shell to find on `PATH`, with a warning.
pub fn program() -> String {
    let found = std::env::current_exe().and_then(std::fs::canonicalize);
    match found {
        Ok(path) => match path.to_str() {
            Some(p) => return p.to_string(),
            None => tracing::warn!(
                "this binary's path {} is not UTF-8: the block runs `wsgate` from PATH instead",
                path.display()
            ),
        },
        Err(e) => tracing::warn!(
            "cannot find this binary's path ({e}): the block runs `wsgate` from PATH instead"
        ),
    }
    "wsgate".to_string()
}

/// The block, with `program` as the ProxyCommand's program.
pub fn render(o: &Options, program: &str) -> Result<String, ClientError> {
    // Validates the URL the same way `proxy` will.
    endpoint::build(&o.server, "example", 0, &o.endpoint)?;
    if o.suffix.is_empty()
        || !o
            .suffix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(ClientError::Usage(format!(
            "--suffix {:?}: want a host name suffix (letters, digits, '-' and '.')",
            o.suffix
        )));
    }
    if let Some(u) = &o.user {
        if u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ClientError::Usage(format!(
                "--user {u:?}: want a user name without spaces"
            )));
        }
    }
    let mut cmd = vec![
        word("this binary's path", program)?,
        "proxy".into(),
        word("the server URL", &o.server)?,
        "%h".into(),
    ];
    if let Some(f) = &o.ca_file {
        cmd.extend([
            "--ca-file".into(),
            word("--ca-file", &f.display().to_string())?,
        ]);
    }
    if let Some(f) = &o.token_file {
        cmd.extend([
            "--token-file".into(),
            word("--token-file", &f.display().to_string())?,
        ]);
    }
    if o.kubeconfig {
        cmd.push("--kubeconfig".into());
    }
    if let Some(ctx) = &o.context {
        cmd.extend(["--context".into(), word("--context", ctx)?]);
    }
    if o.token_in_subprotocol {
        cmd.push("--token-in-subprotocol".into());
    }
    if o.endpoint != DEFAULT_ENDPOINT {
        cmd.extend(["--endpoint".into(), word("--endpoint", &o.endpoint)?]);
    }
    for h in &o.headers {
        cmd.extend(["--header".into(), word("a --header value", h)?]);
    }
    if let Some(p) = &o.proxy {
        if let Setting::Flag(parsed) = proxy::setting_from_flag(Some(p))? {
            if parsed.has_credentials() {
                return Err(ClientError::Usage(
                    "--proxy with a user name or password is not written into ssh's config: export https_proxy in the environment instead".into(),
                ));
            }
        }
        cmd.extend(["--proxy".into(), word("--proxy", p)?]);
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

/// A value that will sit on one line of ssh's config: no control characters (a newline would
/// end the line and start a directive of the value's choosing). The value is not repeated in
/// the error: it may be a header's secret.
fn one_line<'a>(what: &str, s: &'a str) -> Result<&'a str, ClientError> {
    if s.chars().any(char::is_control) {
        return Err(ClientError::Usage(format!(
            "{what} has a control character (a line break would start a directive of its own): it cannot be written into ssh's config"
        )));
    }
    Ok(s)
}

/// `s` as one word of the ProxyCommand: ssh first expands `%` tokens in the line (so a `%` is
/// written `%%`), then runs it with the user's shell (so anything outside a plain set of
/// characters is single-quoted).
fn word(what: &str, s: &str) -> Result<String, ClientError> {
    let s = one_line(what, s)?;
    let quoted = if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/:._-=@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    };
    Ok(quoted.replace('%', "%%"))
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

    /// Each word survives ssh's `%` expansion and then the shell: the program's path above all
    /// (an installed binary's directory may hold anything).
    #[test]
    fn words_survive_ssh_and_the_shell() {
        struct Case {
            given: &'static str,
            written: &'static str,
        }
        let cases = [
            Case {
                given: "/home/me/.cargo/bin/wsgate",
                written: "/home/me/.cargo/bin/wsgate",
            },
            Case {
                given: "/opt/my tools/wsgate",
                written: "'/opt/my tools/wsgate'",
            },
            Case {
                given: "/opt/it's/wsgate",
                written: r"'/opt/it'\''s/wsgate'",
            },
            Case {
                given: "/opt/100%/wsgate",
                written: "/opt/100%%/wsgate",
            },
            Case {
                given: "/opt/$HOME `x`%h/wsgate",
                written: "'/opt/$HOME `x`%%h/wsgate'",
            },
            Case {
                given: "",
                written: "''",
            },
        ];
        for c in cases {
            assert_eq!(word("a value", c.given).unwrap(), c.written, "{}", c.given);
            let block = render(&options("https://gw"), c.given).unwrap();
            assert!(
                block.contains(&format!("    ProxyCommand {} proxy ", c.written)),
                "{block}"
            );
        }
        let o = Options {
            headers: vec!["Cookie: a%3Db".into()],
            ..options("https://gw/a%20b")
        };
        assert!(render(&o, "wsgate")
            .unwrap()
            .contains(" proxy https://gw/a%%20b %h --header 'Cookie: a%%3Db'\n"));
    }

    /// Nothing written can end its line and start a directive of its own.
    #[test]
    fn nothing_breaks_out_of_its_line() {
        let injected = "x\n    ProxyCommand evil";
        assert_eq!(
            render(&options("https://gw"), injected)
                .unwrap_err()
                .exit_code(),
            2
        );
        let o = Options {
            headers: vec![format!("A: {injected}")],
            ..options("https://gw")
        };
        assert_eq!(render(&o, "wsgate").unwrap_err().exit_code(), 2);
        // The URL parser drops tabs and newlines: the URL would pass, the line would not.
        let o = options("https://gw\nHost *\n ProxyCommand evil");
        assert_eq!(render(&o, "wsgate").unwrap_err().exit_code(), 2);
        for suffix in ["", "a b", "a\nb", "*"] {
            let o = Options {
                suffix: suffix.into(),
                ..options("https://gw")
            };
            assert_eq!(
                render(&o, "wsgate").unwrap_err().exit_code(),
                2,
                "{suffix:?}"
            );
        }
        for user in ["", "a b", "a\nHost *"] {
            let o = Options {
                user: Some(user.into()),
                ..options("https://gw")
            };
            assert_eq!(render(&o, "wsgate").unwrap_err().exit_code(), 2, "{user:?}");
        }
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

    #[test]
    fn the_program_is_this_binary() {
        let p = program();
        assert_eq!(
            std::path::Path::new(&p),
            std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap()
        );
    }
}
