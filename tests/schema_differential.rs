//! Differential test: `pushgate validate` against `xmllint --schema` on a few thousand mutations
//! of the valid fixtures, drawn by proptest (a fixed seed by default). A disagreement is allowed
//! only where pushgate is stricter on purpose (a rejection with `is_xsd_deviation()`) or for the
//! documented Error-without-Notification deviation; the first other one is shrunk to a minimal
//! mutation before the test fails. Says SKIPPED (or fails with `PUSHGATE_REQUIRE_ALL=1`) when
//! xmllint or the schema is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches may panic on setup failures

mod skip;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use pushgate::notification::{validate, Limits, RejectionKind};

/// A fixed seed keeps the run deterministic; `PUSHGATE_DIFFERENTIAL_SEED=<u64>` explores others.
const SEED: u64 = 0x5EED_2026_0001;
const MUTATIONS: usize = 3600;
const CHUNK: usize = 400;
/// Random choices one case carries: two mutations take far fewer.
const CHOICES: usize = 32;
/// Bound on the shrinking of a disagreement (each step runs xmllint once).
const SHRINK_STEPS: usize = 400;

const SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
const TYPES: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// One generated case: which seed, whether to mutate twice, and the random choices the mutation
/// operators consume. proptest draws them and, for a failure, shrinks them toward the first
/// option of every choice.
#[derive(Debug, Clone)]
struct Case {
    seed: usize,
    twice: bool,
    choices: Vec<u64>,
}

fn case(seeds: usize) -> impl Strategy<Value = Case> {
    (
        0..seeds,
        proptest::bool::weighted(0.15),
        proptest::collection::vec(any::<u64>(), CHOICES),
    )
        .prop_map(|(seed, twice, choices)| Case {
            seed,
            twice,
            choices,
        })
}

/// The operators' source of choices: a case's values in turn (0, the first option, once spent).
struct Rng<'a> {
    choices: &'a [u64],
    at: usize,
}

