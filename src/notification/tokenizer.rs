//! A strict, zero-copy XML 1.0 (fifth edition) + Namespaces 1.0 tokenizer over a whole body.
//!
//! It enforces well-formedness itself (quick-xml is lenient by design and would leave most of
//! these checks to a second pass over every token): UTF-8 and the Char production, the XML
//! declaration, names, attribute syntax and duplicates, references, comments, CDATA, end-tag
//! matching, one root element, namespace declarations and prefixes. It also applies the
//! hostile-input limits while it streams (depth, name, attribute and text sizes), refuses DTDs
//! and processing instructions, and never allocates unless a document exceeds the inline
//! capacities below (deep foreign subtrees, many attributes or namespace declarations).

use super::validator::{Rejection, RejectionKind};
use super::Limits;

pub(super) const SOAP_NS: &[u8] = b"http://schemas.xmlsoap.org/soap/envelope/";
pub(super) const MESSAGES_NS: &[u8] =
    b"http://schemas.microsoft.com/exchange/services/2006/messages";
pub(super) const TYPES_NS: &[u8] = b"http://schemas.microsoft.com/exchange/services/2006/types";
const XML_NS: &[u8] = b"http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &[u8] = b"http://www.w3.org/2000/xmlns/";
const XSI_NS: &[u8] = b"http://www.w3.org/2001/XMLSchema-instance";

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
#[derive(Debug, Clone, Copy, Default)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum QName {
    #[default]
    Unprefixed,
    /// `prefix:local`, with the position of the colon.
    Prefixed(usize),
    /// Not a QName (a namespace error if it is used).
    Invalid,
}

#[derive(Debug, Clone, Copy, Default)]
struct Binding {
    /// The prefix; empty for the default namespace.
    prefix: Span,
    ns: Ns,
    uri: Span,
    plain: bool,
}

#[derive(Debug, Clone, Copy, Default)]
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

/// A stack that lives inline up to `N` entries and moves to the heap only beyond that.
pub(super) struct SmallStack<T: Copy + Default, const N: usize> {
    inline: [T; N],
    len: usize,
    heap: Vec<T>,
    spilled: bool,
}

impl<T: Copy + Default, const N: usize> SmallStack<T, N> {
    pub fn new() -> Self {
        SmallStack {
            inline: [T::default(); N],
            len: 0,
            heap: Vec::new(),
            spilled: false,
        }
    }

    pub fn push(&mut self, value: T) {
        if !self.spilled {
            if let Some(slot) = self.inline.get_mut(self.len) {
                *slot = value;
                self.len += 1;
                return;
            }
            self.heap.extend_from_slice(&self.inline[..self.len]);
            self.spilled = true;
        }
        self.heap.push(value);
    }

    pub fn pop(&mut self) -> Option<T> {
        if self.spilled {
            return self.heap.pop();
        }
        self.len = self.len.checked_sub(1)?;
        Some(self.inline[self.len])
    }

    pub fn as_slice(&self) -> &[T] {
        if self.spilled {
            &self.heap
        } else {
            &self.inline[..self.len]
        }
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        if self.spilled {
            self.heap.get_mut(index)
        } else {
            self.inline[..self.len].get_mut(index)
        }
    }

