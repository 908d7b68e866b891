//! Who is asking: credentials from the request, and the backends that turn them into a user.
//!
//! A credential is `Authorization: Bearer <token>` (what the gateway filter produces) or, with no
//! gateway in front, the Kubernetes subprotocol token, parsed by `wsgate-proto` (one
//! implementation for filter and sidecar). Backends sit behind [`Authenticator`]: a static token
//! file here, Kubernetes `TokenReview` in `kube.rs`, or none (an explicit opt-in). Tokens are
//! never logged, echoed or kept in plain text longer than a lookup needs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wsgate_proto::token::{self, BearerToken};

use crate::error::Reject;
use crate::metrics::ReviewMetrics;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

/// The credential a request carries, and the subprotocol to echo.
#[derive(Debug)]
pub struct Credential {
    pub token: BearerToken,
    /// The first offered subprotocol that is not a token: a client that offers subprotocols
    /// (a Kubernetes token must come with one) expects one back.
    pub echo_protocol: Option<String>,
}

/// Reads the credential. `Ok(None)`: the request carries none.
///
/// Only a `Bearer` Authorization is a credential. Any other scheme is not ours to judge and
/// counts as no credential: SkyPilot's client sends `Basic` for a `user:pass@` endpoint URL (its
/// own server accepts that), so with `--auth none` it must pass, and a token backend answers
/// 401 `missing_credentials` (send a bearer token) as it would to no header at all.
pub fn credential(headers: &HeaderMap) -> Result<Option<Credential>, Reject> {
    let mut auth = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let bearer = match (auth.next(), auth.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err(Reject::AmbiguousCredentials),
        (Some(v), None) => bearer_token(v.as_bytes())?,
    };
    let lines: Vec<&str> = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let sub = token::extract(lines.iter().copied()).map_err(Reject::Token)?;
    // A client that offers subprotocols expects one back: the first one that is not a token.
    let echo_protocol = lines
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .find(|p| !p.is_empty() && !p.starts_with(token::BEARER_PROTOCOL_PREFIX))
        .map(str::to_string);
    let token = match (bearer, sub) {
        (Some(_), Some(_)) => return Err(Reject::AmbiguousCredentials),
        (Some(token), None) => token,
        (None, Some(s)) => s.token,
        (None, None) => return Ok(None),
    };
    Ok(Some(Credential {
        token,
        echo_protocol,
    }))
}

/// The token of a `Bearer` Authorization value; `None` for another scheme (RFC 9110: the
/// scheme is a token, case-insensitive, followed by a space).
fn bearer_token(value: &[u8]) -> Result<Option<BearerToken>, Reject> {
    let scheme_end = value.iter().position(|b| *b == b' ').unwrap_or(value.len());
    if !value[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let rest = std::str::from_utf8(&value[scheme_end..]).map_err(|_| Reject::InvalidCredentials)?;
    match rest.trim() {
        "" => Err(Reject::InvalidCredentials),
        t => Ok(Some(BearerToken::new(t.to_string()))),
    }
}

#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// `None` when the request carries no credential.
    async fn authenticate(&self, token: Option<&BearerToken>) -> Result<Identity, Reject>;
    /// For the start-up log.
    fn describe(&self) -> String;
    /// The backend's own counters for `/metrics`, if it keeps some (`TokenReview` does).
    fn review_metrics(&self) -> Option<Arc<ReviewMetrics>> {
        None
    }
}

/// No authentication: every caller is `anonymous`. Only with `--allow-unauthenticated`.
pub struct NoAuth;

#[async_trait]
impl Authenticator for NoAuth {
    async fn authenticate(&self, _token: Option<&BearerToken>) -> Result<Identity, Reject> {
        Ok(Identity {
            user: "anonymous".to_string(),
            groups: Vec::new(),
        })
    }

    fn describe(&self) -> String {
        "none (every caller is anonymous)".to_string()
    }
}

/// One line of the token file, with the token kept only as its SHA-256.
#[derive(Clone)]
struct Entry {
    hash: [u8; 32],
    identity: Identity,
}

/// A token file, reloaded when it changes:
///
/// ```text
/// # token (or sha256:<hex>)   user    [group,group]
/// sky_0123456789abcdef        alice   admins,dev
/// sha256:9f86d081884c7d65...  bob
/// ```
pub struct StaticTokens {
    path: PathBuf,
    state: Mutex<TokenFileState>,
}

