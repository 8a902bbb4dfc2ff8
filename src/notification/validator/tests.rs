//! Unit tests of the validator, rule by rule: each accepts what xmllint accepts and refuses what
//! it refuses (with the kind the gateway reports), plus the hostile inputs. The verdicts of the
//! schema cases were checked against `xmllint --schema` (libxml2 2.9.14).

use super::*;
use crate::notification::model::{EventKind, ObjectKind, ResponseClass};

const SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
const T: &str = "http://schemas.microsoft.com/exchange/services/2006/types";

const STATUS: &str = "<t:StatusEvent/>";

/// A notification with replaceable parts: `header` (whole soap:Header or ""), `before` (children
/// of the response message before m:Notification), `events` (after t:SubscriptionId).
fn doc_with(class: &str, header: &str, before: &str, events: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?>"#,
            r#"<s:Envelope xmlns:s="{s}" xmlns:m="{m}" xmlns:t="{t}">{header}<s:Body><m:SendNotification>"#,
            r#"<m:ResponseMessages><m:SendNotificationResponseMessage ResponseClass="{class}">{before}"#,
            r#"<m:Notification><t:SubscriptionId>sub</t:SubscriptionId>{events}</m:Notification>"#,
            r#"</m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></s:Body></s:Envelope>"#
        ),
        s = SOAP,
        m = M,
        t = T,
        header = header,
        class = class,
        before = before,
        events = events
    )
}

fn doc(header: &str, before: &str, events: &str) -> String {
    doc_with("Success", header, before, events)
}

fn notification(events: &str) -> String {
    doc("", "", events)
}

fn created(timestamp: &str) -> String {
    format!(
        r#"<t:CreatedEvent><t:TimeStamp>{timestamp}</t:TimeStamp><t:ItemId Id="a"/><t:ParentFolderId Id="b"/></t:CreatedEvent>"#
    )
}

fn limits() -> Limits {
    Limits::default()
}

/// The verdict, after checking that `parse` agrees with `validate`.
fn verdict(body: impl AsRef<[u8]>) -> Result<Summary, Rejection> {
    let body = body.as_ref();
    let validated = validate(body, &limits());
    let parsed = parse(body, &limits());
    match (&validated, &parsed) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b, "validate and parse disagree"),
        _ => panic!("validate {validated:?} but parse {parsed:?}"),
    }
    validated
}

#[track_caller]
fn valid(body: impl AsRef<[u8]>) -> Summary {
    match verdict(body.as_ref()) {
        Ok(summary) => summary,
        Err(rejection) => panic!(
            "expected valid, got {rejection}\n{}",
            String::from_utf8_lossy(body.as_ref())
        ),
    }
}

#[track_caller]
fn refused(body: impl AsRef<[u8]>, kind: RejectionKind) -> Rejection {
    match verdict(body.as_ref()) {
        Ok(_) => panic!(
            "expected {kind:?}, got valid\n{}",
            String::from_utf8_lossy(body.as_ref())
        ),
        Err(rejection) => {
            assert_eq!(
                rejection.kind,
                kind,
                "{rejection}\n{}",
                String::from_utf8_lossy(body.as_ref())
            );
            rejection
        }
    }
}

use RejectionKind::{
    ForbiddenMarkup, LimitExceeded, NamespaceError, NotWellFormed, SchemaStructure, SchemaValue,
    UnsupportedDeclaration, UnsupportedExtension,
};

fn in_message_xml(content: &str) -> String {
    doc(
        "",
        &format!("<m:MessageXml>{content}</m:MessageXml>"),
        STATUS,
    )
}

fn in_header(content: &str) -> String {
    doc(&format!("<s:Header>{content}</s:Header>"), "", STATUS)
}

/// The body without its XML declaration.
fn bare(body: &str) -> String {
    body.split_once("?>")
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default()
}

#[test]
fn minimal_notification_is_valid() {
    let summary = valid(notification(STATUS));
    assert_eq!(
        summary,
        Summary {
            response_messages: 1,
            events: 1,
            error_without_notification: false
        }
    );
    valid(bare(&notification(STATUS)));
    let with_bom = [&[0xEF, 0xBB, 0xBF][..], notification(STATUS).as_bytes()].concat();
    valid(with_bom);
}

#[test]
fn encoding_errors_are_not_well_formed() {
    let body = notification(STATUS);
    for bad in [
        &b"\xC3\x28"[..],
        b"\xC0\x80",
        b"\xED\xA0\x80",
        b"\xFF",
        b"\xF4\x90\x80\x80",
    ] {
        let mutated = body.replacen("sub", &String::from_utf8_lossy(b"s#b"), 1);
        let bytes = mutated.replacen('#', "\u{1}", 1).into_bytes();
        refused(&bytes, NotWellFormed);
        let position = body.find(">sub<").expect("subscription id") + 1;
        let raw = [
            &body.as_bytes()[..position],
            bad,
            &body.as_bytes()[position..],
        ]
        .concat();
        refused(raw, NotWellFormed);
    }
    for control in [
        "\u{0}", "\u{1}", "\u{8}", "\u{B}", "\u{C}", "\u{1F}", "\u{FFFE}", "\u{FFFF}",
    ] {
        refused(
            body.replace(">sub<", &format!(">s{control}b<")),
            NotWellFormed,
        );
    }
    for allowed in [
        "\u{7F}",
        "\u{85}",
        "\u{FDD0}",
        "\u{1F600}",
        "\t",
        "\r\n",
        "\u{10FFFF}",
    ] {
        valid(body.replace(">sub<", &format!(">s{allowed}b<")));
    }
    let double_bom = [
        &[0xEF, 0xBB, 0xBF, 0xEF, 0xBB, 0xBF][..],
        bare(&body).as_bytes(),
    ]
    .concat();
    refused(double_bom, NotWellFormed);
}

#[test]
fn byte_order_marks_after_the_first_are_characters() {
    // quick-xml's Reader drops a U+FEFF at its start, and the tokenizer starts a fresh Reader
    // after every start tag: there the mark is character data and must stay.
    let id = |value: &str| {
        let body = notification(STATUS).replace(">sub<", &format!(">{value}<"));
        let model = parse(body.as_bytes(), &limits()).expect("valid");
        model.response_messages[0].subscription_id.clone()
    };
    assert_eq!(id("\u{FEFF}").as_deref(), Some("\u{FEFF}"));
    assert_eq!(
        id("\u{FEFF}\u{FEFF}b").as_deref(),
        Some("\u{FEFF}\u{FEFF}b")
    );
    refused(
        notification(STATUS).replace("<s:Body>", "<s:Body>\u{FEFF}"),
        SchemaStructure,
    );
    refused(
        notification(STATUS).replace(
            "<t:SubscriptionId>",
            "<t:StatusEvent/>\u{FEFF}<t:SubscriptionId>",
        ),
        SchemaStructure,
    );
    refused(format!("{}\u{FEFF}", notification(STATUS)), NotWellFormed);
}

