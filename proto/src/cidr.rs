//! Trusted source networks (CIDRs) for the opt-in plaintext allowance.
//!
//! Parsing is strict on purpose: a CIDR with host bits set (`10.0.0.1/8`) is refused rather than
//! silently widened, since this list decides who may send upgrades in plaintext.

use std::net::IpAddr;
use std::str::FromStr;

/// A network: an address with its host bits cleared and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("not an IP address or CIDR")]
    Syntax,
    #[error("prefix length {0} is too long for the address family")]
    PrefixTooLong(u32),
    #[error("host bits are set; did you mean {0}?")]
    HostBits(String),
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let p: u32 = p.parse().map_err(|_| CidrError::Syntax)?;
                (a, Some(p))
            }
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| CidrError::Syntax)?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(CidrError::PrefixTooLong(prefix));
        }
        let cidr = Cidr {
            network,
            prefix: prefix as u8,
        };
        let masked = cidr.mask(network);
        if masked != network {
            return Err(CidrError::HostBits(format!("{masked}/{prefix}")));
        }
        Ok(cidr)
    }
}

impl Cidr {
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }

    /// Whether `ip` is inside. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        if self.network.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        self.mask(ip) == self.network
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The IP of Envoy's `source.address` property (`1.2.3.4:5678`, `[::1]:5678`, or a bare IP).
pub fn parse_source_ip(s: &str) -> Option<IpAddr> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok = [
            "10.0.0.0/8",
            "127.0.0.1",
            "127.0.0.1/32",
            "::1/128",
            "fd00::/8",
            "0.0.0.0/0",
        ];
        for s in ok {
            assert!(s.parse::<Cidr>().is_ok(), "{s}");
        }
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBits("10.0.0.0/8".into()))
        );
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong(33))
        );
        assert_eq!("10.0.0/8".parse::<Cidr>(), Err(CidrError::Syntax));
        assert_eq!("10.0.0.0/x".parse::<Cidr>(), Err(CidrError::Syntax));
        assert_eq!("".parse::<Cidr>(), Err(CidrError::Syntax));
    }

    #[test]
    fn contains_table() {
        struct Case {
            cidr: &'static str,
            ip: &'static str,
            want: bool,
        }
        let cases = [
            Case {
                cidr: "10.0.0.0/8",
                ip: "10.1.2.3",
                want: true,
            },
            Case {
                cidr: "10.0.0.0/8",
                ip: "11.0.0.1",
                want: false,
            },
            Case {
                cidr: "127.0.0.1/32",
                ip: "127.0.0.1",
                want: true,
            },
            Case {
                cidr: "127.0.0.1/32",
                ip: "127.0.0.2",
                want: false,
            },
            Case {
                cidr: "127.0.0.0/8",
                ip: "::ffff:127.0.0.9",
                want: true,
            },
            Case {
                cidr: "::1/128",
                ip: "::1",
                want: true,
            },
            Case {
                cidr: "::1/128",
                ip: "127.0.0.1",
                want: false,
            },
            Case {
                cidr: "fd00::/8",
                ip: "fd12::1",
                want: true,
            },
            Case {
                cidr: "0.0.0.0/0",
                ip: "8.8.8.8",
                want: true,
            },
        ];
        for Case { cidr, ip, want } in cases {
            let c: Cidr = cidr.parse().unwrap();
            assert_eq!(c.contains(ip.parse().unwrap()), want, "{cidr} ∋ {ip}");
        }
    }

    #[test]
    fn source_address_forms() {
        assert_eq!(
            parse_source_ip("127.0.0.1:4000"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_source_ip("[::1]:4000"), Some("::1".parse().unwrap()));
        assert_eq!(
            parse_source_ip("10.0.0.1"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_source_ip("garbage"), None);
    }
}
