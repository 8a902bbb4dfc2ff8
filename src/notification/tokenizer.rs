//! XML 1.0 + Namespaces 1.0 lexing for the validator, in one pass over the body: each byte is
//! looked at once, by the code that both delimits the markup and checks it.
//!
//! Delimited and checked here: start, empty and end tags (quotes respected; end tags matched
//! against the open element's name in the body), text, references, comments (refusing `--`
//! inside), CDATA sections, one root with only whitespace and comments around it. Names and QNames
//! are tallied while they are scanned; attributes are split strictly (`S Name S? = S? quoted`,
//! whitespace required between them), each value's closing quote and any `<` or `&` in it found
//! with one `memchr3`. Refused: DTDs, processing instructions, undeclared entities, `]]>` in text,
//! duplicate attributes, the `[validator]` limits. UTF-8 and the Char production are checked once,
//! up front. Namespaces are resolved inline; classifying each binding once spares comparing a URI
//! for every element.
//!
//! Why not quick-xml's `Reader`, which the rest of pushgate reads XML with: it is lenient by design
//! (any bytes in names, no whitespace needed between attributes, namespace names compared
//! undecoded by `NsReader`), so every piece it delimited had to be walked again here to be checked,
//! and it copies the name of every open element to match end tags. On the Exchange capture the
//! Reader was a third of the validator's instructions, most of it delimiting that the checks here
//! repeated. quick-xml still reads the XML declaration (`Attributes`) and decodes character
//! references.
//!
//! Allocations: none for bodies like Exchange's; the stacks are `SmallVec`s, inline far beyond
//! what Exchange sends.

use quick_xml::errors::Error as XmlError;
use quick_xml::escape::{resolve_predefined_entity, EscapeError, ParseCharRefError};
use quick_xml::events::attributes::{AttrError, Attributes};
use quick_xml::events::{BytesRef, Event};
use quick_xml::Reader;
use smallvec::SmallVec;

use super::rejection::{Rejection, RejectionKind};
use super::Limits;

pub(super) const SOAP_NS: &[u8] = b"http://schemas.xmlsoap.org/soap/envelope/";
pub(super) const MESSAGES_NS: &[u8] =
    b"http://schemas.microsoft.com/exchange/services/2006/messages";
pub(super) const TYPES_NS: &[u8] = b"http://schemas.microsoft.com/exchange/services/2006/types";
const XML_NS: &[u8] = b"http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &[u8] = b"http://www.w3.org/2000/xmlns/";
const XSI_NS: &[u8] = b"http://www.w3.org/2001/XMLSchema-instance";
const BYTE_ORDER_MARK: &[u8] = &[0xEF, 0xBB, 0xBF];

/// The namespaces the validator tells apart; every other namespace is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Ns {
    /// No namespace (unprefixed attribute, or unprefixed element without a default namespace).
    #[default]
    None,
    Soap,
    Messages,
    Types,
    Xml,
    Xsi,
    Other,
}

/// A byte range of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn len(self) -> usize {
        self.end - self.start
    }
}

/// One attribute of the current start tag (namespace declarations included, flagged).
#[derive(Debug, Clone, Copy)]
pub(super) struct Attr {
    /// The qualified name as written.
    pub name: Span,
    /// Where the local part starts (after the prefix and colon; `name.start` when unprefixed).
    pub local_start: usize,
    /// The value between the quotes, references undecoded.
    pub value: Span,
    /// The value holds no reference and no tab, CR or LF: its raw bytes are its normalised value.
    pub plain: bool,
    pub shape: QName,
    pub ns: Ns,
    /// For `Ns::Other`: the index of the namespace binding, to compare namespace names.
    pub binding: usize,
    /// `xmlns` or `xmlns:*`: a namespace declaration, not an attribute for the schema.
    pub is_namespace_declaration: bool,
}

/// How a Name splits into prefix and local part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QName {
    Unprefixed,
    /// `prefix:local`, with the position of the colon.
    Prefixed(usize),
    /// Not a QName (a namespace error if it is used).
    Invalid,
}

#[derive(Debug, Clone, Copy)]
struct Binding {
    /// The prefix; empty for the default namespace.
    prefix: Span,
    ns: Ns,
    uri: Span,
    plain: bool,
}

#[derive(Debug, Clone, Copy)]
struct OpenElement {
    name: Span,
    bindings_mark: usize,
    text_bytes: usize,
}

/// What the tokenizer hands the validator, in document order. Comments are skipped.
#[derive(Debug, Clone, Copy)]
pub(super) enum Token<'a> {
    /// A start tag (or an empty-element tag, followed by `End`). Its attributes are
    /// [`Tokenizer::attributes`] until the next call.
    Start {
        ns: Ns,
        local: &'a [u8],
        name: Span,
        at: usize,
    },
    End {
        at: usize,
    },
    /// Character data without references; line ends not yet normalised when `has_cr`.
    Text {
        raw: &'a [u8],
        has_cr: bool,
        at: usize,
    },
    /// A character or predefined entity reference, decoded.
    Reference {
        ch: char,
        at: usize,
    },
    /// The content of a CDATA section; line ends not yet normalised.
    CData {
        raw: &'a [u8],
        at: usize,
    },
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prolog,
    Content,
    Epilog,
}

pub(super) fn reject(kind: RejectionKind, at: usize, what: impl std::fmt::Display) -> Rejection {
    Rejection {
        kind,
        detail: format!("{what} at byte {at}"),
    }
}

fn not_well_formed(at: usize, what: impl std::fmt::Display) -> Rejection {
    reject(RejectionKind::NotWellFormed, at, what)
}

