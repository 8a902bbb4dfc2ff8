//! The notification validator on arbitrary bytes: it never panics, `validate` and `parse` give
//! the same verdict, and a body it accepts is re-read to the same model: parse, write with
//! `notification_xml`, parse again, equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::notification::{notification_xml, parse, validate, Limits};

fuzz_target!(|body: &[u8]| {
    let limits = Limits::default();
    let verdict = validate(body, &limits);
    let model = parse(body, &limits);
    match (&verdict, &model) {
        (Ok(summary), Ok(model)) => {
            assert_eq!(summary.events, model.events().count());
            assert_eq!(summary.response_messages, model.response_messages.len());
            let written = notification_xml(model);
            match parse(written.as_bytes(), &limits) {
                Ok(again) => assert_eq!(&again, model, "re-read differs:\n{written}"),
                Err(rejection) => {
                    panic!(
                        "the written form of an accepted body is refused: {rejection}\n{written}"
                    )
                }
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "validate and parse refuse differently"),
        _ => panic!("validate {verdict:?} but parse {model:?}"),
    }
});
