//! The Microsoft 365 endpoints feed parser on arbitrary bytes, and the update's pure steps after
//! it: no panic; a version it accepts passes the version check; a feed it accepts becomes a list
//! whose addresses are exactly the selected ranges minus the exclusions, and whose rendered file
//! the gateway reads back to the same addresses.
#![no_main]

use std::net::IpAddr;

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use pushgate::allowlist::{parse_ranges_file, CidrSet};
use pushgate::ranges::feed::{check_version, parse_endpoints, parse_version_answer};
use pushgate::ranges::select::{apply_operator_ranges, check_prefixes, select_ranges, Selection};
use pushgate::ranges::write::{render_ranges_file, ListOrigin};

fn first_and_last(net: &IpNet) -> [IpAddr; 2] {
    match net {
        IpNet::V4(n) => [n.network().into(), n.broadcast().into()],
        IpNet::V6(n) => [n.network().into(), n.broadcast().into()],
    }
}

fuzz_target!(|body: &[u8]| {
    if let Ok(version) = parse_version_answer(body, "Worldwide") {
        assert!(check_version(&version).is_ok(), "{version:?}");
    }
    let Ok(sets) = parse_endpoints(body) else {
        return;
    };
    let selection = Selection {
        endpoint_sets: vec![1, 10],
        categories: vec!["Optimize".to_string()],
        include_required: true,
    };
    let Ok(selected) = select_ranges(&sets, &selection) else {
        return;
    };
    // Exclusions that cut the real Exchange ranges in pieces.
    let exclude: Vec<IpNet> = [
        "40.92.0.0/16",
        "52.100.0.0/15",
        "2603:1026::/48",
        "104.47.0.0/17",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect();
    let extra: Vec<IpNet> = ["198.51.100.0/24"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let nets = apply_operator_ranges(&selected, &extra, &exclude);
    // As the update does: a list the prefix checks refuse is never written.
    if check_prefixes(&nets, 8, 16).is_err() {
        return;
    }
    let result = CidrSet::from_nets(nets.iter().copied());
    let excluded = CidrSet::from_nets(exclude.iter().copied());
    for net in selected.iter().chain(&extra) {
        for address in first_and_last(&net.trunc()) {
            assert_eq!(
                result.contains(address),
                !excluded.contains(address),
                "{address} of {net}"
            );
        }
    }
    for net in &nets {
        for address in first_and_last(net) {
            assert!(
                !excluded.contains(address),
                "{net} keeps excluded {address}"
            );
        }
    }
    if nets.is_empty() {
        return;
    }
    let origin = ListOrigin {
        source: "fuzz".to_string(),
        instance: "Worldwide".to_string(),
        version: "2025043000".to_string(),
        fetched: "2025-05-01T00:00:00Z".to_string(),
        selection: selection.describe(),
    };
    let text = render_ranges_file(&origin, &nets, extra.len(), exclude.len());
    let file = match parse_ranges_file(&text) {
        Ok(file) => file,
        Err(error) => panic!("the rendered list is refused: {error}\n{text}"),
    };
    assert!(file.set.same_addresses(&result));
    assert_eq!(file.version(), Some("2025043000"));
});
