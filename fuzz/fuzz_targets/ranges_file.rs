//! The ranges file parser on arbitrary text: no panic, and a file it accepts, written again by
//! the updater's renderer, reads back to the same entries and the same addresses (and each entry's
//! first and last address are in the set).
#![no_main]

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use pushgate::allowlist::parse_ranges_file;
use pushgate::ranges::write::{render_ranges_file, ListOrigin};

fuzz_target!(|bytes: &[u8]| {
    // The reader refuses non-UTF-8 files before parsing.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(file) = parse_ranges_file(text) else {
        return;
    };
    let entries = file.set.entries();
    assert!(!entries.is_empty());
    if let Some(count) = file.header.count {
        assert!(
            count >= entries.len(),
            "count {count}, {} distinct",
            entries.len()
        );
    }
    for net in entries {
        let (first, last) = match net {
            IpNet::V4(n) => (n.network().into(), n.broadcast().into()),
            IpNet::V6(n) => (n.network().into(), n.broadcast().into()),
        };
        assert!(file.set.contains(first) && file.set.contains(last), "{net}");
    }
    let origin = ListOrigin {
        source: file.header.source.clone().unwrap_or_default(),
        instance: file.header.instance.clone().unwrap_or_default(),
        version: file.header.version.clone().unwrap_or_default(),
        fetched: file.header.fetched.clone().unwrap_or_default(),
        selection: "fuzz".to_string(),
    };
    let written = render_ranges_file(&origin, entries, 0, 0);
    let again = match parse_ranges_file(&written) {
        Ok(again) => again,
        Err(error) => panic!("the renderer's own file is refused: {error}\n{written}"),
    };
    assert_eq!(again.set.entries(), entries);
    assert!(again.set.same_addresses(&file.set));
    assert_eq!(again.header.count, Some(entries.len()));
});
