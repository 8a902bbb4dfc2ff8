//! `X-Forwarded-For` resolution on arbitrary header values, peers and trusted-proxy lists: no
//! panic, and the client it names obeys the rule: an untrusted peer speaks for itself; behind
//! trusted proxies the client is the right-most hop that is not a trusted proxy (or, when every
//! hop is one, the left-most), never an address that appears nowhere.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use pushgate::gateway::client::{
    canonical, parse_forwarded_hop, resolve_client, NetList, MAX_FORWARDED_HOPS,
};

/// Addresses from a small pool, so that peers, hops and trusted networks meet often.
fn address(u: &mut Unstructured<'_>) -> Result<IpAddr> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, u.int_in_range(0..=3)?)),
        1 => IpAddr::V4(Ipv4Addr::new(40, 92, 0, u.int_in_range(0..=3)?)),
        2 => IpAddr::V6(Ipv6Addr::new(
            0x2603,
            0x1026,
            0,
            0,
            0,
            0,
            0,
            u.int_in_range(0..=3)?,
        )),
        3 => IpAddr::V6(Ipv4Addr::new(10, 0, 0, u.int_in_range(0..=3)?).to_ipv6_mapped()),
        4 => IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?)),
        _ => IpAddr::V6(Ipv6Addr::from(u.arbitrary::<u128>()?)),
    })
}

fn network(u: &mut Unstructured<'_>) -> Result<IpNet> {
    let ip = address(u)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = u.int_in_range(0..=max)?;
    Ok(IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or(IpNet::from(ip)))
}

/// One header value: hops written in the forms seen in the wild, or raw bytes.
fn header_value(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    if u.ratio(1u8, 8)? {
        return Ok(u.arbitrary::<&[u8]>()?.to_vec());
    }
    let hops = u.int_in_range(0..=4)?;
    let mut value = Vec::new();
    for i in 0..hops {
        if i > 0 {
            value.extend_from_slice(if u.arbitrary()? { b", " } else { b"," });
        }
        let ip = address(u)?;
        let text = match (u.int_in_range(0u8..=3)?, ip) {
            (1, IpAddr::V4(v4)) => format!("{v4}:443"),
            (1, IpAddr::V6(v6)) => format!("[{v6}]:443"),
            (2, ip) => format!("[{ip}]"),
            (3, ip) => format!(" {ip}\t"),
            (_, ip) => ip.to_string(),
        };
        value.extend_from_slice(text.as_bytes());
    }
    Ok(value)
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let peer = address(u)?;
    let mut trusted_nets = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        trusted_nets.push(network(u)?);
    }
    let mut values = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        values.push(header_value(u)?);
    }
    let trusted = NetList::new(trusted_nets);
    let result = resolve_client(peer, values.iter().map(Vec::as_slice), &trusted);

    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.contains(peer) {
        assert_eq!(
            result,
            Ok(peer),
            "an untrusted peer's headers were believed"
        );
        return Ok(());
    }
    // The rule, written plainly: walking from the right, skip trusted proxies; the first other
    // hop is the client; a hop that does not parse before it, or too many hops, is refused.
    let hops: Vec<&[u8]> = values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .collect();
    let expected = if hops.len() > MAX_FORWARDED_HOPS {
        Err(())
    } else {
        let mut expected = Ok(peer);
        for hop in hops.iter().rev() {
            match parse_forwarded_hop(hop) {
                None => {
                    expected = Err(());
                    break;
                }
                Some(ip) if !trusted.contains(ip) => {
                    expected = Ok(ip);
                    break;
                }
                Some(ip) => expected = Ok(ip),
            }
        }
        expected
    };
    assert_eq!(result.map_err(|_| ()), expected, "{values:?}");
    if let Ok(client) = result {
        assert_eq!(
            client,
            canonical(client),
            "a v4-mapped address was not made IPv4"
        );
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
