//! The gateway's hot path: `validate` makes no heap allocation for a valid body like Exchange's,
//! whatever its size (checked with a counting global allocator, per thread). The tokenizer matches
//! end tags against the open element's name in the body instead of a copy, and its stacks are
//! inline `SmallVec`s far deeper than Exchange nests. Measured: 0 for every valid fixture, the
//! 50-event body (26 KB) and a 500-event body. (With quick-xml's `Reader`, which copies open
//! elements' names, it was 6 to 7.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pushgate::notification::{notification_xml, parse, validate, Limits};

/// The allocations of one `validate` call on a valid body like Exchange's.
const ALLOCATIONS_PER_VALID_BODY: usize = 0;

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/notifications")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The calendar-item fixture with its events repeated up to `count` (written as Exchange would).
fn with_events(count: usize) -> Vec<u8> {
    let limits = Limits::default();
    let mut model = parse(&fixture("created-calendar-item.xml"), &limits).expect("valid");
    if let Some(content) = model.response_messages[0].notification.as_mut() {
        let events = content.events.clone();
        content.events = events.iter().cycle().take(count).cloned().collect();
    }
    notification_xml(&model).into_bytes()
}

/// Allocations of one `validate` call on a body that must be valid with `events` events.
fn allocations_of_valid(body: &[u8], events: usize) -> usize {
    let limits = Limits::default();
    allocations_during(|| {
        let summary = validate(std::hint::black_box(body), &limits);
        assert_eq!(summary.map(|s| s.events), Ok(events));
    })
}

#[test]
fn validate_allocates_a_small_constant_on_valid_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/notifications");
    let limits = Limits::default();
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let body = std::fs::read(&path).expect("fixture");
        if validate(&body, &limits).is_err() {
            continue;
        }
        let count = allocations_during(|| {
            let _ = std::hint::black_box(validate(std::hint::black_box(&body), &limits));
        });
        assert_eq!(
            count,
            ALLOCATIONS_PER_VALID_BODY,
            "{} allocated {count} times",
            path.display()
        );
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn validate_allocations_do_not_grow_with_the_number_of_events() {
    let capture = fixture("exo-capture.xml");
    let one = with_events(1);
    let fifty = with_events(50);
    let five_hundred = with_events(500);
    assert!(capture.len() < 2_100 && fifty.len() > 25_000 && five_hundred.len() > 250_000);
    let capture_count = allocations_of_valid(&capture, 2);
    let one_count = allocations_of_valid(&one, 1);
    let fifty_count = allocations_of_valid(&fifty, 50);
    let five_hundred_count = allocations_of_valid(&five_hundred, 500);
    eprintln!(
        "allocations per validate: capture {capture_count}, 1 event {one_count}, \
         50 events {fifty_count}, 500 events {five_hundred_count}"
    );
    assert_eq!(
        capture_count, ALLOCATIONS_PER_VALID_BODY,
        "capture: {capture_count}"
    );
    // The same nesting, ten and a hundred times the events: the same count, not just a bound.
    assert_eq!(
        (fifty_count, five_hundred_count),
        (one_count, one_count),
        "1, 50 and 500 events"
    );
    assert_eq!(
        one_count, ALLOCATIONS_PER_VALID_BODY,
        "one event: {one_count}"
    );
}

#[test]
fn the_counter_sees_allocations() {
    let count = allocations_during(|| {
        std::hint::black_box(vec![1u8; 16]);
    });
    assert!(count >= 1);
}