#[test]
fn non_utf8_documents_are_unsupported() {
    let body = notification(STATUS);
    for prefix in [
        &[0xFE_u8, 0xFF][..],
        &[0xFF, 0xFE],
        &[0x00, 0x3C],
        &[0x3C, 0x00],
    ] {
        refused([prefix, body.as_bytes()].concat(), UnsupportedDeclaration);
    }
    for encoding in ["ISO-8859-1", "US-ASCII", "UTF8", "utf-16", "windows-1252"] {
        refused(body.replace("utf-8", encoding), UnsupportedDeclaration);
    }
    for accepted in ["UTF-8", "Utf-8"] {
        valid(body.replace("utf-8", accepted));
    }
}

#[test]
fn xml_declaration_syntax() {
    let rest = bare(&notification(STATUS));
    for good in [
        r#"<?xml version="1.0"?>"#,
        "<?xml version='1.0'?>",
        "<?xml   version = '1.0'   encoding = 'UTF-8'  standalone = 'yes' ?>",
        r#"<?xml version="1.0" standalone="no"?>"#,
    ] {
        valid(format!("{good}{rest}"));
    }
    for (bad, kind) in [
        ("<?xml version=\"1.1\"?>", UnsupportedDeclaration),
        ("<?xml version=\"1.\"?>", UnsupportedDeclaration),
        ("<?xml version=\"2.0\"?>", UnsupportedDeclaration),
        ("<?xml encoding='UTF-8'?>", NotWellFormed),
        (
            "<?xml version='1.0' standalone='yes' encoding='UTF-8'?>",
            NotWellFormed,
        ),
        ("<?xml version='1.0' standalone='maybe'?>", NotWellFormed),
        ("<?xml version='1.0' encoding='1utf'?>", NotWellFormed),
        ("<?xml version='1.0'encoding='UTF-8'?>", NotWellFormed),
        ("<?xml version='1.0' foo='x'?>", NotWellFormed),
        ("<?xml version='1.0' ", NotWellFormed),
        // not at the very start: a processing instruction, refused as such
        (" <?xml version='1.0'?>", ForbiddenMarkup),
        (
            "<?xml version='1.0'?><?xml version='1.0'?>",
            ForbiddenMarkup,
        ),
        ("<?XML version='1.0'?>", ForbiddenMarkup),
        ("<?xml?>", ForbiddenMarkup),
    ] {
        refused(format!("{bad}{rest}"), kind);
    }
}

#[test]
fn prolog_and_epilog() {
    let body = notification(STATUS);
    valid(format!("{body}<!-- after --> \n\r\t"));
    valid(body.replacen("?>", "?><!-- before -->\n", 1));
    for (bad, kind) in [
        (format!("{body}x"), NotWellFormed),
        (format!("{body}<s:Envelope/>"), NotWellFormed),
        (format!("{body}&amp;"), NotWellFormed),
        (format!("{body}<![CDATA[]]>"), NotWellFormed),
        (format!("{body}<?pi?>"), ForbiddenMarkup),
        (body.replacen("?>", "?>x", 1), NotWellFormed),
        (body.replacen("?>", "?><![CDATA[]]>", 1), NotWellFormed),
        (String::new(), NotWellFormed),
        ("   ".to_string(), NotWellFormed),
        ("<?xml version='1.0'?>".to_string(), NotWellFormed),
        (body[..body.len() - 5].to_string(), NotWellFormed),
    ] {
        refused(bad, kind);
    }
}

#[test]
fn dtds_and_processing_instructions_are_forbidden() {
    let rest = bare(&notification(STATUS));
    let billion_laughs = concat!(
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">"#,
        r#"<!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">"#,
        r#"<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">"#,
        r#"<!ENTITY lol9 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>"#,
        "<lolz>&lol9;</lolz>"
    );
    refused(billion_laughs, ForbiddenMarkup);
    let xxe = format!(
        r#"<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>{}"#,
        rest.replace(">sub<", ">&xxe;<")
    );
    refused(xxe, ForbiddenMarkup);
    // Without the DTD the reference is to an undeclared entity: not well-formed, never expanded.
    refused(
        notification(STATUS).replace(">sub<", ">&xxe;<"),
        NotWellFormed,
    );
    refused(format!("<!DOCTYPE s:Envelope>{rest}"), ForbiddenMarkup);
    refused(
        format!("<?xml-stylesheet href='a'?>{rest}"),
        ForbiddenMarkup,
    );
    refused(notification("<?pi data?><t:StatusEvent/>"), ForbiddenMarkup);
    refused(
        in_message_xml("<x xmlns:x='urn:x'><?pi?></x>"),
        ForbiddenMarkup,
    );
    refused(
        notification("<!DOCTYPE x><t:StatusEvent/>"),
        ForbiddenMarkup,
    );
}

#[test]
fn references() {
    for good in [
        "&lt;&gt;&amp;&apos;&quot;",
        "&#65;",
        "&#x41;",
        "&#x0000000041;",
        "&#x10FFFF;",
        "&#9;",
        "&#xD;",
    ] {
        valid(in_message_xml(&format!("<y>{good}</y>")));
        valid(notification(STATUS).replace(">sub<", &format!(">{good}<")));
    }
    for bad in [
        "&foo;",
        "&lt",
        "a & b",
        "&#0;",
        "&#x1;",
        "&#xFFFE;",
        "&#xD800;",
        "&#x110000;",
        "&#99999999999999999999;",
        "&#X41;",
        "&#;",
        "&#x;",
        "&#12a;",
        "&;",
    ] {
        refused(in_message_xml(&format!("<y>{bad}</y>")), NotWellFormed);
        refused(in_message_xml(&format!("<y a=\"{bad}\"/>")), NotWellFormed);
    }
}

#[test]
fn character_data_rules() {
    refused(in_message_xml("<y>a]]>b</y>"), NotWellFormed);
    valid(in_message_xml("<y a=\"]]>\">a]]&gt;b ] ]] >></y>"));
    valid(in_message_xml("<y><![CDATA[<not markup> & ]]]]></y>"));
    refused(in_message_xml("<y><![CDATA[open</y>"), NotWellFormed);
    refused(in_message_xml("<y><![cdata[x]]></y>"), NotWellFormed);
}

#[test]
fn comments() {
    for good in [
        "<!---->",
        "<!-->-->",
        "<!-- - -->",
        "<!--- a -->",
        "<!-- <tag> & -->",
    ] {
        valid(in_message_xml(good));
    }
    for bad in ["<!-- a -- b -->", "<!-- a --->", "<!-- open", "<!- x ->"] {
        refused(in_message_xml(bad), NotWellFormed);
    }
}

#[test]
fn names() {
    for good in [
        "y.z-1",
        "y\u{E9}",
        "_y",
        "y\u{B7}",
        "\u{4E2D}\u{6587}",
        "y\u{300}",
    ] {
        valid(in_message_xml(&format!("<{good}/>")));
        valid(in_message_xml(&format!("<y {good}=\"1\"/>")));
    }
    for bad in ["1y", "\u{B7}y", "-y", ".y", " y", "y\u{D7}"] {
        refused(in_message_xml(&format!("<{bad}/>")), NotWellFormed);
    }
    refused(in_message_xml("<y 1a=\"1\"/>"), NotWellFormed);
}

