//! Where a request comes from, for the audit trail: the connection's peer, and the original
//! client as the gateway reports it, believed only when the peer is a configured trusted hop.
//!
//! Nothing here decides access: the addresses are recorded, never used to allow anything, so a
//! forged header can at worst mislead a reader of the log, and only through a trusted hop.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use wsgate_proto::cidr::{parse_source_ip, Cidr};

/// The TCP peer of a connection, handed to the handlers as `ConnectInfo<PeerAddr>` by the accept
/// loop ([`crate::http::serve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The proxies whose forwarding headers are believed (the gateway's pods, a load balancer).
#[derive(Debug, Clone, Default)]
pub struct TrustedHops(pub Vec<Cidr>);

impl TrustedHops {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The original client of a request that arrived from `peer`.
    ///
    /// From an untrusted peer, the peer itself: its headers are whatever it chose to send. From
    /// a trusted one, Envoy's `x-envoy-external-address` (the address Envoy itself decided was
    /// the external client) when present, else the right-most `X-Forwarded-For` entry that is
    /// not itself a trusted hop (entries left of it were written by the client, and could be
    /// anything).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let external = headers
            .get("x-envoy-external-address")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_source_ip(v.trim()));
        if let Some(ip) = external {
            return ip;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| parse_source_ip(v.trim()))
            .collect::<Option<_>>()
            // A malformed list is not believed at all.
            .unwrap_or_default();
        forwarded
            .iter()
            .rev()
            .find(|ip| !self.trusts(**ip))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer)
    }
}

/// The addresses one request is audited with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The TCP peer: the gateway in front of the sidecar, or the client itself.
    pub peer: SocketAddr,
    /// The original client (see [`TrustedHops::client`]); the peer's IP when nothing better is
    /// known.
    pub client: IpAddr,
}

impl Origin {
    pub fn new(peer: SocketAddr, headers: &HeaderMap, hops: &TrustedHops) -> Self {
        Origin {
            peer,
            client: hops.client(peer.ip(), headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    struct Case {
        name: &'static str,
        trusted: &'static [&'static str],
        peer: &'static str,
        headers: &'static [(&'static str, &'static str)],
        want: &'static str,
    }

    #[test]
    fn client_address_table() {
        let cases = [
            Case {
                name: "no trusted hops: the peer, whatever the headers say",
                trusted: &[],
                peer: "10.0.0.5",
                headers: &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-envoy-external-address", "203.0.113.9"),
                ],
                want: "10.0.0.5",
            },
            Case {
                name: "an untrusted peer's headers are ignored",
                trusted: &["10.1.0.0/16"],
                peer: "10.0.0.5",
                headers: &[("x-forwarded-for", "203.0.113.9")],
                want: "10.0.0.5",
            },
            Case {
                name: "trusted peer: Envoy's external address wins",
                trusted: &["10.0.0.0/8"],
                peer: "10.0.0.5",
                headers: &[
                    ("x-forwarded-for", "198.51.100.1, 203.0.113.9"),
                    ("x-envoy-external-address", "192.0.2.44"),
                ],
                want: "192.0.2.44",
            },
            Case {
                name: "trusted peer: the right-most untrusted X-Forwarded-For entry",
                trusted: &["10.0.0.0/8"],
                peer: "10.0.0.5",
                headers: &[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.2.3.4")],
                want: "203.0.113.9",
            },
            Case {
                name: "several X-Forwarded-For lines read as one list",
                trusted: &["10.0.0.0/8"],
                peer: "10.0.0.5",
                headers: &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-forwarded-for", "10.9.9.9"),
                ],
                want: "203.0.113.9",
            },
            Case {
                name: "every entry trusted: the left-most",
                trusted: &["10.0.0.0/8"],
                peer: "10.0.0.5",
                headers: &[("x-forwarded-for", "10.7.7.7, 10.8.8.8")],
                want: "10.7.7.7",
            },
            Case {
                name: "a malformed list is not believed",
                trusted: &["10.0.0.0/8"],
                peer: "10.0.0.5",
                headers: &[("x-forwarded-for", "203.0.113.9, evil")],
                want: "10.0.0.5",
            },
            Case {
                name: "IPv6 entries",
                trusted: &["::1/128"],
                peer: "::1",
                headers: &[("x-forwarded-for", "2001:db8::7")],
                want: "2001:db8::7",
            },
        ];
        for c in cases {
            let hops = TrustedHops(c.trusted.iter().map(|s| s.parse().unwrap()).collect());
            let mut h = HeaderMap::new();
            for (k, v) in c.headers {
                h.append(*k, HeaderValue::from_static(v));
            }
            let got = hops.client(c.peer.parse().unwrap(), &h);
            assert_eq!(got, c.want.parse::<IpAddr>().unwrap(), "{}", c.name);
        }
    }
}