fn namespace_error(at: usize, what: impl std::fmt::Display) -> Rejection {
    reject(RejectionKind::NamespaceError, at, what)
}

fn limit(at: usize, what: impl std::fmt::Display) -> Rejection {
    reject(RejectionKind::LimitExceeded, at, what)
}

fn forbidden(at: usize, what: impl std::fmt::Display) -> Rejection {
    reject(RejectionKind::ForbiddenMarkup, at, what)
}

/// Quotes at most 40 bytes of the body for a message, escaped so logs stay one clean line.
pub(super) fn quote(bytes: &[u8]) -> String {
    let mut end = bytes.len().min(40);
    while end > 0 && end < bytes.len() && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    let text = String::from_utf8_lossy(&bytes[..end]);
    let ellipsis = if end < bytes.len() { "..." } else { "" };
    format!("\"{}{ellipsis}\"", text.escape_debug())
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Where `part` (a slice quick-xml's `Attributes` cut out of `whole`) starts in `whole`: they
/// borrow from the input and hand out slices, not positions.
fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize)
}

const fn ascii_table(extra: &[u8], ranges: &[(u8, u8)]) -> [bool; 128] {
    let mut table = [false; 128];
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    let mut r = 0;
    while r < ranges.len() {
        let mut b = ranges[r].0;
        while b <= ranges[r].1 {
            table[b as usize] = true;
            b += 1;
        }
        r += 1;
    }
    table
}

const NAME_START_ASCII: [bool; 128] = ascii_table(b":_", &[(b'A', b'Z'), (b'a', b'z')]);
const NAME_ASCII: [bool; 128] = ascii_table(b":_-.", &[(b'A', b'Z'), (b'a', b'z'), (b'0', b'9')]);

/// What a byte adds to a name's tally in [`NAME_BYTE_TALLY`]: ASCII name characters other than
/// the colon add nothing, a colon adds one to the high half, and every other byte (non-ASCII
/// bytes included: names holding them are decoded and checked character by character) one to the
/// low half.
const NAME_TALLY_COLON: u64 = 1 << 32;
const NAME_TALLY_OTHER: u64 = 1;

/// The tally of every byte value: a name's colons and other bytes are the sum over its bytes (one
/// load and one add per byte, no branch).
const NAME_BYTE_TALLY: [u64; 256] = {
    let mut table = [NAME_TALLY_OTHER; 256];
    let mut b = 0;
    while b < 128 {
        if NAME_ASCII[b] {
            table[b] = 0;
        }
        b += 1;
    }
    table[b':' as usize] = NAME_TALLY_COLON;
    table
};

/// In [`NAME_SCAN`]: the byte ends a name (whitespace, `/`, `>`, `=`, or the end of the body).
const NAME_STOP: u64 = 1 << 63;

/// [`NAME_BYTE_TALLY`] with the bytes that end a name marked: scanning a name and tallying it
/// is one load per byte.
static NAME_SCAN: [u64; 256] = {
    let mut table = NAME_BYTE_TALLY;
    table[b' ' as usize] = NAME_STOP;
    table[b'\t' as usize] = NAME_STOP;
    table[b'\n' as usize] = NAME_STOP;
    table[b'\r' as usize] = NAME_STOP;
    table[b'/' as usize] = NAME_STOP;
    table[b'>' as usize] = NAME_STOP;
    table[b'=' as usize] = NAME_STOP;
    table
};

/// Scans the name starting at `from` up to whitespace, `/`, `>`, `=` or the end of `body`;
/// returns where it ends and its tally (see [`NAME_BYTE_TALLY`]). Whether it is a Name is
/// [`Tokenizer::check_name`]'s to say: bytes that cannot be in one stay in it, so the refusal
/// points at them.
fn scan_name(body: &[u8], from: usize) -> (usize, u64) {
    let mut tally = 0u64;
    let mut p = from;
    while let Some(&b) = body.get(p) {
        let entry = NAME_SCAN[usize::from(b)];
        if entry == NAME_STOP {
            break;
        }
        tally += entry;
        p += 1;
    }
    (p, tally)
}

fn skip_spaces(body: &[u8], mut p: usize) -> usize {
    while body.get(p).copied().is_some_and(is_space) {
        p += 1;
    }
    p
}

fn is_name_start_char(c: u32) -> bool {
    match c {
        0..=0x7F => NAME_START_ASCII[c as usize],
        0xC0..=0xD6
        | 0xD8..=0xF6
        | 0xF8..=0x2FF
        | 0x370..=0x37D
        | 0x37F..=0x1FFF
        | 0x200C..=0x200D
        | 0x2070..=0x218F
        | 0x2C00..=0x2FEF
        | 0x3001..=0xD7FF
        | 0xF900..=0xFDCF
        | 0xFDF0..=0xFFFD
        | 0x10000..=0xEFFFF => true,
        _ => false,
    }
}