    pub fn last_mut(&mut self) -> Option<&mut T> {
        if self.spilled {
            self.heap.last_mut()
        } else {
            self.len.checked_sub(1).map(|i| &mut self.inline[i])
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn truncate(&mut self, len: usize) {
        if self.spilled {
            self.heap.truncate(len);
        } else {
            self.len = self.len.min(len);
        }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }
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

/// Name bytes: 1 an ASCII name character other than ':', 2 ':', 3 a non-ASCII byte (decode
/// the character), 0 anything that ends a name.
static NAME_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = if b >= 0x80 {
            3
        } else if b == b':' as usize {
            2
        } else if NAME_ASCII[b] {
            1
        } else {
            0
        };
        b += 1;
    }
    table
};

/// The position of the first `a`, `b` or `c` in `haystack`: eight bytes per step (a word-wide
/// zero-byte test on `haystack ^ broadcast(byte)`), then byte by byte in the word that matched.
fn find3(a: u8, b: u8, c: u8, haystack: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let (wa, wb, wc) = (
        ONES * u64::from(a),
        ONES * u64::from(b),
        ONES * u64::from(c),
    );
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let mut at = 0;
    while let Some(word) = haystack.get(at..at + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        if (has_zero(w ^ wa) | has_zero(w ^ wb) | has_zero(w ^ wc)) & HIGHS != 0 {
            break;
        }
        at += 8;
    }
    haystack[at..]
        .iter()
        .position(|&x| x == a || x == b || x == c)
        .map(|p| p + at)
}

const NAME_START_ASCII: [bool; 128] = ascii_table(b":_", &[(b'A', b'Z'), (b'a', b'z')]);
const NAME_ASCII: [bool; 128] = ascii_table(b":_-.", &[(b'A', b'Z'), (b'a', b'z'), (b'0', b'9')]);

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

/// Decodes the UTF-8 character at `at` (the body is known to be valid UTF-8); returns the code
/// point and its length, or `(u32::MAX, 1)` past the end.
fn char_at(body: &[u8], at: usize) -> (u32, usize) {
    let Some(&first) = body.get(at) else {
        return (u32::MAX, 1);
    };
    let (len, init) = match first {
        0x00..=0x7F => return (u32::from(first), 1),
        0xC0..=0xDF => (2, u32::from(first & 0x1F)),
        0xE0..=0xEF => (3, u32::from(first & 0x0F)),
        _ => (4, u32::from(first & 0x07)),
    };
    let mut c = init;
    for i in 1..len {
        match body.get(at + i) {
            Some(&b) => c = (c << 6) | u32::from(b & 0x3F),
            None => return (u32::MAX, 1),
        }
    }
    (c, len)
}

fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// What a reference (`&...;`) at some position stands for.
enum Reference {
    Char(char),
    /// A well-formed entity reference to an entity other than the five predefined ones.
    Undeclared,
}

/// Reads the reference starting at `at` (the `&`). Returns the reference and its length, or a
/// description of the syntax error.
fn read_reference(body: &[u8], at: usize) -> Result<(Reference, usize), &'static str> {
    let mut p = at + 1;
    if body.get(p) == Some(&b'#') {
        p += 1;
        let hex = body.get(p) == Some(&b'x');
        if hex {
            p += 1;
        }
        let digits_start = p;
        let mut value: u32 = 0;
        while let Some(&b) = body.get(p) {
            let digit = match b {
                b'0'..=b'9' => u32::from(b - b'0'),
                b'a'..=b'f' if hex => u32::from(b - b'a' + 10),
                b'A'..=b'F' if hex => u32::from(b - b'A' + 10),
                b';' => break,
                _ => return Err("malformed character reference"),
            };
            value = value
                .saturating_mul(if hex { 16 } else { 10 })
                .saturating_add(digit);
            p += 1;
        }
        if body.get(p) != Some(&b';') || p == digits_start {
            return Err("malformed character reference");
        }
        if !is_xml_char(value) {
            return Err("character reference to a character XML does not allow");
        }
        let ch =
            char::from_u32(value).ok_or("character reference to a character XML does not allow")?;
        return Ok((Reference::Char(ch), p + 1 - at));
    }
    let (first, _) = char_at(body, p);
    if !is_name_start_char(first) {
        return Err("'&' must start a reference (write &amp;)");
    }
    let name_start = p;
    while p < body.len() {
        let (c, len) = char_at(body, p);
        if !is_name_char(c) {
            break;
        }
        p += len;
    }
    if body.get(p) != Some(&b';') {
        return Err("entity reference without ';'");
    }
    let reference = match &body[name_start..p] {
        b"lt" => Reference::Char('<'),
        b"gt" => Reference::Char('>'),
        b"amp" => Reference::Char('&'),
        b"apos" => Reference::Char('\''),
        b"quot" => Reference::Char('"'),
        _ => Reference::Undeclared,
    };
    Ok((reference, p + 1 - at))
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
            b'&' => match read_reference(self.raw, self.pos) {
                Ok((Reference::Char(ch), len)) => {
                    self.pos += len;
                    let encoded = ch.encode_utf8(&mut self.pending);
                    self.pending_len = encoded.len();
                    self.pending_pos = 1;
                    Some(self.pending[0])
                }
                // Unreachable for values the tokenizer accepted; keep the byte rather than panic.
                _ => {
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

/// Appends `raw` character data to `out` with XML line-end normalisation (CR LF and lone CR
/// become LF).
pub(super) fn push_normalised_text(raw: &[u8], out: &mut ValueBuf) {
    let mut rest = raw;
    while let Some(cr) = rest.iter().position(|&b| b == b'\r') {
        out.extend(&rest[..cr]);
        out.push(b'\n');
        rest = &rest[cr + 1..];
        if rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
    }
    out.extend(rest);
}

/// A byte buffer that stays inline for the short values the datatypes check, and spills to the
/// heap only for long ones.
pub(super) struct ValueBuf {
    inline: [u8; 128],
    len: usize,
    heap: Vec<u8>,
    spilled: bool,
}

impl ValueBuf {
    pub fn new() -> Self {
        ValueBuf {
            inline: [0; 128],
            len: 0,
            heap: Vec::new(),
            spilled: false,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.heap.clear();
        self.spilled = false;
    }

    pub fn push(&mut self, b: u8) {
        self.extend(&[b]);
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        if !self.spilled {
            if let Some(slot) = self.inline.get_mut(self.len..self.len + bytes.len()) {
                slot.copy_from_slice(bytes);
                self.len += bytes.len();
                return;
            }
            self.heap.extend_from_slice(&self.inline[..self.len]);
            self.spilled = true;
        }
        self.heap.extend_from_slice(bytes);
    }

    pub fn as_bytes(&self) -> &[u8] {
        if self.spilled {
            &self.heap
        } else {
            &self.inline[..self.len]
        }
    }
}

pub(super) struct Tokenizer<'a> {
    body: &'a [u8],
    pos: usize,
    limits: Limits,
    phase: Phase,
    pending_end: bool,
    /// Where the first tab, LF or CR of the body is: values that end before it need no
    /// normalisation.
    first_line_space: usize,
    open: SmallStack<OpenElement, 24>,
    bindings: SmallStack<Binding, 12>,
    attrs: SmallStack<Attr, 12>,
}

impl<'a> Tokenizer<'a> {
    /// Checks the encoding, the XML declaration and every character of `body`, and positions the
    /// tokenizer after the declaration.
    pub fn new(body: &'a [u8], limits: &Limits) -> Result<Self, Rejection> {
        let mut pos = 0;
        if body.starts_with(&[0xEF, 0xBB, 0xBF]) {
            pos = 3;
        } else if body.starts_with(&[0xFE, 0xFF])
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
        let mut tokenizer = Tokenizer {
            body,
            pos,
            limits: *limits,
            phase: Phase::Prolog,
            pending_end: false,
            first_line_space: 0,
            open: SmallStack::new(),
            bindings: SmallStack::new(),
            attrs: SmallStack::new(),
        };
        if body[pos..].starts_with(b"<?xml") && body.get(pos + 5).copied().is_some_and(is_space) {
            tokenizer.read_xml_declaration()?;
        }
        tokenizer.first_line_space = check_characters(body, pos)?;
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

    fn byte(&self, at: usize) -> Option<u8> {
        self.body.get(at).copied()
    }

    fn skip_space(&self, mut at: usize) -> usize {
        while self.byte(at).is_some_and(is_space) {
            at += 1;
        }
        at
    }

    /// `<?xml` S `version` Eq '1.0' (S `encoding` Eq EncName)? (S `standalone` Eq (yes|no))? S? `?>`
    fn read_xml_declaration(&mut self) -> Result<(), Rejection> {
        let start = self.pos;
        let mut p = start + 5;
        let mut seen_version = false;
        let mut index = 0;
        loop {
            let after_space = self.skip_space(p);
            if self.body[after_space..].starts_with(b"?>") {
                if !seen_version {
                    return Err(not_well_formed(start, "XML declaration without version"));
                }
                self.pos = after_space + 2;
                return Ok(());
            }
            if after_space == p {
                return Err(not_well_formed(p, "malformed XML declaration"));
            }
            p = after_space;
            let name_end = p + self.body[p..]
                .iter()
                .position(|b| !b.is_ascii_lowercase())
                .unwrap_or(self.body.len() - p);
            let name = &self.body[p..name_end];
            let value_at = self.skip_space(name_end);
            if self.byte(value_at) != Some(b'=') {
                return Err(not_well_formed(p, "malformed XML declaration"));
            }
            let quote_at = self.skip_space(value_at + 1);
            let quote_char = match self.byte(quote_at) {
                Some(q @ (b'"' | b'\'')) => q,
                _ => return Err(not_well_formed(quote_at, "malformed XML declaration")),
            };
            let value_start = quote_at + 1;
            let value_len = self.body[value_start..]
                .iter()
                .take(64)
                .position(|&b| b == quote_char)
                .ok_or_else(|| not_well_formed(value_start, "malformed XML declaration"))?;
            let value = &self.body[value_start..value_start + value_len];
            match (index, name) {
                (0, b"version") => {
                    seen_version = true;
                    if value != b"1.0" {
                        return Err(reject(
                            RejectionKind::UnsupportedDeclaration,
                            value_start,
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
                        return Err(not_well_formed(value_start, "invalid encoding name"));
                    }
                    if !value.eq_ignore_ascii_case(b"utf-8") {
                        return Err(reject(
                            RejectionKind::UnsupportedDeclaration,
                            value_start,
                            format!("encoding {} (only UTF-8 is accepted)", quote(value)),
                        ));
                    }
                }
                (1 | 2, b"standalone") => {
                    if value != b"yes" && value != b"no" {
                        return Err(not_well_formed(value_start, "standalone must be yes or no"));
                    }
                    index = 2;
                }
                _ => return Err(not_well_formed(p, "malformed XML declaration")),
            }
            index += 1;
            p = value_start + value_len + 1;
        }
    }

    /// The next token. After an error the tokenizer must not be used again.
    pub fn next_token(&mut self) -> Result<Token<'a>, Rejection> {
        if self.pending_end {
            self.pending_end = false;
            return Ok(self.close_element(self.pos));
        }
        loop {
            let at = self.pos;
            let Some(b) = self.byte(at) else {
                return match self.phase {
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
                };
            };
            if b == b'<' {
                match self.byte(at + 1) {
                    Some(b'/') if self.phase == Phase::Content => return self.read_end_tag(),
                    Some(b'!') => {
                        if self.body[at..].starts_with(b"<!--") {
                            self.skip_comment()?;
                            continue;
                        }
                        if self.body[at..].starts_with(b"<![CDATA[") && self.phase == Phase::Content
                        {
                            return self.read_cdata();
                        }
                        if self.body[at..].starts_with(b"<!DOCTYPE") {
                            return Err(reject(
                                RejectionKind::ForbiddenMarkup,
                                at,
                                "document type declaration (DTDs are refused)",
                            ));
                        }
                        return Err(not_well_formed(at, "malformed markup after '<!'"));
                    }
                    Some(b'?') => {
                        return Err(reject(
                            RejectionKind::ForbiddenMarkup,
                            at,
                            "processing instruction (only the XML declaration is allowed)",
                        ))
                    }
                    _ if self.phase == Phase::Epilog => {
                        return Err(not_well_formed(at, "content after the root element"))
                    }
                    _ => return self.read_start_tag(),
                }
            }
            match self.phase {
                Phase::Content => {
                    if b == b'&' {
                        return self.read_reference_token();
                    }
                    return self.read_text();
                }
                Phase::Prolog | Phase::Epilog => {
                    if !is_space(b) {
                        let what = if self.phase == Phase::Prolog {
                            "text before the root element"
                        } else {
                            "text after the root element"
                        };
                        return Err(not_well_formed(at, what));
                    }
                    self.pos = self.skip_space(at);
                }
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

    fn read_text(&mut self) -> Result<Token<'a>, Rejection> {
        let start = self.pos;
        let mut p = start;
        let body = self.body;
        loop {
            p += find3(b'<', b'&', b']', &body[p..]).unwrap_or(body.len() - p);
            if body.get(p) != Some(&b']') {
                break;
            }
            if body[p..].starts_with(b"]]>") {
                return Err(not_well_formed(p, "']]>' in character data"));
            }
            p += 1;
        }
        let has_cr = self.first_line_space < p && body[start..p].contains(&b'\r');
        self.pos = p;
        self.add_text_bytes(p - start, start)?;
        Ok(Token::Text {
            raw: &body[start..p],
            has_cr,
            at: start,
        })
    }

    fn read_reference_token(&mut self) -> Result<Token<'a>, Rejection> {
        let at = self.pos;
        match read_reference(self.body, at) {
            Ok((Reference::Char(ch), len)) => {
                self.pos += len;
                self.add_text_bytes(len, at)?;
                Ok(Token::Reference { ch, at })
            }
            Ok((Reference::Undeclared, len)) => Err(not_well_formed(
                at,
                format!(
                    "reference to undeclared entity {}",
                    quote(&self.body[at..at + len])
                ),
            )),
            Err(what) => Err(not_well_formed(at, what)),
        }
    }

    fn read_cdata(&mut self) -> Result<Token<'a>, Rejection> {
        let at = self.pos;
        let start = at + 9;
        let len = find(&self.body[start..], b"]]>")
            .ok_or_else(|| not_well_formed(at, "CDATA section not closed"))?;
        self.pos = start + len + 3;
        self.add_text_bytes(len, at)?;
        Ok(Token::CData {
            raw: &self.body[start..start + len],
            at,
        })
    }

    fn skip_comment(&mut self) -> Result<(), Rejection> {
        let at = self.pos;
        let start = at + 4;
        let dashes = find(&self.body[start..], b"--")
            .ok_or_else(|| not_well_formed(at, "comment not closed"))?;
        if self.byte(start + dashes + 2) != Some(b'>') {
            return Err(not_well_formed(start + dashes, "'--' inside a comment"));
        }
        self.pos = start + dashes + 3;
        Ok(())
    }

    /// Scans a Name at `at`; returns its end and its shape as a qualified name. Fails when no
    /// name starts there.
    fn scan_name(&self, at: usize, what: &str) -> Result<(usize, QName), Rejection> {
        let body = self.body;
        let (first, first_len) = char_at(body, at);
        if !is_name_start_char(first) {
            return Err(not_well_formed(at, format!("invalid {what} name")));
        }
        let mut p = at + first_len;
        let mut colon = (first == u32::from(b':')).then_some(at);
        let mut colons = usize::from(colon.is_some());
        loop {
            p += body[p..]
                .iter()
                .position(|&b| NAME_BYTES[usize::from(b)] != 1)
                .unwrap_or(body.len() - p);
            match body.get(p).map(|&b| NAME_BYTES[usize::from(b)]) {
                Some(2) => {
                    colons += 1;
                    colon.get_or_insert(p);
                    p += 1;
                }
                Some(3) => {
                    let (c, len) = char_at(body, p);
                    if !is_name_char(c) {
                        break;
                    }
                    p += len;
                }
                _ => break,
            }
        }
        let max = self.limits.max_name_bytes;
        if p - at > max {
            return Err(limit(at, format!("{what} name longer than {max} bytes")));
        }
        let shape = match colon {
            None => QName::Unprefixed,
            Some(c)
                if colons == 1
                    && c > at
                    && c + 1 < p
                    && is_name_start_char(char_at(body, c + 1).0) =>
            {
                QName::Prefixed(c)
            }
            Some(_) => QName::Invalid,
        };
        Ok((p, shape))
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

    fn read_start_tag(&mut self) -> Result<Token<'a>, Rejection> {
        let at = self.pos;
        let name_start = at + 1;
        let (name_end, shape) = self.scan_name(name_start, "element")?;
        let name = Span {
            start: name_start,
            end: name_end,
        };
        if self.open.len() >= self.limits.max_depth {
            let max = self.limits.max_depth;
            return Err(limit(at, format!("elements nested deeper than {max}")));
        }
        self.attrs.clear();
        let mut p = name_end;
        let empty = loop {
            let after_space = self.skip_space(p);
            match self.byte(after_space) {
                None => return Err(not_well_formed(at, "start tag not closed")),
                Some(b'>') => {
                    p = after_space + 1;
                    break false;
                }
                Some(b'/') => {
                    if self.byte(after_space + 1) != Some(b'>') {
                        return Err(not_well_formed(
                            after_space,
                            "'/' not followed by '>' in a tag",
                        ));
                    }
                    p = after_space + 2;
                    break true;
                }
                Some(_) if after_space == p => {
                    return Err(not_well_formed(
                        after_space,
                        "attributes must be separated by whitespace",
                    ))
                }
                Some(_) => p = self.read_attribute(after_space)?,
            }
        };
        self.pos = p;
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
        self.pending_end = empty;
        Ok(Token::Start {
            ns,
            local: &self.body[local_start..name.end],
            name,
            at,
        })
    }

    /// Reads `Name S? = S? quoted-value` at `at`; returns the position after the closing quote.
    fn read_attribute(&mut self, at: usize) -> Result<usize, Rejection> {
        let (name_end, shape) = self.scan_name(at, "attribute")?;
        let eq = self.skip_space(name_end);
        if self.byte(eq) != Some(b'=') {
            return Err(not_well_formed(eq, "attribute without '=' and value"));
        }
        let quote_at = self.skip_space(eq + 1);
        let quote_char = match self.byte(quote_at) {
            Some(q @ (b'"' | b'\'')) => q,
            _ => return Err(not_well_formed(quote_at, "attribute value must be quoted")),
        };
        let value_start = quote_at + 1;
        let mut p = value_start;
        let mut has_reference = false;
        let body = self.body;
        loop {
            p += find3(quote_char, b'<', b'&', &body[p..])
                .ok_or_else(|| not_well_formed(value_start, "attribute value not closed"))?;
            match body[p] {
                b'<' => return Err(not_well_formed(p, "'<' in an attribute value")),
                b'&' => {
                    has_reference = true;
                    match read_reference(body, p) {
                        Ok((Reference::Char(_), len)) => p += len,
                        Ok((Reference::Undeclared, len)) => {
                            return Err(not_well_formed(
                                p,
                                format!(
                                    "reference to undeclared entity {}",
                                    quote(&body[p..p + len])
                                ),
                            ))
                        }
                        Err(what) => return Err(not_well_formed(p, what)),
                    }
                }
                _ => break,
            }
        }
        let plain = !has_reference
            && (self.first_line_space >= p
                || find3(b'\t', b'\n', b'\r', &body[value_start..p]).is_none());
        let max_bytes = self.limits.max_attribute_bytes;
        if p - value_start > max_bytes {
            return Err(limit(
                value_start,
                format!("attribute value longer than {max_bytes} bytes"),
            ));
        }
        let max_count = self.limits.max_attributes;
        if self.attrs.len() >= max_count {
            return Err(limit(
                at,
                format!("more than {max_count} attributes on one element"),
            ));
        }
        let name = Span {
            start: at,
            end: name_end,
        };
        let name_bytes = &body[at..name_end];
        self.attrs.push(Attr {
            name,
            local_start: at,
            value: Span {
                start: value_start,
                end: p,
            },
            plain,
            shape,
            ns: Ns::None,
            binding: 0,
            is_namespace_declaration: name_bytes == b"xmlns" || name_bytes.starts_with(b"xmlns:"),
        });
        Ok(p + 1)
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
            let prefix = if attr.name.len() == 5 {
                Span { start: at, end: at }
            } else {
                let prefix = Span {
                    start: at + 6,
                    end: attr.name.end,
                };
                let bytes = self.bytes(prefix);
                let (first, _) = char_at(self.body, prefix.start);
                if bytes.is_empty() || bytes.contains(&b':') || !is_name_start_char(first) {
                    return Err(namespace_error(
                        at,
                        format!(
                            "namespace declaration {} is not a qualified name",
                            quote(self.bytes(attr.name))
                        ),
                    ));
                }
                prefix
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

    fn read_end_tag(&mut self) -> Result<Token<'a>, Rejection> {
        let at = self.pos;
        let name_start = at + 2;
        let Some(open) = self.open.as_slice().last().map(|open| open.name) else {
            return Err(not_well_formed(at, "end tag without start tag"));
        };
        let expected = self.bytes(open);
        let body = self.body;
        let after = name_start + expected.len();
        // The common case needs no scan: the open element's name, then something that cannot
        // continue a name.
        let matches = body[name_start..].starts_with(expected)
            && match body.get(after) {
                Some(&b) if b < 0x80 => NAME_BYTES[usize::from(b)] == 0,
                Some(_) => !is_name_char(char_at(body, after).0),
                None => true,
            };
        if !matches {
            let (name_end, _) = self.scan_name(name_start, "end tag")?;
            return Err(not_well_formed(
                at,
                format!(
                    "end tag {} does not match {}",
                    quote(&body[name_start..name_end]),
                    quote(expected)
                ),
            ));
        }
        let close = self.skip_space(after);
        if self.byte(close) != Some(b'>') {
            return Err(not_well_formed(close, "malformed end tag"));
        }
        self.pos = close + 1;
        Ok(self.close_element(at))
    }

    fn close_element(&mut self, at: usize) -> Token<'a> {
        if let Some(open) = self.open.pop() {
            self.bindings.truncate(open.bindings_mark);
        }
        if self.open.len() == 0 {
            self.phase = Phase::Epilog;
        }
        Token::End { at }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
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

/// Every byte after the BOM must form valid UTF-8 and every character must match XML 1.0's
/// Char production (no C0 controls but tab, LF, CR; no U+FFFE, U+FFFF). One pass, word-sized
/// fast path for the common ASCII case. Returns the body offset of the first tab, LF or CR
/// (`body.len()` if none): bodies like Exchange's have none before their final newline, which
/// spares the normalisation checks of every value.
fn check_characters(body: &[u8], start: usize) -> Result<usize, Rejection> {
    let text = &body[start..];
    if let Err(error) = std::str::from_utf8(text) {
        return Err(not_well_formed(
            start + error.valid_up_to(),
            "invalid UTF-8",
        ));
    }
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const BLOCK: usize = 32;
    let blocks = text.chunks_exact(BLOCK);
    let mut line_space: Option<usize> = None;
    let tail_start = text.len() - blocks.remainder().len();
    for (index, block) in blocks.enumerate() {
        // Any ASCII byte below 0x20, or any 0xEF (the lead byte of U+FFFE/U+FFFF): look closer.
        let mut suspicious = 0u64;
        for word in block.chunks_exact(8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            let w = u64::from_le_bytes(bytes);
            let xor_ef = w ^ (ONES * 0xEF);
            suspicious |=
                (w.wrapping_sub(ONES * 0x20) & !w) | (xor_ef.wrapping_sub(ONES) & !xor_ef);
        }
        if suspicious & HIGHS != 0 {
            let found = check_character_bytes(text, start, index * BLOCK, index * BLOCK + BLOCK)?;
            line_space = line_space.or(found);
        }
    }
    let found = check_character_bytes(text, start, tail_start, text.len())?;
    Ok(line_space.or(found).map_or(body.len(), |at| start + at))
}