impl<'a> Rng<'a> {
    fn new(choices: &'a [u64]) -> Self {
        Rng { choices, at: 0 }
    }
    fn next(&mut self) -> u64 {
        let value = self.choices.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        value
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<T: Copy + Default>(&mut self, items: &[T]) -> T {
        if items.is_empty() {
            return T::default();
        }
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One element of a seed document, by byte ranges.
#[derive(Debug, Clone)]
struct Element {
    start_tag: (usize, usize),
    end_tag: Option<(usize, usize)>,
    qname: String,
    parent: Option<usize>,
    /// Character data directly inside (for leaf elements): byte range.
    text: Option<(usize, usize)>,
    has_children: bool,
}

impl Element {
    fn range(&self) -> (usize, usize) {
        (
            self.start_tag.0,
            self.end_tag.map_or(self.start_tag.1, |e| e.1),
        )
    }
}

/// Splits a well-formed seed into elements (the seeds are simple: no CDATA in tags, no PIs).
fn elements(doc: &str) -> Vec<Element> {
    let bytes = doc.as_bytes();
    let mut out: Vec<Element> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        if doc[i..].starts_with("<!--") {
            i += doc[i..].find("-->").map_or(bytes.len(), |p| p + 3);
            continue;
        }
        if doc[i..].starts_with("<![CDATA[") {
            i += doc[i..].find("]]>").map_or(bytes.len(), |p| p + 3);
            continue;
        }
        if doc[i..].starts_with("<?") {
            i += doc[i..].find("?>").map_or(bytes.len(), |p| p + 2);
            continue;
        }
        // find the end of the tag, respecting quotes
        let mut j = i + 1;
        let mut quote = 0u8;
        while j < bytes.len() {
            let b = bytes[j];
            if quote != 0 {
                if b == quote {
                    quote = 0;
                }
            } else if b == b'"' || b == b'\'' {
                quote = b;
            } else if b == b'>' {
                break;
            }
            j += 1;
        }
        let tag_end = (j + 1).min(bytes.len());
        if bytes[i + 1] == b'/' {
            if let Some(index) = stack.pop() {
                out[index].end_tag = Some((i, tag_end));
                let text_start = out[index].start_tag.1;
                if !out[index].has_children {
                    out[index].text = Some((text_start, i));
                }
            }
        } else {
            let name_end = doc[i + 1..]
                .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
                .map_or(tag_end, |p| (i + 1 + p).min(tag_end));
            let parent = stack.last().copied();
            if let Some(p) = parent {
                out[p].has_children = true;
            }
            out.push(Element {
                start_tag: (i, tag_end),
                end_tag: None,
                qname: doc[i + 1..name_end].to_string(),
                parent,
                text: None,
                has_children: false,
            });
            if bytes.get(j - 1) != Some(&b'/') {
                stack.push(out.len() - 1);
            }
        }
        i = tag_end;
    }
    out
}

const LOCAL_NAMES: &[&str] = &[
    "Envelope",
    "Header",
    "Body",
    "SendNotification",
    "ResponseMessages",
    "SendNotificationResponseMessage",
    "GetItemResponseMessage",
    "MessageText",
    "ResponseCode",
    "DescriptiveLinkKey",
    "MessageXml",
    "Notification",
    "SubscriptionId",
    "PreviousWatermark",
    "MoreEvents",
    "CopiedEvent",
    "CreatedEvent",
    "DeletedEvent",
    "ModifiedEvent",
    "MovedEvent",
    "NewMailEvent",
    "StatusEvent",
    "FreeBusyChangedEvent",
    "Watermark",
    "TimeStamp",
    "ItemId",
    "FolderId",
    "ParentFolderId",
    "OldItemId",
    "OldFolderId",
    "OldParentFolderId",
    "UnreadCount",
    "Value",
    "RequestServerVersion",
    "Foo",
    "ServerVersionInfo",
];

const PREFIXES: &[&str] = &[
    "", "soap11:", "s:", "m:", "t:", "e:", "x:", "zz:", "xml:", "xmlns:", ":", "m:t:",
];

const TEXT_VALUES: &[&str] = &[
    "",
    " ",
    "x",
    "true",
    "false",
    "1",
    "0",
    " true ",
    "True",
    "yes",
    "2020-12-03T11:03:50Z",
    "2020-02-29T00:00:00",
    "2019-02-29T00:00:00",
    "2020-01-01T24:00:00",
    "2020-01-01T24:00:01",
    "2020-01-01T00:00:00+14:00",
    "2020-01-01T00:00:00+14:01",
    " 2020-01-01T00:00:00Z",
    "2020-01-01T00:00:00Z ",
    "2020-01-01T00:00:00 ",
    "0000-01-01T00:00:00",
    "-0001-01-01T00:00:00",
    "10000-01-01T00:00:00Z",
    "01000-01-01T00:00:00",
    "2020-01-01T23:59:59.99999999999999Z",
    "2020-01-01T23:59:59.9999999999999Z",
    "2020-01-01T00:00:00.5Z",
    "2020-1-01T00:00:00",
    "2147483647",
    "2147483648",
    "-2147483648",
    "-2147483649",
    "+0",
    " 5",
    "5 ",
    "007",
    "1.0",
    "NoError",
    " NoError",
    "NoError ",
    "ErrorReadEventsFailed",
    "ErrorAccessDenied",
    "noerror",
    "&amp;",
    "&lt;x&gt;",
    "&#x10FFFF;",
    "&#0;",
    "&#xFFFE;",
    "&foo;",
    "a&b",
    "<![CDATA[NoError]]>",
    "<![CDATA[]]>",
    "tr<!--c-->ue",
    "No<![CDATA[Err]]>or",
    "\u{e9}t\u{e9}",
    "a]]>b",
    "\r\n",
    "&#13;",
    "&#32;",
    "\t",
    "<x/>",
    "<t:Value Name=\"a\">b</t:Value>",
];

const DATE_TIMES: &[&str] = &[
    "2020-12-03T11:03:50Z",
    "2020-12-03T11:03:50",
    "2020-12-03T11:03:50.123+05:30",
    "2020-02-29T00:00:00Z",
    "2021-02-29T00:00:00Z",
    "2000-02-29T12:00:00-14:00",
    "1900-02-29T00:00:00",
    "2020-04-31T00:00:00",
    "2020-06-30T24:00:00Z",
    "2020-06-30T24:00:00.000Z",
    "2020-06-30T24:00:00.001Z",
    "2020-06-30T23:59:60Z",
    "2020-06-30T23:60:00Z",
    "2020-13-01T00:00:00Z",
    "2020-00-10T00:00:00Z",
    "2020-06-00T00:00:00Z",
    "2020-01-01T00:00:00+14:00",
    "2020-01-01T00:00:00-14:01",
    "2020-01-01T00:00:00+13:59",
    "2020-01-01T00:00:00+24:00",
    "2020-01-01T00:00:00Z ",
    "2020-01-01T00:00:00Z\n\t",
    " 2020-01-01T00:00:00Z",
    "2020-01-01T00:00:00 ",
    "2020-01-01T00:00:00Zx",
    "2020-01-01T00:00:00Z x",
    "2020-01-01T00:00:00+01:00\t",
    "0000-01-01T00:00:00",
    "-0000-01-01T00:00:00",
    "0001-01-01T00:00:00",
    "-0001-01-01T00:00:00Z",
    "-0004-02-29T00:00:00",
    "-0001-02-29T00:00:00",
    "12345-01-01T00:00:00",
    "012345-01-01T00:00:00",
    "999-01-01T00:00:00",
    "9223372036854775807-01-01T00:00:00",
    "9223372036854775808-01-01T00:00:00",
    "2020-01-01T00:00:00.",
    "2020-01-01T00:00:00.Z",
    "2020-01-01T23:59:59.9999999999999Z",
    "2020-01-01T23:59:59.99999999999999Z",
    "2020-01-01T24:00:00.0000000000000000001",
    "2020-01-01T1:00:00",
    "2020-1-01T01:00:00",
    "2020-01-01 01:00:00",
    "2020-01-01t01:00:00",
    "2020-01-01T01:00:00z",
    "2020-01-01T01:00:00+0100",
    "2020-01-01",
    "01:00:00",
    "+2020-01-01T00:00:00",
    "2020-01-01T00:00:00&#x20;",
    "&#x20;2020-01-01T00:00:00Z",
    "2020-01-01T00:00:00Z<!--c-->",
    "2020-01-<!--c-->01T00:00:00Z",
    "2020-01-01T00:00:00<![CDATA[Z]]>",
    "2020-01-01T00:00:00\r\n",
];

const INTS: &[&str] = &[
    "0",
    "-0",
    "+0",
    "00000000000000000000000042",
    "2147483647",
    "2147483648",
    "-2147483648",
    "-2147483649",
    "99999999999999999999999999",
    " 1",
    "1 ",
    "&#32;1",
    "1\n",
    "+-1",
    "--1",
    "1e3",
    "0x10",
    "",
    "-",
    "+",
    "1_000",
    "\u{0661}",
    "<![CDATA[7]]>",
    "4<!--c-->2",
];

const BOOLEANS: &[&str] = &[
    "true",
    "false",
    "1",
    "0",
    " true",
    "false ",
    "\ntrue\n",
    "&#9;1",
    "TRUE",
    "True",
    "yes",
    "",
    "2",
    "t",
    "truefalse",
    "<![CDATA[true]]>",
    "tr<!--x-->ue",
    "01",
    "\r\nfalse",
];

const RESPONSE_CODES: &[&str] = &[
    "NoError",
    "ErrorReadEventsFailed",
    "ErrorAccessDenied",
    "ErrorRecoverableItemsAccessDenied",
    "ErrorADOperation",
    "noError",
    "NoError ",
    " NoError",
    "NoErrors",
    "",
    "Error",
    "<![CDATA[NoError]]>",
    "No<!---->Error",
    "&#x4E;oError",
];

const ATTRIBUTES: &[&str] = &[
    "foo=\"1\"",
    "t:Id=\"x\"",
    "xml:lang=\"en\"",
    "xml:lang=\" en-US \"",
    "xml:lang=\"1x\"",
    "xml:lang=\"\"",
    "xml:space=\"preserve\"",
    "s:mustUnderstand=\"1\"",
    "soap11:actor=\"x\"",
    "Id=\"x\"",
    "ChangeKey=\"AQAAAA==\"",
    "ResponseClass=\"Success\"",
    "Name=\"SubscriptionId\"",
    "Version=\"Exchange2010\"",
    "xmlns:p=\"\"",
    "xmlns:x=\"urn:x\" x:a=\"1\"",
    "x:a=\"1\"",
    "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:nil=\"false\"",
    "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"t:NonEmptyStringType\"",
    "xmlns=\"\"",
    "xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\"",
    "xmlns:m=\"urn:wrong\"",
    "xmlns:a=\"urn:p\" xmlns:b=\"urn:p\" a:z=\"1\" b:z=\"2\"",
    "xmlns:xml=\"http://www.w3.org/XML/1998/namespace\"",
    "xmlns:xml=\"urn:x\"",
    "a=\"1\"b=\"2\"",
    "a=\"1\" a=\"2\"",
    "a='<'",
    "a=\"&foo;\"",
    "a=1",
    "a",
    "a=\"]]>\"",
    "a=\"&#9;\"",
];

const ATTRIBUTE_VALUES: &[&str] = &[
    "",
    " ",
    "Success",
    "Warning",
    "Error",
    " Success",
    "success",
    "Success&#9;",
    "Exchange2010",
    "Exchange2013_SP1",
    "V2018_01_08",
    "Exchange2099",
    " Exchange2010",
    "AAMk&amp;x",
    "&lt;&gt;",
    "&quot;'",
    "a\tb",
    "&#10;",
    "SubscriptionId",
    "en",
    "x<y",
    "&bogus;",
    "\u{e9}",
];

const INSERTIONS: &[&str] = &[
    " ", "\n  ", "\r\n", "<!-- note -->", "<!---->", "<!-- a -- b -->", "<![CDATA[ ]]>",
    "<![CDATA[x]]>", "<?pi data?>", "<!DOCTYPE x>", "&#32;", "&#x20;", "&#xA0;", "&amp;", "text",
    "<x:Foo xmlns:x=\"urn:x\"/>", "<x:Foo xmlns:x=\"urn:x\"><y a=\"1\">mixed<z/></y></x:Foo>",
    "<Foo/>", "<t:Value Name=\"a\">b</t:Value>", "<t:Value>b</t:Value>", "<m:Foo/>", "<t:Foo/>",
    "<t:RequestServerVersion Version=\"Exchange2013\"/>",
    "<t:RequestServerVersion Version=\"Exchange2013\"> </t:RequestServerVersion>",
    "<t:RequestServerVersion/>", "<s:Foo xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"/>",
    "<x:Foo xmlns:x=\"urn:x\" xml:lang=\"!!\"/>", "<x:Foo xmlns:x=\"urn:x\"><t:Value/></x:Foo>",
    "<x:Foo xmlns:x=\"urn:x\"><x:Bar/></x:Foo>", "<p:Foo/>", "<1a/>", "]]>", "<", "&",
    "<x:Foo xmlns:x=\"urn:x\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"x\"/>",
    "<t:StatusEvent/>", "<t:Watermark>AQ==</t:Watermark>",
    "<t:TimeStamp>2020-01-01T00:00:00Z</t:TimeStamp>", "<t:ItemId Id=\"i\"/>",
    "<t:UnreadCount>1</t:UnreadCount>",
];

const BYTE_INSERTS: &[&[u8]] = &[
    b"<",
    b">",
    b"&",
    b"\"",
    b"'",
    b"/",
    b"=",
    b";",
    b"]",
    b"-",
    b" ",
    b"\t",
    b"\n",
    b"\r",
    b"\x00",
    b"\x01",
    b"\x1f",
    b"\x7f",
    b"\xc3\xa9",
    b"\xef\xbf\xbe",
    b"\xef\xbf\xbf",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xc0\x80",
    b"\xf4\x90\x80\x80",
    b"]]>",
    b"--",
    b"&amp;",
    b"&#x20;",
    b"&#0;",
    b"&lt;",
    b"&foo;",
    b":",
    b"x",
    b"\xc2\xa0",
];

fn interesting(b: u8) -> bool {
    matches!(
        b,
        b'<' | b'>' | b'&' | b'"' | b'\'' | b'/' | b'=' | b';' | b']' | b'-' | b' ' | b':'
    )
}

fn replace_range(doc: &[u8], range: (usize, usize), with: &[u8]) -> Vec<u8> {
    let end = range.1.min(doc.len());
    let range = (range.0.min(end), end);
    let mut out = Vec::with_capacity(doc.len() + with.len());
    out.extend_from_slice(&doc[..range.0]);
    out.extend_from_slice(with);
    out.extend_from_slice(&doc[range.1..]);
    out
}

fn insert_at(doc: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
    replace_range(doc, (at, at), with)
}

/// Positions just inside the header and `m:MessageXml` wildcards (where foreign content is valid).
fn lax_gaps(doc: &str) -> Vec<usize> {
    elements(doc)
        .iter()
        .filter(|e| {
            e.end_tag.is_some() && (e.qname.ends_with("Header") || e.qname.ends_with("MessageXml"))
        })
        .map(|e| e.start_tag.1)
        .collect()
}

/// Positions between markup (just after a `>`), where element-level insertions make sense.
fn gaps(doc: &str) -> Vec<usize> {
    doc.match_indices('>').map(|(i, _)| i + 1).collect()
}

/// The body of `case`: one mutation of its seed (two for some), and the operator's name.
fn body_of(case: &Case, seeds: &[String]) -> (String, Vec<u8>) {
    let mut rng = Rng::new(&case.choices);
    let (operator, mut body) = mutate(&mut rng, &seeds[case.seed]);
    if case.twice {
        // a second mutation on top
        let text = String::from_utf8_lossy(&body).into_owned();
        if !elements(&text).is_empty() && !gaps(&text).is_empty() {
            body = mutate(&mut rng, &text).1;
        }
    }
    (operator, body)
}

fn mutate(rng: &mut Rng, doc: &str) -> (String, Vec<u8>) {
    let bytes = doc.as_bytes();
    let els = elements(doc);
    if els.is_empty() {
        return ("no-elements".into(), bytes.to_vec());
    }
    let el = |rng: &mut Rng| els[rng.below(els.len())].clone();
    match rng.below(20) {
        0 => {
            let candidates: Vec<usize> = (0..bytes.len())
                .filter(|&i| interesting(bytes[i]))
                .collect();
            let at = rng.pick(&candidates);
            (
                "delete-byte".into(),
                replace_range(bytes, (at, at + 1), b""),
            )
        }
        1 => {
            let at = if rng.chance(50) {
                rng.below(bytes.len() + 1)
            } else {
                rng.pick(&gaps(doc))
            };
            (
                "insert-bytes".into(),
                insert_at(bytes, at, rng.pick(BYTE_INSERTS)),
            )
        }
        2 => {
            let candidates: Vec<usize> = (0..bytes.len())
                .filter(|&i| interesting(bytes[i]))
                .collect();
            let at = rng.pick(&candidates);
            (
                "replace-byte".into(),
                replace_range(bytes, (at, at + 1), rng.pick(BYTE_INSERTS)),
            )
        }
        3 => {
            let e = el(rng);
            (
                "delete-element".into(),
                replace_range(bytes, e.range(), b""),
            )
        }
        4 => {
            let e = el(rng);
            let (s, t) = e.range();
            (
                "duplicate-element".into(),
                insert_at(bytes, t, &bytes[s..t]),
            )
        }
        5 => {
            // swap an element with its next sibling
            let pairs: Vec<(usize, usize)> = (0..els.len())
                .filter_map(|i| {
                    let e = &els[i];
                    let j = els[i + 1..]
                        .iter()
                        .position(|o| o.parent == e.parent && o.range().0 >= e.range().1)?;
                    Some((i, i + 1 + j))
                })
                .collect();
            let pair = (!pairs.is_empty()).then(|| rng.pick(&pairs));
            match pair.map(|(i, j)| (&els[i], &els[j])) {
                Some((e, o)) => {
                    let (a0, a1) = e.range();
                    let (b0, b1) = o.range();
                    let mut out = bytes[..a0].to_vec();
                    out.extend_from_slice(&bytes[b0..b1]);
                    out.extend_from_slice(&bytes[a1..b0]);
                    out.extend_from_slice(&bytes[a0..a1]);
                    out.extend_from_slice(&bytes[b1..]);
                    ("swap-siblings".into(), out)
                }
                None => ("swap-none".into(), bytes.to_vec()),
            }
        }
        6 => {
            // move an element to another gap
            let e = el(rng);
            let (s, t) = e.range();
            let piece = bytes[s..t].to_vec();
            let without = replace_range(bytes, (s, t), b"");
            let text = String::from_utf8_lossy(&without).into_owned();
            let at = rng.pick(&gaps(&text));
            ("move-element".into(), insert_at(&without, at, &piece))
        }
        7 | 8 => {
            // rename (local name, sometimes prefix too) in start and end tag
            let e = el(rng);
            let prefix = match e.qname.find(':') {
                Some(p) if !rng.chance(25) => e.qname[..=p].to_string(),
                _ => rng.pick(PREFIXES).to_string(),
            };
            let local = if rng.chance(80) {
                rng.pick(LOCAL_NAMES).to_string()
            } else {
                e.qname.rsplit(':').next().unwrap_or_default().to_string()
            };
            let new_name = format!("{prefix}{local}");
            let (s0, _) = e.start_tag;
            let mut out = bytes.to_vec();
            if let Some((e0, _)) = e
                .end_tag
                .filter(|(e0, _)| doc[*e0..].starts_with(&format!("</{}", e.qname)))
            {
                out = replace_range(&out, (e0 + 2, e0 + 2 + e.qname.len()), new_name.as_bytes());
            }
            out = replace_range(&out, (s0 + 1, s0 + 1 + e.qname.len()), new_name.as_bytes());
            ("rename-element".into(), out)
        }
        9 => {
            // change a namespace URI
            let decls: Vec<(usize, usize)> = doc
                .match_indices("xmlns")
                .filter_map(|(i, _)| {
                    let q = doc[i..].find('"')? + i + 1;
                    let e = doc[q..].find('"')? + q;
                    Some((q, e))
                })
                .collect();
            let uri = rng.pick(&[
                SOAP,
                MESSAGES,
                TYPES,
                XSI,
                "urn:x",
                "",
                "http://www.w3.org/XML/1998/namespace",
                "http://schemas.microsoft.com/exchange/services/2006/Types",
                "http://schemas.microsoft.com/exchange/services/2006/&#x74;ypes",
            ]);
            let range = rng.pick(&decls);
            (
                "change-namespace".into(),
                replace_range(bytes, range, uri.as_bytes()),
            )
        }
        10 | 11 => {
            // add an attribute
            let e = el(rng);
            let (_, s1) = e.start_tag;
            let at = if bytes[s1 - 2] == b'/' {
                s1 - 2
            } else {
                s1 - 1
            };
            let attr = format!(" {}", rng.pick(ATTRIBUTES));
            (
                "add-attribute".into(),
                insert_at(bytes, at, attr.as_bytes()),
            )
        }
        12 => {
            // remove an attribute (name, value and the space before it)
            let attrs = attribute_values(doc);
            if attrs.is_empty() {
                return ("remove-attribute-none".into(), bytes.to_vec());
            }
            let (name_start, _, value_end) = rng.pick(&attrs);
            (
                "remove-attribute".into(),
                replace_range(bytes, (name_start - 1, value_end + 1), b""),
            )
        }
        13 | 14 => {
            // change an attribute value (namespace declarations have their own operator)
            let attrs: Vec<(usize, usize, usize)> = attribute_values(doc)
                .into_iter()
                .filter(|(name_start, _, _)| !doc[*name_start..].starts_with("xmlns"))
                .collect();
            if attrs.is_empty() {
                return ("change-attribute-none".into(), bytes.to_vec());
            }
            let (_, value_start, value_end) = rng.pick(&attrs);
            let value = rng.pick(ATTRIBUTE_VALUES);
            (
                "change-attribute".into(),
                replace_range(bytes, (value_start, value_end), value.as_bytes()),
            )
        }
        15 | 16 => {
            // change a leaf element's text, mostly to edge cases of its own datatype
            let leaves: Vec<&Element> = els.iter().filter(|e| e.text.is_some()).collect();
            if leaves.is_empty() {
                return ("change-text-none".into(), bytes.to_vec());
            }
            let e = leaves[rng.below(leaves.len())];
            let range = e.text.unwrap_or_default();
            let local = e.qname.rsplit(':').next().unwrap_or_default();
            let typed: &[&str] = match local {
                "TimeStamp" => DATE_TIMES,
                "UnreadCount" | "DescriptiveLinkKey" => INTS,
                "MoreEvents" => BOOLEANS,
                "ResponseCode" => RESPONSE_CODES,
                _ => TEXT_VALUES,
            };
            let value = if rng.chance(80) {
                rng.pick(typed)
            } else {
                rng.pick(TEXT_VALUES)
            };
            (
                "change-text".into(),
                replace_range(bytes, range, value.as_bytes()),
            )
        }
        17 | 18 => {
            let lax = lax_gaps(doc);
            let at = if !lax.is_empty() && rng.chance(40) {
                rng.pick(&lax)
            } else {
                rng.pick(&gaps(doc))
            };
            (
                "insert-markup".into(),
                insert_at(bytes, at, rng.pick(INSERTIONS).as_bytes()),
            )
        }
        _ => hostile(rng, doc),
    }
}

/// Prolog changes and limit-sized content.
fn hostile(rng: &mut Rng, doc: &str) -> (String, Vec<u8>) {
    let bytes = doc.as_bytes();
    let body_start = doc.find("?>").map_or(0, |p| p + 2);
    let rest = &bytes[body_start..];
    let prolog = |p: &str| [p.as_bytes(), rest].concat();
    let lax = lax_gaps(doc);
    let at = if !lax.is_empty() && rng.chance(70) {
        rng.pick(&lax)
    } else {
        rng.pick(&gaps(doc))
    };
    let deep = |n: usize| {
        format!(
            "{}{}",
            "<x:d xmlns:x=\"urn:x\">".repeat(n),
            "</x:d>".repeat(n)
        )
    };
    match rng.below(16) {
        0 => ("prolog-encoding".into(), prolog(rng.pick::<&str>(&[
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>",
            "<?xml version=\"1.0\" encoding=\"US-ASCII\"?>",
            "<?xml version=\"1.0\" encoding=\"UTF8\"?>",
            "<?xml version=\"1.0\" encoding=\"utf-16\"?>",
            "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>",
            "<?xml version='1.0' encoding='utf-8'?>",
        ]))),
        1 => ("prolog-version".into(), prolog(rng.pick::<&str>(&[
            "<?xml version=\"1.1\"?>", "<?xml version=\"1.\"?>", "<?xml version=\"2.0\"?>",
            "<?xml version=\"1.0\" ?>", "<?xml  version = \"1.0\"?>", "<?xml?>", "<?xml encoding=\"utf-8\"?>",
            "", "\u{feff}", " <?xml version=\"1.0\"?>", "<?xml version=\"1.0\"?><?xml version=\"1.0\"?>",
        ]))),
        2 => ("prolog-doctype".into(), prolog(rng.pick::<&str>(&[
            "<?xml version=\"1.0\"?><!DOCTYPE s:Envelope>",
            "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]>",
            "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>",
            "<?xml version=\"1.0\"?><?xml-stylesheet href=\"a\"?>",
            "<?xml version=\"1.0\"?><!-- leading comment -->",
        ]))),
        3 => ("epilog".into(), [bytes, rng.pick::<&str>(&["<!-- c -->", " \n", "x", "<a/>", "&amp;", "<?pi?>", "<![CDATA[]]>"]).as_bytes()].concat()),
        4 => ("deep-31".into(), insert_at(bytes, at, deep(rng.below(3) + 20).as_bytes())),
        5 => ("deep-40".into(), insert_at(bytes, at, deep(40).as_bytes())),
        6 => {
            let len = rng.pick(&[200usize, 256, 257, 300]);
            let name = format!("<x:{} xmlns:x=\"urn:x\"/>", "n".repeat(len - 2));
            ("long-name".into(), insert_at(bytes, at, name.as_bytes()))
        }
        7 => {
            let len = rng.pick(&[8000usize, 8192, 8193, 9000]);
            let el = format!("<x:a xmlns:x=\"urn:x\" v=\"{}\"/>", "v".repeat(len));
            ("long-attribute".into(), insert_at(bytes, at, el.as_bytes()))
        }
        8 => {
            let count = rng.pick(&[30usize, 31, 32, 40]);
            let attrs: String = (0..count).map(|i| format!(" a{i}=\"1\"")).collect();
            let el = format!("<x:a xmlns:x=\"urn:x\"{attrs}/>");
            ("many-attributes".into(), insert_at(bytes, at, el.as_bytes()))
        }
        9 => {
            let len = rng.pick(&[16000usize, 16384, 16385, 20000]);
            let el = format!("<x:a xmlns:x=\"urn:x\">{}</x:a>", "t".repeat(len));
            ("long-text".into(), insert_at(bytes, at, el.as_bytes()))
        }
        10 => {
            // many events: duplicate the first event element many times
            let els = elements(doc);
            match els.iter().find(|e| e.qname.ends_with("Event")) {
                Some(e) => {
                    let (s, t) = e.range();
                    let copies = rng.pick(&[10usize, 600]);
                    ("many-events".into(), insert_at(bytes, t, &bytes[s..t].repeat(copies)))
                }
                None => ("many-events-none".into(), bytes.to_vec()),
            }
        }
        11 => {
            let els = elements(doc);
            match els.iter().find(|e| e.qname.ends_with("SendNotificationResponseMessage")) {
                Some(e) => {
                    let (s, t) = e.range();
                    let copies = rng.pick(&[2usize, 70]);
                    ("many-messages".into(), insert_at(bytes, t, &bytes[s..t].repeat(copies)))
                }
                None => ("many-messages-none".into(), bytes.to_vec()),
            }
        }
        12 => ("utf16-bom".into(), [&[0xFF_u8, 0xFE][..], bytes].concat()),
        13 => ("crlf".into(), doc.replace('>', ">\r\n").into_bytes()),
        14 => ("bom".into(), [&[0xEF_u8, 0xBB, 0xBF][..], bytes].concat()),
        _ => ("truncate".into(), bytes[..rng.below(bytes.len())].to_vec()),
    }
}

/// Extra seeds that reach corners the fixtures do not: every event kind, the header and
/// MessageXml wildcards, attributes on the envelope, CDATA, comments, references.
fn extra_seeds() -> Vec<String> {
    let all_events = format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?>"#,
            r#"<s:Envelope xmlns:s="{s}" xml:lang="en" xmlns:x="urn:x" x:note="1"><s:Header xml:lang="de-DE">"#,
            r#"<t:RequestServerVersion xmlns:t="{t}" Version="V2018_01_08"/><x:Trace id="7"><inner>text</inner></x:Trace></s:Header>"#,
            r#"<s:Body><m:SendNotification xmlns:m="{m}" xmlns:t="{t}"><m:ResponseMessages>"#,
            r#"<m:SendNotificationResponseMessage ResponseClass="Warning"><m:MessageText>Note &amp; more</m:MessageText>"#,
            r#"<m:ResponseCode>NoError</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"#,
            r#"<m:MessageXml><t:Value Name="Hint">v</t:Value><x:Extra>any<b/></x:Extra></m:MessageXml>"#,
            r#"<m:Notification><t:SubscriptionId>sub&#x41;</t:SubscriptionId><t:PreviousWatermark>pw</t:PreviousWatermark>"#,
            r#"<t:MoreEvents>1</t:MoreEvents>"#,
            r#"<t:CopiedEvent><t:Watermark>w1</t:Watermark><t:TimeStamp>2026-01-02T03:04:05.5+01:00</t:TimeStamp><t:ItemId Id="i1" ChangeKey="DwAAAA=="/><t:ParentFolderId Id="p1"/><t:OldItemId Id="o1"/><t:OldParentFolderId Id="op1"/></t:CopiedEvent>"#,
            r#"<t:CreatedEvent><t:TimeStamp>2026-01-02T03:04:05Z</t:TimeStamp><t:FolderId Id="f2"/><t:ParentFolderId Id="p2" ChangeKey="AQAAAA=="/></t:CreatedEvent>"#,
            r#"<t:DeletedEvent><t:Watermark>w3</t:Watermark><t:TimeStamp>2026-01-02T03:04:05Z</t:TimeStamp><t:ItemId Id=""/><t:ParentFolderId Id="p3"/></t:DeletedEvent>"#,
            r#"<t:ModifiedEvent><t:Watermark>w4</t:Watermark><t:TimeStamp>2026-01-02T03:04:05Z</t:TimeStamp><t:FolderId Id="f4"/><t:ParentFolderId Id="p4"/><t:UnreadCount>3</t:UnreadCount></t:ModifiedEvent>"#,
            r#"<t:MovedEvent><t:Watermark>w5</t:Watermark><t:TimeStamp>2026-01-02T03:04:05Z</t:TimeStamp><t:FolderId Id="f5"/><t:ParentFolderId Id="p5"/><t:OldFolderId Id="of5"/><t:OldParentFolderId Id="op5"/></t:MovedEvent>"#,
            r#"<t:NewMailEvent><t:Watermark>w6</t:Watermark><t:TimeStamp>2026-01-02T03:04:05Z</t:TimeStamp><t:ItemId Id="i6"/><t:ParentFolderId Id="p6"/></t:NewMailEvent>"#,
            r#"<t:StatusEvent><t:Watermark>w7</t:Watermark></t:StatusEvent>"#,
            r#"<t:FreeBusyChangedEvent><t:Watermark>w8</t:Watermark><t:TimeStamp>2026-01-02T03:04:05Z</t:TimeStamp><t:ItemId Id="i8"/><t:ParentFolderId Id="p8"/></t:FreeBusyChangedEvent>"#,
            r#"</m:Notification></m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></s:Body></s:Envelope>"#
        ),
        s = SOAP,
        m = MESSAGES,
        t = TYPES
    );
    let pretty = format!(
        concat!(
            "<?xml version='1.0'?>\n<!-- pretty -->\n<env:Envelope xmlns:env='{s}'>\n <env:Body>\n",
            "  <SendNotification xmlns='{m}'>\n   <ResponseMessages>\n",
            "    <SendNotificationResponseMessage ResponseClass='Success'>\n",
            "     <ResponseCode><![CDATA[NoError]]></ResponseCode>\n",
            "     <Notification>\n      <SubscriptionId xmlns='{t}'>a&lt;b</SubscriptionId>\n",
            "      <q:MoreEvents xmlns:q='{t}'> false </q:MoreEvents>\n",
            "      <q:ModifiedEvent xmlns:q='{t}'>\n       <q:TimeStamp>2020-02-29T24:00:00Z</q:TimeStamp>\n",
            "       <q:ItemId Id='a&#9;b' ChangeKey=\"it's\"/>\n       <q:ParentFolderId Id='p'><!-- c --></q:ParentFolderId>\n",
            "      </q:ModifiedEvent>\n     </Notification>\n    </SendNotificationResponseMessage>\n",
            "   </ResponseMessages>\n  </SendNotification>\n </env:Body>\n</env:Envelope>\n"
        ),
        s = SOAP,
        m = MESSAGES,
        t = TYPES
    );
    vec![all_events, pretty]
}

