//! A small namespace-resolved element tree read with quick-xml, for EWS requests: names are
//! (namespace URI, local name), never prefixes. Bounded (size, depth, elements) because it reads
//! what clients send; DTDs and processing instructions are refused as Exchange's .NET reader
//! (with DTD processing prohibited) does.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

pub const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const MESSAGES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
pub const TYPES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
pub const ERRORS_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

const MAX_DEPTH: usize = 64;
const MAX_ELEMENTS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// Namespace URI; empty for an unqualified attribute.
    pub ns: String,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Namespace URI; empty when the element is in no namespace.
    pub ns: String,
    pub name: String,
    pub attributes: Vec<Attribute>,
    pub children: Vec<Element>,
    /// Character data directly inside this element (all of it, concatenated).
    pub text: String,
    /// Byte offset of the start tag in the document (for line and position in faults).
    pub offset: usize,
}

impl Element {
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// The unqualified attribute `name`.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.ns.is_empty() && a.name == name)
            .map(|a| a.value.as_str())
    }

    /// First child with this name.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    /// Character data without surrounding whitespace.
    pub fn trimmed_text(&self) -> &str {
        self.text.trim()
    }

    /// Whether there is character data other than whitespace.
    pub fn has_text(&self) -> bool {
        !self.text.trim().is_empty()
    }

    /// Descendants in document order (self excluded).
    pub fn descendants(&self) -> Vec<&Element> {
        let mut out = Vec::new();
        let mut stack: Vec<&Element> = self.children.iter().rev().collect();
        while let Some(element) = stack.pop() {
            out.push(element);
            stack.extend(element.children.iter().rev());
        }
        out
    }
}

/// Why a request body is not a readable XML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError {
    pub message: String,
    pub offset: usize,
}

impl std::fmt::Display for XmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Line and position (1-based) of a byte offset, as .NET reports them in schema faults.
pub fn line_and_position(document: &[u8], offset: usize) -> (usize, usize) {
    let before = &document[..offset.min(document.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let position = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, position)
}

fn namespace(result: &ResolveResult<'_>) -> Result<String, String> {
    match result {
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Bound(ns) => std::str::from_utf8(ns.as_ref())
            .map(str::to_string)
            .map_err(|_| "namespace URI is not UTF-8".to_string()),
        ResolveResult::Unknown(prefix) => Err(format!(
            "'{}' is an undeclared prefix",
            String::from_utf8_lossy(prefix)
        )),
    }
}

fn predefined_entity(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => None,
    }
}

