//! Networks in CIDR notation, parsed once from the settings (`10.0.0.0/8`, or a bare address
//! meaning just that address).

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
            .map(Cidr)
            .map_err(|_| CidrError(text.to_string()))
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
        assert!("nowhere"
            .parse::<Cidr>()
            .unwrap_err()
            .to_string()
            .contains("nowhere"));
    }
}