#[test]
fn tags_and_attributes() {
    valid(in_message_xml("<y a = \"1\"  b='\"'\n/>"));
    valid(in_message_xml("<y a=\">\"></y  >"));
    for bad in [
        "<y a=\"1\"b=\"2\"/>",
        "<y a=\"1\" a=\"2\"/>",
        "<y a=1/>",
        "<y a/>",
        "<y a=\"<\"/>",
        "<y a=\"1/>",
        "<y / >",
        "<y></ y>",
        "<y></y a=\"1\">",
        "<y></z>",
        "<y>",
        "</y>",
        "<y xmlns:p=\"urn:p\" xmlns:p=\"urn:q\"/>",
        "<y xmlns=\"urn:p\" xmlns=\"urn:p\"/>",
        "<>",
    ] {
        refused(in_message_xml(bad), NotWellFormed);
    }
}

#[test]
fn tags_are_delimited_with_quotes_respected() {
    for good in [
        "<y a=\"/>\"/>",
        "<y a='>' b=\"'\"></y>",
        "<y\ta=\"1\"\n\tb='2'\n/>",
        "<y></y\t\n>",
        "<y a = \"x>y\" b\t=\t'&gt;'\n/>",
        "<y\n/>",
        "<ya></ya ><y/>",
    ] {
        valid(in_message_xml(good));
    }
    for bad in [
        "<ya></y>",
        "<y></ya>",
        "<y></y a>",
        "<y a=\"1\"/x>",
        "<y a=\"1\"b=\"2\"/>",
        "<y a=\"1\" =\"2\"/>",
        "<y a=1/>",
        "<y a/>",
        "<y\"a\"/>",
        "<y=a/>",
        "<y/a/>",
        "<y a=\"1\"/ >",
        "<y a=\"1\"\tb/>",
        "<y><z></y></z>",
    ] {
        refused(in_message_xml(bad), NotWellFormed);
    }
    refused(format!("{}</x>", notification(STATUS)), NotWellFormed);
    refused(
        &notification(STATUS)[..notification(STATUS).len() - 1],
        NotWellFormed,
    );
}

#[test]
fn every_truncation_is_refused_as_not_well_formed() {
    let body = notification(STATUS);
    let last_markup = body.rfind('>').expect("the body ends with markup");
    // Cut inside the declaration: an unclosed declaration, or (before `<?xml `) a processing
    // instruction, refused as one.
    let declaration_end = body.find("?>").expect("a declaration") + 2;
    for end in 2..declaration_end {
        let kind = verdict(&body.as_bytes()[..end]).map_err(|r| r.kind);
        assert!(
            matches!(kind, Err(NotWellFormed | ForbiddenMarkup)),
            "cut at {end}: {kind:?}"
        );
    }
    for end in (0..=last_markup).filter(|&end| end < 2 || end >= declaration_end) {
        let rejection = refused(&body[..end], NotWellFormed);
        assert!(offset(&rejection) <= end, "cut at {end}: {rejection}");
    }
}

#[test]
fn offsets_point_at_the_fault() {
    let cases = [
        ("<y a=\"1<\"/>", "<\"/>"),
        ("<y a=\"1\" b=\"2\"c=\"3\"/>", "c=\"3\""),
        ("<y></z>", "</z>"),
        ("<y a=\"&bogus;\"/>", "&bogus;"),
        ("<y\u{D7}/>", "\u{D7}"),
    ];
    for (content, fault) in cases {
        for bom in ["", "\u{FEFF}"] {
            let body = format!("{bom}{}", in_message_xml(content));
            let rejection = refused(&body, NotWellFormed);
            assert_eq!(offset(&rejection), body.find(fault).unwrap(), "{rejection}");
        }
    }
}

#[test]
fn namespace_rules() {
    valid(in_message_xml(
        "<y xmlns:xml=\"http://www.w3.org/XML/1998/namespace\" xml:space=\"bogus\"/>",
    ));
    valid(in_message_xml("<xml:foo/>"));
    valid(in_message_xml(
        "<y xmlns:p=\"rel\" p:a=\"1\" xmlns:q=\"urn:other\" q:a=\"2\"/>",
    ));
    for bad in [
        "<x:Foo/>",
        "<y p:a=\"1\"/>",
        "<:y/>",
        "<y:/>",
        "<x:y:z xmlns:x=\"urn:x\"/>",
        "<x:1y xmlns:x=\"urn:x\"/>",
        "<y xmlns:p=\"\"/>",
        "<y xmlns:xml=\"urn:x\"/>",
        "<y xmlns:p=\"http://www.w3.org/XML/1998/namespace\"/>",
        "<y xmlns:xmlns=\"urn:x\"/>",
        "<y xmlns=\"http://www.w3.org/XML/1998/namespace\"/>",
        "<y xmlns=\"http://www.w3.org/2000/xmlns/\"/>",
        "<y xmlns:p=\"http://www.w3.org/2000/xmlns/\"/>",
        "<xmlns:foo/>",
        "<y xmlns:=\"urn:x\"/>",
        "<y xmlns:a:b=\"urn:x\"/>",
        "<y xmlns:p=\"urn:p\" xmlns:q=\"urn:p\" p:a=\"1\" q:a=\"2\"/>",
        "<y xmlns:p=\"urn:p\" xmlns:q=\"urn:&#x70;\" p:a=\"1\" q:a=\"2\"/>",
    ] {
        refused(in_message_xml(bad), NamespaceError);
    }
    // A prefix is scoped to its element.
    refused(
        in_message_xml("<x:a xmlns:x=\"urn:x\"/><x:b/>"),
        NamespaceError,
    );
}

#[test]
fn elements_match_by_namespace_not_prefix() {
    let renamed = notification(STATUS)
        .replace("xmlns:t=", "xmlns:types=")
        .replace("<t:", "<types:")
        .replace("</t:", "</types:");
    valid(renamed);
    let default_ns = format!(
        concat!(
            "<Envelope xmlns='{s}'><Body><SendNotification xmlns='{m}'><ResponseMessages>",
            "<SendNotificationResponseMessage ResponseClass='Success'><Notification>",
            "<SubscriptionId xmlns='{t}'>a</SubscriptionId><StatusEvent xmlns='{t}'/>",
            "</Notification></SendNotificationResponseMessage></ResponseMessages></SendNotification></Body></Envelope>"
        ),
        s = SOAP,
        m = M,
        t = T
    );
    valid(&default_ns);
    // The namespace name may be written with references.
    valid(notification(STATUS).replace("2006/types", "2006/&#x74;ypes"));
    // Same prefix, wrong namespace: an unexpected element.
    refused(
        notification(STATUS).replace("2006/types", "2006/Types"),
        SchemaStructure,
    );
    refused(
        default_ns.replace("<StatusEvent xmlns='", "<StatusEvent xmlns='urn:x"),
        SchemaStructure,
    );
    // Unqualified events: xmlns="" undeclares the default namespace.
    refused(
        default_ns.replace("<StatusEvent xmlns='", "<StatusEvent x='"),
        SchemaStructure,
    );
}

