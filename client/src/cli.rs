//! The command line: `wsgate proxy` and `wsgate ssh-config`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::connect::{self, Request};
use crate::credentials::{self, Sources};
use crate::endpoint::{self, Endpoint};
use crate::error::ClientError;
use crate::proxy::{self, Proxy, Setting};
use crate::session::{self, End, Options};
use crate::{stdio, text, tls};

/// wsgate: SSH over WebSocket through an Istio gateway (or straight to wsgate-sidecar or a
/// SkyPilot API server).
#[derive(Debug, Parser)]
#[command(name = "wsgate", version)]
pub struct Cli {
    /// More logs on stderr (-v: latency and progress, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bridge stdin/stdout to a cluster's SSH server: use as ssh's ProxyCommand.
    ///
    /// Example: ssh -o ProxyCommand='wsgate proxy https://gw.example.com mycluster' user@x
    ///
    /// Proxies: --proxy, else wss_proxy (ws_proxy for http://), else https_proxy (http_proxy),
    /// else all_proxy (each in lower case, then upper case), unless no_proxy (NO_PROXY) lists
    /// the server. A loopback server (localhost, 127.0.0.0/8, ::1) never goes through the
    /// environment's proxy; --proxy applies to it, but then a token over http:// needs
    /// --allow-plaintext. http:// proxies are asked to CONNECT (credentials from the proxy URL,
    /// as Basic); socks5h:// proxies resolve the name, socks5:// ones are given an address.
    ///
    /// Credentials: on a SkyPilot redirect to another origin (scheme, host or port), the token
    /// and the --header values are not sent; only the headers the redirect names are.
    ///
    /// Exit codes (the message on stderr says the cause and what to do):
    ///   0  the session ended normally
    ///   1  another HTTP answer (e.g. 400)
    ///   2  usage: a bad flag, URL or cluster name
    ///   3  redirected: the message names the server URL to use
    ///   4  401: the token was refused; or 403: the identity may not reach that cluster
    ///   5  404: wrong path (the server URL's prefix, or --endpoint) or unknown cluster
    ///   6  the backend is unavailable (429, 502, 503, 504)
    ///   7  TLS failed, or the scheme does not match the port (https:// to a plain-HTTP
    ///      port: use http://; http:// to a TLS port: use https://)
    ///   8  cannot connect to the server (or no answer in --connect-timeout)
    ///   9  refusing to send a token over plaintext to a remote host or through a proxy
    ///  10  WebSocket protocol error, or the server ended the session with an error
    ///  11  the token could not be read (flag, file, kubeconfig, exec plugin)
    ///  12  the proxy failed: unreachable, refused, no answer in --connect-timeout, or wants
    ///      (other) credentials
    ///  13  the server is shutting down (close code 1001): connect again
    #[command(verbatim_doc_comment)]
    Proxy(ProxyArgs),
    /// Print a ~/.ssh/config block so that `ssh <cluster>.wsgate` goes through the gateway.
    SshConfig(SshConfigArgs),
}

