//! [`CidrSet`]: the immutable set of networks the gateway admits.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// `::ffff:0:0/96`, where IPv4 addresses live when they reach a dual-stack IPv6 socket.
const V4_MAPPED_BASE: u128 = 0xffff_0000_0000;
const V4_MAPPED_LAST: u128 = V4_MAPPED_BASE + u32::MAX as u128;

/// An immutable set of IPv4 and IPv6 networks.
///
/// Lookups run on merged, sorted, disjoint intervals (one array of starts and one of ends per
/// family) with a binary search: no allocation, O(log n). A v4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) is looked up as the IPv4 address it carries, and an IPv6 entry that covers
/// part of `::ffff:0:0/96` admits the matching IPv4 addresses, so an address is admitted the same
/// way whichever socket family it arrived on.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    /// The networks as listed, exact duplicates removed, in their first order.
    entries: Vec<IpNet>,
    v4_starts: Box<[u32]>,
    v4_ends: Box<[u32]>,
    v6_starts: Box<[u128]>,
    v6_ends: Box<[u128]>,
}

impl CidrSet {
    /// Builds the set. Overlapping, nested and adjacent networks are merged for lookups;
    /// [`CidrSet::entries`] keeps them as given.
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> CidrSet {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            if !seen.insert(net) {
                continue;
            }
            entries.push(net);
            match net.trunc() {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => {
                    let (start, end) = (u128::from(n.network()), u128::from(n.broadcast()));
                    v6.push((start, end));
                    let (from, to) = (start.max(V4_MAPPED_BASE), end.min(V4_MAPPED_LAST));
                    if from <= to {
                        // Both bounds lie in the mapped /96, so the subtraction fits in a u32.
                        v4.push(((from - V4_MAPPED_BASE) as u32, (to - V4_MAPPED_BASE) as u32));
                    }
                }
            }
        }
        let (v4_starts, v4_ends) = merge(v4, |end| end.checked_add(1));
        let (v6_starts, v6_ends) = merge(v6, |end| end.checked_add(1));
        CidrSet {
            entries,
            v4_starts,
            v4_ends,
            v6_starts,
            v6_ends,
        }
    }

    /// Whether `address` lies in any listed network. The per-connection hot path.
    #[inline]
    pub fn contains(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(v4) => self.contains_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.contains_v4(v4),
                None => self.contains_v6(v6),
            },
        }
    }

    #[inline]
    fn contains_v4(&self, address: Ipv4Addr) -> bool {
        interval_contains(&self.v4_starts, &self.v4_ends, u32::from(address))
    }

    #[inline]
    fn contains_v6(&self, address: Ipv6Addr) -> bool {
        interval_contains(&self.v6_starts, &self.v6_ends, u128::from(address))
    }

    /// The networks as listed (exact duplicates removed), for metrics and `ranges check`.
    pub fn entries(&self) -> &[IpNet] {
        &self.entries
    }

    /// Number of listed networks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the set admits nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The listed networks that admit `address`: the slow path that explains a decision.
    pub fn matching(&self, address: IpAddr) -> Vec<IpNet> {
        let address = canonical(address);
        let mapped = match address {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        };
        self.entries
            .iter()
            .filter(|net| net.contains(&address) || mapped.is_some_and(|m| net.contains(&m)))
            .copied()
            .collect()
    }

    /// How many IPv4 addresses the set admits (v4-mapped IPv6 entries included).
    pub fn address_count_v4(&self) -> u128 {
        interval_sizes(&self.v4_starts, &self.v4_ends, |s, e| u128::from(e - s) + 1)
    }

    /// How many IPv6 addresses the set admits; saturates at `u128::MAX` for `::/0`.
    pub fn address_count_v6(&self) -> u128 {
        interval_sizes(&self.v6_starts, &self.v6_ends, |s, e| (e - s).saturating_add(1))
    }

    /// How many IPv4 addresses both sets admit.
    pub fn common_address_count_v4(&self, other: &CidrSet) -> u128 {
        overlap(
            (&self.v4_starts, &self.v4_ends),
            (&other.v4_starts, &other.v4_ends),
            |s, e| u128::from(e - s) + 1,
        )
    }

    /// How many IPv6 addresses both sets admit (saturating).
    pub fn common_address_count_v6(&self, other: &CidrSet) -> u128 {
        overlap(
            (&self.v6_starts, &self.v6_ends),
            (&other.v6_starts, &other.v6_ends),
            |s, e| (e - s).saturating_add(1),
        )
    }

    /// Whether both sets admit exactly the same addresses, however they are listed.
    pub fn same_addresses(&self, other: &CidrSet) -> bool {
        self.v4_starts == other.v4_starts
            && self.v4_ends == other.v4_ends
            && self.v6_starts == other.v6_starts
            && self.v6_ends == other.v6_ends
    }
}

