//! Pure rules of the update: which feed ranges to take, the operator's additions and exclusions,
//! and the sanity checks a new list must pass before it may replace the current one.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv4Subnets, Ipv6Net, Ipv6Subnets};

use super::feed::EndpointSet;
use super::Refusal;
use crate::allowlist::{parse_entry, CidrSet};

/// The service area whose sets the updater reads; `Common`, `MEM` and the rest are ignored.
pub const SERVICE_AREA: &str = "Exchange";

/// Which endpoint sets of the Exchange service area to admit: a set is taken when any rule
/// matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub endpoint_sets: Vec<u32>,
    pub categories: Vec<String>,
    pub include_required: bool,
}

impl Selection {
    fn takes(&self, set: &EndpointSet) -> bool {
        set.service_area == SERVICE_AREA
            && (self.endpoint_sets.contains(&set.id)
                || self
                    .categories
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(&set.category))
                || (self.include_required && set.required))
    }

    /// Words for messages: `endpoint sets 1, 2`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.endpoint_sets.is_empty() {
            let ids: Vec<String> = self.endpoint_sets.iter().map(u32::to_string).collect();
            parts.push(format!("endpoint sets {}", ids.join(", ")));
        }
        if !self.categories.is_empty() {
            parts.push(format!("categories {}", self.categories.join(", ")));
        }
        if self.include_required {
            parts.push("sets marked required".to_string());
        }
        if parts.is_empty() {
            return "no endpoint sets".to_string();
        }
        parts.join(" and ")
    }
}

/// The ranges of the selected sets, in feed order without duplicates.
pub fn select_ranges(sets: &[EndpointSet], selection: &Selection) -> Result<Vec<IpNet>, Refusal> {
    let mut seen = HashSet::new();
    let mut nets = Vec::new();
    for set in sets.iter().filter(|set| selection.takes(set)) {
        for text in &set.ips {
            let net = parse_entry(text).ok_or_else(|| Refusal::BadCidr {
                set: set.id,
                text: text.clone(),
            })?;
            if seen.insert(net) {
                nets.push(net);
            }
        }
    }
    if nets.is_empty() {
        return Err(Refusal::EmptySelection {
            selection: selection.describe(),
        });
    }
    Ok(nets)
}

/// Adds the operator's `extra` ranges and then cuts the `exclude` ranges out of the result. A
/// listed network that an exclusion covers only in part is replaced by the smallest list of
/// networks that covers what remains of it.
pub fn apply_operator_ranges(feed: &[IpNet], extra: &[IpNet], exclude: &[IpNet]) -> Vec<IpNet> {
    let mut seen = HashSet::new();
    let mut result = Vec::new();
    for &net in feed.iter().chain(extra) {
        for piece in subtract(net, exclude) {
            if seen.insert(piece) {
                result.push(piece);
            }
        }
    }
    result
}

fn subtract(net: IpNet, exclude: &[IpNet]) -> Vec<IpNet> {
    let overlapping: Vec<IpNet> = exclude
        .iter()
        .filter(|x| x.contains(&net) || net.contains(*x))
        .copied()
        .collect();
    if overlapping.is_empty() {
        return vec![net];
    }
    match net.trunc() {
        IpNet::V4(n) => {
            let cuts: Vec<(u32, u32)> = overlapping
                .iter()
                .filter_map(|x| match x.trunc() {
                    IpNet::V4(x) => Some((u32::from(x.network()), u32::from(x.broadcast()))),
                    IpNet::V6(_) => None,
                })
                .collect();
            remaining(u32::from(n.network()), u32::from(n.broadcast()), cuts)
                .into_iter()
                .flat_map(|(s, e)| Ipv4Subnets::new(Ipv4Addr::from(s), Ipv4Addr::from(e), 0))
                .map(|n: Ipv4Net| IpNet::V4(n))
                .collect()
        }
        IpNet::V6(n) => {
            let cuts: Vec<(u128, u128)> = overlapping
                .iter()
                .filter_map(|x| match x.trunc() {
                    IpNet::V6(x) => Some((u128::from(x.network()), u128::from(x.broadcast()))),
                    IpNet::V4(_) => None,
                })
                .collect();
            remaining(u128::from(n.network()), u128::from(n.broadcast()), cuts)
                .into_iter()
                .flat_map(|(s, e)| Ipv6Subnets::new(Ipv6Addr::from(s), Ipv6Addr::from(e), 0))
                .map(|n: Ipv6Net| IpNet::V6(n))
                .collect()
        }
    }
}

/// The parts of `[start, end]` that no cut covers. Cuts are CIDR-aligned, so each either lies
/// inside the interval or covers it whole.
fn remaining<T>(start: T, end: T, mut cuts: Vec<(T, T)>) -> Vec<(T, T)>
where
    T: Copy + Ord + std::ops::Add<Output = T> + std::ops::Sub<Output = T> + From<u8>,
{
    cuts.sort_unstable();
    let one = T::from(1u8);
    let mut pieces = Vec::new();
    let mut next = Some(start);
    for (cut_start, cut_end) in cuts {
        let Some(from) = next else { break };
        if cut_end < from {
            continue;
        }
        if cut_start > from {
            pieces.push((from, (cut_start - one).min(end)));
        }
        next = if cut_end >= end {
            None
        } else {
            Some(cut_end + one)
        };
    }
    if let Some(from) = next {
        if from <= end {
            pieces.push((from, end));
        }
    }
    pieces
}

