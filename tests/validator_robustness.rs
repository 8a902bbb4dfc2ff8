//! No body makes the validator panic: every truncation and many single-byte changes of every
//! fixture get a verdict, and `parse` always agrees with `validate`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

use pushgate::notification::{parse, validate, Limits};

fn fixtures() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/notifications");
    let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .expect("fixtures")
        .map(|entry| std::fs::read(entry.expect("entry").path()).expect("fixture"))
        .collect();
    bodies.sort();
    bodies
}

fn same_verdict(body: &[u8], limits: &Limits) {
    let validated = validate(body, limits);
    let parsed = parse(body, limits);
    assert_eq!(
        validated.as_ref().err(),
        parsed.as_ref().err(),
        "{}",
        String::from_utf8_lossy(body)
    );
}

#[test]
fn every_truncation_gets_a_verdict() {
    let limits = Limits::default();
    for (index, body) in fixtures().iter().enumerate() {
        // every position for two fixtures, every fifth for the others
        let step = if index < 2 { 1 } else { 5 };
        for end in (0..body.len()).step_by(step) {
            same_verdict(&body[..end], &limits);
            let only_whitespace_cut = body[end..].iter().all(u8::is_ascii_whitespace);
            assert_eq!(
                validate(&body[..end], &limits).is_ok(),
                only_whitespace_cut && end > 0 && validate(body, &limits).is_ok(),
                "cut at {end}"
            );
        }
    }
}

#[test]
fn single_byte_changes_get_a_verdict() {
    let limits = Limits::default();
    let replacements = [
        b'<', b'>', b'&', b'"', b'\'', b'/', b':', b'=', b';', b']', b'-', b'!', b'?', b' ', 0,
        0x80, 0xC3, 0xEF, 0xFF,
    ];
    for body in fixtures().iter().take(3) {
        for at in 0..body.len() {
            for &replacement in &replacements {
                let mut changed = body.clone();
                changed[at] = replacement;
                same_verdict(&changed, &limits);
            }
            let mut removed = body.clone();
            removed.remove(at);
            same_verdict(&removed, &limits);
        }
    }
}

#[test]
fn tiny_limits_never_panic() {
    let limits = Limits {
        max_depth: 1,
        max_name_bytes: 1,
        max_attribute_bytes: 1,
        max_attributes: 1,
        max_text_bytes: 1,
        max_events: 1,
        max_response_messages: 1,
    };
    for body in fixtures() {
        same_verdict(&body, &limits);
        assert!(validate(&body, &limits).is_err());
    }
}