/// A v4-mapped IPv6 address becomes the IPv4 address it carries.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

#[inline]
fn interval_contains<T: Copy + Ord>(starts: &[T], ends: &[T], value: T) -> bool {
    // Index of the first interval starting after `value`; the one before it is the only candidate.
    let after = starts.partition_point(|&start| start <= value);
    after > 0 && ends[after - 1] >= value
}

/// Sorts inclusive intervals and merges overlapping or adjacent ones. `successor` is `end + 1`,
/// or `None` at the top of the address space.
fn merge<T: Copy + Ord>(
    mut intervals: Vec<(T, T)>,
    successor: impl Fn(T) -> Option<T>,
) -> (Box<[T]>, Box<[T]>) {
    intervals.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(intervals.len());
    for (start, end) in intervals {
        if let Some(last) = merged.last_mut() {
            let touches = match successor(last.1) {
                Some(next) => start <= next,
                None => true,
            };
            if touches {
                last.1 = last.1.max(end);
                continue;
            }
        }
        merged.push((start, end));
    }
    let (starts, ends): (Vec<T>, Vec<T>) = merged.into_iter().unzip();
    (starts.into_boxed_slice(), ends.into_boxed_slice())
}

fn interval_sizes<T: Copy>(starts: &[T], ends: &[T], size: impl Fn(T, T) -> u128) -> u128 {
    starts
        .iter()
        .zip(ends)
        .fold(0u128, |total, (&s, &e)| total.saturating_add(size(s, e)))
}