/// Refuses prefixes broader than the configured minimum: a /4 in the feed is a bug or an
/// attack, never a list of front ends. An IPv6 range that reaches into the IPv4-mapped block is
/// refused too: the allowlist admits those addresses as IPv4 clients, so `::/16` would admit all
/// of IPv4 past the IPv4 minimum, and IPv4 exclusions do not cut IPv6 ranges (found by the `feed`
/// fuzz target).
pub fn check_prefixes(nets: &[IpNet], min_prefix_v4: u8, min_prefix_v6: u8) -> Result<(), Refusal> {
    let mapped: Option<IpNet> = Ipv6Net::new(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), 96)
        .ok()
        .map(IpNet::V6);
    for net in nets {
        let truncated = net.trunc();
        if let (IpNet::V6(_), Some(mapped)) = (truncated, mapped) {
            if truncated.contains(&mapped) || mapped.contains(&truncated) {
                return Err(Refusal::MappedIpv4 { net: *net });
            }
        }
        let minimum = match net {
            IpNet::V4(_) => min_prefix_v4,
            IpNet::V6(_) => min_prefix_v6,
        };
        if net.prefix_len() < minimum {
            return Err(Refusal::TooBroad { net: *net, minimum });
        }
    }
    Ok(())
}

/// How much of what the current list admits the new one would drop, per address family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shrink {
    pub v4_percent: f64,
    pub v6_percent: f64,
}

/// Compares the new list with the current one. IPv4 and IPv6 are judged separately: one IPv6 /36
/// holds more addresses than the whole IPv4 space, so a combined count would hide any IPv4 loss.
pub fn measure_shrink(current: &CidrSet, new: &CidrSet) -> Shrink {
    let percent = |total: u128, kept: u128| {
        if total == 0 {
            0.0
        } else {
            (total - kept.min(total)) as f64 * 100.0 / total as f64
        }
    };
    Shrink {
        v4_percent: percent(
            current.address_count_v4(),
            current.common_address_count_v4(new),
        ),
        v6_percent: percent(
            current.address_count_v6(),
            current.common_address_count_v6(new),
        ),
    }
}

