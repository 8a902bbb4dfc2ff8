//! The PROXY protocol (v1 and v2) header parser on arbitrary bytes: no panic, a parsed header
//! lies within the bytes read, the same header parses alone (the bytes after it are not its
//! business), and a header complete in a prefix stays the same when more bytes arrive, as the
//! reader that feeds it chunk by chunk relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::gateway::proxy_protocol::parse_header;

fuzz_target!(|bytes: &[u8]| {
    let whole = parse_header(bytes);
    if let Ok(Some((peer, length))) = whole {
        assert!(
            length > 0 && length <= bytes.len(),
            "{length} of {}",
            bytes.len()
        );
        assert_eq!(parse_header(&bytes[..length]), Ok(Some((peer, length))));
    }
    if let Ok(None) = whole {
        assert!(bytes.len() < 1024, "waits for more than the 1 KiB cap");
    }
    // Fed in two pieces: a header found in the first piece is the header of the whole.
    for split in [bytes.len() / 2, bytes.len().saturating_sub(1)] {
        if let Ok(Some(early)) = parse_header(&bytes[..split]) {
            assert_eq!(whole, Ok(Some(early)), "split at {split}");
        }
    }
});