#[test]
fn envelope_structure() {
    let body = notification(STATUS);
    let swap_header_body = body.replace("<s:Body>", "<s:Header/><s:Body>");
    valid(&swap_header_body);
    for bad in [
        body.replace("s:Envelope", "s:Envelop"),
        body.replace(SOAP, "http://www.w3.org/2003/05/soap-envelope"),
        body.replace("</s:Body>", "</s:Body><s:Header/>"),
        body.replace("</s:Body>", "</s:Body><s:Body/>"),
        body.replace("<s:Body>", "<s:Header/><s:Header/><s:Body>"),
        format!("<s:Envelope xmlns:s=\"{SOAP}\"/>"),
        format!("<s:Envelope xmlns:s=\"{SOAP}\"><s:Body/></s:Envelope>"),
        body.replace(
            "</m:SendNotification>",
            "</m:SendNotification><m:SendNotification/>",
        ),
        body.replace("<s:Body>", "<s:Body>x"),
        body.replace("<s:Body>", "<s:Body><![CDATA[]]>"),
        body.replace("<s:Body>", "<s:Body>&#xA0;"),
        format!("<x xmlns=\"{SOAP}\"/>"),
    ] {
        refused(bad, SchemaStructure);
    }
    valid(body.replace("<s:Body>", "<s:Body> \n&#32;&#x9;&#xD;<!-- c -->"));
}

#[test]
fn soap_element_attributes() {
    let body = notification(STATUS);
    for good in [
        "xml:lang=\"en\"",
        "xml:lang=\" en-US \"",
        "t:foo=\"1\"",
        "xmlns:x=\"urn:x\" x:foo=\"1\"",
        "xml:space=\"bogus\"",
    ] {
        valid(body.replace("<s:Envelope ", &format!("<s:Envelope {good} ")));
        valid(body.replace("<s:Body>", &format!("<s:Body {good}>")));
    }
    for (bad, kind) in [
        ("foo=\"1\"", SchemaStructure),
        ("s:foo=\"1\"", SchemaStructure),
        ("xml:lang=\"en-\"", SchemaValue),
        ("xml:lang=\"\"", SchemaValue),
        ("xml:lang=\"abcdefghi\"", SchemaValue),
        (
            "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:foo=\"1\"",
            UnsupportedExtension,
        ),
    ] {
        refused(
            body.replace("<s:Envelope ", &format!("<s:Envelope {bad} ")),
            kind,
        );
    }
    refused(
        body.replace(
            "<m:SendNotification>",
            "<m:SendNotification xml:lang=\"en\">",
        ),
        SchemaStructure,
    );
    refused(
        body.replace("<m:SendNotification>", "<m:SendNotification t:x=\"1\">"),
        SchemaStructure,
    );
}

#[test]
fn header_wildcard() {
    for good in [
        "",
        "<t:RequestServerVersion Version=\"Exchange2010\"/>",
        "<t:RequestServerVersion Version=\"V2018_01_08\"><!-- c --></t:RequestServerVersion>",
        "<t:RequestServerVersion Version=\"Exchange2007\"/><t:RequestServerVersion Version=\"Exchange2013_SP1\"/>",
        "<x:Foo xmlns:x=\"urn:x\" s:a=\"1\" foo=\"2\"><bar/>text<![CDATA[x]]></x:Foo>",
        "<x:Foo xmlns:x=\"urn:x\"><x:Bar><t:Value Name=\"a\">b</t:Value></x:Bar></x:Foo>",
        " <!-- c --> ",
    ] {
        valid(in_header(good));
    }
    for (bad, kind) in [
        ("<Foo/>", SchemaStructure),
        ("<s:Foo/>", SchemaStructure),
        ("text", SchemaStructure),
        ("<t:Unknown/>", UnsupportedExtension),
        ("<t:ServerVersionInfo/>", UnsupportedExtension),
        ("<m:Foo/>", UnsupportedExtension),
        ("<x:Foo xmlns:x=\"urn:x\"><t:Unknown/></x:Foo>", UnsupportedExtension),
        ("<x:Foo xmlns:x=\"urn:x\"><s:Envelope/></x:Foo>", UnsupportedExtension),
        ("<x:Foo xmlns:x=\"urn:x\" xml:lang=\"1-\"/>", SchemaValue),
        ("<x:Foo xmlns:x=\"urn:x\"><t:RequestServerVersion Version=\"bad\"/></x:Foo>", SchemaValue),
        ("<x:Foo xmlns:x=\"urn:x\"><t:Value/></x:Foo>", SchemaStructure),
        ("<t:RequestServerVersion/>", SchemaStructure),
        ("<t:RequestServerVersion Version=\"Exchange2099\"/>", SchemaValue),
        ("<t:RequestServerVersion Version=\" Exchange2010\"/>", SchemaValue),
        ("<t:RequestServerVersion Version=\"Exchange2010&#10;\"/>", SchemaValue),
        ("<t:RequestServerVersion Version=\"Exchange2010\" Foo=\"1\"/>", SchemaStructure),
        ("<t:RequestServerVersion Version=\"Exchange2010\" s:mustUnderstand=\"1\"/>", SchemaStructure),
        ("<t:RequestServerVersion Version=\"Exchange2010\" xml:lang=\"en\"/>", SchemaStructure),
        ("<t:RequestServerVersion Version=\"Exchange2010\"> </t:RequestServerVersion>", SchemaStructure),
        ("<t:RequestServerVersion Version=\"Exchange2010\"><![CDATA[]]></t:RequestServerVersion>", SchemaStructure),
        ("<t:RequestServerVersion Version=\"Exchange2010\"><x:a xmlns:x=\"urn:x\"/></t:RequestServerVersion>", SchemaStructure),
        (
            "<x:Foo xmlns:x=\"urn:x\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"x\"/>",
            UnsupportedExtension,
        ),
    ] {
        refused(in_header(bad), kind);
    }
}

#[test]
fn response_messages() {
    let body = notification(STATUS);
    let second = "<m:SendNotificationResponseMessage ResponseClass=\"Warning\"><m:Notification><t:SubscriptionId>s2</t:SubscriptionId><t:StatusEvent/><t:StatusEvent/></m:Notification></m:SendNotificationResponseMessage>";
    let two = body.replace(
        "</m:ResponseMessages>",
        &format!("{second}</m:ResponseMessages>"),
    );
    let summary = valid(&two);
    assert_eq!((summary.response_messages, summary.events), (2, 3));
    refused(
        body.replace(
            "</m:ResponseMessages>",
            "<m:GetItemResponseMessage ResponseClass=\"Success\"/></m:ResponseMessages>",
        ),
        UnsupportedExtension,
    );
    refused(
        body.replace("</m:ResponseMessages>", "<m:Bogus/></m:ResponseMessages>"),
        SchemaStructure,
    );
    refused(
        format!(
            "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\"><s:Body><m:SendNotification><m:ResponseMessages/></m:SendNotification></s:Body></s:Envelope>"
        ),
        SchemaStructure,
    );
}

