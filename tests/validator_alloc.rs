//! The gateway's hot path: `validate` allocates nothing for bodies like Exchange's (checked with a
//! counting global allocator, per thread).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pushgate::notification::{notification_xml, parse, validate, Limits};

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

#[test]
fn validate_does_not_allocate_on_valid_fixtures() {
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
        assert_eq!(count, 0, "{} allocated {count} times", path.display());
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn validate_does_not_allocate_for_fifty_events() {
    let limits = Limits::default();
    let body = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/notifications/created-calendar-item.xml"),
    )
    .expect("fixture");
    let mut model = parse(&body, &limits).expect("valid");
    if let Some(content) = model.response_messages[0].notification.as_mut() {
        let events = content.events.clone();
        content.events = events.iter().cycle().take(50).cloned().collect();
    }
    let big = notification_xml(&model);
    let count = allocations_during(|| {
        let summary = validate(std::hint::black_box(big.as_bytes()), &limits);
        assert_eq!(summary.map(|s| s.events), Ok(50));
    });
    assert_eq!(count, 0);
}

#[test]
fn the_counter_sees_allocations() {
    let count = allocations_during(|| {
        std::hint::black_box(vec![1u8; 16]);
    });
    assert!(count >= 1);
}
