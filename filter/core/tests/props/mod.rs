//! Properties the fuzz targets check on arbitrary input (`make fuzz`), and that `cargo test`
//! checks again on every committed corpus and crash file (`tests/fuzz_replay.rs`).
//!
//! Test support, not product: compiled into the replay test and (by path) the fuzz targets,
//! never into the library. Each target uses one check, hence `dead_code` allowed.
//!
//! Each `check_*` takes raw fuzzer bytes and returns `Err` with a description when a property
//! fails; they never panic themselves, so a panic found by the fuzzer is one in the code under
//! test. The token check compares [`token::extract`] with a reference model written separately
//! from it, declaratively, straight from the apiserver's rules.

#![allow(dead_code)]

use std::net::IpAddr;

use wsgate_core::config::{Policy, DEFAULT_ROUTING_HEADER};
use wsgate_core::decide::{decide, leaves_alone, Action, HeaderOp, RequestView};
use wsgate_core::headers::Headers;
use wsgate_proto::framing::{
    decode, decode_from_server, latency_frame, ping_frame, Framing, FromServer, Inbound,
};
use wsgate_proto::names::{is_header_name, is_header_value};
use wsgate_proto::token::{self, TokenError, BEARER_PROTOCOL_PREFIX};
use wsgate_proto::wsframe::{self, HeaderError};

/// Fuzzer bytes as text lines (lossy UTF-8: header values reach the filter as Rust strings).
fn lines(data: &[u8]) -> Vec<String> {
    lines_marked(data).into_iter().map(|(l, _)| l).collect()
}

/// [`lines`], each with whether it was UTF-8 (the glue reads header values the same way, and
/// tells the core which were not).
fn lines_marked(data: &[u8]) -> Vec<(String, bool)> {
    data.split(|b| *b == b'\n')
        .map(|l| {
            (
                String::from_utf8_lossy(l).into_owned(),
                std::str::from_utf8(l).is_ok(),
            )
        })
        .collect()
}

/// `Sec-WebSocket-Protocol` lines (one per input line): the token rewrite agrees with the
/// reference model; a token never carries a control character; no other entry is dropped.
pub fn check_token(data: &[u8]) -> Result<(), String> {
    let lines = lines(data);
    let got = token::extract(lines.iter().map(String::as_str));
    let want = reference_extract(&lines);
    let got_plain = got.map(|o| o.map(|t| (t.token.expose().to_string(), t.remaining)));
    if got_plain != want {
        // Token lengths only: even fuzzer tokens stay out of messages.
        let shape = |r: Result<Option<(String, String)>, TokenError>| {
            r.map(|o| o.map(|(t, rest)| (t.len(), rest)))
        };
        return Err(format!(
            "extract disagrees with the reference model: {:?} vs {:?}",
            shape(got_plain),
            shape(want)
        ));
    }
    if let Ok(Some((token, remaining))) = &got_plain {
        if !is_header_value(token) || token.is_empty() {
            return Err("a token that is empty or has control characters was accepted".into());
        }
        if remaining
            .split(',')
            .any(|e| e.starts_with(BEARER_PROTOCOL_PREFIX))
        {
            return Err("a bearer entry was left in the remaining subprotocols".into());
        }
    }
    Ok(())
}