#[test]
fn response_message_attributes_and_order() {
    for class in ["Success", "Warning", "Error"] {
        valid(doc_with(class, "", "", STATUS));
    }
    for bad in [
        " Success",
        "Success ",
        "success",
        "",
        "Success\t",
        "Success&#32;",
    ] {
        refused(doc_with(bad, "", "", STATUS), SchemaValue);
    }
    let body = notification(STATUS);
    refused(
        body.replace("ResponseClass=\"Success\"", ""),
        SchemaStructure,
    );
    refused(
        body.replace("ResponseClass=", "t:ResponseClass="),
        SchemaStructure,
    );
    refused(
        body.replace("ResponseClass=", "foo=\"1\" ResponseClass="),
        SchemaStructure,
    );
    refused(
        body.replace("ResponseClass=", "xml:lang=\"en\" ResponseClass="),
        SchemaStructure,
    );
    let all = "<m:MessageText>m</m:MessageText><m:ResponseCode>NoError</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:MessageXml/>";
    valid(doc("", all, STATUS));
    for bad in [
        "<m:ResponseCode>NoError</m:ResponseCode><m:MessageText>m</m:MessageText>",
        "<m:ResponseCode>NoError</m:ResponseCode><m:ResponseCode>NoError</m:ResponseCode>",
        "<m:MessageXml/><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>",
        "<t:MessageText>m</t:MessageText>",
        "<m:MessageText><b/></m:MessageText>",
    ] {
        refused(doc("", bad, STATUS), SchemaStructure);
    }
}

#[test]
fn response_code_and_descriptive_link_key() {
    for code in [
        "NoError",
        "ErrorReadEventsFailed",
        "ErrorAccessDenied",
        "ErrorRecoverableItemsAccessDenied",
        "<![CDATA[NoError]]>",
        "No<!-- c -->Error",
        "&#x4E;oError",
    ] {
        valid(doc(
            "",
            &format!("<m:ResponseCode>{code}</m:ResponseCode>"),
            STATUS,
        ));
    }
    for code in ["noerror", " NoError", "NoError ", "", "NoErrors"] {
        refused(
            doc(
                "",
                &format!("<m:ResponseCode>{code}</m:ResponseCode>"),
                STATUS,
            ),
            SchemaValue,
        );
    }
    for key in ["0", "-2147483648", "+7", "0007"] {
        valid(doc(
            "",
            &format!("<m:DescriptiveLinkKey>{key}</m:DescriptiveLinkKey>"),
            STATUS,
        ));
    }
    for key in [" 0", "0 ", "2147483648", "x", ""] {
        refused(
            doc(
                "",
                &format!("<m:DescriptiveLinkKey>{key}</m:DescriptiveLinkKey>"),
                STATUS,
            ),
            SchemaValue,
        );
    }
}

#[test]
fn message_xml_wildcard() {
    for good in [
        "",
        "<t:Value Name=\"SubscriptionId\">abc</t:Value>",
        "<t:Value Name=\"\"></t:Value><t:Value Name=\"a\"><![CDATA[x]]></t:Value>",
        "<y a=\"1\">text<z/></y>",
        "<x:y xmlns:x=\"urn:x\"><t:Value Name=\"n\">v</t:Value></x:y>",
        "\n <!-- c -->\n",
    ] {
        valid(in_message_xml(good));
    }
    for (bad, kind) in [
        ("text", SchemaStructure),
        ("<![CDATA[ ]]>", SchemaStructure),
        ("<t:Value>b</t:Value>", SchemaStructure),
        (
            "<t:Value Name=\"a\" Other=\"b\">b</t:Value>",
            SchemaStructure,
        ),
        (
            "<t:Value Name=\"a\" xml:lang=\"en\">b</t:Value>",
            SchemaStructure,
        ),
        ("<t:Value Name=\"a\"><y/></t:Value>", SchemaStructure),
        (
            "<t:SubscriptionId>x</t:SubscriptionId>",
            UnsupportedExtension,
        ),
        ("<m:ResponseCode>bad</m:ResponseCode>", UnsupportedExtension),
        ("<s:Body/>", UnsupportedExtension),
        (
            "<y xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"x\"/>",
            UnsupportedExtension,
        ),
        ("<y xml:lang=\"!\"/>", SchemaValue),
    ] {
        refused(in_message_xml(bad), kind);
    }
}

#[test]
fn error_without_notification_is_an_accepted_deviation() {
    let error = format!(
        concat!(
            "<s:Envelope xmlns:s=\"{s}\" xmlns:m=\"{m}\" xmlns:t=\"{t}\"><s:Body><m:SendNotification><m:ResponseMessages>",
            "<m:SendNotificationResponseMessage ResponseClass=\"{class}\"><m:MessageText>x</m:MessageText>",
            "<m:ResponseCode>ErrorReadEventsFailed</m:ResponseCode><m:MessageXml>",
            "<t:Value Name=\"Other\">o</t:Value><t:Value Name=\"SubscriptionId\">sub-1</t:Value><t:Value Name=\"SubscriptionId\">sub-2</t:Value>",
            "</m:MessageXml></m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></s:Body></s:Envelope>"
        ),
        s = SOAP,
        m = M,
        t = T,
        class = "{class}"
    );
    let summary = valid(error.replace("{class}", "Error"));
    assert!(summary.error_without_notification);
    assert_eq!(summary.events, 0);
    let model = parse(error.replace("{class}", "Error").as_bytes(), &limits()).expect("valid");
    let message = &model.response_messages[0];
    assert_eq!(message.subscription_id.as_deref(), Some("sub-1"));
    assert_eq!(message.notification, None);
    assert_eq!(
        message.response_code.as_deref(),
        Some("ErrorReadEventsFailed")
    );
    for class in ["Success", "Warning"] {
        refused(error.replace("{class}", class), SchemaStructure);
    }
    assert!(!valid(notification(STATUS)).error_without_notification);
}

#[test]
fn notification_content() {
    valid(notification(&format!("{STATUS}{STATUS}")));
    for good in [
        "<t:PreviousWatermark>pw</t:PreviousWatermark><t:MoreEvents>true</t:MoreEvents>",
        "<t:MoreEvents> 0 </t:MoreEvents>",
        "<t:PreviousWatermark> </t:PreviousWatermark>",
    ] {
        valid(notification(&format!("{good}{STATUS}")));
    }
    let body = notification(STATUS);
    for (bad, kind) in [
        (body.replace("<t:SubscriptionId>sub</t:SubscriptionId>", ""), SchemaStructure),
        (body.replace(">sub<", "><"), SchemaValue),
        (body.replace(">sub<", "><!-- c --><"), SchemaValue),
        (body.replace(">sub<", "><![CDATA[]]><"), SchemaValue),
        (body.replace("<t:SubscriptionId>sub</t:SubscriptionId>", "<t:SubscriptionId/>"), SchemaValue),
        (body.replace(STATUS, ""), SchemaStructure),
        (notification("<t:PreviousWatermark></t:PreviousWatermark><t:StatusEvent/>"), SchemaValue),
        (notification("<t:MoreEvents>yes</t:MoreEvents><t:StatusEvent/>"), SchemaValue),
        (notification("<t:MoreEvents>true</t:MoreEvents><t:PreviousWatermark>p</t:PreviousWatermark><t:StatusEvent/>"), SchemaStructure),
        (notification("<t:StatusEvent/><t:MoreEvents>true</t:MoreEvents>"), SchemaStructure),
        (notification("<m:StatusEvent/>"), SchemaStructure),
        (notification("<t:UnknownEvent/>"), SchemaStructure),
        (body.replace("<t:SubscriptionId>sub</t:SubscriptionId>", "<t:SubscriptionId>sub</t:SubscriptionId><t:SubscriptionId>x</t:SubscriptionId>"), SchemaStructure),
        (body.replace("<m:Notification>", "<m:Notification a=\"1\">"), SchemaStructure),
        (body.replace("<m:Notification>", "<m:Notification>text"), SchemaStructure),
        (body.replace("<t:SubscriptionId>sub", "<t:SubscriptionId a=\"1\">sub"), SchemaStructure),
        (body.replace(">sub<", "><b/><"), SchemaStructure),
    ] {
        refused(bad, kind);
    }
    // The subscription id is opaque: whitespace is part of it.
    valid(body.replace(">sub<", "> <"));
}