#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Trust this CA (PEM) besides the system's roots.
    #[arg(long, env = "WSGATE_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Do not verify the server's certificate. Anyone on the path can read the session and
    /// steal the token: for throwaway test setups only.
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,

    /// Send a token over plaintext ws:// to a non-loopback host, or through a proxy, anyway
    /// (e.g. a private network that you trust end to end).
    #[arg(long)]
    pub allow_plaintext: bool,

    /// Read the token from this file (after --token and WSGATE_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,

    /// Use the current kubeconfig context's credentials (token, token file or exec plugin),
    /// last in the order. Off by default so a Kubernetes token is never sent by surprise.
    #[arg(long)]
    pub kubeconfig: bool,

    /// With --kubeconfig: this context instead of the current one.
    #[arg(long)]
    pub context: Option<String>,

    /// Send the token as a Kubernetes subprotocol entry
    /// (`base64url.bearer.authorization.k8s.io.<token>`) instead of `Authorization: Bearer`.
    #[arg(long)]
    pub token_in_subprotocol: bool,

    /// An extra request header, `Name: value` (repeatable; e.g. a cookie).
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,

    /// The endpoint path after the server URL; `{cluster}` is replaced by the cluster
    /// (e.g. `ssh/{cluster}` for wsgate-sidecar's generic path).
    #[arg(long, default_value = "kubernetes-pod-ssh-proxy")]
    pub endpoint: String,

    /// Go through this proxy: http://[user:password@]host:port (CONNECT), socks5h://... (the
    /// proxy resolves the name) or socks5://...; `none` to ignore the *_proxy variables.
    /// Overrides wss_proxy/https_proxy/all_proxy and no_proxy. A password here shows up in
    /// `ps`: prefer https_proxy in the environment.
    #[arg(long, value_name = "URL|none")]
    pub proxy: Option<String>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The server: https://host[:port][/prefix] (wss://), or http:// (ws://, plaintext); a bare
    /// host[:port] means https://.
    pub server: String,

    /// The cluster; a host alias such as `mycluster.wsgate` works too (the first label is used).
    pub cluster: String,

    /// The worker to reach (0: the head).
    #[arg(long, default_value_t = 0)]
    pub worker: u32,

    /// The token (prefer WSGATE_TOKEN or --token-file: flags show up in `ps`).
    #[arg(long)]
    pub token: Option<String>,

    #[command(flatten)]
    pub conn: Connection,

    /// Keepalive: a ping every this long (SkyPilot framing also measures latency with it).
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    pub ping_interval: Duration,

    /// Give up on the handshake after this long.
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    pub connect_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct SshConfigArgs {
    /// The server URL, as for `wsgate proxy`.
    pub server: String,

    /// Hosts named `<cluster>.<suffix>` go through the gateway.
    #[arg(long, default_value = "wsgate")]
    pub suffix: String,

    /// The remote user name to put in the block.
    #[arg(long)]
    pub user: Option<String>,

    #[command(flatten)]
    pub conn: Connection,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: want e.g. 10s, 500ms, 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: want e.g. 10s, 500ms, 2m")),
    }
    .and_then(|d| {
        if d.is_zero() {
            Err("must be more than 0".into())
        } else {
            Ok(d)
        }
    })
}

fn parse_headers(raw: &[String]) -> Result<Vec<(String, String)>, ClientError> {
    raw.iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| ClientError::Usage(format!("--header {h:?}: want NAME:VALUE")))?;
            Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

/// `wsgate proxy`: connect (following at most one SkyPilot redirect) and pump until done.
pub async fn proxy(a: ProxyArgs) -> Result<(), ClientError> {
    let endpoint = endpoint::build(&a.server, &a.cluster, a.worker, &a.conn.endpoint)?;
    let proxy_setting = proxy::setting_from_flag(a.conn.proxy.as_deref())?;
    let sources = Sources {
        flag: a.token.clone(),
        env: std::env::var("WSGATE_TOKEN").ok().filter(|t| !t.is_empty()),
        file: a.conn.token_file.clone(),
        kubeconfig: a.conn.kubeconfig,
        context: a.conn.context.clone(),
    };
    let token = credentials::resolve(&sources).await?;
    if a.conn.insecure_skip_tls_verify {
        tracing::warn!("--insecure-skip-tls-verify: the server's identity is NOT checked; anyone on the path can read this session and take the token");
    }
    // Built when a `wss://` URL first needs it (possibly only after a redirect).
    let mut tls = None;
    let headers = parse_headers(&a.conn.headers)?;
    let opts = Options {
        ping_interval: a.ping_interval,
        chunk: 64 * 1024,
        read_size: 256 * 1024,
    };
    let origin = endpoint.url.clone();
    let mut current = endpoint;
    let mut extra: Vec<(String, String)> = Vec::new();
    for attempt in 0..2 {
        let proxy = proxy::choose(&proxy_setting, &current.url, |k| std::env::var(k).ok())?;
        // After a redirect, the headers it names may carry credentials of their own.
        let sends_credentials = attempt > 0 || token.is_some();
        check_plaintext(
            &current,
            sends_credentials,
            a.conn.allow_plaintext,
            proxy.as_ref(),
        )?;
        if !current.plaintext && tls.is_none() {
            tls = Some(tls::client_config(
                a.conn.ca_file.as_deref(),
                a.conn.insecure_skip_tls_verify,
            )?);
        }
        // The user's credentials (token, --header) go to the origin they were given for, and
        // to a redirect that stays on it; never to another origin.
        let same_origin = endpoint::same_origin(&origin, &current.url);
        if let Some(p) = &proxy {
            tracing::info!(proxy = %p.described(), "connecting through a proxy");
        }
        tracing::info!(url = %text::escape(current.url.as_str()), token_source = token.as_ref().filter(|_| same_origin).map(|t| t.source.as_str()).unwrap_or("none"), "connecting");
        let req = Request {
            endpoint: &current,
            endpoint_path: &a.conn.endpoint,
            token: token.as_ref().filter(|_| same_origin),
            token_in_subprotocol: a.conn.token_in_subprotocol,
            headers: if same_origin { &headers } else { &[] },
            tls: if current.plaintext { None } else { tls.clone() },
            timeout: a.connect_timeout,
            extra: &extra,
            proxy: proxy.as_ref(),
            cross_origin: !same_origin,
        };
        let conn = connect::open(&req).await?;
        let (io, read_ahead) = (conn.io, conn.read_ahead);
        match session::run(
            io,
            read_ahead,
            stdio::stdin(),
            stdio::stdout(),
            &opts,
            hangup(),
        )
        .await?
        {
            End::Done => return Ok(()),
            End::Redirect(info) if attempt == 0 => {
                let url = info["url"]
                    .as_str()
                    .ok_or_else(|| ClientError::Protocol("redirect frame without url".into()))?;
                current = endpoint::redirect_target(url, &current.cluster)?;
                let keeps = endpoint::same_origin(&origin, &current.url);
                tracing::info!(
                    url = %text::escape(current.url.as_str()),
                    same_origin = keeps,
                    "following the server's redirect{}",
                    if keeps { "" } else { " (another origin: the token and --header values stay here)" }
                );
                extra = info["headers"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
            }
            End::Redirect(_) => return Err(ClientError::Protocol("redirected twice".into())),
        }
    }
    Ok(())
}

/// Resolves on SIGHUP or SIGTERM (ssh hangs up its ProxyCommand when it exits); never if the
/// signals cannot be watched.
async fn hangup() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut hup), Ok(mut term)) => {
            tokio::select! {
                _ = hup.recv() => {},
                _ = term.recv() => {},
            }
        }
        _ => std::future::pending().await,
    }
}

