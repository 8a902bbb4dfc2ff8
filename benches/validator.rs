//! Throughput of the gateway's check (`validate`) and the worker's (`parse`) on the real Exchange
//! Online capture (2,020 bytes) and on a 50-event notification (Exchange's maximum per request).
//! Target: `validate` at 300 MB/s or more on one core (under 7 µs for the capture).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pushgate::notification::{notification_xml, parse, validate, Limits};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/notifications")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A body with 50 events (calendar item created + folder modified, repeated), written the way
/// Exchange writes it.
fn fifty_events(limits: &Limits) -> Vec<u8> {
    let mut model = parse(&fixture("created-calendar-item.xml"), limits).expect("fixture is valid");
    if let Some(content) = model.response_messages[0].notification.as_mut() {
        let events = content.events.clone();
        content.events = events.iter().cycle().take(50).cloned().collect();
    }
    notification_xml(&model).into_bytes()
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let bodies = [
        ("exo-capture", fixture("exo-capture.xml")),
        ("fifty-events", fifty_events(&limits)),
    ];
    for (name, body) in &bodies {
        assert!(validate(body, &limits).is_ok(), "{name} must be valid");
        let mut group = c.benchmark_group(*name);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("validate", |b| {
            b.iter(|| validate(black_box(body), &limits))
        });
        group.bench_function("parse", |b| b.iter(|| parse(black_box(body), &limits)));
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