#[test]
fn event_content_models() {
    let ts = "<t:TimeStamp>2020-01-01T00:00:00Z</t:TimeStamp>";
    let object = "<t:ItemId Id=\"i\"/><t:ParentFolderId Id=\"p\"/>";
    let old = "<t:OldFolderId Id=\"o\"/><t:OldParentFolderId Id=\"op\"/>";
    for kind in [
        "CreatedEvent",
        "DeletedEvent",
        "NewMailEvent",
        "FreeBusyChangedEvent",
        "ModifiedEvent",
    ] {
        valid(notification(&format!("<t:{kind}>{ts}{object}</t:{kind}>")));
        valid(notification(&format!("<t:{kind}><t:Watermark>w</t:Watermark>{ts}<t:FolderId Id=\"\" ChangeKey=\"\"/><t:ParentFolderId Id=\"p\"/></t:{kind}>")));
        refused(
            notification(&format!("<t:{kind}>{object}</t:{kind}>")),
            SchemaStructure,
        );
        refused(
            notification(&format!("<t:{kind}>{ts}</t:{kind}>")),
            SchemaStructure,
        );
        refused(
            notification(&format!("<t:{kind}>{ts}{object}{old}</t:{kind}>")),
            SchemaStructure,
        );
    }
    valid(notification(&format!(
        "<t:ModifiedEvent>{ts}{object}<t:UnreadCount>3</t:UnreadCount></t:ModifiedEvent>"
    )));
    refused(
        notification(&format!(
            "<t:CreatedEvent>{ts}{object}<t:UnreadCount>3</t:UnreadCount></t:CreatedEvent>"
        )),
        SchemaStructure,
    );
    refused(
        notification(&format!(
            "<t:ModifiedEvent>{ts}{object}<t:UnreadCount>x</t:UnreadCount></t:ModifiedEvent>"
        )),
        SchemaValue,
    );
    for kind in ["MovedEvent", "CopiedEvent"] {
        valid(notification(&format!(
            "<t:{kind}>{ts}{object}{old}</t:{kind}>"
        )));
        valid(notification(&format!("<t:{kind}>{ts}{object}<t:OldItemId Id=\"o\"/><t:OldParentFolderId Id=\"op\"/></t:{kind}>")));
        refused(
            notification(&format!("<t:{kind}>{ts}{object}</t:{kind}>")),
            SchemaStructure,
        );
        refused(
            notification(&format!(
                "<t:{kind}>{ts}{object}<t:OldFolderId Id=\"o\"/></t:{kind}>"
            )),
            SchemaStructure,
        );
    }
    valid(notification(
        "<t:StatusEvent><t:Watermark>w</t:Watermark></t:StatusEvent>",
    ));
    valid(notification(
        "<t:StatusEvent>\n  <!-- c -->\n</t:StatusEvent>",
    ));
    for bad in [
        format!("<t:StatusEvent>{ts}</t:StatusEvent>"),
        "<t:StatusEvent><t:Watermark>w</t:Watermark><t:Watermark>w</t:Watermark></t:StatusEvent>"
            .to_string(),
        "<t:StatusEvent>x</t:StatusEvent>".to_string(),
        "<t:StatusEvent><![CDATA[]]></t:StatusEvent>".to_string(),
        "<t:StatusEvent>&amp;</t:StatusEvent>".to_string(),
        format!(
            "<t:CreatedEvent>{ts}<t:ParentFolderId Id=\"p\"/><t:ItemId Id=\"i\"/></t:CreatedEvent>"
        ),
        format!("<t:CreatedEvent>{ts}<t:ItemId Id=\"i\"/><t:ItemId Id=\"p\"/></t:CreatedEvent>"),
        format!("<t:CreatedEvent>{ts}{ts}{object}</t:CreatedEvent>"),
        format!("<t:CreatedEvent>{object}{ts}</t:CreatedEvent>"),
    ] {
        refused(notification(&bad), SchemaStructure);
    }
    refused(
        notification("<t:StatusEvent><t:Watermark></t:Watermark></t:StatusEvent>"),
        SchemaValue,
    );
}

#[test]
fn id_elements() {
    let with_item = |item: &str| {
        notification(&format!(
            "<t:CreatedEvent><t:TimeStamp>2020-01-01T00:00:00Z</t:TimeStamp>{item}<t:ParentFolderId Id=\"p\"/></t:CreatedEvent>"
        ))
    };
    for good in [
        "<t:ItemId Id=\"\"/>",
        "<t:ItemId Id=\"a\" ChangeKey=\"DwAAAA==\"/>",
        "<t:ItemId ChangeKey=\"k\" Id=\"a\"/>",
        "<t:ItemId Id=\"a\"><!-- c --></t:ItemId>",
        "<t:ItemId Id=\"a\"></t:ItemId>",
        "<t:ItemId Id=\"&lt;&amp;&#9;\"/>",
        "<t:ItemId Id=\"a\" xmlns:x=\"urn:x\"/>",
    ] {
        valid(with_item(good));
    }
    for bad in [
        "<t:ItemId/>",
        "<t:ItemId ChangeKey=\"k\"/>",
        "<t:ItemId t:Id=\"a\"/>",
        "<t:ItemId Id=\"a\" Other=\"b\"/>",
        "<t:ItemId Id=\"a\" xml:lang=\"en\"/>",
        "<t:ItemId Id=\"a\"> </t:ItemId>",
        "<t:ItemId Id=\"a\">&#32;</t:ItemId>",
        "<t:ItemId Id=\"a\"><![CDATA[]]></t:ItemId>",
        "<t:ItemId Id=\"a\"><t:Id/></t:ItemId>",
    ] {
        refused(with_item(bad), SchemaStructure);
    }
    refused(
        with_item("<t:ItemId Id=\"a\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:nil=\"false\"/>"),
        UnsupportedExtension,
    );
}

