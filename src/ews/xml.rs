//! A small element tree read with quick-xml's `NsReader`, so the answer readers can match every
//! element by namespace URI and local name (Exchange and proxies pick their own prefixes) and
//! walk the answer without caring for element order. Bounded: depth and element count are
//! limited, DTDs are refused, so hostile input costs at most linear work and never panics.

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesRef, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// Deeper than any EWS answer (a FindItem answer is about 10 levels).
const MAX_DEPTH: usize = 64;
/// Far more elements than a 1,000-item FindItem answer holds.
const MAX_ELEMENTS: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Namespace URI; `None` for an element in no namespace.
    pub namespace: Option<String>,
    pub local: String,
    /// Attributes in no namespace (EWS attributes are unqualified): local name and value.
    attributes: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// The element's own character data (CDATA and references resolved).
    pub text: String,
}

impl Element {
    pub fn is(&self, namespace: &str, local: &str) -> bool {
        self.local == local && self.namespace.as_deref() == Some(namespace)
    }

    pub fn attribute(&self, local: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == local)
            .map(|(_, value)| value.as_str())
    }

    pub fn child(&self, namespace: &str, local: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(namespace, local))
    }

    pub fn children_named<'a, 'n>(
        &'a self,
        namespace: &'n str,
        local: &'n str,
    ) -> impl Iterator<Item = &'a Element> + use<'a, 'n> {
        self.children.iter().filter(move |c| c.is(namespace, local))
    }

    /// Text of a child element, surrounding whitespace trimmed.
    pub fn child_text(&self, namespace: &str, local: &str) -> Option<&str> {
        self.child(namespace, local).map(|c| c.text.trim())
    }

    /// First element in document order below this one with this local name, whatever its
    /// namespace (for `MessageXml`, whose namespace varies between Exchange versions).
    pub fn descendant_by_local_name(&self, local: &str) -> Option<&Element> {
        let mut stack: Vec<&Element> = self.children.iter().rev().collect();
        while let Some(element) = stack.pop() {
            if element.local == local {
                return Some(element);
            }
            stack.extend(element.children.iter().rev());
        }
        None
    }

    pub fn first_child(&self) -> Option<&Element> {
        self.children.first()
    }
}

/// Parses a whole document into its root element, or says why not (for `Malformed`).
pub fn parse(document: &[u8]) -> Result<Element, String> {
    let text = std::str::from_utf8(document).map_err(|e| format!("not UTF-8: {e}"))?;
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut reader = NsReader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;
    config.trim_text(false);

    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let position = reader.buffer_position();
        let (namespace, event) = reader
            .read_resolved_event()
            .map_err(|e| format!("XML error near byte {position}: {e}"))?;
        let namespace = match namespace {
            ResolveResult::Bound(ns) => Some(String::from_utf8_lossy(ns.as_ref()).into_owned()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(prefix) => {
                return Err(format!(
                    "undeclared namespace prefix {:?}",
                    String::from_utf8_lossy(&prefix)
                ))
            }
        };
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                if root.is_some() {
                    return Err("a second root element".into());
                }
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(format!("more than {MAX_ELEMENTS} elements"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("nested deeper than {MAX_DEPTH} elements"));
                }
                let local = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                let mut attributes = Vec::new();
                for attribute in start.attributes() {
                    let attribute =
                        attribute.map_err(|e| format!("attribute of <{local}>: {e}"))?;
                    if attribute.key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let (attr_ns, attr_local) = reader.resolve_attribute(attribute.key);
                    if !matches!(attr_ns, ResolveResult::Unbound) {
                        continue; // qualified attributes (xml:lang, xsi:...) carry nothing we use
                    }
                    let value = attribute
                        .unescape_value()
                        .map_err(|e| format!("attribute of <{local}>: {e}"))?;
                    attributes.push((
                        String::from_utf8_lossy(attr_local.as_ref()).into_owned(),
                        value.into_owned(),
                    ));
                }
                let element = Element {
                    namespace,
                    local,
                    attributes,
                    children: Vec::new(),
                    text: String::new(),
                };
                if matches!(event, Event::Start(_)) {
                    stack.push(element);
                } else {
                    attach(&mut stack, &mut root, element);
                }
            }
            Event::End(_) => {
                let element = stack.pop().ok_or("unbalanced end tag")?;
                attach(&mut stack, &mut root, element);
            }
            Event::Text(text) => {
                let text = text
                    .xml_content()
                    .map_err(|e| format!("text encoding: {e}"))?;
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err("text outside the root element".into()),
                }
            }
            Event::CData(data) => {
                let data = data
                    .xml_content()
                    .map_err(|e| format!("CDATA encoding: {e}"))?;
                let open = stack.last_mut().ok_or("CDATA outside the root element")?;
                open.text.push_str(&data);
            }
            Event::GeneralRef(reference) => {
                let c = resolve_reference(&reference)?;
                let open = stack
                    .last_mut()
                    .ok_or("reference outside the root element")?;
                open.text.push(c);
            }
            Event::DocType(_) => return Err("DTDs are not accepted".into()),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err("document ends inside an element".into());
    }
    root.ok_or_else(|| "no root element".to_string())
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

fn resolve_reference(reference: &BytesRef<'_>) -> Result<char, String> {
    if let Ok(Some(c)) = reference.resolve_char_ref() {
        return Ok(c);
    }
    let name = reference
        .decode()
        .map_err(|e| format!("reference encoding: {e}"))?;
    resolve_predefined_entity(&name)
        .and_then(|text| text.chars().next())
        .ok_or_else(|| format!("unknown entity &{name};"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_resolve_whatever_the_prefix() {
        let doc = br#"<a:Root xmlns:a="urn:x" xmlns="urn:d"><Child Id="1" xml:lang="en">t&amp;&#x41;<![CDATA[<c>]]></Child><b:C xmlns:b="urn:x"/></a:Root>"#;
        let root = parse(doc).unwrap();
        assert!(root.is("urn:x", "Root"));
        let child = root.child("urn:d", "Child").unwrap();
        assert_eq!(child.attribute("Id"), Some("1"));
        assert_eq!(child.attribute("lang"), None);
        assert_eq!(child.text, "t&A<c>");
        assert!(root.child("urn:x", "C").is_some());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for doc in [
            &b""[..],
            b"not xml",
            b"<a>",
            b"<a></b>",
            b"<a/><b/>",
            b"<p:a/>",
            b"<a>&nope;</a>",
            b"<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>",
            b"\xff\xfe<a/>",
            b"text<a/>",
            b"<a x='1' x='2'/>",
        ] {
            assert!(parse(doc).is_err(), "{:?}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!(
            "{}{}",
            "<a>".repeat(MAX_DEPTH + 1),
            "</a>".repeat(MAX_DEPTH + 1)
        );
        assert!(parse(deep.as_bytes()).is_err());
        let fine = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert!(parse(fine.as_bytes()).is_ok());
    }
}
