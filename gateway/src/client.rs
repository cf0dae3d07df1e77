//! Who the client is, by network address. Behind a load balancer or ingress the
//! TCP peer is the proxy, so when the peer is one of the configured trusted
//! proxies the address is taken from `X-Forwarded-For`: the right-most hop that
//! is not itself a trusted proxy. Without trusted proxies the peer is the client,
//! and a client-supplied `X-Forwarded-For` is ignored.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, Request},
    http::HeaderMap,
};
use ipnet::IpNet;

/// The client's address, as resolved for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// Proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(networks)
    }

    /// Parses a comma-separated list of addresses and networks (CIDR).
    pub fn parse(raw: &str) -> Result<TrustedProxies, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{item:?} is not an address or network like 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client address for a request from `peer` with `headers`. The list is
    /// walked from the right, the end our own proxies appended to: trusted hops
    /// are skipped, the first untrusted one is the client. An entry that is not an
    /// address stops the walk at the nearest trusted hop, so a client cannot hide
    /// behind garbage it wrote itself.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        while let Some(hop) = hops.pop() {
            let Ok(address) = hop.parse::<IpAddr>() else {
                break;
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        client
    }
}

impl ClientAddress {
    /// The key this client is counted under (see [`bank_kit::net::client_bucket`]).
    pub fn bucket(self) -> String {
        bank_kit::net::client_bucket(self.0)
    }
}

/// Resolves the client address once per request for the layers and handlers
/// that need it.
pub fn resolve(trusted: &TrustedProxies, request: &mut Request) {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    if let Some(peer) = peer {
        let client = trusted.resolve(peer, request.headers());
        request.extensions_mut().insert(ClientAddress(client));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            forwarded.parse().unwrap_or_else(|_| unreachable!()),
        );
        headers
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let trusted = TrustedProxies::default();
        assert_eq!(
            trusted.resolve(ip("203.0.113.1"), &headers("198.51.100.7")),
            ip("203.0.113.1")
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").unwrap_or_default();
        let forwarded = headers("6.6.6.6, 198.51.100.7, 10.1.2.3");
        assert_eq!(
            trusted.resolve(ip("10.0.0.5"), &forwarded),
            ip("198.51.100.7")
        );
        assert_eq!(
            trusted.resolve(ip("192.168.1.1"), &headers("198.51.100.8")),
            ip("198.51.100.8")
        );
    }

    #[test]
    fn garbage_in_the_list_stops_at_the_nearest_trusted_hop() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap_or_default();
        let forwarded = headers("198.51.100.7, not-an-address, 10.1.2.3");
        assert_eq!(trusted.resolve(ip("10.0.0.5"), &forwarded), ip("10.1.2.3"));
        let forwarded = headers("198.51.100.7, 203.0.113.4, unknown");
        assert_eq!(trusted.resolve(ip("10.0.0.5"), &forwarded), ip("10.0.0.5"));
    }

    #[test]
    fn only_trusted_hops_leave_the_left_most_one() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap_or_default();
        let forwarded = headers("10.9.9.9, 10.1.2.3");
        assert_eq!(trusted.resolve(ip("10.0.0.5"), &forwarded), ip("10.9.9.9"));
        assert_eq!(
            trusted.resolve(ip("10.0.0.5"), &HeaderMap::new()),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn a_client_cannot_spoof_through_an_untrusted_peer() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap_or_default();
        assert_eq!(
            trusted.resolve(ip("203.0.113.9"), &headers("10.0.0.1")),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn malformed_lists_are_refused() {
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.internal").is_err());
        assert_eq!(
            TrustedProxies::parse("").ok(),
            Some(TrustedProxies::default())
        );
    }
}