struct TokenFileState {
    entries: Vec<Entry>,
    /// (mtime, length) of the file last loaded: a change in either triggers a reload.
    stamp: Option<(SystemTime, u64)>,
    /// Checks are at most once a second, so a burst of logins costs one `stat`.
    checked: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    Syntax {
        path: String,
        line: usize,
        why: &'static str,
    },
}

const RELOAD_CHECK: Duration = Duration::from_secs(1);

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn parse_token_file(path: &str, text: &str) -> Result<Vec<Entry>, TokenFileError> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |why| TokenFileError::Syntax {
            path: path.to_string(),
            line: i + 1,
            why,
        };
        let mut fields = line.split_whitespace();
        let (Some(secret), Some(user)) = (fields.next(), fields.next()) else {
            return Err(syntax("want: <token or sha256:hex> <user> [groups]"));
        };
        let groups: Vec<String> = fields
            .next()
            .map(|g| {
                g.split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if fields.next().is_some() {
            return Err(syntax("too many fields"));
        }
        let hash = match secret.strip_prefix("sha256:") {
            Some(hex) => parse_hex32(&hex.to_ascii_lowercase())
                .ok_or_else(|| syntax("sha256: needs 64 hex digits"))?,
            None => sha256(secret.as_bytes()),
        };
        entries.push(Entry {
            hash,
            identity: Identity {
                user: user.to_string(),
                groups,
            },
        });
    }
    Ok(entries)
}

fn file_stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.modified().ok()?, md.len()))
}