#[test]
fn timestamps() {
    for good in [
        "2020-12-03T11:03:50Z",
        "2026-11-20T09:42:11+01:00",
        "2020-02-29T24:00:00",
        "2020-01-01T00:00:00Z\n",
        "2020-01-01T00:00:00Z&#9;",
        "2020-01-<!--c-->01T00:00:00Z",
    ] {
        valid(notification(&created(good)));
    }
    for bad in [
        "",
        " 2020-01-01T00:00:00Z",
        "&#x20;2020-01-01T00:00:00Z",
        "2020-01-01T00:00:00 ",
        "2019-02-29T00:00:00Z",
        "2020-01-01",
        "x",
    ] {
        refused(notification(&created(bad)), SchemaValue);
    }
}

fn nest(depth: usize) -> String {
    format!("{}{}", "<d>".repeat(depth), "</d>".repeat(depth))
}

#[test]
fn depth_limit() {
    // m:MessageXml is at depth 6, so 26 more levels reach the default limit of 32.
    valid(in_message_xml(&nest(26)));
    let deep = refused(in_message_xml(&nest(27)), LimitExceeded);
    assert!(deep.detail.contains("deeper than 32"), "{deep}");
    let custom = Limits {
        max_depth: 9,
        ..Limits::default()
    };
    assert!(validate(notification(STATUS).as_bytes(), &custom).is_ok());
    assert!(validate(in_message_xml(&nest(3)).as_bytes(), &custom).is_ok());
    assert_eq!(
        validate(in_message_xml(&nest(4)).as_bytes(), &custom).map_err(|r| r.kind),
        Err(LimitExceeded)
    );
}

fn offset(rejection: &Rejection) -> usize {
    rejection
        .detail
        .rsplit("at byte ")
        .next()
        .and_then(|n| n.parse().ok())
        .expect("detail ends with the byte offset")
}

#[test]
fn ten_thousand_levels_are_refused_at_the_limit() {
    let body = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
    let rejection = refused(&body, SchemaStructure);
    assert!(offset(&rejection) == 0, "{rejection}");
    let envelope = format!(
        "<s:Envelope xmlns:s=\"{SOAP}\"><s:Header><x:a xmlns:x=\"urn:x\">{}",
        "<x:a>".repeat(10_000)
    );
    let rejection = refused(&envelope, LimitExceeded);
    // refused at the 33rd element, long before the end of the body
    assert!(offset(&rejection) < 300, "{rejection}");
}

#[test]
fn size_limits() {
    let name = |n: usize| format!("<{}/>", "n".repeat(n));
    valid(in_message_xml(&name(256)));
    refused(in_message_xml(&name(257)), LimitExceeded);
    valid(in_message_xml(&format!("<y {}=\"1\"/>", "a".repeat(256))));
    refused(
        in_message_xml(&format!("<y {}=\"1\"/>", "a".repeat(257))),
        LimitExceeded,
    );
    valid(in_message_xml(&format!("<y a=\"{}\"/>", "v".repeat(8192))));
    refused(
        in_message_xml(&format!("<y a=\"{}\"/>", "v".repeat(8193))),
        LimitExceeded,
    );
    let attributes = |n: usize| (0..n).map(|i| format!(" a{i}=\"1\"")).collect::<String>();
    valid(in_message_xml(&format!("<y{}/>", attributes(32))));
    refused(
        in_message_xml(&format!("<y{}/>", attributes(33))),
        LimitExceeded,
    );
    valid(in_message_xml(&format!("<y>{}</y>", "t".repeat(16384))));
    refused(
        in_message_xml(&format!("<y>{}</y>", "t".repeat(16385))),
        LimitExceeded,
    );
    // text is counted per element, references and CDATA included
    refused(
        in_message_xml(&format!("<y>{}&amp;</y>", "t".repeat(16380))),
        LimitExceeded,
    );
    refused(
        in_message_xml(&format!("<y>{}<![CDATA[xx]]></y>", "t".repeat(16383))),
        LimitExceeded,
    );
    valid(
        in_message_xml(&format!(
            "<y>{}<z/>{}</y>",
            "t".repeat(10000),
            "t".repeat(6000)
        ))
        .replace("<z/>", "<z>zz</z>"),
    );
}

#[test]
fn event_and_message_limits() {
    let small = Limits {
        max_events: 3,
        max_response_messages: 2,
        ..Limits::default()
    };
    let events = |n: usize| notification(&STATUS.repeat(n));
    assert_eq!(
        validate(events(3).as_bytes(), &small).map(|s| s.events),
        Ok(3)
    );
    assert_eq!(
        validate(events(4).as_bytes(), &small).map_err(|r| r.kind),
        Err(LimitExceeded)
    );
    let message = "<m:SendNotificationResponseMessage ResponseClass=\"Success\"><m:Notification><t:SubscriptionId>s</t:SubscriptionId><t:StatusEvent/></m:Notification></m:SendNotificationResponseMessage>";
    let messages = |n: usize| {
        notification(STATUS).replace(
            "</m:ResponseMessages>",
            &format!("{}</m:ResponseMessages>", message.repeat(n - 1)),
        )
    };
    assert!(validate(messages(2).as_bytes(), &small).is_ok());
    assert_eq!(
        validate(messages(3).as_bytes(), &small).map_err(|r| r.kind),
        Err(LimitExceeded)
    );
    // The events of all messages count together.
    assert_eq!(
        validate(
            messages(2).replace(STATUS, &STATUS.repeat(2)).as_bytes(),
            &small
        )
        .map_err(|r| r.kind),
        Err(LimitExceeded)
    );
    let many = valid(notification(&STATUS.repeat(512)));
    assert_eq!(many.events, 512);
    refused(notification(&STATUS.repeat(513)), LimitExceeded);
}

#[test]
fn ten_megabyte_bodies() {
    let ten_mb = 10 * 1024 * 1024;
    // One huge value: refused by the text limit.
    let huge_id = notification(STATUS).replace(">sub<", &format!(">{}<", "s".repeat(ten_mb)));
    refused(&huge_id, LimitExceeded);
    // Megabytes of whitespace between elements: also character data of one element.
    let padded = notification(STATUS).replace(
        "<m:Notification>",
        &format!("<m:Notification>{}", " ".repeat(ten_mb)),
    );
    refused(&padded, LimitExceeded);
    // Many small foreign elements stay within every bound: the validator reads them all.
    let element = "<y a=\"1\">text</y>";
    let many = in_message_xml(&element.repeat(ten_mb / element.len()));
    assert!(many.len() > ten_mb);
    valid(&many);
    // A broken byte at the very end is still found.
    let mut broken = many.into_bytes();
    broken.push(0xFF);
    refused(&broken, NotWellFormed);
}

#[test]
fn not_well_formed_wins_over_a_schema_error_before_it() {
    let body = notification(STATUS).replace("<s:Body>", "<s:Body>x");
    refused(&body, SchemaStructure);
    let broken = format!("{}</extra>", body);
    refused(broken, NotWellFormed);
}