fn is_name_char(c: u32) -> bool {
    match c {
        0..=0x7F => NAME_ASCII[c as usize],
        0xB7 | 0x300..=0x36F | 0x203F..=0x2040 => true,
        _ => is_name_start_char(c),
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars().map(u32::from);
    chars.next().is_some_and(is_name_start_char) && chars.all(is_name_char)
}

fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Why a reference is refused.
enum BadReference {
    Malformed(&'static str),
    /// A well-formed reference to an entity other than the five predefined ones (no DTD is ever
    /// read, so no other entity exists).
    Undeclared,
}

/// The character the reference `&name;` stands for. quick-xml parses the number of a character
/// reference; that it names a character XML allows is checked here.
fn resolve_reference(name: &[u8]) -> Result<char, BadReference> {
    let Ok(name) = std::str::from_utf8(name) else {
        return Err(BadReference::Malformed("malformed reference"));
    };
    if name.starts_with('#') {
        let not_allowed = "character reference to a character XML does not allow";
        return match BytesRef::new(name).resolve_char_ref() {
            Ok(Some(ch)) if is_xml_char(u32::from(ch)) => Ok(ch),
            Ok(Some(_))
            | Err(XmlError::Escape(EscapeError::InvalidCharRef(
                ParseCharRefError::IllegalCharacter(_) | ParseCharRefError::InvalidCodepoint(_),
            ))) => Err(BadReference::Malformed(not_allowed)),
            _ => Err(BadReference::Malformed("malformed character reference")),
        };
    }
    match resolve_predefined_entity(name).and_then(|text| text.chars().next()) {
        Some(ch) => Ok(ch),
        None if is_name(name) => Err(BadReference::Undeclared),
        None => Err(BadReference::Malformed(
            "'&' must start a reference (write &amp;)",
        )),
    }
}

/// Resolves the reference whose `&` is at `at` in `bytes`; returns its character and length.
fn reference_at(bytes: &[u8], at: usize) -> Result<(char, usize), BadReference> {
    let end = at
        + bytes[at..]
            .iter()
            .position(|&b| matches!(b, b';' | b'<' | b'"' | b'\'') || is_space(b))
            .filter(|&end| bytes[at + end] == b';')
            .ok_or(BadReference::Malformed(
                "'&' without ';' (write &amp; for a literal '&')",
            ))?;
    resolve_reference(&bytes[at + 1..end]).map(|ch| (ch, end + 1 - at))
}

/// The rejection for the reference at `at` in `bytes`.
fn reference_error(error: BadReference, bytes: &[u8], at: usize) -> Rejection {
    match error {
        BadReference::Malformed(what) => not_well_formed(at, what),
        BadReference::Undeclared => {
            let end = bytes[at..]
                .iter()
                .position(|&b| b == b';')
                .map_or(bytes.len(), |semicolon| at + semicolon + 1);
            not_well_formed(
                at,
                format!("reference to undeclared entity {}", quote(&bytes[at..end])),
            )
        }
    }
}

/// The normalised value of an attribute (XML 1.0 §3.3.3 for CDATA attributes: references
/// decoded, each literal tab, CR, LF or CR LF pair becomes one space), byte by byte.
pub(super) struct AttrValueBytes<'a> {
    raw: &'a [u8],
    pos: usize,
    pending: [u8; 4],
    pending_pos: usize,
    pending_len: usize,
}

impl<'a> AttrValueBytes<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        AttrValueBytes {
            raw,
            pos: 0,
            pending: [0; 4],
            pending_pos: 0,
            pending_len: 0,
        }
    }
}

impl Iterator for AttrValueBytes<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        if self.pending_pos < self.pending_len {
            let b = self.pending[self.pending_pos];
            self.pending_pos += 1;
            return Some(b);
        }
        let b = *self.raw.get(self.pos)?;
        match b {
            b'\r' => {
                self.pos += if self.raw.get(self.pos + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                Some(b' ')
            }
            b'\t' | b'\n' => {
                self.pos += 1;
                Some(b' ')
            }
            b'&' => match reference_at(self.raw, self.pos) {
                Ok((ch, len)) => {
                    self.pos += len;
                    let encoded = ch.encode_utf8(&mut self.pending);
                    self.pending_len = encoded.len();
                    self.pending_pos = 1;
                    Some(self.pending[0])
                }
                // Unreachable for values the tokenizer accepted; keep the byte rather than panic.
                Err(_) => {
                    self.pos += 1;
                    Some(b'&')
                }
            },
            _ => {
                self.pos += 1;
                Some(b)
            }
        }
    }
}

pub(super) struct Tokenizer<'a> {
    body: &'a [u8],
    /// Where the next token starts.
    pos: usize,
    limits: Limits,
    phase: Phase,
    /// Where the `End` of an empty-element tag just returned is due.
    pending_end: Option<usize>,
    /// Where the first tab, LF or CR of the body is: values that end before it need no
    /// normalisation.
    first_line_space: usize,
    // Inline up to Exchange's depth and counts and far beyond, so they never allocate for it.
    open: SmallVec<[OpenElement; 24]>,
    bindings: SmallVec<[Binding; 12]>,
    attrs: SmallVec<[Attr; 12]>,
}

impl<'a> Tokenizer<'a> {
    /// Checks the encoding, the XML declaration and every character of `body`, and positions the
    /// tokenizer after the declaration.
    pub fn new(body: &'a [u8], limits: &Limits) -> Result<Self, Rejection> {
        if body.starts_with(&[0xFE, 0xFF])
            || body.starts_with(&[0xFF, 0xFE])
            || body.starts_with(&[0x00, 0x00, 0x00, 0x3C])
            || body.starts_with(&[0x00, 0x3C])
            || body.starts_with(&[0x3C, 0x00])
            || body.starts_with(&[0x4C, 0x6F, 0xA7, 0x94])
        {
            return Err(reject(
                RejectionKind::UnsupportedDeclaration,
                0,
                "the body is not UTF-8 (UTF-16, UTF-32 or EBCDIC signature)",
            ));
        }
        // One byte order mark at the start is skipped (a second one is character data).
        let start = if body.starts_with(BYTE_ORDER_MARK) {
            BYTE_ORDER_MARK.len()
        } else {
            0
        };
        let mut tokenizer = Tokenizer {
            body,
            pos: start,
            limits: *limits,
            phase: Phase::Prolog,
            pending_end: None,
            first_line_space: 0,
            open: SmallVec::new(),
            bindings: SmallVec::new(),
            attrs: SmallVec::new(),
        };
        // The declaration first: a body that declares another encoding is unsupported, not
        // broken UTF-8.
        if body[start..].starts_with(b"<?xml") && body.get(start + 5).copied().is_some_and(is_space)
        {
            tokenizer.read_xml_declaration()?;
        }
        std::str::from_utf8(body)
            .map_err(|error| not_well_formed(error.valid_up_to(), "invalid UTF-8"))?;
        tokenizer.first_line_space = check_characters(body, start)?;
        Ok(tokenizer)
    }

