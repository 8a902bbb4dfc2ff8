//! Who the client is: the peer address, or behind a trusted load balancer the address it vouches
//! for (PROXY protocol or the right-most `X-Forwarded-For` hop that is not itself a trusted proxy).
//! Headers from anyone else are never believed.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::reject::Reject;

/// Most `X-Forwarded-For` hops read; a longer chain is refused rather than walked.
pub const MAX_FORWARDED_HOPS: usize = 32;

/// `::ffff:a.b.c.d` is the IPv4 address `a.b.c.d` (dual-stack sockets report IPv4 peers so).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A short list of networks (trusted proxies, probe networks): a linear scan is fastest for the
/// handful of entries these lists hold.
#[derive(Debug, Clone, Default)]
pub struct NetList(Vec<IpNet>);

impl NetList {
    pub fn new(nets: Vec<IpNet>) -> Self {
        NetList(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses one `X-Forwarded-For` element: a bare address, `[v6]`, `[v6]:port` or `v4:port`.
pub fn parse_forwarded_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop)
        .ok()?
        .trim_matches(|c| c == ' ' || c == '\t');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(canonical(socket.ip()));
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// The client a request speaks for. `peer` is the address that opened the connection (or the one
/// a trusted proxy's PROXY header named). Only when `peer` is a trusted proxy are the
/// `X-Forwarded-For` values consulted: walking from the right, the first hop that is not a trusted
/// proxy is the client. With no such hop the request comes from the proxy chain itself.
pub fn resolve_client<'v>(
    peer: IpAddr,
    forwarded_values: impl Iterator<Item = &'v [u8]>,
    trusted: &NetList,
) -> Result<IpAddr, Reject> {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.contains(peer) {
        return Ok(peer);
    }
    let mut hops: Vec<&[u8]> = Vec::new();
    for value in forwarded_values {
        for hop in value.split(|&b| b == b',') {
            hops.push(hop);
            if hops.len() > MAX_FORWARDED_HOPS {
                return Err(Reject::BadForwardedFor);
            }
        }
    }
    let mut leftmost = peer;
    for hop in hops.iter().rev() {
        let ip = parse_forwarded_hop(hop).ok_or(Reject::BadForwardedFor)?;
        if !trusted.contains(ip) {
            return Ok(ip);
        }
        leftmost = ip;
    }
    Ok(leftmost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> NetList {
        NetList::new(items.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let trusted = list(&["10.0.0.0/8"]);
        let client = resolve_client(ip("203.0.113.9"), [&b"40.92.0.1"[..]].into_iter(), &trusted);
        assert_eq!(client, Ok(ip("203.0.113.9")));
        // Even garbage is ignored when the peer is not trusted.
        let client = resolve_client(ip("203.0.113.9"), [&b"garbage"[..]].into_iter(), &trusted);
        assert_eq!(client, Ok(ip("203.0.113.9")));
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let trusted = list(&["10.0.0.0/8"]);
        let values: [&[u8]; 2] = [b"198.51.100.1, 40.92.0.1", b"10.1.1.1"];
        let client = resolve_client(ip("10.0.0.2"), values.into_iter(), &trusted);
        // 10.1.1.1 is another trusted hop; 40.92.0.1 is the first untrusted one from the right.
        assert_eq!(client, Ok(ip("40.92.0.1")));
    }

    #[test]
    fn trusted_peer_without_header_is_the_client() {
        let trusted = list(&["10.0.0.0/8"]);
        assert_eq!(
            resolve_client(ip("10.0.0.2"), std::iter::empty(), &trusted),
            Ok(ip("10.0.0.2"))
        );
        let values: [&[u8]; 1] = [b"10.9.9.9"];
        assert_eq!(
            resolve_client(ip("10.0.0.2"), values.into_iter(), &trusted),
            Ok(ip("10.9.9.9"))
        );
    }

    #[test]
    fn malformed_hops_are_refused() {
        let trusted = list(&["10.0.0.0/8"]);
        for bad in [&b"not-an-ip"[..], b"", b"40.92.0.1, ", b"1.2.3.4.5"] {
            assert_eq!(
                resolve_client(ip("10.0.0.2"), [bad].into_iter(), &trusted),
                Err(Reject::BadForwardedFor),
                "{bad:?}"
            );
        }
        let long = "1.1.1.1,".repeat(40).into_bytes();
        assert_eq!(
            resolve_client(ip("10.0.0.2"), [&long[..]].into_iter(), &trusted),
            Err(Reject::BadForwardedFor)
        );
    }

    #[test]
    fn hop_forms() {
        assert_eq!(parse_forwarded_hop(b" 40.92.0.1 "), Some(ip("40.92.0.1")));
        assert_eq!(parse_forwarded_hop(b"40.92.0.1:443"), Some(ip("40.92.0.1")));
        assert_eq!(
            parse_forwarded_hop(b"2603:1026::5"),
            Some(ip("2603:1026::5"))
        );
        assert_eq!(
            parse_forwarded_hop(b"[2603:1026::5]"),
            Some(ip("2603:1026::5"))
        );
        assert_eq!(
            parse_forwarded_hop(b"[2603:1026::5]:443"),
            Some(ip("2603:1026::5"))
        );
        assert_eq!(
            parse_forwarded_hop(b"::ffff:40.92.0.1"),
            Some(ip("40.92.0.1"))
        );
        assert_eq!(parse_forwarded_hop(b"unknown"), None);
    }

    #[test]
    fn mapped_addresses_match_v4_lists() {
        let trusted = list(&["127.0.0.0/8"]);
        assert!(trusted.contains(ip("::ffff:127.0.0.5")));
        assert!(!trusted.contains(ip("::1")));
    }
}