/// A token goes over plaintext `ws://` only where nothing but this machine sees it (a
/// loopback server, no proxy on the path), or with `--allow-plaintext`.
fn check_plaintext(
    e: &Endpoint,
    has_token: bool,
    allowed: bool,
    proxy: Option<&Proxy>,
) -> Result<(), ClientError> {
    let stays_here = e.loopback && proxy.is_none();
    if e.plaintext && has_token && !stays_here && !allowed {
        return Err(ClientError::PlaintextToken {
            host: e.host.clone(),
            via: proxy.map(Proxy::described),
        });
    }
    Ok(())
}

/// `wsgate ssh-config`: the block to append to ~/.ssh/config.
pub fn ssh_config(a: &SshConfigArgs, program: &str) -> Result<String, ClientError> {
    // Validates the URL the same way `proxy` will.
    endpoint::build(&a.server, "example", 0, &a.conn.endpoint)?;
    let q = |s: &str| {
        if s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/:._-=@%+,".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let mut cmd = vec![q(program), "proxy".into(), q(&a.server), "%h".into()];
    let c = &a.conn;
    if let Some(f) = &c.ca_file {
        cmd.extend(["--ca-file".into(), q(&f.display().to_string())]);
    }
    if let Some(f) = &c.token_file {
        cmd.extend(["--token-file".into(), q(&f.display().to_string())]);
    }
    if c.kubeconfig {
        cmd.push("--kubeconfig".into());
    }
    if let Some(ctx) = &c.context {
        cmd.extend(["--context".into(), q(ctx)]);
    }
    if c.token_in_subprotocol {
        cmd.push("--token-in-subprotocol".into());
    }
    if c.endpoint != "kubernetes-pod-ssh-proxy" {
        cmd.extend(["--endpoint".into(), q(&c.endpoint)]);
    }
    for h in &c.headers {
        cmd.extend(["--header".into(), q(h)]);
    }
    if let Some(p) = &c.proxy {
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
        s = a.suffix,
        server = a.server,
        cmd = cmd.join(" ")
    );
    if let Some(u) = &a.user {
        out.push_str(&format!("    User {u}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_rule() {
        let remote = endpoint::build("http://gw.example.com", "a", 0, "x").unwrap();
        let local = endpoint::build("http://127.0.0.1:8080", "a", 0, "x").unwrap();
        let tls = endpoint::build("https://gw.example.com", "a", 0, "x").unwrap();
        assert_eq!(
            check_plaintext(&remote, true, false, None)
                .unwrap_err()
                .exit_code(),
            9
        );
        assert!(check_plaintext(&remote, true, true, None).is_ok());
        assert!(check_plaintext(&remote, false, false, None).is_ok());
        assert!(check_plaintext(&local, true, false, None).is_ok());
        assert!(check_plaintext(&tls, true, false, None).is_ok());
    }

    /// Through a proxy, a loopback server's token would leave the machine in clear (to the
    /// proxy, and to whatever the proxy's loopback is): --allow-plaintext is needed.
    #[test]
    fn a_proxy_voids_the_loopback_exemption() {
        let Setting::Flag(p) =
            proxy::setting_from_flag(Some("http://u:hunter2@proxy.corp:3128")).unwrap()
        else {
            panic!()
        };
        for server in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:80",
        ] {
            let local = endpoint::build(server, "a", 0, "x").unwrap();
            let e = check_plaintext(&local, true, false, Some(&p)).unwrap_err();
            assert_eq!(e.exit_code(), 9, "{server}");
            let m = e.to_string();
            assert!(
                m.contains("through the proxy http://proxy.corp:3128 (from --proxy)")
                    && m.contains("--allow-plaintext")
                    && m.contains("--proxy none")
                    && !m.contains("hunter2"),
                "{m}"
            );
            assert!(check_plaintext(&local, true, true, Some(&p)).is_ok());
            assert!(check_plaintext(&local, false, false, Some(&p)).is_ok());
        }
        let tls = endpoint::build("https://127.0.0.1", "a", 0, "x").unwrap();
        assert!(check_plaintext(&tls, true, false, Some(&p)).is_ok());
    }

    /// End to end through `choose`: the environment's proxy is not used for a loopback
    /// server, so its token over ws:// needs no flag; `--proxy` is, so it does.
    #[test]
    fn the_environment_never_proxies_a_loopback_token() {
        let local = endpoint::build("http://127.0.0.1:8080", "a", 0, "x").unwrap();
        let env = |k: &str| (k == "http_proxy").then(|| "http://proxy.corp:3128".to_string());
        let chosen = proxy::choose(&Setting::FromEnv, &local.url, env).unwrap();
        assert!(chosen.is_none());
        assert!(check_plaintext(&local, true, false, chosen.as_ref()).is_ok());
        let flag = proxy::setting_from_flag(Some("http://proxy.corp:3128")).unwrap();
        let chosen = proxy::choose(&flag, &local.url, env).unwrap();
        assert_eq!(
            check_plaintext(&local, true, false, chosen.as_ref())
                .unwrap_err()
                .exit_code(),
            9
        );
    }

    #[test]
    fn ssh_config_block() {
        let cli = Cli::try_parse_from([
            "wsgate",
            "ssh-config",
            "https://gw.example.com",
            "--ca-file",
            "/etc/ca dir/ca.pem",
            "--token-file",
            "/t",
            "--user",
            "ubuntu",
        ])
        .unwrap();
        let Command::SshConfig(a) = cli.command else {
            panic!()
        };
        let block = ssh_config(&a, "/usr/local/bin/wsgate").unwrap();
        assert!(block.contains("Host *.wsgate\n"), "{block}");
        assert!(block.contains(
            "ProxyCommand /usr/local/bin/wsgate proxy https://gw.example.com %h --ca-file '/etc/ca dir/ca.pem' --token-file /t\n"
        ), "{block}");
        assert!(
            block.contains("ServerAliveInterval 30") && block.contains("User ubuntu"),
            "{block}"
        );
    }

    #[test]
    fn ssh_config_carries_a_proxy_but_never_its_password() {
        let block = |proxy: &str| {
            let cli = Cli::try_parse_from(["wsgate", "ssh-config", "https://gw", "--proxy", proxy])
                .unwrap();
            let Command::SshConfig(a) = cli.command else {
                panic!()
            };
            ssh_config(&a, "wsgate")
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
    fn headers_and_durations() {
        assert_eq!(
            parse_headers(&["Cookie: a=b".into()]).unwrap(),
            vec![("cookie".into(), "a=b".into())]
        );
        assert_eq!(
            parse_headers(&["nocolon".into()]).unwrap_err().exit_code(),
            2
        );
        assert_eq!(humantime_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(humantime_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(humantime_duration("0s").is_err());
        assert!(humantime_duration("x").is_err());
    }
}