fn overlap<T: Copy + Ord>(
    (a_starts, a_ends): (&[T], &[T]),
    (b_starts, b_ends): (&[T], &[T]),
    size: impl Fn(T, T) -> u128,
) -> u128 {
    let (mut i, mut j, mut total) = (0, 0, 0u128);
    while i < a_starts.len() && j < b_starts.len() {
        let start = a_starts[i].max(b_starts[j]);
        let end = a_ends[i].min(b_ends[j]);
        if start <= end {
            total = total.saturating_add(size(start, end));
        }
        if a_ends[i] < b_ends[j] {
            i += 1;
        } else {
            j += 1;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[&str]) -> CidrSet {
        CidrSet::from_nets(list.iter().map(|s| s.parse::<IpNet>().unwrap()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_bounds_are_inclusive() {
        let s = set(&["40.96.0.0/13", "131.253.33.215/32"]);
        assert!(s.contains(ip("40.96.0.0")));
        assert!(s.contains(ip("40.103.255.255")));
        assert!(!s.contains(ip("40.104.0.0")));
        assert!(!s.contains(ip("40.95.255.255")));
        assert!(s.contains(ip("131.253.33.215")));
        assert!(!s.contains(ip("131.253.33.214")));
        assert!(!s.contains(ip("131.253.33.216")));
    }

    #[test]
    fn ipv6_lookup_and_the_real_capture_source() {
        let s = set(&["2603:1026::/36", "2620:1ec:4::152/128"]);
        assert!(s.contains(ip("2603:1026:c02:3097::5")));
        assert!(!s.contains(ip("2603:1026:1000::")));
        assert!(s.contains(ip("2620:1ec:4::152")));
        assert!(!s.contains(ip("2620:1ec:4::153")));
        assert!(!s.contains(ip("40.96.0.1")));
    }

    #[test]
    fn v4_mapped_address_is_looked_up_as_ipv4() {
        let s = set(&["40.96.0.0/13"]);
        assert!(s.contains(ip("::ffff:40.96.1.2")));
        assert!(!s.contains(ip("::ffff:40.104.0.0")));
        // IPv4-compatible (deprecated) form is not a mapping.
        assert!(!s.contains(ip("::40.96.1.2")));
        assert_eq!(s.matching(ip("::ffff:40.96.1.2")), vec!["40.96.0.0/13".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn v4_mapped_entry_admits_ipv4() {
        let s = set(&["::ffff:10.1.0.0/112"]);
        assert!(s.contains(ip("10.1.2.3")));
        assert!(s.contains(ip("::ffff:10.1.2.3")));
        assert!(!s.contains(ip("10.2.0.0")));
        assert_eq!(s.matching(ip("10.1.2.3")).len(), 1);
        assert_eq!(s.address_count_v4(), 65_536);
    }

    #[test]
    fn overlapping_and_adjacent_networks_merge() {
        let s = set(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.3.0/24"]);
        assert_eq!(s.v4_starts.len(), 2);
        assert_eq!(s.address_count_v4(), 768);
        assert!(s.contains(ip("10.0.1.255")));
        assert!(!s.contains(ip("10.0.2.0")));
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn extremes_of_the_address_space() {
        let s = set(&["0.0.0.0/0", "::/0"]);
        assert!(s.contains(ip("255.255.255.255")));
        assert!(s.contains(ip("0.0.0.0")));
        assert!(s.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert_eq!(s.address_count_v4(), 1u128 << 32);
        assert_eq!(s.address_count_v6(), u128::MAX);
        let top = set(&["255.255.255.255/32", "255.255.255.254/32"]);
        assert_eq!(top.v4_starts.len(), 1);
        assert_eq!(top.address_count_v4(), 2);
    }

    #[test]
    fn empty_set_admits_nothing() {
        let s = CidrSet::from_nets([]);
        assert!(s.is_empty());
        assert!(!s.contains(ip("127.0.0.1")));
        assert!(!s.contains(ip("::1")));
    }

    #[test]
    fn entries_keep_listed_order_without_duplicates() {
        let s = set(&["10.0.0.0/8", "2603:1006::/40", "10.0.0.0/8", "10.1.0.0/16"]);
        let listed: Vec<String> = s.entries().iter().map(ToString::to_string).collect();
        assert_eq!(listed, ["10.0.0.0/8", "2603:1006::/40", "10.1.0.0/16"]);
        assert_eq!(s.matching(ip("10.1.2.3")).len(), 2);
        assert!(s.matching(ip("11.0.0.1")).is_empty());
    }

    #[test]
    fn host_bits_in_a_listed_network_are_ignored_for_lookups() {
        let s = set(&["10.0.0.1/8"]);
        assert!(s.contains(ip("10.255.0.1")));
        assert_eq!(s.entries()[0].to_string(), "10.0.0.1/8");
    }

    #[test]
    fn common_address_counts() {
        let old = set(&["10.0.0.0/16", "2603:1006::/40"]);
        let new = set(&["10.0.128.0/17", "10.1.0.0/16", "2603:1006::/41"]);
        assert_eq!(old.common_address_count_v4(&new), 32_768);
        assert_eq!(old.common_address_count_v6(&new), 1u128 << 87);
        assert_eq!(old.common_address_count_v4(&old), old.address_count_v4());
        assert!(set(&["10.0.0.0/25", "10.0.0.128/25"]).same_addresses(&set(&["10.0.0.0/24"])));
        assert!(!old.same_addresses(&new));
    }
}
