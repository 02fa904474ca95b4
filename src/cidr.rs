//! Networks in CIDR notation, parsed once from the settings (`10.0.0.0/8`, or a bare address
//! meaning just that address).
//!
//! Addresses are compared in their canonical form: an IPv4 client reaching a dual-stack `[::]`
//! listener arrives as `::ffff:a.b.c.d`, and the listener turns it back into `a.b.c.d` where
//! it accepts the connection (and `X-Forwarded-For` entries where they are read); a network
//! written in that mapped form is read as the IPv4 network it stands for, so the two meet.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// A network a client address can be checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

/// Why a text is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an address or a CIDR like 10.0.0.0/8")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map(|net| Cidr(canonical(net)))
            .map_err(|_| CidrError(text.to_string()))
    }
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) as the IPv4 network `a.b.c.d/(n - 96)`; others as they are.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

impl Cidr {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_bare_addresses_parse() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(&"10.1.2.3".parse().unwrap()));
        assert!(!net.contains(&"11.0.0.1".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains(&"::1".parse().unwrap()));
        assert!("10.0.0.0/99".parse::<Cidr>().is_err());
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, "10.0.0.0/8".parse().unwrap());
        assert!("nowhere"
            .parse::<Cidr>()
            .unwrap_err()
            .to_string()
            .contains("nowhere"));
    }
}