/// Reads `document` into its root element.
pub fn parse(document: &[u8]) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(document).map_err(|e| XmlError {
        message: format!("the body is not UTF-8: {e}"),
        offset: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let bom = document.len() - text.len();
    let mut reader = NsReader::from_str(text);
    reader.config_mut().check_end_names = true;
    reader.config_mut().check_comments = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let offset = bom + usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let fail = |message: String| XmlError { message, offset };
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|e| fail(format!("not well-formed: {e}")))?;
        let ns = namespace(&resolved).map_err(fail)?;
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                elements += 1;
                if elements > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err(fail("the document is too large or too deep".into()));
                }
                if root.is_some() {
                    return Err(fail("content after the root element".into()));
                }
                let name = std::str::from_utf8(start.local_name().as_ref())
                    .map_err(|_| fail("element name is not UTF-8".into()))?
                    .to_string();
                let mut attributes = Vec::new();
                for attribute in start.attributes() {
                    let attribute = attribute.map_err(|e| fail(format!("bad attribute: {e}")))?;
                    let (attr_ns, local) = reader.resolve_attribute(attribute.key);
                    let attr_ns = namespace(&attr_ns).map_err(fail)?;
                    let is_declaration = attribute.key.as_namespace_binding().is_some();
                    if is_declaration || attr_ns == XMLNS_NS {
                        continue;
                    }
                    let value = attribute
                        .unescape_value()
                        .map_err(|e| fail(format!("bad attribute value: {e}")))?
                        .into_owned();
                    let local = std::str::from_utf8(local.as_ref())
                        .map_err(|_| fail("attribute name is not UTF-8".into()))?
                        .to_string();
                    if attributes
                        .iter()
                        .any(|a: &Attribute| a.ns == attr_ns && a.name == local)
                    {
                        return Err(fail(format!("attribute '{local}' appears twice")));
                    }
                    attributes.push(Attribute {
                        ns: attr_ns,
                        name: local,
                        value,
                    });
                }
                let element = Element {
                    ns,
                    name,
                    attributes,
                    children: Vec::new(),
                    text: String::new(),
                    offset,
                };
                if matches!(event, Event::Empty(_)) {
                    close(element, &mut stack, &mut root);
                } else {
                    stack.push(element);
                }
            }
            Event::End(_) => {
                let element = stack
                    .pop()
                    .ok_or_else(|| fail("end tag without start tag".into()))?;
                close(element, &mut stack, &mut root);
            }
            Event::Text(content) => {
                let content = content
                    .decode()
                    .map_err(|e| fail(format!("bad text: {e}")))?;
                match stack.last_mut() {
                    Some(parent) => parent.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => return Err(fail("text outside the root element".into())),
                }
            }
            Event::CData(content) => {
                let content = content
                    .decode()
                    .map_err(|e| fail(format!("bad CDATA: {e}")))?;
                match stack.last_mut() {
                    Some(parent) => parent.text.push_str(&content),
                    None => return Err(fail("CDATA outside the root element".into())),
                }
            }
            Event::GeneralRef(reference) => {
                let c = if reference.is_char_ref() {
                    reference
                        .resolve_char_ref()
                        .map_err(|e| fail(format!("bad character reference: {e}")))?
                } else {
                    let name = reference
                        .decode()
                        .map_err(|e| fail(format!("bad reference: {e}")))?;
                    predefined_entity(&name)
                };
                let c = c.ok_or_else(|| fail("reference to an undeclared entity".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.text.push(c),
                    None => return Err(fail("reference outside the root element".into())),
                }
            }
            Event::Comment(_) | Event::Decl(_) => {}
            Event::PI(_) => return Err(fail("processing instructions are not allowed".into())),
            Event::DocType(_) => {
                return Err(fail(
                    "DTD is prohibited in this XML document (DOCTYPE found)".into(),
                ))
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError {
            message: "unexpected end of file: elements are not closed".into(),
            offset: document.len(),
        });
    }
    root.ok_or_else(|| XmlError {
        message: "root element is missing".into(),
        offset: document.len(),
    })
}

fn close(element: Element, stack: &mut [Element], root: &mut Option<Element>) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

/// Escapes character data for element content.
pub fn escape_text(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// Escapes a double-quoted attribute value.
pub fn escape_attribute(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_namespace_uris_not_prefixes() {
        let doc = br#"<?xml version="1.0"?>
<a:Envelope xmlns:a="http://schemas.xmlsoap.org/soap/envelope/"><a:Body>
<Subscribe xmlns="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:x="http://schemas.microsoft.com/exchange/services/2006/types">
<x:Watermark x:Id="1" Plain="2">A&amp;B&#65;<![CDATA[<c>]]></x:Watermark></Subscribe></a:Body></a:Envelope>"#;
        let root = parse(doc).unwrap();
        assert!(root.is(SOAP_NS, "Envelope"));
        let body = root.child(SOAP_NS, "Body").unwrap();
        let subscribe = body.child(MESSAGES_NS, "Subscribe").unwrap();
        let watermark = subscribe.child(TYPES_NS, "Watermark").unwrap();
        assert_eq!(watermark.text, "A&BA<c>");
        assert_eq!(watermark.attribute("Plain"), Some("2"));
        assert_eq!(watermark.attribute("Id"), None, "qualified attribute");
        assert_eq!(watermark.attributes[0].ns, TYPES_NS);
        let (line, position) = line_and_position(doc, watermark.offset);
        assert_eq!((line, position), (4, 1));
    }

    #[test]
    fn hostile_or_broken_documents_are_refused() {
        let cases: &[&[u8]] = &[
            b"<a>",
            b"<a></b>",
            b"<a/><b/>",
            b"<p:a/>",
            b"<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>",
            b"<a>&x;</a>",
            b"<?pi x?><a/>",
            b"<a b='1' b='2'/>",
            b"\xff<a/>",
            b"",
        ];
        for case in cases {
            assert!(parse(case).is_err(), "{}", String::from_utf8_lossy(case));
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
