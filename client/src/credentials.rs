//! Where the token comes from: `--token`, `WSGATE_TOKEN`, `--token-file`, or (only when asked,
//! with `--kubeconfig`) the current kubeconfig context, exec plugins included. The source is
//! remembered so a 401 can say which one was refused. Tokens are never logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kube::config::{AuthInfo, ExecConfig, Kubeconfig};
use secrecy::ExposeSecret;
use wsgate_proto::names::is_header_value;
use wsgate_proto::token::BearerToken;

use crate::error::ClientError;

/// A token and a description of where it came from (for error messages, never the token).
#[derive(Debug)]
pub struct Token {
    pub value: BearerToken,
    pub source: String,
    /// Whom the token stands for, as far as this end knows, for the session's logs: the
    /// kubeconfig user's name, else the source's name (`--token`, `WSGATE_TOKEN`, `--token-file`).
    pub user: String,
    /// How to get a fresh one, for a 401.
    pub hint: String,
}

/// Inputs for [`resolve`]; the env var is read by the caller so tests stay hermetic.
#[derive(Debug, Default)]
pub struct Sources {
    pub flag: Option<String>,
    pub env: Option<String>,
    pub file: Option<PathBuf>,
    pub kubeconfig: bool,
    pub context: Option<String>,
}

fn checked(value: String, source: String, user: &str, hint: &str) -> Result<Token, ClientError> {
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(ClientError::Token(format!("{source} is empty")));
    }
    if !is_header_value(&value) {
        return Err(ClientError::Token(format!(
            "{source} contains control characters"
        )));
    }
    Ok(Token {
        value: BearerToken::new(value),
        source,
        user: user.to_string(),
        hint: hint.to_string(),
    })
}

/// The first source that is set, in the documented order; `Ok(None)` when none is.
pub async fn resolve(s: &Sources) -> Result<Option<Token>, ClientError> {
    if let Some(t) = &s.flag {
        return checked(
            t.clone(),
            "--token".into(),
            "--token",
            "Pass a valid token with --token.",
        )
        .map(Some);
    }
    if let Some(t) = &s.env {
        return checked(
            t.clone(),
            "WSGATE_TOKEN".into(),
            "WSGATE_TOKEN",
            "Export a valid token in WSGATE_TOKEN.",
        )
        .map(Some);
    }
    if let Some(path) = &s.file {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| ClientError::Token(format!("--token-file {}: {e}", path.display())))?;
        let source = format!("--token-file {}", path.display());
        return checked(
            text,
            source,
            "--token-file",
            "Write a valid token into that file.",
        )
        .map(Some);
    }
    if s.kubeconfig {
        return from_kubeconfig(s.context.as_deref()).await.map(Some);
    }
    Ok(None)
}

async fn from_kubeconfig(context: Option<&str>) -> Result<Token, ClientError> {
    let kc = Kubeconfig::read().map_err(|e| ClientError::Token(format!("kubeconfig: {e}")))?;
    let name = context
        .map(String::from)
        .or_else(|| kc.current_context.clone())
        .ok_or_else(|| {
            ClientError::Token("kubeconfig has no current context (use --context)".into())
        })?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| ClientError::Token(format!("kubeconfig has no context {name:?}")))?;
    let user = ctx.user.clone().unwrap_or_default();
    let auth = kc
        .auth_infos
        .iter()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.as_ref())
        .ok_or_else(|| {
            ClientError::Token(format!(
                "kubeconfig has no user {user:?} (context {name:?})"
            ))
        })?;
    let source = format!("kubeconfig context {name:?} (user {user:?})");
    let hint = "Refresh your kubeconfig credentials (e.g. log in again).";
    token_from_auth_info(auth, &source, &user, hint).await
}

async fn token_from_auth_info(
    auth: &AuthInfo,
    source: &str,
    user: &str,
    hint: &str,
) -> Result<Token, ClientError> {
    if let Some(t) = &auth.token {
        return checked(
            t.expose_secret().to_string(),
            source.to_string(),
            user,
            hint,
        );
    }
    if let Some(f) = &auth.token_file {
        let text = tokio::fs::read_to_string(Path::new(f))
            .await
            .map_err(|e| ClientError::Token(format!("{source}: token file {f}: {e}")))?;
        return checked(text, source.to_string(), user, hint);
    }
    if let Some(exec) = &auth.exec {
        return checked(
            run_exec(exec, source).await?,
            source.to_string(),
            user,
            hint,
        );
    }
    Err(ClientError::Token(format!(
        "{source} has no token, token file or exec plugin (client certificates cannot be sent through a WebSocket gateway)"
    )))
}

/// Runs a client-go credential plugin (`ExecCredential`) and returns `status.token`.
async fn run_exec(exec: &ExecConfig, source: &str) -> Result<String, ClientError> {
    let cmd = exec
        .command
        .clone()
        .ok_or_else(|| ClientError::Token(format!("{source}: exec plugin without a command")))?;
    let api_version = exec
        .api_version
        .clone()
        .unwrap_or_else(|| "client.authentication.k8s.io/v1".to_string());
    let mut c = tokio::process::Command::new(&cmd);
    c.args(exec.args.clone().unwrap_or_default());
    for pair in exec.env.clone().unwrap_or_default() {
        let map: HashMap<String, String> = pair;
        if let (Some(k), Some(v)) = (map.get("name"), map.get("value")) {
            c.env(k, v);
        }
    }
    let info = serde_json::json!({
        "apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": false}
    });
    c.env("KUBERNETES_EXEC_INFO", info.to_string());
    c.stdin(std::process::Stdio::null());
    c.stderr(std::process::Stdio::inherit());
    let out = c.output().await.map_err(|e| {
        let hint = exec.install_hint.clone().unwrap_or_default();
        ClientError::Token(format!("{source}: running {cmd}: {e}. {hint}"))
    })?;
    if !out.status.success() {
        return Err(ClientError::Token(format!(
            "{source}: {cmd} exited with {}",
            out.status
        )));
    }
    let cred: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        ClientError::Token(format!("{source}: {cmd} printed no ExecCredential: {e}"))
    })?;
    cred["status"]["token"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| {
            ClientError::Token(format!(
                "{source}: {cmd}'s ExecCredential has no status.token"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn order_and_sources() {
        let t = resolve(&Sources {
            flag: Some("a".into()),
            env: Some("b".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.value.expose(), t.source.as_str(), t.user.as_str()),
            ("a", "--token", "--token")
        );
        let t = resolve(&Sources {
            env: Some(" b\n".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!((t.value.expose(), t.source.as_str()), ("b", "WSGATE_TOKEN"));
        assert!(resolve(&Sources::default()).await.unwrap().is_none());
        let e = resolve(&Sources {
            flag: Some("a\r\nb".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 11);
        let e = resolve(&Sources {
            file: Some("/nonexistent/t".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("--token-file /nonexistent/t"), "{e}");
    }

    #[tokio::test]
    async fn exec_plugin_token() {
        let yaml = r#"
apiVersion: v1
kind: Config
current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://127.0.0.1:1"}}]
users:
- name: u
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: sh
      args: ["-c", "echo '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"'$TOKEN_VALUE'\"}}'"]
      env: [{name: TOKEN_VALUE, value: from-exec}]
"#;
        let kc = Kubeconfig::from_yaml(yaml).unwrap();
        let auth = kc.auth_infos[0].auth_info.as_ref().unwrap();
        let t = token_from_auth_info(auth, "ctx", "u", "hint")
            .await
            .unwrap();
        assert_eq!((t.value.expose(), t.user.as_str()), ("from-exec", "u"));
    }
}
