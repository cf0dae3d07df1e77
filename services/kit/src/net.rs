//! Client addresses as the throttles count them.

use std::net::{IpAddr, Ipv6Addr};

/// The key a client address is counted under: an IPv4 address as it is, an IPv6
/// address as its /64 network, since one subscriber is usually given a whole /64
/// and could otherwise rotate through it to escape every limit.
pub fn client_bucket(address: IpAddr) -> String {
    match address {
        IpAddr::V4(address) => address.to_string(),
        IpAddr::V6(address) => match address.to_ipv4_mapped() {
            Some(mapped) => mapped.to_string(),
            None => {
                let network = Ipv6Addr::from(u128::from(address) & !(u128::from(u64::MAX)));
                format!("{network}/64")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(raw: &str) -> String {
        client_bucket(raw.parse().unwrap_or_else(|_| unreachable!()))
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_network() {
        assert_eq!(bucket("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(bucket("2001:db8:1:2:bbbb::9"), bucket("2001:db8:1:2::1"));
        assert_ne!(bucket("2001:db8:1:3::1"), bucket("2001:db8:1:2::1"));
        assert_eq!(bucket("::ffff:198.51.100.7"), "198.51.100.7");
        assert_eq!(bucket("198.51.100.7"), "198.51.100.7");
    }
}