struct XmllintVerdict {
    valid: bool,
    namespace_error: bool,
    messages: Vec<String>,
}

fn run_xmllint(schema: &Path, files: &[PathBuf]) -> HashMap<PathBuf, XmllintVerdict> {
    let mut verdicts: HashMap<PathBuf, XmllintVerdict> = files
        .iter()
        .map(|f| {
            (
                f.clone(),
                XmllintVerdict {
                    valid: false,
                    namespace_error: false,
                    messages: Vec::new(),
                },
            )
        })
        .collect();
    for chunk in files.chunks(CHUNK * 2) {
        let output = Command::new("xmllint")
            .arg("--noout")
            .arg("--schema")
            .arg(schema)
            .args(chunk)
            .output()
            .expect("xmllint runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stderr.lines() {
            // Lines name their file first: "<path> validates", "<path>:<line>: <kind> error : ..."
            let Some(file) = chunk
                .iter()
                .find(|f| line.starts_with(&*f.to_string_lossy()))
            else {
                continue;
            };
            let rest = &line[file.to_string_lossy().len()..];
            let verdict = verdicts.get_mut(file).expect("known file");
            if rest == " validates" {
                verdict.valid = true;
            } else if rest.starts_with(':') {
                verdict.namespace_error |= rest.contains("namespace error");
                verdict.messages.push(rest.to_string());
            }
        }
    }
    verdicts
}

