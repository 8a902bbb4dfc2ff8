//! Every fixture of `tests/fixtures/notifications/` through the real gateway (TLS on loopback)
//! with its listed verdict: valid ones reach the upstream byte for byte, the rest never do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_gets_its_verdict() {
    for (name, valid) in FIXTURE_VERDICTS {
        let h = Harness::start().await;
        let body = fixture(name);
        let response = h.post(&body).await;
        if *valid {
            assert_eq!(response.status, 200, "{name}");
            assert_eq!(response.body, ok_envelope(), "{name}");
            let seen = h.upstream.requests();
            assert_eq!(seen.len(), 1, "{name}");
            assert_eq!(seen[0].body, body, "{name}: forwarded byte for byte");
        } else {
            assert_eq!(response.status, 400, "{name}");
            assert_eq!(
                response.body, b"Bad Request\n",
                "{name}: no detail in the answer"
            );
            h.upstream.assert_untouched(name);
            h.access_log_with("\"reason\":\"xml_not_well_formed\"")
                .await;
            h.wait_metric(r#"pushgate_gateway_requests_total{outcome="rejected",reason="xml_not_well_formed"}"#, 1.0).await;
        }
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_violations_are_refused_before_any_upstream() {
    let h = Harness::start().await;
    let valid = String::from_utf8(fixture("exo-capture.xml")).unwrap();
    for (what, body) in [
        (
            "events out of order",
            valid.replacen("<t:TimeStamp>2020-12-03T11:03:50Z</t:TimeStamp>", "", 1),
        ),
        (
            "bad dateTime",
            valid.replacen("2020-12-03T11:03:50Z", "2020-13-03T11:03:50Z", 1),
        ),
        (
            "bad boolean",
            valid.replace("<t:MoreEvents>false<", "<t:MoreEvents>no<"),
        ),
        (
            "unknown response class",
            valid.replace("ResponseClass=\"Success\"", "ResponseClass=\"Fine\""),
        ),
        (
            "unknown response code",
            valid.replace(">NoError<", ">AllGood<"),
        ),
        (
            "wrong namespace",
            valid.replace("2006/types\"", "2007/types\""),
        ),
        ("empty subscription id", {
            let start = valid.find("<t:SubscriptionId>").unwrap() + "<t:SubscriptionId>".len();
            let end = valid.find("</t:SubscriptionId>").unwrap();
            format!("{}{}", &valid[..start], &valid[end..])
        }),
    ] {
        let response = h.post(body.as_bytes()).await;
        assert_eq!(response.status, 400, "{what}");
    }
    h.upstream.assert_untouched("schema violations");
    h.stop().await;
}