/// The apiserver's rules, stated directly: entries are the comma-separated pieces of every line,
/// trimmed; the first bearer entry is decoded (its errors win); a second one is an error; an
/// empty token changes nothing; otherwise another subprotocol must remain.
fn reference_extract(lines: &[String]) -> Result<Option<(String, String)>, TokenError> {
    let entries: Vec<&str> = lines
        .iter()
        .flat_map(|l| l.split(','))
        .map(|e| e.trim_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']))
        .collect();
    let (bearers, others): (Vec<&str>, Vec<&str>) = entries
        .iter()
        .partition(|e| e.starts_with(BEARER_PROTOCOL_PREFIX));
    let Some(first) = bearers.first() else {
        return Ok(None);
    };
    let bytes = reference_base64(&first[BEARER_PROTOCOL_PREFIX.len()..])
        .ok_or(TokenError::InvalidEncoding)?;
    let text = String::from_utf8(bytes).map_err(|_| TokenError::InvalidUtf8)?;
    if text.chars().any(|c| c.is_ascii_control()) {
        return Err(TokenError::ControlCharacters);
    }
    if bearers.len() > 1 {
        return Err(TokenError::MultipleTokens);
    }
    if text.is_empty() {
        return Ok(None);
    }
    if others.is_empty() {
        return Err(TokenError::MissingSubprotocol);
    }
    Ok(Some((text, others.join(","))))
}

/// Go's `RawURLEncoding`, group by group: CR/LF ignored, 4 symbols → 3 bytes, a tail of 2 or 3
/// symbols → 1 or 2 bytes, a tail of 1 symbol is corrupt.
fn reference_base64(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let values: Vec<u32> = s
        .chars()
        .filter(|c| *c != '\r' && *c != '\n')
        .map(|c| ALPHABET.find(c).map(|i| i as u32))
        .collect::<Option<_>>()?;
    let mut out = Vec::new();
    for group in values.chunks(4) {
        let n = group.iter().fold(0u32, |acc, v| acc << 6 | v) << (6 * (4 - group.len()));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        match group.len() {
            4 => out.extend_from_slice(&bytes),
            3 => out.extend_from_slice(&bytes[..2]),
            2 => out.push(bytes[0]),
            _ => return None,
        }
    }
    Some(out)
}

/// The policy the decision check runs with: every feature on (token rewrite, both kinds of
/// routing with an allow-list, the plaintext allowance).
const DECIDE_POLICY: &str = r#"{
  "redirectGuard": {"httpsPort": 443, "allowPlaintext": {"trustedCidrs": ["10.0.0.0/8"], "pathPrefixes": ["/plain"]}},
  "routes": [
    {"name": "q", "prefix": "/kubernetes-pod-ssh-proxy", "clusterQueryParam": "cluster_name", "allowedClusters": ["prod", "dev"]},
    {"name": "p", "pattern": "/c/{cluster}", "stripPrefix": true, "removeHeaders": ["origin"]}
  ]
}"#;

/// A request as `name: value` lines (the first line is the peer address): whatever the
/// headers, every header the filter sets is a valid name with a value Envoy accepts (no control
/// characters but HTAB; `authorization` none at all), a routed cluster is a DNS label, no
/// client-sent routing header is forwarded, no reply carries a subprotocol token, and no header
/// is written with a U+FFFD the client did not send (one standing for bytes that were not
/// UTF-8: the filter must not alter what it forwards). Checked with every feature on and with
/// `{}`. Requests Envoy could not deliver (header values with other control characters: its
/// codecs refuse them) are skipped.
pub fn check_decide(data: &[u8]) -> Result<(), String> {
    for config in [DECIDE_POLICY, "{}"] {
        let policy =
            Policy::from_json(config.as_bytes()).map_err(|e| format!("test policy: {e}"))?;
        check_decide_with(data, &policy)?;
    }
    Ok(())
}