fn run_pushgate(files: &[PathBuf]) -> HashMap<PathBuf, Result<(), (String, bool)>> {
    let deviation_reasons: Vec<&str> = RejectionKind::ALL
        .iter()
        .filter(|k| k.is_xsd_deviation())
        .map(|k| k.reason())
        .collect();
    let mut verdicts = HashMap::new();
    for chunk in files.chunks(CHUNK) {
        let output = Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .arg("validate")
            .args(chunk)
            .output()
            .expect("pushgate runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        for (line, file) in stdout.lines().zip(chunk) {
            let label = file.to_string_lossy();
            let rest = line
                .strip_prefix(&*label)
                .and_then(|r| r.strip_prefix(": "))
                .expect("line names its file");
            let verdict = if rest == "valid" {
                Ok(())
            } else {
                let reason = rest
                    .strip_prefix("invalid: ")
                    .and_then(|r| r.split(':').next())
                    .expect("invalid: <reason>: <detail>")
                    .to_string();
                let deviation = deviation_reasons.contains(&reason.as_str());
                Err((reason, deviation))
            };
            verdicts.insert(file.clone(), verdict);
        }
        assert_eq!(stdout.lines().count(), chunk.len(), "one line per file");
    }
    verdicts
}

/// The only schema error xmllint may report for an accepted Error-without-Notification body.
fn only_missing_notification(messages: &[String]) -> bool {
    // libxml2 also warns about namespace names that are not URIs; that does not affect validity.
    let errors: Vec<&String> = messages
        .iter()
        .filter(|m| !(m.contains("namespace error") && m.contains("is not a valid URI")))
        .collect();
    !errors.is_empty()
        && errors.iter().all(|m| {
            m.contains("Schemas validity error")
                && m.contains("SendNotificationResponseMessage': Missing child element(s)")
                && m.contains("Notification )")
        })
}