/// Refuses a new list that drops more than `max_percent` of either family's addresses.
pub fn check_shrink(shrink: Shrink, max_percent: f64) -> Result<(), Refusal> {
    for (family, percent) in [("IPv4", shrink.v4_percent), ("IPv6", shrink.v6_percent)] {
        if percent > max_percent {
            return Err(Refusal::Shrink {
                family,
                percent,
                max_percent,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn set(id: u32, area: &str, category: &str, required: bool, ips: &[&str]) -> EndpointSet {
        EndpointSet {
            id,
            service_area: area.into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            category: category.into(),
            required,
        }
    }

    fn feed() -> Vec<EndpointSet> {
        vec![
            set(
                1,
                "Exchange",
                "Optimize",
                true,
                &["40.96.0.0/13", "2603:1006::/40"],
            ),
            set(
                2,
                "Exchange",
                "Allow",
                false,
                &["40.96.0.0/13", "2603:1006::/40"],
            ),
            set(9, "Exchange", "Allow", true, &["40.92.0.0/15"]),
            set(1, "Common", "Optimize", true, &["20.20.0.0/16"]),
            set(190, "MEM", "Default", true, &["30.30.0.0/16"]),
        ]
    }

    fn by_ids(ids: &[u32]) -> Selection {
        Selection {
            endpoint_sets: ids.to_vec(),
            categories: vec![],
            include_required: false,
        }
    }

    #[test]
    fn selects_exchange_sets_by_id_without_duplicates() {
        assert_eq!(
            select_ranges(&feed(), &by_ids(&[1, 2])).unwrap(),
            nets(&["40.96.0.0/13", "2603:1006::/40"])
        );
    }

    #[test]
    fn selects_by_category_or_required_within_exchange_only() {
        let by_category = Selection {
            endpoint_sets: vec![],
            categories: vec!["allow".into()],
            include_required: false,
        };
        assert_eq!(
            select_ranges(&feed(), &by_category).unwrap(),
            nets(&["40.96.0.0/13", "2603:1006::/40", "40.92.0.0/15"])
        );
        let required = Selection {
            endpoint_sets: vec![],
            categories: vec![],
            include_required: true,
        };
        let got = select_ranges(&feed(), &required).unwrap();
        assert!(!got.contains(&"20.20.0.0/16".parse().unwrap()));
        assert!(!got.contains(&"30.30.0.0/16".parse().unwrap()));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn empty_selection_is_refused() {
        let err = select_ranges(&feed(), &by_ids(&[8])).unwrap_err();
        assert!(matches!(err, Refusal::EmptySelection { .. }), "{err}");
        assert!(err.to_string().contains("endpoint sets 8"), "{err}");
    }

    #[test]
    fn unparsable_cidr_is_refused_with_its_set() {
        let sets = vec![set(
            1,
            "Exchange",
            "Optimize",
            true,
            &["40.96.0.0/13", "40.96.0.0/40"],
        )];
        let err = select_ranges(&sets, &by_ids(&[1])).unwrap_err();
        assert_eq!(
            err,
            Refusal::BadCidr {
                set: 1,
                text: "40.96.0.0/40".into()
            }
        );
    }

    #[test]
    fn extras_are_added_and_exclusions_cut_out() {
        let got = apply_operator_ranges(
            &nets(&["10.0.0.0/24", "10.1.0.0/24", "2603:1006::/40"]),
            &nets(&["192.0.2.0/24", "10.0.0.0/24"]),
            &nets(&["10.0.0.64/26", "10.1.0.0/16", "2603:1006::/48"]),
        );
        let text: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"10.0.0.0/26".to_string()), "{text:?}");
        assert!(text.contains(&"10.0.0.128/25".to_string()), "{text:?}");
        assert!(!text.iter().any(|n| n.starts_with("10.1.")), "{text:?}");
        assert!(text.contains(&"192.0.2.0/24".to_string()));
        let set = CidrSet::from_nets(got);
        assert_eq!(set.address_count_v4(), 192 + 256);
        assert!(!set.contains("10.0.0.100".parse().unwrap()));
        assert!(set.contains("10.0.0.63".parse().unwrap()));
        assert!(!set.contains("2603:1006::1".parse().unwrap()));
        assert!(set.contains("2603:1006:1::1".parse().unwrap()));
        assert_eq!(set.address_count_v6(), (1u128 << 88) - (1u128 << 80));
    }

    #[test]
    fn exclusion_at_the_top_of_the_space() {
        let got = apply_operator_ranges(
            &nets(&["0.0.0.0/0"]),
            &[],
            &nets(&["255.255.255.255/32", "0.0.0.0/32"]),
        );
        let set = CidrSet::from_nets(got);
        assert_eq!(set.address_count_v4(), (1u128 << 32) - 2);
        assert!(!set.contains("255.255.255.255".parse().unwrap()));
    }

    #[test]
    fn broad_prefixes_are_refused() {
        assert!(check_prefixes(&nets(&["40.96.0.0/13", "2603:1006::/40"]), 8, 16).is_ok());
        let err = check_prefixes(&nets(&["40.96.0.0/13", "32.0.0.0/4"]), 8, 16).unwrap_err();
        assert!(err.to_string().contains("32.0.0.0/4"), "{err}");
        assert!(check_prefixes(&nets(&["2000::/3"]), 8, 16).is_err());
        assert!(check_prefixes(&nets(&["10.0.0.0/8"]), 8, 16).is_ok());
    }

    #[test]
    fn ipv6_ranges_over_ipv4_mapped_addresses_are_refused() {
        // Found by the feed fuzz target: `::/40` passed the IPv6 minimum and, through the
        // allowlist's IPv4-mapped lookup, admitted every IPv4 address, excluded ones included.
        for text in [
            "::/40",
            "::/16",
            "::ffff:0:0/96",
            "::ffff:40.92.0.0/111",
            "::/0",
        ] {
            let refused = check_prefixes(&nets(&[text]), 8, 16).unwrap_err();
            assert!(
                matches!(refused, Refusal::MappedIpv4 { .. }),
                "{text}: {refused}"
            );
        }
        // Next to the mapped block, and real Exchange ranges, are fine.
        assert!(check_prefixes(
            &nets(&["::1/128", "::fffe:0:0/96", "2603:1006::/40"]),
            8,
            16
        )
        .is_ok());
    }

    #[test]
    fn shrink_is_measured_per_family() {
        let current = CidrSet::from_nets(nets(&["10.0.0.0/24", "10.0.1.0/24", "2603:1006::/40"]));
        let half = CidrSet::from_nets(nets(&["10.0.0.0/24", "2603:1006::/40", "11.0.0.0/8"]));
        let shrink = measure_shrink(&current, &half);
        assert_eq!(shrink.v4_percent, 50.0);
        assert_eq!(shrink.v6_percent, 0.0);
        assert!(matches!(
            check_shrink(shrink, 20.0),
            Err(Refusal::Shrink { family: "IPv4", .. })
        ));
        assert!(check_shrink(shrink, 50.0).is_ok());
        let no_v6 = CidrSet::from_nets(nets(&["10.0.0.0/23"]));
        assert_eq!(measure_shrink(&current, &no_v6).v6_percent, 100.0);
        let empty = CidrSet::from_nets([]);
        assert_eq!(measure_shrink(&empty, &half).v4_percent, 0.0);
    }
}
