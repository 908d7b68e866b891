//! The command line: `wsgate proxy` and `wsgate ssh-config` as clap derive types (their doc
//! comments are `--help`), and the parsed flags turned into [`run::Options`] and
//! [`ssh_config::Options`]. Nothing here connects, reads a token or prints.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::credentials::Sources;
use crate::endpoint::DEFAULT_ENDPOINT;
use crate::error::ClientError;
use crate::{proxy, resume, run, session, ssh_config};

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
    ///  16  the connection was lost and the session could not be resumed (the server
    ///      refused, or --resume-timeout passed)
    ///
    /// Resumption: when the server supports it (wsgate-sidecar), a lost connection (a gateway
    /// rollout, a laptop asleep, a network change) is reconnected and the session goes on
    /// where it was; ssh sees a pause. stderr says `wsgate: connection lost (...); resuming
    /// session…`, then `wsgate: resumed after 4.2 s`.
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
    #[arg(long, default_value = DEFAULT_ENDPOINT)]
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

    /// Do not offer resumption: a lost connection ends the session, as with servers that do
    /// not support it.
    #[arg(long)]
    pub no_resume: bool,

    /// Give up resuming a lost session after this long without a working connection (exit 16).
    #[arg(long, default_value = "3m", value_parser = humantime_duration)]
    pub resume_timeout: Duration,

    /// The response header of the first connection's 101 to send back on resumes, so that the
    /// gateway routes them to the replica holding the session (Envoy's stateful session in
    /// header mode).
    #[arg(long, default_value = resume::DEFAULT_ROUTE_HEADER, value_name = "NAME")]
    pub route_header: String,
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

impl ProxyArgs {
    /// The options for [`run::proxy`]; `env_token` is `WSGATE_TOKEN` (read by the caller, so
    /// that this stays a pure function of its inputs). Only flags are checked here: the URL and
    /// the cluster are `run`'s (inside the session's log span).
    pub fn into_options(self, env_token: Option<String>) -> Result<run::Options, ClientError> {
        let c = self.conn;
        let route_header = resume::route_header(&self.route_header)
            .map_err(|e| ClientError::Usage(format!("--route-header: {e}")))?;
        Ok(run::Options {
            server: self.server,
            cluster: self.cluster,
            worker: self.worker,
            proxy: proxy::setting_from_flag(c.proxy.as_deref())?,
            headers: parse_headers(&c.headers)?,
            credentials: Sources {
                flag: self.token,
                env: env_token.filter(|t| !t.is_empty()),
                file: c.token_file,
                kubeconfig: c.kubeconfig,
                context: c.context,
            },
            endpoint: c.endpoint,
            ca_file: c.ca_file,
            insecure_skip_tls_verify: c.insecure_skip_tls_verify,
            allow_plaintext: c.allow_plaintext,
            token_in_subprotocol: c.token_in_subprotocol,
            connect_timeout: self.connect_timeout,
            session: session::Options {
                ping_interval: self.ping_interval,
                chunk: 64 * 1024,
                read_size: 256 * 1024,
            },
            resume: (!self.no_resume).then_some(resume::Options {
                timeout: self.resume_timeout,
                route_header,
            }),
        })
    }
}

impl SshConfigArgs {
    /// The options for [`ssh_config::render`]. `--insecure-skip-tls-verify` and
    /// `--allow-plaintext` are not carried into the block: a config file outlives the moment.
    pub fn into_options(self) -> ssh_config::Options {
        let c = self.conn;
        ssh_config::Options {
            server: self.server,
            suffix: self.suffix,
            user: self.user,
            ca_file: c.ca_file,
            token_file: c.token_file,
            kubeconfig: c.kubeconfig,
            context: c.context,
            token_in_subprotocol: c.token_in_subprotocol,
            endpoint: c.endpoint,
            headers: c.headers,
            proxy: c.proxy,
        }
    }
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

/// `--header` values: `Name: value`, the name lower-cased, both trimmed.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Setting;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(args).unwrap().command
    }

    #[test]
    fn proxy_flags_become_options() {
        let Command::Proxy(a) = parse(&[
            "wsgate",
            "proxy",
            "https://gw.example.com",
            "prod.wsgate",
            "--worker",
            "2",
            "--header",
            "Cookie: a=b",
            "--proxy",
            "none",
            "--ping-interval",
            "500ms",
            "--token-file",
            "/t",
        ]) else {
            panic!()
        };
        let o = a.into_options(Some("from-env".into())).unwrap();
        assert_eq!(
            (o.server.as_str(), o.cluster.as_str(), o.worker),
            ("https://gw.example.com", "prod.wsgate", 2)
        );
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(o.headers, vec![("cookie".into(), "a=b".into())]);
        assert!(matches!(o.proxy, Setting::Off));
        assert_eq!(o.session.ping_interval, Duration::from_millis(500));
        assert_eq!(o.connect_timeout, Duration::from_secs(30));
        assert_eq!(o.credentials.env.as_deref(), Some("from-env"));
        assert_eq!(o.credentials.file, Some(PathBuf::from("/t")));
        assert!(!o.credentials.kubeconfig && o.credentials.flag.is_none());

        let Command::Proxy(a) = parse(&["wsgate", "proxy", "gw", "prod"]) else {
            panic!()
        };
        let o = a.into_options(Some(String::new())).unwrap();
        assert!(
            o.credentials.env.is_none(),
            "an empty WSGATE_TOKEN is no token"
        );
        assert!(matches!(o.proxy, Setting::FromEnv));
    }

    #[test]
    fn ssh_config_flags_become_options() {
        let Command::SshConfig(a) = parse(&[
            "wsgate",
            "ssh-config",
            "https://gw.example.com",
            "--ca-file",
            "/etc/ca dir/ca.pem",
            "--user",
            "ubuntu",
            "--insecure-skip-tls-verify",
        ]) else {
            panic!()
        };
        let o = a.into_options();
        assert_eq!(o.ca_file, Some(PathBuf::from("/etc/ca dir/ca.pem")));
        assert_eq!(
            (o.suffix.as_str(), o.user.as_deref()),
            ("wsgate", Some("ubuntu"))
        );
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
    }

    #[test]
    fn resume_flags() {
        let options = |extra: &[&str]| {
            let mut args = vec!["wsgate", "proxy", "gw", "prod"];
            args.extend_from_slice(extra);
            let Command::Proxy(a) = parse(&args) else {
                panic!()
            };
            a.into_options(None)
        };
        let r = options(&[]).unwrap().resume.unwrap();
        assert_eq!(
            (r.timeout, r.route_header.as_str()),
            (Duration::from_secs(180), "x-wsgate-route")
        );
        let r = options(&["--resume-timeout", "90s", "--route-header", "X-Sticky"])
            .unwrap()
            .resume
            .unwrap();
        assert_eq!(
            (r.timeout, r.route_header.as_str()),
            (Duration::from_secs(90), "x-sticky")
        );
        assert!(options(&["--no-resume"]).unwrap().resume.is_none());
        for bad in ["a b", "authorization"] {
            let e = options(&["--route-header", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.to_string().starts_with("--route-header: "), "{e}");
        }
        // A bad name is refused even with --no-resume: a flag is checked whether used or not.
        assert!(options(&["--no-resume", "--route-header", "a b"]).is_err());
        assert!(
            Cli::try_parse_from(["wsgate", "proxy", "gw", "p", "--resume-timeout", "0s"]).is_err()
        );
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