#[test]
fn pushgate_agrees_with_xmllint_on_mutations() {
    let Some(schema_dir) = skip::ews_schema(&["send-notification-envelope.xsd"]) else {
        return;
    };
    if !skip::xmllint() {
        return;
    }
    let schema = schema_dir.join("send-notification-envelope.xsd");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/notifications");
    let mut seeds: Vec<String> = std::fs::read_dir(&fixtures)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "xml") && !p.ends_with("seed-capture-verbatim.xml")
        })
        .map(|p| std::fs::read_to_string(p).expect("fixture text"))
        .collect();
    seeds.sort();
    seeds.extend(extra_seeds());

    let dir = tempfile::tempdir().expect("temp dir");
    let seed = std::env::var("PUSHGATE_DIFFERENTIAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    });
    let strategy = case(seeds.len());
    let mut files = Vec::new();
    let mut operators = HashMap::new();
    let mut cases = HashMap::new();
    for (i, seed) in seeds.iter().enumerate() {
        let path = dir.path().join(format!("seed-{i:02}.xml"));
        std::fs::write(&path, seed).expect("write");
        operators.insert(path.clone(), "seed".to_string());
        files.push(path);
    }
    for i in 0..MUTATIONS {
        let tree = strategy.new_tree(&mut runner).expect("a case");
        let (operator, body) = body_of(&tree.current(), &seeds);
        let path = dir.path().join(format!("m{i:05}.xml"));
        std::fs::write(&path, &body).expect("write");
        operators.insert(path.clone(), operator);
        cases.insert(path.clone(), tree);
        files.push(path);
    }

    let ours = run_pushgate(&files);
    let theirs = run_xmllint(&schema, &files);

    let mut both_valid = 0;
    let mut both_invalid = 0;
    let mut deviations: BTreeMap<String, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut operator_counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut first_failing_case = None;
    for file in &files {
        let our = &ours[file];
        let operator = operators[file].clone();
        let entry = operator_counts.entry(operator.clone()).or_default();
        entry.0 += 1;
        if let Err((reason, _)) = our {
            *reasons.entry(reason.clone()).or_default() += 1;
        }
        match judge(our, &theirs[file], file) {
            Judgement::BothValid => {
                both_valid += 1;
                entry.1 += 1;
            }
            Judgement::BothInvalid => both_invalid += 1,
            Judgement::Deviation(reason) => *deviations.entry(reason).or_default() += 1,
            Judgement::Disagree(why) => {
                failures.push(format!("{operator}: {} {why}", file.display()));
                if first_failing_case.is_none() {
                    first_failing_case = cases.remove(file);
                }
            }
        }
    }
    let total = files.len();
    let xmllint_valid = files.iter().filter(|f| theirs[*f].valid).count();
    let ours_valid = files.iter().filter(|f| ours[*f].is_ok()).count();
    let mut summary = format!(
        "{total} bodies ({} seeds); xmllint: {xmllint_valid} valid, {} invalid; pushgate: {ours_valid} valid, {} invalid; \
         agree: {both_valid} valid + {both_invalid} invalid\n",
        seeds.len(),
        total - xmllint_valid,
        total - ours_valid
    );
    summary.push_str(&format!("allowed deviations: {deviations:?}\n"));
    summary.push_str(&format!("pushgate rejection reasons: {reasons:?}\n"));
    summary.push_str(&format!(
        "operators (count, valid for both): {operator_counts:?}\n"
    ));
    println!("{summary}");

    let examples: Vec<&String> = failures.iter().take(25).collect();
    if !failures.is_empty() {
        // Keep the failing bodies for inspection.
        let keep = std::env::temp_dir().join("pushgate-differential-failures");
        let _ = std::fs::create_dir_all(&keep);
        for failure in failures.iter().take(200) {
            if let Some(path) = failure.split_whitespace().nth(1) {
                let path = Path::new(path);
                if let Some(name) = path.file_name() {
                    let _ = std::fs::copy(path, keep.join(name));
                }
            }
        }
    }
    let minimal = first_failing_case
        .map(|tree| shrink(tree, &seeds, &schema, dir.path()))
        .unwrap_or_default();
    assert!(
        failures.is_empty(),
        "{} disagreements (bodies kept in $TMPDIR/pushgate-differential-failures):\n{}\n{minimal}\n{summary}",
        failures.len(),
        examples
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for kind in RejectionKind::ALL {
        assert!(
            reasons.contains_key(kind.reason()),
            "mutations never produced {}\n{summary}",
            kind.reason()
        );
    }
    assert!(
        both_valid * 100 >= total * 15,
        "only {both_valid} of {total} mutations stayed valid for both\n{summary}"
    );
}

/// How pushgate's verdict on one body compares with xmllint's.
enum Judgement {
    BothValid,
    BothInvalid,
    /// An allowed disagreement: pushgate stricter on purpose, or the Error-without-Notification
    /// body it accepts.
    Deviation(String),
    /// Any other disagreement: the test fails.
    Disagree(String),
}

fn judge(our: &Result<(), (String, bool)>, their: &XmllintVerdict, file: &Path) -> Judgement {
    match (our, their.valid) {
        (Ok(()), true) => Judgement::BothValid,
        (Err(_), false) => Judgement::BothInvalid,
        (Err((reason, true)), true) => {
            if reason == "xml_namespace_error" && !their.namespace_error {
                Judgement::Disagree("namespace error that xmllint does not report".into())
            } else {
                Judgement::Deviation(reason.clone())
            }
        }
        (Err((reason, false)), true) => {
            Judgement::Disagree(format!("we refuse ({reason}), xmllint accepts"))
        }
        (Ok(()), false) => {
            let body = std::fs::read(file).expect("read back");
            let summary = validate(&body, &Limits::default()).expect("pushgate accepted it");
            if summary.error_without_notification && only_missing_notification(&their.messages) {
                Judgement::Deviation("error_without_notification (accepted)".into())
            } else {
                Judgement::Disagree(format!(
                    "we accept, xmllint refuses: {}",
                    their.messages.first().map(String::as_str).unwrap_or("")
                ))
            }
        }
    }
}

/// Whether pushgate (in process: the same verdict `pushgate validate` prints) and xmllint
/// disagree on `body` beyond the allowed deviations.
fn disagrees(body: &[u8], schema: &Path, dir: &Path) -> Option<String> {
    let file = dir.join("shrinking.xml");
    std::fs::write(&file, body).expect("write");
    let our = validate(body, &Limits::default())
        .map(|_| ())
        .map_err(|r| (r.reason().to_string(), r.is_xsd_deviation()));
    let their = run_xmllint(schema, std::slice::from_ref(&file));
    match judge(&our, &their[&file], &file) {
        Judgement::Disagree(why) => Some(why),
        _ => None,
    }
}

/// proptest's shrinking of a failing case: simpler choices while the disagreement stays.
fn shrink(
    mut tree: impl ValueTree<Value = Case>,
    seeds: &[String],
    schema: &Path,
    dir: &Path,
) -> String {
    let (operator, mut body) = body_of(&tree.current(), seeds);
    let Some(mut why) = disagrees(&body, schema, dir) else {
        return "(the first disagreement did not repeat in process)".into();
    };
    let mut steps = 0;
    let mut simpler = tree.simplify();
    while simpler && steps < SHRINK_STEPS {
        let (_, candidate) = body_of(&tree.current(), seeds);
        if candidate == body {
            // A choice the mutation never used: nothing to ask xmllint.
            simpler = tree.simplify();
            continue;
        }
        steps += 1;
        match disagrees(&candidate, schema, dir) {
            Some(still) => {
                body = candidate;
                why = still;
                simpler = tree.simplify();
            }
            None => simpler = tree.complicate(),
        }
    }
    format!(
        "minimal disagreement after {steps} shrinking steps (first operator {operator}): {why}\n{}",
        String::from_utf8_lossy(&body)
    )
}

/// Every attribute in the start tags of `doc`: (name start, value start, value end).
fn attribute_values(doc: &str) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for e in elements(doc) {
        let (s, t) = e.start_tag;
        let tag = &doc[s..t];
        let mut i = 1 + e.qname.len();
        while let Some(eq) = tag[i..].find('=') {
            let eq = i + eq;
            let Some(q) = tag
                .as_bytes()
                .get(eq + 1)
                .copied()
                .filter(|q| *q == b'"' || *q == b'\'')
            else {
                break;
            };
            let Some(close) = tag[eq + 2..].find(q as char) else {
                break;
            };
            let close = eq + 2 + close;
            let name_start = tag[..eq]
                .rfind(|c: char| c.is_whitespace())
                .map_or(i, |p| p + 1);
            out.push((s + name_start, s + eq + 2, s + close));
            i = close + 1;
        }
    }
    out
}
