//! Who is asking: the peer address, or the client behind a trusted proxy.
//!
//! `X-Forwarded-For` is a header anyone can send, so it is believed only when the TCP peer is
//! one of `server.trusted_proxies`. Then the chain is read from the right (the entry the
//! nearest proxy appended) past further trusted proxies; the first untrusted address is the
//! client. A forged entry a client put at the left end of the chain is never reached. Every
//! address is taken in its canonical form (`::ffff:a.b.c.d` is `a.b.c.d`), like the peer's.

use std::net::IpAddr;

use http::HeaderMap;

use crate::cidr::Cidr;

/// Which peers may tell us the client's address.
#[derive(Debug, Clone, Default)]
pub struct ProxyPolicy {
    trusted: Vec<Cidr>,
}

impl ProxyPolicy {
    pub fn new(trusted: Vec<Cidr>) -> ProxyPolicy {
        ProxyPolicy { trusted }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for entry in text.rsplit(',') {
                match entry.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                    Ok(ip) => {
                        client = ip;
                        if !self.is_trusted(ip) {
                            return ip;
                        }
                    }
                    // Garbage in the chain: stop at the last address we could trust.
                    Err(_) => return client,
                }
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let policy = ProxyPolicy::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let h = headers(&["203.0.113.9"]);
        assert_eq!(policy.client_ip(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        assert_eq!(policy.client_ip(ip("10.1.1.1"), &h), ip("203.0.113.9"));
        assert_eq!(
            policy.client_ip(ip("10.1.1.1"), &HeaderMap::new()),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn the_chain_is_read_from_the_right_past_trusted_hops() {
        let policy = ProxyPolicy::new(vec!["10.0.0.0/8".parse().unwrap()]);
        // The client forged "1.2.3.4"; its real address was appended by the first proxy.
        let h = headers(&["1.2.3.4, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(policy.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        let split = headers(&["1.2.3.4", "203.0.113.9"]);
        assert_eq!(policy.client_ip(ip("10.0.0.1"), &split), ip("203.0.113.9"));
        let mapped = headers(&["::ffff:203.0.113.9, ::ffff:10.0.0.2"]);
        assert_eq!(policy.client_ip(ip("10.0.0.1"), &mapped), ip("203.0.113.9"));
        let garbage = headers(&["nonsense, 10.0.0.3"]);
        assert_eq!(policy.client_ip(ip("10.0.0.1"), &garbage), ip("10.0.0.3"));
    }
}