    /// The attributes of the last `Start` token, namespace declarations included.
    pub fn attributes(&self) -> &[Attr] {
        self.attrs.as_slice()
    }

    pub fn bytes(&self, span: Span) -> &'a [u8] {
        self.body.get(span.start..span.end).unwrap_or_default()
    }

    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// `<?xml` S `version` Eq '1.0' (S `encoding` Eq EncName)? (S `standalone` Eq (yes|no))? S? `?>`
    fn read_xml_declaration(&mut self) -> Result<(), Rejection> {
        let at = self.pos;
        let malformed = |at| not_well_formed(at, "malformed XML declaration");
        let mut reader = Reader::from_reader(&self.body[at..]);
        match reader.read_event() {
            Ok(Event::Decl(_)) => {}
            Ok(_) => return Err(malformed(at)),
            Err(_) => return Err(not_well_formed(at, "XML declaration not closed")),
        }
        let end = at + reader.buffer_position() as usize;
        self.pos = end;
        // Between `<?` and `?>`, starting with `xml`.
        let content = &self.body[at + 2..end - 2];
        let text = std::str::from_utf8(content)
            .map_err(|error| not_well_formed(at + 2 + error.valid_up_to(), "invalid UTF-8"))?;
        let mut seen_version = false;
        let mut index = 0;
        let mut previous_end = 3;
        for attribute in Attributes::new(text, 3).with_checks(false) {
            let attribute = attribute.map_err(|error| {
                let offset = match error {
                    AttrError::ExpectedEq(p)
                    | AttrError::ExpectedValue(p)
                    | AttrError::UnquotedValue(p)
                    | AttrError::ExpectedQuote(p, _)
                    | AttrError::Duplicated(p, _) => p,
                };
                malformed(at + 2 + offset)
            })?;
            let name = attribute.key.as_ref();
            let name_at = offset_in(content, name);
            if name_at == previous_end {
                return Err(malformed(at + 2 + name_at));
            }
            let value: &[u8] = &attribute.value;
            let value_at = offset_in(content, value);
            previous_end = value_at + value.len() + 1;
            let value_at = at + 2 + value_at;
            match (index, name) {
                (0, b"version") => {
                    seen_version = true;
                    if value != b"1.0" {
                        return Err(reject(
                            RejectionKind::UnsupportedDeclaration,
                            value_at,
                            format!("XML version {} (only 1.0 is accepted)", quote(value)),
                        ));
                    }
                }
                (1, b"encoding") => {
                    let valid_name = value.first().is_some_and(u8::is_ascii_alphabetic)
                        && value
                            .iter()
                            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                    if !valid_name {
                        return Err(not_well_formed(value_at, "invalid encoding name"));
                    }
                    if !value.eq_ignore_ascii_case(b"utf-8") {
                        return Err(reject(
                            RejectionKind::UnsupportedDeclaration,
                            value_at,
                            format!("encoding {} (only UTF-8 is accepted)", quote(value)),
                        ));
                    }
                }
                (1 | 2, b"standalone") => {
                    if value != b"yes" && value != b"no" {
                        return Err(not_well_formed(value_at, "standalone must be yes or no"));
                    }
                    index = 2;
                }
                _ => return Err(malformed(at + 2 + name_at)),
            }
            index += 1;
        }
        if !seen_version {
            return Err(not_well_formed(at, "XML declaration without version"));
        }
        Ok(())
    }

    /// The next token. After an error the tokenizer must not be used again.
    pub fn next_token(&mut self) -> Result<Token<'a>, Rejection> {
        if let Some(at) = self.pending_end.take() {
            return Ok(self.close_element(at));
        }
        let body = self.body;
        loop {
            let at = self.pos;
            let Some(&first) = body.get(at) else {
                return self.end_of_body(at);
            };
            match first {
                b'<' => match body.get(at + 1) {
                    Some(b'/') => return self.end_tag(at),
                    Some(b'?') => {
                        return Err(forbidden(
                            at,
                            "processing instruction (only the XML declaration is allowed)",
                        ))
                    }
                    Some(b'!') if body[at..].starts_with(b"<!--") => self.skip_comment(at)?,
                    Some(b'!') if body[at..].starts_with(b"<![CDATA[") => {
                        return self.cdata_token(at)
                    }
                    Some(b'!') => return Err(self.doctype(at)),
                    _ => return self.start_tag(at),
                },
                b'&' => return self.reference_token(at),
                _ => {
                    let end =
                        memchr::memchr2(b'<', b'&', &body[at..]).map_or(body.len(), |n| at + n);
                    self.pos = end;
                    if let Some(token) = self.text_token(Span { start: at, end })? {
                        return Ok(token);
                    }
                }
            }
        }
    }

    /// `<!--` ... `-->` from `at`, with no `--` inside.
    fn skip_comment(&mut self, at: usize) -> Result<(), Rejection> {
        let content = at + b"<!--".len();
        let dashes = memchr::memmem::find(&self.body[content..], b"--")
            .map(|offset| content + offset)
            .ok_or_else(|| not_well_formed(at, "comment not closed"))?;
        if self.body.get(dashes + 2) != Some(&b'>') {
            return Err(not_well_formed(dashes, "'--' inside a comment"));
        }
        self.pos = dashes + 3;
        Ok(())
    }

    /// `</` Name S? `>` from `at`: the name must be the open element's, byte for byte.
    fn end_tag(&mut self, at: usize) -> Result<Token<'a>, Rejection> {
        let body = self.body;
        let Some(open) = self.open.last() else {
            return Err(not_well_formed(at, "end tag without start tag"));
        };
        let expected = self.bytes(open.name);
        let name_start = at + b"</".len();
        if body[name_start..].starts_with(expected) {
            let close = skip_spaces(body, name_start + expected.len());
            if body.get(close) == Some(&b'>') {
                self.pos = close + 1;
                return Ok(self.close_element(at));
            }
        }
        let Some(close) = memchr::memchr(b'>', &body[name_start..]) else {
            return Err(not_well_formed(at, "tag not closed"));
        };
        // Form feeds, the one ASCII space `trim_ascii_end` trims that XML does not, were refused
        // up front with the other control characters.
        let found = body[name_start..name_start + close].trim_ascii_end();
        Err(not_well_formed(
            at,
            format!(
                "end tag {} does not match {}",
                quote(found),
                quote(expected)
            ),
        ))
    }

    fn doctype(&self, at: usize) -> Rejection {
        if self.body[at..].starts_with(b"<!DOCTYPE") {
            forbidden(at, "document type declaration (DTDs are refused)")
        } else {
            not_well_formed(at, "malformed markup after '<!'")
        }
    }

    fn end_of_body(&self, at: usize) -> Result<Token<'a>, Rejection> {
        match self.phase {
            Phase::Epilog => Ok(Token::Eof),
            Phase::Prolog => Err(not_well_formed(at, "no root element")),
            Phase::Content => {
                let name = self
                    .open
                    .as_slice()
                    .last()
                    .map(|open| quote(self.bytes(open.name)))
                    .unwrap_or_default();
                Err(not_well_formed(
                    at,
                    format!("unexpected end: element {name} is not closed"),
                ))
            }
        }
    }

    fn add_text_bytes(&mut self, count: usize, at: usize) -> Result<(), Rejection> {
        let max = self.limits.max_text_bytes;
        if let Some(open) = self.open.last_mut() {
            open.text_bytes += count;
            if open.text_bytes > max {
                return Err(limit(
                    at,
                    format!("text of one element longer than {max} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// Character data; none for whitespace around the root element.
    fn text_token(&mut self, span: Span) -> Result<Option<Token<'a>>, Rejection> {
        let raw = self.bytes(span);
        if self.phase != Phase::Content {
            return match raw.iter().position(|&b| !is_space(b)) {
                None => Ok(None),
                Some(offset) if self.phase == Phase::Prolog => Err(not_well_formed(
                    span.start + offset,
                    "text before the root element",
                )),
                Some(offset) => Err(not_well_formed(
                    span.start + offset,
                    "text after the root element",
                )),
            };
        }
        if raw.contains(&b']') {
            let mut p = 0;
            while let Some(offset) = raw[p..].iter().position(|&b| b == b']') {
                p += offset;
                if raw[p..].starts_with(b"]]>") {
                    return Err(not_well_formed(span.start + p, "']]>' in character data"));
                }
                p += 1;
            }
        }
        self.add_text_bytes(span.len(), span.start)?;
        Ok(Some(Token::Text {
            raw,
            has_cr: self.first_line_space < span.end && raw.contains(&b'\r'),
            at: span.start,
        }))
    }

    /// `&name;` from `at`.
    fn reference_token(&mut self, at: usize) -> Result<Token<'a>, Rejection> {
        if self.phase != Phase::Content {
            return Err(not_well_formed(at, "reference outside the root element"));
        }
        let (ch, len) =
            reference_at(self.body, at).map_err(|error| reference_error(error, self.body, at))?;
        self.pos = at + len;
        self.add_text_bytes(len, at)?;
        Ok(Token::Reference { ch, at })
    }

    /// `<![CDATA[` ... `]]>` from `at`.
    fn cdata_token(&mut self, at: usize) -> Result<Token<'a>, Rejection> {
        if self.phase != Phase::Content {
            return Err(not_well_formed(
                at,
                "CDATA section outside the root element",
            ));
        }
        let content = at + b"<![CDATA[".len();
        let end = memchr::memmem::find(&self.body[content..], b"]]>")
            .map(|offset| content + offset)
            .ok_or_else(|| not_well_formed(at, "CDATA section not closed"))?;
        self.pos = end + b"]]>".len();
        let raw = &self.body[content..end];
        self.add_text_bytes(raw.len(), at)?;
        Ok(Token::CData { raw, at })
    }

    fn close_element(&mut self, at: usize) -> Token<'a> {
        if let Some(open) = self.open.pop() {
            self.bindings.truncate(open.bindings_mark);
        }
        if self.open.is_empty() {
            self.phase = Phase::Epilog;
        }
        Token::End { at }
    }

    /// Checks that the name [`scan_name`] delimited (everything up to whitespace, `/`, `>` or `=`)
    /// and tallied is one XML Name; returns how it splits as a qualified name.
    fn check_name(&self, name: Span, tally: u64, what: &str) -> Result<QName, Rejection> {
        let bytes = self.bytes(name);
        // ASCII names (all of Exchange's) need no decoding. The halves of the tally stay apart for
        // names under 4 GiB (bodies are far smaller).
        let colons = tally >> 32;
        let starts_well = bytes
            .first()
            .is_some_and(|&b| NAME_START_ASCII[usize::from(b & 0x7F)]);
        if tally & 0xFFFF_FFFF != 0 || !starts_well {
            // The body is valid UTF-8 (checked up front), so the name decodes.
            let text = std::str::from_utf8(bytes).unwrap_or_default();
            let mut chars = text.char_indices().map(|(i, c)| (i, u32::from(c)));
            if !chars.next().is_some_and(|(_, c)| is_name_start_char(c)) {
                return Err(not_well_formed(name.start, format!("invalid {what} name")));
            }
            if let Some((i, _)) = chars.find(|&(_, c)| !is_name_char(c)) {
                return Err(not_well_formed(
                    name.start + i,
                    format!("character not allowed in {what} name"),
                ));
            }
        }
        let max = self.limits.max_name_bytes;
        if name.len() > max {
            return Err(limit(
                name.start,
                format!("{what} name longer than {max} bytes"),
            ));
        }
        if colons == 0 {
            return Ok(QName::Unprefixed);
        }
        let colon = bytes.iter().position(|&b| b == b':').unwrap_or_default();
        let local = &bytes[colon + 1..];
        let local_starts_well = match local.first() {
            Some(&b) if b.is_ascii() => NAME_START_ASCII[usize::from(b)],
            _ => std::str::from_utf8(local)
                .ok()
                .and_then(|text| text.chars().next())
                .is_some_and(|c| is_name_start_char(u32::from(c))),
        };
        Ok(if colons == 1 && colon > 0 && local_starts_well {
            QName::Prefixed(name.start + colon)
        } else {
            QName::Invalid
        })
    }

    /// The colon of a prefixed name; names that are not QNames (several colons, empty prefix or
    /// local part, a local part that cannot start a name) are namespace errors.
    fn split_qname(
        &self,
        name: Span,
        shape: QName,
        what: &str,
    ) -> Result<Option<usize>, Rejection> {
        match shape {
            QName::Unprefixed => Ok(None),
            QName::Prefixed(colon) => Ok(Some(colon)),
            QName::Invalid => Err(namespace_error(
                name.start,
                format!(
                    "{what} name {} is not a qualified name",
                    quote(self.bytes(name))
                ),
            )),
        }
    }

    /// A start tag or an empty-element tag from `at`.
    fn start_tag(&mut self, at: usize) -> Result<Token<'a>, Rejection> {
        if self.phase == Phase::Epilog {
            return Err(not_well_formed(at, "content after the root element"));
        }
        let (name_end, tally) = scan_name(self.body, at + 1);
        let name = Span {
            start: at + 1,
            end: name_end,
        };
        let shape = self.check_name(name, tally, "element")?;
        if self.open.len() >= self.limits.max_depth {
            let max = self.limits.max_depth;
            return Err(limit(at, format!("elements nested deeper than {max}")));
        }
        self.attrs.clear();
        let (end, empty) = self.split_attributes(at, name_end)?;
        self.pos = end;
        self.check_duplicate_names(at)?;
        let bindings_mark = self.bindings.len();
        self.declare_namespaces()?;
        let colon = self.split_qname(name, shape, "element")?;
        let (ns, local_start) = match colon {
            Some(colon) => {
                let prefix = Span {
                    start: name.start,
                    end: colon,
                };
                let (ns, _) = self.resolve_prefix(prefix).ok_or_else(|| {
                    namespace_error(
                        at,
                        format!("undeclared namespace prefix {}", quote(self.bytes(prefix))),
                    )
                })?;
                (ns, colon + 1)
            }
            None => (self.default_namespace(), name.start),
        };
        self.resolve_attribute_namespaces(at)?;
        self.open.push(OpenElement {
            name,
            bindings_mark,
            text_bytes: 0,
        });
        self.phase = Phase::Content;
        self.pending_end = empty.then_some(end);
        Ok(Token::Start {
            ns,
            local: self.bytes(Span {
                start: local_start,
                end: name.end,
            }),
            name,
            at,
        })
    }

    /// Splits the attributes of the tag opened at `tag_at`, from `from` (the end of its name) to
    /// its `>` or `/>`, into `S Name S? = S? quoted-value` in one strict pass; returns where the
    /// tag ends and whether it is an empty-element tag. Each value's closing quote, and on the
    /// way any `<` or `&` in it, is found with one `memchr3`; references are checked where they
    /// stand (they never run past a quote).
    fn split_attributes(&mut self, tag_at: usize, from: usize) -> Result<(usize, bool), Rejection> {
        let body = self.body;
        let mut p = from;
        loop {
            let gap = p;
            p = skip_spaces(body, p);
            match body.get(p) {
                None => return Err(not_well_formed(tag_at, "tag not closed")),
                Some(b'>') => return Ok((p + 1, false)),
                Some(b'/') if body.get(p + 1) == Some(&b'>') => return Ok((p + 2, true)),
                Some(b'/') => return Err(not_well_formed(p, "'/' not followed by '>' in a tag")),
                Some(_) if p == gap => {
                    return Err(not_well_formed(
                        p,
                        "attributes must be separated by whitespace",
                    ))
                }
                Some(_) => {}
            }
            let (name_end, tally) = scan_name(body, p);
            if name_end == p {
                return Err(not_well_formed(p, "attribute without a name"));
            }
            let name = Span {
                start: p,
                end: name_end,
            };
            p = skip_spaces(body, name_end);
            if body.get(p) != Some(&b'=') {
                return Err(not_well_formed(p, "attribute without '=' and value"));
            }
            p = skip_spaces(body, p + 1);
            let quote = match body.get(p) {
                Some(&q @ (b'"' | b'\'')) => q,
                _ => return Err(not_well_formed(p, "attribute value must be quoted")),
            };
            let shape = self.check_name(name, tally, "attribute")?;
            let value_start = p + 1;
            let mut has_reference = false;
            let mut q = value_start;
            let value_end = loop {
                let found = memchr::memchr3(quote, b'<', b'&', &body[q..])
                    .ok_or_else(|| not_well_formed(p, "attribute value not closed"))?;
                q += found;
                match body[q] {
                    b'<' => return Err(not_well_formed(q, "'<' in an attribute value")),
                    b'&' => {
                        has_reference = true;
                        q += reference_at(body, q)
                            .map_err(|error| reference_error(error, body, q))?
                            .1;
                    }
                    _ => break q,
                }
            };
            let value = Span {
                start: value_start,
                end: value_end,
            };
            p = value.end + 1;
            self.add_attribute(name, shape, value, has_reference)?;
        }
    }

    /// One attribute whose name and value XML's rules passed, within the limits.
    fn add_attribute(
        &mut self,
        name: Span,
        shape: QName,
        value: Span,
        has_reference: bool,
    ) -> Result<(), Rejection> {
        let plain = !has_reference
            && (self.first_line_space >= value.end
                || memchr::memchr3(b'\t', b'\n', b'\r', self.bytes(value)).is_none());
        let max_bytes = self.limits.max_attribute_bytes;
        if value.len() > max_bytes {
            return Err(limit(
                value.start,
                format!("attribute value longer than {max_bytes} bytes"),
            ));
        }
        let max_count = self.limits.max_attributes;
        if self.attrs.len() >= max_count {
            return Err(limit(
                name.start,
                format!("more than {max_count} attributes on one element"),
            ));
        }
        let name_bytes = self.bytes(name);
        self.attrs.push(Attr {
            name,
            local_start: name.start,
            value,
            plain,
            shape,
            ns: Ns::None,
            binding: 0,
            is_namespace_declaration: name_bytes == b"xmlns" || name_bytes.starts_with(b"xmlns:"),
        });
        Ok(())
    }

    fn check_duplicate_names(&self, at: usize) -> Result<(), Rejection> {
        let attrs = self.attrs.as_slice();
        for (i, a) in attrs.iter().enumerate() {
            let name = self.bytes(a.name);
            if attrs[..i].iter().any(|b| self.bytes(b.name) == name) {
                return Err(not_well_formed(
                    at,
                    format!("attribute {} appears twice", quote(name)),
                ));
            }
        }
        Ok(())
    }

    fn classify_uri(&self, raw: &[u8], plain: bool) -> Option<Ns> {
        let equals = |expected: &[u8]| {
            if plain {
                raw == expected
            } else {
                AttrValueBytes::new(raw).eq(expected.iter().copied())
            }
        };
        if equals(b"") {
            None
        } else if equals(SOAP_NS) {
            Some(Ns::Soap)
        } else if equals(MESSAGES_NS) {
            Some(Ns::Messages)
        } else if equals(TYPES_NS) {
            Some(Ns::Types)
        } else if equals(XSI_NS) {
            Some(Ns::Xsi)
        } else if equals(XML_NS) {
            Some(Ns::Xml)
        } else {
            Some(Ns::Other)
        }
    }

    fn declare_namespaces(&mut self) -> Result<(), Rejection> {
        for index in 0..self.attrs.len() {
            let attr = self.attrs.as_slice()[index];
            if !attr.is_namespace_declaration {
                continue;
            }
            let raw = self.bytes(attr.value);
            let class = self.classify_uri(raw, attr.plain);
            let is_xmlns_uri = || {
                if attr.plain {
                    raw == XMLNS_NS
                } else {
                    AttrValueBytes::new(raw).eq(XMLNS_NS.iter().copied())
                }
            };
            let at = attr.name.start;
            // `xmlns:` + an NCName is exactly a QName with the prefix `xmlns`.
            let prefix = match attr.shape {
                QName::Unprefixed => Span { start: at, end: at },
                QName::Prefixed(colon) => Span {
                    start: colon + 1,
                    end: attr.name.end,
                },
                QName::Invalid => {
                    return Err(namespace_error(
                        at,
                        format!(
                            "namespace declaration {} is not a qualified name",
                            quote(self.bytes(attr.name))
                        ),
                    ))
                }
            };
            let prefix_bytes = self.bytes(prefix);
            if prefix_bytes == b"xmlns" {
                return Err(namespace_error(at, "the prefix xmlns cannot be declared"));
            }
            if prefix_bytes == b"xml" {
                if class != Some(Ns::Xml) {
                    return Err(namespace_error(
                        at,
                        "the prefix xml bound to another namespace",
                    ));
                }
                continue;
            }
            if class == Some(Ns::Xml) {
                return Err(namespace_error(
                    at,
                    "the XML namespace bound to a prefix other than xml",
                ));
            }
            if is_xmlns_uri() {
                return Err(namespace_error(
                    at,
                    "the xmlns namespace cannot be declared",
                ));
            }
            let ns = match class {
                Some(ns) => ns,
                None if prefix_bytes.is_empty() => Ns::None,
                None => {
                    return Err(namespace_error(
                        at,
                        format!(
                            "prefix {} bound to the empty namespace name",
                            quote(prefix_bytes)
                        ),
                    ))
                }
            };
            self.bindings.push(Binding {
                prefix,
                ns,
                uri: attr.value,
                plain: attr.plain,
            });
        }
        Ok(())
    }

    /// The namespace of `prefix` and the index of its binding.
    fn resolve_prefix(&self, prefix: Span) -> Option<(Ns, usize)> {
        let wanted = self.bytes(prefix);
        if wanted == b"xml" {
            return Some((Ns::Xml, usize::MAX));
        }
        let bindings = self.bindings.as_slice();
        bindings
            .iter()
            .enumerate()
            .rev()
            .find(|(_, binding)| self.bytes(binding.prefix) == wanted)
            .map(|(index, binding)| (binding.ns, index))
    }

    fn default_namespace(&self) -> Ns {
        self.bindings
            .as_slice()
            .iter()
            .rev()
            .find(|binding| binding.prefix.len() == 0)
            .map_or(Ns::None, |binding| binding.ns)
    }

    fn resolve_attribute_namespaces(&mut self, at: usize) -> Result<(), Rejection> {
        let mut prefixed = 0;
        for index in 0..self.attrs.len() {
            let attr = self.attrs.as_slice()[index];
            if attr.is_namespace_declaration {
                continue;
            }
            let Some(colon) = self.split_qname(attr.name, attr.shape, "attribute")? else {
                continue;
            };
            let prefix = Span {
                start: attr.name.start,
                end: colon,
            };
            let (ns, binding) = self.resolve_prefix(prefix).ok_or_else(|| {
                namespace_error(
                    attr.name.start,
                    format!("undeclared namespace prefix {}", quote(self.bytes(prefix))),
                )
            })?;
            if let Some(slot) = self.attrs.get_mut(index) {
                slot.ns = ns;
                slot.binding = binding;
                slot.local_start = colon + 1;
            }
            prefixed += 1;
        }
        if prefixed > 1 {
            self.check_duplicate_expanded_names(at)?;
        }
        Ok(())
    }

    fn check_duplicate_expanded_names(&self, at: usize) -> Result<(), Rejection> {
        let attrs = self.attrs.as_slice();
        let bindings = self.bindings.as_slice();
        let uri = |index: usize| bindings.get(index).map(|b| (self.bytes(b.uri), b.plain));
        for (i, a) in attrs.iter().enumerate() {
            if a.is_namespace_declaration || a.ns == Ns::None {
                continue;
            }
            let local = &self.body[a.local_start..a.name.end];
            for b in &attrs[..i] {
                if b.is_namespace_declaration
                    || b.ns != a.ns
                    || &self.body[b.local_start..b.name.end] != local
                {
                    continue;
                }
                let same_namespace = a.ns != Ns::Other
                    || a.binding == b.binding
                    || match (uri(a.binding), uri(b.binding)) {
                        (Some((x, _)), Some((y, _))) => {
                            AttrValueBytes::new(x).eq(AttrValueBytes::new(y))
                        }
                        _ => false,
                    };
                if same_namespace {
                    return Err(namespace_error(
                        at,
                        format!("attribute {} appears twice in one namespace", quote(local)),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks `text[from..to]` byte by byte; returns the offset (in `text`) of its first tab, LF or
/// CR, if any.
fn check_character_bytes(
    text: &[u8],
    start: usize,
    from: usize,
    to: usize,
) -> Result<Option<usize>, Rejection> {
    let mut line_space = None;
    for at in from..to {
        let b = text[at];
        if line_space.is_none() && matches!(b, b'\t' | b'\n' | b'\r') {
            line_space = Some(at);
        }
        if b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') {
            return Err(not_well_formed(
                start + at,
                format!("control character U+{b:04X} is not allowed in XML"),
            ));
        }
        if b == 0xEF
            && text.get(at + 1) == Some(&0xBF)
            && matches!(text.get(at + 2), Some(0xBE | 0xBF))
        {
            return Err(not_well_formed(
                start + at,
                "U+FFFE or U+FFFF is not allowed in XML",
            ));
        }
    }
    Ok(line_space)
}

/// Every character of the (valid UTF-8) body after the BOM must match XML 1.0's Char production
/// (no C0 controls but tab, LF, CR; no U+FFFE, U+FFFF). Blocks without a byte below 0x20 or an
/// 0xEF (the lead byte of U+FFFE/U+FFFF) are passed with one vectorised test. Returns the body
/// offset of the first tab, LF or CR (`body.len()` if none): bodies like Exchange's have none
/// before their final newline, which spares the normalisation checks of every value.
fn check_characters(body: &[u8], start: usize) -> Result<usize, Rejection> {
    const BLOCK: usize = 32;
    let text = &body[start..];
    let mut line_space: Option<usize> = None;
    let blocks = text.chunks_exact(BLOCK);
    let tail = text.len() - blocks.remainder().len();
    for (index, block) in blocks.enumerate() {
        if block
            .iter()
            .fold(false, |seen, &b| seen | (b < 0x20) | (b == 0xEF))
        {
            let found = check_character_bytes(text, start, index * BLOCK, (index + 1) * BLOCK)?;
            line_space = line_space.or(found);
        }
    }
    let found = check_character_bytes(text, start, tail, text.len())?;
    Ok(line_space.or(found).map_or(body.len(), |at| start + at))
}
