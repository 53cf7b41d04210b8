//! Per-token IP allowlists: CIDR blocks, IPv4 and IPv6.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::domain::error::InvalidArgument;

/// At most this many blocks per token.
pub const MAX_BLOCKS: usize = 32;

/// A token's allowed client networks; empty allows any address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrList(Vec<IpNet>);

impl CidrList {
    /// Parses `blocks` such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is
    /// a block of one. Host bits are cleared (`10.1.2.3/8` means `10.0.0.0/8`).
    pub fn parse<S: AsRef<str>>(blocks: &[S]) -> Result<CidrList, InvalidArgument> {
        if blocks.len() > MAX_BLOCKS {
            return Err(InvalidArgument(format!(
                "allowed_cidrs: at most {MAX_BLOCKS} blocks (got {})",
                blocks.len()
            )));
        }
        let mut nets = Vec::with_capacity(blocks.len());
        for block in blocks {
            let block = block.as_ref().trim();
            let net = IpNet::from_str(block)
                .or_else(|_| IpAddr::from_str(block).map(IpNet::from))
                .map_err(|_| {
                    let shown: String = block.chars().take(50).collect();
                    InvalidArgument(format!(
                        "allowed_cidrs: {shown:?} is not a CIDR block such as 10.0.0.0/8 or 2001:db8::/32"
                    ))
                })?;
            let net = canonical_block(net.trunc());
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        Ok(CidrList(nets))
    }

    /// The stored form: space-separated blocks. Unparsable blocks (never written
    /// by patd) allow nothing, so the list fails closed. Mapped blocks stored by
    /// earlier versions read as the IPv4 blocks they mean.
    pub fn from_stored(stored: &str) -> CidrList {
        let nets = stored
            .split_whitespace()
            .map(|block| IpNet::from_str(block).map_or_else(|_| nothing(), canonical_block))
            .collect();
        CidrList(nets)
    }

    pub fn to_stored(&self) -> String {
        self.to_strings().join(" ")
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(IpNet::to_string).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a client at `addr` may use the token. IPv4-mapped IPv6 addresses
    /// count as their IPv4 address.
    pub fn allows(&self, addr: IpAddr) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let addr = addr.to_canonical();
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// Whether every address `other` allows is one this list allows (an empty
    /// list allows every address, so only an empty list covers it).
    pub fn covers(&self, other: &CidrList) -> bool {
        if self.0.is_empty() {
            return true;
        }
        !other.0.is_empty()
            && other
                .0
                .iter()
                .all(|inner| self.0.iter().any(|outer| outer.contains(inner)))
    }
}

/// An IPv4-mapped block (`::ffff:a.b.c.d/n`, n >= 96) as the IPv4 block it
/// means: clients' mapped addresses are compared as IPv4 addresses, so an IPv6
/// block never matches an IPv4 client (`::/0` means every IPv6 client).
fn canonical_block(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else {
        return net;
    };
    const MAPPED: ipnet::Ipv6Net =
        match ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
            Ok(net) => net,
            Err(_) => panic!("a valid block"),
        };
    match v6.addr().to_ipv4_mapped() {
        Some(v4) if MAPPED.contains(&v6) => {
            ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4)
        }
        _ => net,
    }
}

/// A block no address is in: the stand-in for a stored block that does not parse.
fn nothing() -> IpNet {
    // 0.0.0.0/32 is "this host" and never a client's source address.
    IpNet::from_str("0.0.0.0/32").expect("a valid block")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_match_their_addresses_in_both_families() {
        let list = CidrList::parse(&["10.1.2.3/8", "192.0.2.7", "2001:db8::/32"]).unwrap();
        assert_eq!(list.to_stored(), "10.0.0.0/8 192.0.2.7/32 2001:db8::/32");
        for allowed in [
            "10.255.0.1",
            "192.0.2.7",
            "2001:db8:1::5",
            "::ffff:10.0.0.1",
        ] {
            assert!(list.allows(ip(allowed)), "{allowed}");
        }
        for denied in ["11.0.0.1", "192.0.2.8", "2001:db9::1", "::1"] {
            assert!(!list.allows(ip(denied)), "{denied}");
        }
        assert!(
            CidrList::default().allows(ip("203.0.113.9")),
            "empty allows any"
        );
        assert_eq!(CidrList::from_stored(&list.to_stored()), list);
    }

    #[test]
    fn mapped_blocks_mean_their_ipv4_blocks() {
        let list = CidrList::parse(&["::ffff:198.51.100.0/120", "::ffff:192.0.2.9"]).unwrap();
        assert_eq!(list.to_stored(), "198.51.100.0/24 192.0.2.9/32");
        assert!(list.allows(ip("198.51.100.77")));
        assert!(list.allows(ip("::ffff:198.51.100.77")));
        assert!(!list.allows(ip("198.51.101.1")));
        // An IPv6 block never matches IPv4 clients, mapped or not.
        let ipv6 = CidrList::parse(&["::/0"]).unwrap();
        assert!(ipv6.allows(ip("2001:db8::1")));
        assert!(!ipv6.allows(ip("::ffff:198.51.100.77")));
        assert!(!ipv6.allows(ip("198.51.100.77")));
    }

    #[test]
    fn covering_means_every_address_is_allowed() {
        let outer = CidrList::parse(&["10.0.0.0/8", "2001:db8::/32"]).unwrap();
        let inner = CidrList::parse(&["10.2.0.0/16", "2001:db8:1::/48"]).unwrap();
        assert!(outer.covers(&inner));
        assert!(!inner.covers(&outer));
        assert!(!outer.covers(&CidrList::default()), "no allowlist is wider");
        assert!(CidrList::default().covers(&outer));
        assert!(!outer.covers(&CidrList::parse(&["11.0.0.0/8"]).unwrap()));
    }

    #[test]
    fn bad_blocks_are_refused_and_bad_stored_blocks_fail_closed() {
        for bad in ["10.0.0.0/33", "not-an-ip", "10.0.0", "2001:db8::/129", ""] {
            assert!(CidrList::parse(&[bad]).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_BLOCKS).map(|i| format!("10.0.{i}.0/24")).collect();
        assert!(CidrList::parse(&many).is_err());
        let corrupt = CidrList::from_stored("garbage");
        assert!(!corrupt.is_empty());
        assert!(!corrupt.allows(ip("10.0.0.1")));
    }
}