impl StaticTokens {
    /// Loads the file; an unreadable or malformed file is an error at start.
    pub fn load(path: PathBuf) -> Result<StaticTokens, TokenFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| TokenFileError::Io {
            path: shown.clone(),
            source,
        })?;
        let entries = parse_token_file(&shown, &text)?;
        let stamp = file_stamp(&path);
        Ok(StaticTokens {
            path,
            state: Mutex::new(TokenFileState {
                entries,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// Reloads if the file changed. A broken new version keeps the old entries (and says so):
    /// a typo must not lock everyone out.
    fn refresh(&self, st: &mut TokenFileState) {
        if st.checked.elapsed() < RELOAD_CHECK {
            return;
        }
        st.checked = Instant::now();
        let stamp = file_stamp(&self.path);
        if stamp == st.stamp {
            return;
        }
        let shown = self.path.display().to_string();
        match std::fs::read_to_string(&self.path)
            .map_err(|source| TokenFileError::Io {
                path: shown.clone(),
                source,
            })
            .and_then(|t| parse_token_file(&shown, &t))
        {
            Ok(entries) => {
                tracing::info!(path = %shown, entries = entries.len(), "token file reloaded");
                st.entries = entries;
                st.stamp = stamp;
            }
            Err(e) => {
                tracing::error!(error = %e, "token file not reloaded; keeping the previous one");
                st.stamp = stamp;
            }
        }
    }

    fn lookup(&self, token: &BearerToken) -> Option<Identity> {
        let want = sha256(token.expose().as_bytes());
        let mut st = self.state.lock().ok()?;
        self.refresh(&mut st);
        // Compare against every entry, without stopping at a match: constant time per entry.
        let mut found: Option<&Entry> = None;
        for e in &st.entries {
            if bool::from(e.hash.ct_eq(&want)) && found.is_none() {
                found = Some(e);
            }
        }
        found.map(|e| e.identity.clone())
    }
}

#[async_trait]
impl Authenticator for StaticTokens {
    async fn authenticate(&self, token: Option<&BearerToken>) -> Result<Identity, Reject> {
        let token = token.ok_or(Reject::MissingCredentials)?;
        self.lookup(token).ok_or(Reject::InvalidCredentials)
    }

    fn describe(&self) -> String {
        format!("token file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use wsgate_proto::base64::encode_raw_url;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn credential_sources() {
        let sub = format!(
            "base64url.bearer.authorization.k8s.io.{}, v4.channel.k8s.io",
            encode_raw_url(b"sub-token")
        );
        let c = credential(&headers(&[("authorization", "Bearer abc")]))
            .unwrap()
            .unwrap();
        assert_eq!((c.token.expose(), c.echo_protocol), ("abc", None));
        let c = credential(&headers(&[("authorization", "bearer  abc ")]))
            .unwrap()
            .unwrap();
        assert_eq!(c.token.expose(), "abc");
        let c = credential(&headers(&[("sec-websocket-protocol", &sub)]))
            .unwrap()
            .unwrap();
        assert_eq!(c.token.expose(), "sub-token");
        assert_eq!(c.echo_protocol.as_deref(), Some("v4.channel.k8s.io"));
        assert!(credential(&headers(&[])).unwrap().is_none());
        // Other schemes are no credential (SkyPilot sends Basic for `user:pass@` URLs); a
        // subprotocol token beside one is the credential.
        for other in ["Basic YTpi", "basic", "Negotiate abc", "Bearerx abc"] {
            let c = credential(&headers(&[("authorization", other)])).unwrap();
            assert!(c.is_none(), "{other}");
        }
        let c = credential(&headers(&[
            ("authorization", "Basic YTpi"),
            ("sec-websocket-protocol", &sub),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.token.expose(), "sub-token");
        struct Case<'a> {
            headers: Vec<(&'static str, &'a str)>,
            want: Reject,
        }
        let cases: Vec<Case> = vec![
            Case {
                headers: vec![("authorization", "Bearer")],
                want: Reject::InvalidCredentials,
            },
            Case {
                headers: vec![("authorization", "Bearer   ")],
                want: Reject::InvalidCredentials,
            },
            Case {
                headers: vec![("authorization", "Bearer a"), ("authorization", "Bearer b")],
                want: Reject::AmbiguousCredentials,
            },
            Case {
                headers: vec![
                    ("authorization", "Bearer a"),
                    ("sec-websocket-protocol", &sub),
                ],
                want: Reject::AmbiguousCredentials,
            },
        ];
        for Case { headers: h, want } in cases {
            assert_eq!(credential(&headers(&h)).unwrap_err(), want, "{h:?}");
        }
    }

    #[tokio::test]
    async fn token_file_plain_and_hashed_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("wsgate-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        let hashed = Sha256::digest(b"bob-secret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        std::fs::write(
            &path,
            format!("# comment\nsky_alice alice admins,dev\nsha256:{hashed} bob\n"),
        )
        .unwrap();
        let auth = StaticTokens::load(path.clone()).unwrap();
        let alice = auth
            .authenticate(Some(&BearerToken::new("sky_alice".into())))
            .await
            .unwrap();
        assert_eq!(alice.user, "alice");
        assert_eq!(alice.groups, ["admins", "dev"]);
        let bob = auth
            .authenticate(Some(&BearerToken::new("bob-secret".into())))
            .await
            .unwrap();
        assert_eq!(bob.user, "bob");
        assert_eq!(
            auth.authenticate(Some(&BearerToken::new("nope".into())))
                .await,
            Err(Reject::InvalidCredentials)
        );
        assert_eq!(
            auth.authenticate(None).await,
            Err(Reject::MissingCredentials)
        );

        // A changed file is picked up; a broken one keeps the previous entries.
        let user_of = |t: &'static str| {
            let auth = &auth;
            async move {
                auth.authenticate(Some(&BearerToken::new(t.into())))
                    .await
                    .map(|w| w.user)
                    .ok()
            }
        };
        let expire_check = || auth.state.lock().unwrap().checked -= RELOAD_CHECK;
        std::fs::write(&path, "sky_carol carol\n").unwrap();
        expire_check();
        assert_eq!(user_of("sky_carol").await.as_deref(), Some("carol"));
        assert_eq!(user_of("sky_alice").await, None);
        std::fs::write(&path, "only-one-field-and-longer\n").unwrap();
        expire_check();
        assert_eq!(user_of("sky_carol").await.as_deref(), Some("carol"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_file_errors_name_the_line() {
        let e = parse_token_file("f", "a b\nsha256:zz bob\n").err().unwrap();
        assert_eq!(e.to_string(), "f:2: sha256: needs 64 hex digits");
        let e = parse_token_file("f", "lonely\n").err().unwrap();
        assert!(e.to_string().starts_with("f:1:"));
    }
}