#[test]
fn rejection_reasons_are_stable_labels() {
    let labels: Vec<&str> = RejectionKind::ALL.iter().map(|k| k.reason()).collect();
    let mut unique = labels.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), labels.len());
    assert!(labels.len() <= 10);
    for label in &labels {
        assert!(
            label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{label}"
        );
    }
    let deviations: Vec<RejectionKind> = RejectionKind::ALL
        .into_iter()
        .filter(|k| k.is_xsd_deviation())
        .collect();
    assert_eq!(
        deviations,
        [
            NamespaceError,
            UnsupportedDeclaration,
            ForbiddenMarkup,
            LimitExceeded,
            UnsupportedExtension
        ]
    );
    let rejection = refused(notification("<t:Bogus/>"), SchemaStructure);
    assert_eq!(rejection.reason(), "schema_invalid_structure");
    assert!(!rejection.is_xsd_deviation());
    assert_eq!(
        rejection.to_string(),
        format!("schema_invalid_structure: {}", rejection.detail)
    );
    assert!(rejection.detail.contains("\"t:Bogus\""), "{rejection}");
    assert!(rejection.detail.contains("at byte "), "{rejection}");
}

#[test]
fn details_quote_little_of_the_body() {
    let long_code = format!("Error{}\n\u{7}", "X".repeat(500));
    let rejection = refused(
        doc(
            "",
            &format!("<m:ResponseCode>{long_code}</m:ResponseCode>"),
            STATUS,
        )
        .replace('\u{7}', ""),
        SchemaValue,
    );
    assert!(rejection.detail.len() < 160, "{rejection}");
    assert!(!rejection.detail.contains('\n'), "{rejection}");
    assert!(!rejection.detail.contains(&"X".repeat(41)), "{rejection}");
    let long_name = "n".repeat(200);
    let rejection = refused(notification(&format!("<t:{long_name}/>")), SchemaStructure);
    assert!(!rejection.detail.contains(&"n".repeat(41)), "{rejection}");
}

#[test]
fn verdict_lines() {
    let limits = Limits::default();
    assert_eq!(
        crate::notification::verdict_line("a.xml", notification(STATUS).as_bytes(), &limits),
        ("a.xml: valid".to_string(), true)
    );
    let (line, ok) = crate::notification::verdict_line("b.xml", b"<x", &limits);
    assert!(!ok);
    assert!(
        line.starts_with("b.xml: invalid: xml_not_well_formed: "),
        "{line}"
    );
}

#[test]
fn parse_decodes_values() {
    let body = format!(
        concat!(
            "<s:Envelope xmlns:s=\"{s}\" xmlns:m=\"{m}\" xmlns:t=\"{t}\"><s:Body><m:SendNotification><m:ResponseMessages>",
            "<m:SendNotificationResponseMessage ResponseClass=\"Warning\"><m:MessageText>a\r\nb\rc &amp; <![CDATA[<d>\r\n]]></m:MessageText>",
            "<m:ResponseCode><![CDATA[NoError]]></m:ResponseCode><m:Notification>",
            "<t:SubscriptionId>s&lt;1<!-- c -->&#x263A;</t:SubscriptionId><t:PreviousWatermark>p w</t:PreviousWatermark><t:MoreEvents> 1 </t:MoreEvents>",
            "<t:ModifiedEvent><t:Watermark>w</t:Watermark><t:TimeStamp>2020-01-01T00:00:00Z\n</t:TimeStamp>",
            "<t:FolderId Id=\"a&#9;b\tc\r\nd&quot;\" ChangeKey='k&apos;'/><t:ParentFolderId Id=\"p\"/><t:UnreadCount>-0007</t:UnreadCount></t:ModifiedEvent>",
            "<t:CopiedEvent><t:TimeStamp>2020-01-01T00:00:00+01:00</t:TimeStamp><t:ItemId Id=\"i\"/><t:ParentFolderId Id=\"p2\" ChangeKey=\"AQAAAA==\"/>",
            "<t:OldItemId Id=\"oi\"/><t:OldParentFolderId Id=\"op\"/></t:CopiedEvent>",
            "</m:Notification></m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></s:Body></s:Envelope>"
        ),
        s = SOAP,
        m = M,
        t = T
    );
    let model = parse(body.as_bytes(), &limits()).expect("valid");
    let message = &model.response_messages[0];
    assert_eq!(message.response_class, ResponseClass::Warning);
    assert_eq!(message.message_text.as_deref(), Some("a\nb\nc & <d>\n"));
    assert_eq!(message.response_code.as_deref(), Some("NoError"));
    assert_eq!(message.subscription_id.as_deref(), Some("s<1\u{263A}"));
    let content = message.notification.as_ref().expect("notification");
    assert_eq!(content.previous_watermark.as_deref(), Some("p w"));
    assert!(content.more_events);
    let modified = &content.events[0];
    assert_eq!(modified.kind, EventKind::Modified);
    assert_eq!(modified.watermark.as_deref(), Some("w"));
    assert_eq!(modified.timestamp.as_deref(), Some("2020-01-01T00:00:00Z"));
    let folder = modified.object.as_ref().expect("object");
    assert_eq!(folder.kind, ObjectKind::Folder);
    assert_eq!(folder.id, "a\tb c d\"");
    assert_eq!(folder.change_key.as_deref(), Some("k'"));
    assert_eq!(modified.unread_count, Some(-7));
    assert_eq!(modified.old_object, None);
    let copied = &content.events[1];
    assert_eq!(copied.kind, EventKind::Copied);
    assert_eq!(copied.watermark, None);
    assert_eq!(
        copied.object.as_ref().map(|o| (o.kind, o.id.as_str())),
        Some((ObjectKind::Item, "i"))
    );
    assert_eq!(
        copied
            .parent_folder_id
            .as_ref()
            .and_then(|o| o.change_key.as_deref()),
        Some("AQAAAA==")
    );
    assert_eq!(
        copied.old_object.as_ref().map(|o| o.id.as_str()),
        Some("oi")
    );
    assert_eq!(
        copied
            .old_parent_folder_id
            .as_ref()
            .map(|o| (o.kind, o.id.as_str())),
        Some((ObjectKind::Folder, "op"))
    );
    assert_eq!(copied.unread_count, None);
}

#[test]
fn normalisation_applies_from_the_first_line_break_on() {
    // The body's first tab is inside the Id value; a CR LF follows later in a watermark.
    let events = concat!(
        "<t:CreatedEvent><t:TimeStamp>2020-01-01T00:00:00Z</t:TimeStamp><t:ItemId Id=\"a\tb\" ChangeKey=\"k\"/>",
        "<t:ParentFolderId Id=\"p\"/></t:CreatedEvent>",
        "<t:StatusEvent><t:Watermark>w\r\nx\ry</t:Watermark></t:StatusEvent>"
    );
    let body = notification(events).replace("<?xml version=\"1.0\" encoding=\"utf-8\"?>", "");
    let model = parse(body.as_bytes(), &limits()).expect("valid");
    let content = model.response_messages[0]
        .notification
        .as_ref()
        .expect("notification");
    let id = content.events[0].object.as_ref().expect("object");
    assert_eq!(id.id, "a b");
    assert_eq!(id.change_key.as_deref(), Some("k"));
    assert_eq!(content.events[1].watermark.as_deref(), Some("w\nx\ny"));
}
