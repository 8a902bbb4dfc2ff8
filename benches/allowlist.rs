//! Allowlist speed: lookups in a 10,000-range set (target: under 100 ns, IPv4 and IPv6), and
//! building and swapping in a 10,000-range set (target: under 10 ms).
//! Run: `cargo bench --bench allowlist`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use pushgate::allowlist::{parse_ranges_file, CidrSet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RANGES: usize = 10_000;
/// Lookup addresses per family, cycled through so the branch predictor cannot learn one answer.
const PROBES: usize = 4_096;

fn random_v4(rng: &mut StdRng) -> IpNet {
    let prefix = rng.random_range(16..=28);
    IpNet::V4(
        Ipv4Net::new(Ipv4Addr::from(rng.random::<u32>()), prefix)
            .unwrap()
            .trunc(),
    )
}

fn random_v6(rng: &mut StdRng) -> IpNet {
    // Inside 2000::/3 like real unicast space; prefixes as Microsoft publishes them.
    let address = (rng.random::<u128>() >> 3) | (1u128 << 125);
    let prefix = rng.random_range(32..=64);
    IpNet::V6(
        Ipv6Net::new(Ipv6Addr::from(address), prefix)
            .unwrap()
            .trunc(),
    )
}

fn nets(rng: &mut StdRng, make: fn(&mut StdRng) -> IpNet) -> Vec<IpNet> {
    (0..RANGES).map(|_| make(rng)).collect()
}

/// Half the probes are the first address of a listed network, half are random (almost all
/// misses).
fn probes<A: Copy>(
    rng: &mut StdRng,
    nets: &[IpNet],
    listed: impl Fn(IpAddr) -> A,
    random: impl Fn(&mut StdRng) -> A,
) -> Vec<A> {
    (0..PROBES)
        .map(|i| {
            if i % 2 == 0 {
                listed(nets[rng.random_range(0..nets.len())].network())
            } else {
                random(rng)
            }
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let v4 = nets(&mut rng, random_v4);
    let v6 = nets(&mut rng, random_v6);
    // Probes are kept as Ipv4Addr / Ipv6Addr and wrapped into an IpAddr at the call, as the
    // gateway gets them from a socket address. (An array of 17-byte IpAddr values makes every
    // other load straddle a cache line and measures the harness instead of the lookup.)
    let v4_probes = probes(
        &mut rng,
        &v4,
        |ip| match ip {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        },
        |r| Ipv4Addr::from(r.random::<u32>()),
    );
    let v6_probes = probes(
        &mut rng,
        &v6,
        |ip| match ip {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
        },
        |r| Ipv6Addr::from((r.random::<u128>() >> 3) | (1u128 << 125)),
    );
    let mapped_probes: Vec<Ipv6Addr> = v4_probes.iter().map(Ipv4Addr::to_ipv6_mapped).collect();
    let set = CidrSet::from_nets(v4.iter().chain(&v6).copied());

    let mut group = c.benchmark_group("allowlist_contains_10k");
    group.bench_function("ipv4", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % PROBES;
            set.contains(IpAddr::V4(black_box(v4_probes[i])))
        })
    });
    for (name, probes) in [("ipv6", &v6_probes), ("ipv4_mapped", &mapped_probes)] {
        group.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % PROBES;
                set.contains(IpAddr::V6(black_box(probes[i])))
            })
        });
    }
    group.finish();
}

fn build_and_swap(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0xb111d);
    let mixed: Vec<IpNet> = (0..RANGES)
        .map(|i| {
            if i % 4 == 0 {
                random_v6(&mut rng)
            } else {
                random_v4(&mut rng)
            }
        })
        .collect();
    let text: String = std::iter::once(format!("# version: 2025043000\n# count: {RANGES}\n"))
        .chain(mixed.iter().map(|n| format!("{n}\n")))
        .collect();
    let handle = ArcSwap::from_pointee(CidrSet::from_nets(mixed.iter().copied()));

    let mut group = c.benchmark_group("allowlist_build_10k");
    group.bench_function("from_nets", |b| {
        b.iter_batched(|| mixed.clone(), CidrSet::from_nets, BatchSize::LargeInput)
    });
    group.bench_function("parse_build_swap", |b| {
        b.iter(|| {
            let file = parse_ranges_file(black_box(&text)).unwrap();
            // The displaced set is dropped here too, as in a real reload.
            handle.store(Arc::new(file.set));
        })
    });
    group.finish();
}

criterion_group!(benches, lookups, build_and_swap);
criterion_main!(benches);