fn check_decide_with(data: &[u8], policy: &Policy) -> Result<(), String> {
    let mut lines = lines_marked(data).into_iter();
    let peer = lines.next().map(|(l, _)| l).unwrap_or_default();
    let mut non_utf8 = Vec::new();
    let mut sent_replacement = false;
    let headers: Vec<(String, String)> = lines
        .filter_map(|(l, utf8)| {
            let (pseudo, rest) = match l.strip_prefix(':') {
                Some(r) => (true, r),
                None => (false, l.as_str()),
            };
            let (n, v) = rest.split_once(':')?;
            let name = if pseudo {
                format!(":{n}")
            } else {
                n.to_ascii_lowercase()
            };
            if !utf8 {
                non_utf8.push(name.clone());
            } else if l.contains(REPLACEMENT) {
                sent_replacement = true;
            }
            Some((name, v.trim_start().to_string()))
        })
        .collect();
    if headers.iter().any(|(_, v)| !field_value(v)) {
        return Ok(());
    }
    let protocol = || {
        if peer.contains("h2") {
            "HTTP/2".to_string()
        } else {
            "HTTP/1.1".to_string()
        }
    };
    let source = || {
        peer.split_whitespace()
            .next()
            .and_then(|p| p.parse::<IpAddr>().ok())
    };
    let view = RequestView {
        headers: Headers(&headers),
        non_utf8: &non_utf8,
        protocol: &protocol,
        source: &source,
    };
    let d = decide(&view, policy, &mut || [1u8; 16]);
    let h = Headers(&headers);
    let path = || h.first(":path").map(String::from);
    if leaves_alone(&path, &|n| h.has(n), policy) && !d.changes_nothing() {
        return Err(format!(
            "the glue would skip a request decide changes: {d:?}"
        ));
    }
    if d.action == Action::Continue {
        let default = [DEFAULT_ROUTING_HEADER.to_string()];
        for name in policy.routing_headers.iter().chain(&default) {
            let removed = d
                .ops
                .iter()
                .any(|op| matches!(op, HeaderOp::Remove { name: n } if n == name));
            if h.has(name) && !removed {
                return Err(format!("a client-sent {name} would be forwarded"));
            }
        }
    }
    for op in &d.ops {
        if let HeaderOp::Set { name, value } = op {
            let strict = name == "authorization";
            if !(is_header_name(name) || name.starts_with(':'))
                || !field_value(value)
                || (strict && !is_header_value(value))
            {
                return Err(format!(
                    "set a bad header {name:?} (value of {} bytes)",
                    value.len()
                ));
            }
            if value.contains(REPLACEMENT) && !sent_replacement {
                return Err(format!(
                    "set {name:?} with a U+FFFD standing for bytes that were not UTF-8"
                ));
            }
            if name == "x-wsgate-cluster" && !wsgate_proto::names::is_dns_label(value) {
                return Err(format!(
                    "routed to a cluster that is not a DNS label: {value:?}"
                ));
            }
        }
    }
    if let Action::Reply(r) = &d.action {
        let tokens: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n == "sec-websocket-protocol")
            .flat_map(|(_, v)| v.split(','))
            .filter_map(|e| e.trim().strip_prefix(BEARER_PROTOCOL_PREFIX))
            .filter(|t| t.len() >= 8)
            .collect();
        for t in tokens {
            let shown = |r: &wsgate_core::LocalReply| {
                r.body.contains(t) || r.headers.iter().any(|(_, v)| v.contains(t))
            };
            if !shown(r) {
                continue;
            }
            // Echoed, or only present in fixed text by chance (`application/` in
            // `application/json`: found by the fuzzer)? Ask again with the token replaced.
            let other = "Q".repeat(t.len());
            let swap = |v: &str| -> String {
                v.split(',')
                    .map(|e| match e.trim().strip_prefix(BEARER_PROTOCOL_PREFIX) {
                        Some(tok) => format!("{BEARER_PROTOCOL_PREFIX}{}", tok.replace(t, &other)),
                        None => e.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let swapped: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| {
                    let v = if n == "sec-websocket-protocol" {
                        swap(v)
                    } else {
                        v.clone()
                    };
                    (n.clone(), v)
                })
                .collect();
            let view = RequestView {
                headers: Headers(&swapped),
                non_utf8: &non_utf8,
                protocol: &protocol,
                source: &source,
            };
            match decide(&view, policy, &mut || [1u8; 16]).action {
                Action::Reply(r2) if shown(&r2) => {}
                _ => return Err("a reply echoes a subprotocol token".into()),
            }
        }
        if !(400..=599).contains(&r.status) {
            return Err(format!("a local reply with status {}", r.status));
        }
    }
    Ok(())
}

/// What a lossy read puts in place of bytes that are not UTF-8.
const REPLACEMENT: char = '\u{FFFD}';

/// An RFC 9110 field value as Envoy's codecs accept it: no control characters except HTAB.
fn field_value(v: &str) -> bool {
    !v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// Any bytes as a `pluginConfig`: parsing either fails with a message or yields a policy whose
/// summary can be printed; it never panics.
pub fn check_config(data: &[u8]) -> Result<(), String> {
    match Policy::from_json(data) {
        Ok(p) => {
            let _ = p.summary();
            Ok(())
        }
        Err(e) if e.to_string().is_empty() => Err("a config error without a message".into()),
        Err(_) => Ok(()),
    }
}

/// Any bytes as a WebSocket frame from a client (typed framing) and from a server: data is the
/// frame minus its type byte, pings and latency reports have their exact sizes, and the frames
/// the client and server build decode back to what was put in.
pub fn check_framing(data: &[u8]) -> Result<(), String> {
    match decode(Framing::Typed, data) {
        Ok(Inbound::Data(d)) if data.first() != Some(&0) || d != &data[1..] => {
            return Err("data frame misread".into())
        }
        Ok(Inbound::Ping(p)) if p.len() != 5 || p != data => {
            return Err("ping frame misread".into())
        }
        Ok(Inbound::Latency(_)) if data.len() != 9 => return Err("latency frame misread".into()),
        _ => {}
    }
    if decode(Framing::Raw, data) != Ok(Inbound::Data(data)) {
        return Err("raw framing changed the bytes".into());
    }
    let _ = decode_from_server(data);
    let id = data
        .iter()
        .take(4)
        .fold(0u32, |a, b| a << 8 | u32::from(*b));
    if decode_from_server(&ping_frame(id)) != Ok(FromServer::Pong(id)) {
        return Err("ping frame does not round-trip".into());
    }
    let ms = data
        .iter()
        .take(8)
        .fold(0u64, |a, b| a << 8 | u64::from(*b));
    if decode(Framing::Typed, &latency_frame(ms)) != Ok(Inbound::Latency(ms)) {
        return Err("latency frame does not round-trip".into());
    }
    Ok(())
}

/// The payload limit the sidecar uses by default (64 KiB and its message slack).
const WSFRAME_MAX: u64 = 65536 + 16;

/// Any bytes as the start of a WebSocket stream: [`wsframe::parse`] agrees with a reference
/// reading of RFC 6455 §5.2 written bit by bit, never claims more header than it was given,
/// and a server header and a masked client header built for the same length read back;
/// masking agrees with the RFC's byte-by-byte definition.
pub fn check_wsframe(data: &[u8]) -> Result<(), String> {
    let got = wsframe::parse(data, WSFRAME_MAX);
    let want = reference_ws_header(data, WSFRAME_MAX);
    let got_fields = got.map(|h| h.map(|h| (h.fin, h.opcode as u8, h.mask, h.len, h.header_len)));
    if got_fields != want {
        return Err(format!("parse {got_fields:?}, reference {want:?}"));
    }
    if let Ok(Some(h)) = got {
        if h.header_len > data.len() || h.header_len > wsframe::MAX_HEADER {
            return Err(format!(
                "header of {} bytes from {} given",
                h.header_len,
                data.len()
            ));
        }
        let mut out = [0u8; wsframe::MAX_SERVER_HEADER];
        let n = wsframe::server_header(&mut out, h.opcode, h.len);
        let back = wsframe::parse(&out[wsframe::MAX_SERVER_HEADER - n..], u64::MAX);
        if back.map(|b| b.map(|b| (b.opcode, b.len, b.mask))) != Ok(Some((h.opcode, h.len, None))) {
            return Err("a server header does not read back".into());
        }
        let mask = h.mask.unwrap_or([0xA5, 0x3C, 0x0F, 0xF0]);
        let (c, n) = wsframe::header(h.opcode, h.len, Some(mask));
        let back = wsframe::parse(&c[..n], u64::MAX);
        if back.map(|b| b.map(|b| (b.opcode, b.len, b.mask, b.header_len)))
            != Ok(Some((h.opcode, h.len, Some(mask), n)))
        {
            return Err("a client header does not read back".into());
        }
    }
    if let [m0, m1, m2, m3, rest @ ..] = data {
        let mask = [*m0, *m1, *m2, *m3];
        let mut fast = rest.to_vec();
        wsframe::apply_mask(&mut fast, mask);
        if fast
            .iter()
            .zip(rest)
            .enumerate()
            .any(|(i, (f, r))| *f != r ^ mask[i % 4])
        {
            return Err("masking differs from the byte-by-byte definition".into());
        }
    }
    Ok(())
}

type RefHeader = (bool, u8, Option<[u8; 4]>, u64, usize);

/// RFC 6455 §5.2 read field by field, with the sidecar's rules: no extension (RSV must be 0),
/// the six defined opcodes, control frames final and at most 125 bytes, the limit checked from
/// the length before the mask is needed.
fn reference_ws_header(d: &[u8], max: u64) -> Result<Option<RefHeader>, HeaderError> {
    if d.len() < 2 {
        return Ok(None);
    }
    let bit = |byte: u8, n: u8| byte >> n & 1 == 1;
    let (fin, rsv) = (bit(d[0], 7), [bit(d[0], 6), bit(d[0], 5), bit(d[0], 4)]);
    if rsv.contains(&true) {
        return Err(HeaderError::Reserved);
    }
    let opcode = d[0] % 16;
    if ![0u8, 1, 2, 8, 9, 10].contains(&opcode) {
        return Err(HeaderError::Opcode(opcode));
    }
    let masked = bit(d[1], 7);
    let len7 = d[1] % 128;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    if d.len() < 2 + ext {
        return Ok(None);
    }
    let len = if ext == 0 {
        u64::from(len7)
    } else {
        d[2..2 + ext]
            .iter()
            .fold(0u64, |a, b| a * 256 + u64::from(*b))
    };
    if opcode >= 8 && (!fin || len > 125) {
        return Err(HeaderError::BadControl);
    }
    if len > max {
        return Err(HeaderError::TooBig(len));
    }
    let header_len = 2 + ext + if masked { 4 } else { 0 };
    if d.len() < header_len {
        return Ok(None);
    }
    let mask = masked.then(|| [d[2 + ext], d[3 + ext], d[4 + ext], d[5 + ext]]);
    Ok(Some((fin, opcode, mask, len, header_len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsgate_proto::base64::{decode_raw_url, encode_raw_url};

    #[test]
    fn reference_base64_agrees_on_known_inputs() {
        for s in [
            "", "YQ", "YWI", "YWJj", "Y", "YW=", "a+b", "YW\r\nJj", "_-_-", "AAAAA",
        ] {
            assert_eq!(reference_base64(s), decode_raw_url(s), "{s:?}");
        }
        assert_eq!(
            reference_base64(&encode_raw_url(b"token\x01")).unwrap(),
            b"token\x01"
        );
    }

    #[test]
    fn checks_pass_on_ordinary_inputs() {
        let entry = format!("{BEARER_PROTOCOL_PREFIX}{}", encode_raw_url(b"abc"));
        check_token(format!("{entry}, v4.channel.k8s.io").as_bytes()).unwrap();
        check_token(format!("{entry}\n{entry}").as_bytes()).unwrap();
        let req = format!("127.0.0.1\n:method: GET\n:path: /kubernetes-pod-ssh-proxy?cluster_name=prod\nupgrade: websocket\nconnection: upgrade\nsec-websocket-protocol: {entry}, x");
        check_decide(req.as_bytes()).unwrap();
        // Obs-text beside a token, or in a path a route strips: refused, not rewritten.
        let mut obs = req.into_bytes();
        obs.extend_from_slice(b", caf\xe9");
        check_decide(&obs).unwrap();
        check_decide(b"127.0.0.1\n:method: GET\n:path: /c/dev/caf\xe9").unwrap();
        check_config(DECIDE_POLICY.as_bytes()).unwrap();
        check_config(b"{\"routes\": 7}").unwrap();
        check_framing(&[1, 0, 0, 0, 9]).unwrap();
        check_framing(&[]).unwrap();
    }
}
