//! The schema walk: a state machine over the tokenizer's stream that checks the body against the
//! EWS `SendNotification` schema (send-notification-envelope.xsd, messages.xsd, types.xsd) in one
//! pass, and optionally builds the typed model. [`validate`] and [`parse`] share every check, so
//! their verdicts cannot differ.

use super::datatypes;
use super::model::{
    Event, EventKind, Notification, NotificationContent, ObjectId, ObjectKind, ResponseClass,
    ResponseMessage,
};
pub use super::rejection::{Rejection, RejectionKind};
use super::tokenizer::{quote, reject, AttrValueBytes, Ns, Span, Token, Tokenizer};
use super::vocabulary;
use super::Limits;
use smallvec::SmallVec;

/// What the gateway needs to know about a valid body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// `m:SendNotificationResponseMessage` elements.
    pub response_messages: usize,
    /// Events over all notifications.
    pub events: usize,
    /// At least one `ResponseClass="Error"` message came without `m:Notification` (the observed
    /// Exchange behaviour the XSD does not allow; accepted as a documented deviation).
    pub error_without_notification: bool,
}

/// Decides whether `body` is a well-formed, schema-conformant `SendNotification` request (with
/// the documented deviations). Makes no heap allocation for a valid body like Exchange's, however
/// many events it holds (`tests/validator_alloc.rs`).
pub fn validate(body: &[u8], limits: &Limits) -> Result<Summary, Rejection> {
    let (summary, _) = walk(body, limits, NoModel)?;
    Ok(summary)
}

/// The same verdict as [`validate`], and for a valid body its typed model.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Notification, Rejection> {
    let (_, builder) = walk(body, limits, ModelBuilder::default())?;
    Ok(builder.notification)
}

fn walk<M: ModelSink>(body: &[u8], limits: &Limits, model: M) -> Result<(Summary, M), Rejection> {
    let mut walker = Walker {
        tokens: Tokenizer::new(body, limits)?,
        frames: SmallVec::new(),
        value: Value::None,
        value_nonempty: false,
        buf: SmallVec::new(),
        summary: Summary::default(),
        limits: *limits,
        model,
    };
    walker.frames.push(Frame::default());
    if let Err(rejection) = walker.run() {
        return Err(walker.prefer_not_well_formed(rejection));
    }
    Ok((walker.summary, walker.model))
}

/// Simple-typed elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Simple {
    MessageText,
    ResponseCode,
    DescriptiveLinkKey,
    SubscriptionId,
    PreviousWatermark,
    MoreEvents,
    Watermark,
    TimeStamp,
    UnreadCount,
    /// `t:Value`; `subscription_id` when it is `m:MessageXml/t:Value[@Name="SubscriptionId"]`.
    Value {
        subscription_id: bool,
    },
}

/// The `*Id` elements of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdRole {
    Object(ObjectKind),
    Parent,
    OldObject(ObjectKind),
    OldParent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Kind {
    /// Above the root element.
    #[default]
    Document,
    Envelope,
    Header,
    Body,
    SendNotification,
    ResponseMessages,
    ResponseMessage,
    MessageXml,
    Notification,
    Event(EventKind),
    Simple(Simple),
    Id(IdRole),
    RequestServerVersion,
    /// An element a lax wildcard admits without a declaration: anything goes inside, except
    /// that declared global elements and attributes found there are still validated.
    Foreign,
}

enum ContentType {
    ElementOnly,
    Simple,
    Empty,
    Any,
}

impl Kind {
    fn content_type(self) -> ContentType {
        match self {
            Kind::Simple(_) => ContentType::Simple,
            Kind::Id(_) | Kind::RequestServerVersion => ContentType::Empty,
            Kind::Foreign => ContentType::Any,
            _ => ContentType::ElementOnly,
        }
    }
}

/// One open element. `state` is the position in the element's content model (meaning per kind).
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    kind: Kind,
    state: u8,
    name: Span,
    response_class: Option<ResponseClass>,
}

/// Where the value of the open simple-typed element is.
enum Value {
    /// Nothing collected (not needed, or no character data yet).
    None,
    /// One run of character data that needs no normalisation: a range of the body.
    Slice(usize, usize),
    /// Assembled in the walker's buffer.
    Buffered,
}

/// Receives the parts of the model as the walk passes them (a no-op for [`validate`]).
trait ModelSink {
    /// Whether string values are wanted (otherwise only the typed ones are collected, to check).
    const BUILDS: bool;
    fn message_start(&mut self, _class: ResponseClass) {}
    fn message_end(&mut self) {}
    fn notification_start(&mut self) {}
    fn notification_end(&mut self) {}
    fn event_start(&mut self, _kind: EventKind) {}
    fn event_end(&mut self) {}
    fn value(&mut self, _simple: Simple, _value: &[u8]) {}
    fn object_id(&mut self, _role: IdRole, _id: String, _change_key: Option<String>) {}
}

struct NoModel;

impl ModelSink for NoModel {
    const BUILDS: bool = false;
}

#[derive(Default)]
struct ModelBuilder {
    notification: Notification,
    message: Option<ResponseMessage>,
    value_subscription_id: Option<String>,
    content: Option<NotificationContent>,
    event: Option<Event>,
}

fn text(bytes: &[u8]) -> String {
    // The tokenizer has checked the body is UTF-8 and decoding only inserts whole characters.
    String::from_utf8_lossy(bytes).into_owned()
}

impl ModelSink for ModelBuilder {
    const BUILDS: bool = true;

    fn message_start(&mut self, class: ResponseClass) {
        self.message = Some(ResponseMessage {
            response_class: class,
            response_code: None,
            message_text: None,
            subscription_id: None,
            notification: None,
        });
        self.value_subscription_id = None;
    }

    fn message_end(&mut self) {
        if let Some(mut message) = self.message.take() {
            if message.subscription_id.is_none() {
                message.subscription_id = self.value_subscription_id.take();
            }
            self.notification.response_messages.push(message);
        }
    }

    fn notification_start(&mut self) {
        self.content = Some(NotificationContent::default());
    }

    fn notification_end(&mut self) {
        if let Some(message) = self.message.as_mut() {
            message.notification = self.content.take();
        }
    }

    fn event_start(&mut self, kind: EventKind) {
        self.event = Some(Event::bare(kind));
    }

    fn event_end(&mut self) {
        if let (Some(event), Some(content)) = (self.event.take(), self.content.as_mut()) {
            content.events.push(event);
        }
    }

    fn value(&mut self, simple: Simple, value: &[u8]) {
        match simple {
            Simple::MessageText => {
                if let Some(message) = self.message.as_mut() {
                    message.message_text = Some(text(value));
                }
            }
            Simple::ResponseCode => {
                if let Some(message) = self.message.as_mut() {
                    message.response_code = Some(text(value));
                }
            }
            Simple::SubscriptionId => {
                if let Some(message) = self.message.as_mut() {
                    message.subscription_id = Some(text(value));
                }
            }
            Simple::Value {
                subscription_id: true,
            } => {
                if self.value_subscription_id.is_none() {
                    self.value_subscription_id = Some(text(value));
                }
            }
            Simple::PreviousWatermark => {
                if let Some(content) = self.content.as_mut() {
                    content.previous_watermark = Some(text(value));
                }
            }
            Simple::MoreEvents => {
                if let Some(content) = self.content.as_mut() {
                    content.more_events = datatypes::parse_boolean(value).unwrap_or(false);
                }
            }
            Simple::Watermark => {
                if let Some(event) = self.event.as_mut() {
                    event.watermark = Some(text(value));
                }
            }
            Simple::TimeStamp => {
                if let Some(event) = self.event.as_mut() {
                    // The schema value: xs:dateTime collapses whitespace (libxml2 allows it only
                    // trailing).
                    let end = value
                        .iter()
                        .rposition(|&b| !datatypes::is_xml_space(b))
                        .map_or(0, |p| p + 1);
                    event.timestamp = Some(text(&value[..end]));
                }
            }
            Simple::UnreadCount => {
                if let Some(event) = self.event.as_mut() {
                    event.unread_count = datatypes::parse_int(value);
                }
            }
            Simple::DescriptiveLinkKey
            | Simple::Value {
                subscription_id: false,
            } => {}
        }
    }

    fn object_id(&mut self, role: IdRole, id: String, change_key: Option<String>) {
        let Some(event) = self.event.as_mut() else {
            return;
        };
        let object = |kind| ObjectId {
            kind,
            id,
            change_key,
        };
        match role {
            IdRole::Object(kind) => event.object = Some(object(kind)),
            IdRole::Parent => event.parent_folder_id = Some(object(ObjectKind::Folder)),
            IdRole::OldObject(kind) => event.old_object = Some(object(kind)),
            IdRole::OldParent => event.old_parent_folder_id = Some(object(ObjectKind::Folder)),
        }
    }
}

/// Appends `raw` character data to `out` with XML line-end normalisation (CR LF and lone CR
/// become LF).
fn push_normalised_text(raw: &[u8], out: &mut ValueBuf) {
    let mut rest = raw;
    while let Some(cr) = rest.iter().position(|&b| b == b'\r') {
        out.extend_from_slice(&rest[..cr]);
        out.push(b'\n');
        rest = &rest[cr + 1..];
        if rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
    }
    out.extend_from_slice(rest);
}

/// A byte buffer that stays inline for the short values the datatypes check, and spills to the
/// heap only for long ones.
type ValueBuf = SmallVec<[u8; 128]>;

struct Walker<'a, M: ModelSink> {
    tokens: Tokenizer<'a>,
    frames: SmallVec<[Frame; 16]>,
    value: Value,
    value_nonempty: bool,
    buf: ValueBuf,
    summary: Summary,
    limits: Limits,
    model: M,
}

fn structure(at: usize, what: impl std::fmt::Display) -> Rejection {
    reject(RejectionKind::SchemaStructure, at, what)
}

fn invalid_value(at: usize, what: impl std::fmt::Display) -> Rejection {
    reject(RejectionKind::SchemaValue, at, what)
}

fn unsupported(at: usize, what: impl std::fmt::Display) -> Rejection {
    reject(RejectionKind::UnsupportedExtension, at, what)
}

fn event_kind(local: &[u8]) -> Option<EventKind> {
    EventKind::from_element_name(local)
}

impl<'a, M: ModelSink> Walker<'a, M> {
    fn run(&mut self) -> Result<(), Rejection> {
        loop {
            match self.tokens.next_token()? {
                Token::Start {
                    ns,
                    local,
                    name,
                    at,
                } => self.start(ns, local, name, at)?,
                Token::End { at } => self.end(at)?,
                Token::Text { raw, has_cr, at } => self.text(raw, has_cr, at)?,
                Token::Reference { ch, at } => self.reference(ch, at)?,
                Token::CData { raw, at } => self.cdata(raw, at)?,
                Token::Eof => return Ok(()),
            }
        }
    }

    /// A schema verdict about a document that is not even well-formed further on would mislead
    /// (xmllint reports the syntax error): read on, and report the syntax error if there is one.
    fn prefer_not_well_formed(&mut self, rejection: Rejection) -> Rejection {
        if !matches!(
            rejection.kind,
            RejectionKind::SchemaStructure
                | RejectionKind::SchemaValue
                | RejectionKind::UnsupportedExtension
        ) {
            return rejection;
        }
        loop {
            match self.tokens.next_token() {
                Ok(Token::Eof) => return rejection,
                Ok(_) => {}
                Err(later) if later.kind == RejectionKind::NotWellFormed => return later,
                Err(_) => return rejection,
            }
        }
    }

    fn current(&self) -> Frame {
        self.frames.as_slice().last().copied().unwrap_or_default()
    }

    fn name_of(&self, frame: Frame) -> String {
        quote(self.tokens.bytes(frame.name))
    }

    fn unexpected(&self, name: Span, at: usize) -> Rejection {
        let parent = self.current();
        if parent.kind == Kind::Document {
            return structure(
                at,
                format!(
                    "root element {} is not soap:Envelope",
                    quote(self.tokens.bytes(name))
                ),
            );
        }
        structure(
            at,
            format!(
                "element {} not expected here in {}",
                quote(self.tokens.bytes(name)),
                self.name_of(parent)
            ),
        )
    }

    /// The kind of a child element and the parent's new content-model state.
    fn child_kind(
        &mut self,
        ns: Ns,
        local: &[u8],
        name: Span,
        at: usize,
    ) -> Result<(Kind, u8), Rejection> {
        let parent = self.current();
        let state = parent.state;
        let kind_and_state = match parent.kind {
            Kind::Document => match (ns, local) {
                (Ns::Soap, b"Envelope") => (Kind::Envelope, 1),
                _ => return Err(self.unexpected(name, at)),
            },
            Kind::Envelope => match (state, ns, local) {
                (0, Ns::Soap, b"Header") => (Kind::Header, 1),
                (0 | 1, Ns::Soap, b"Body") => (Kind::Body, 2),
                _ => return Err(self.unexpected(name, at)),
            },
            Kind::Header => match ns {
                Ns::None | Ns::Soap => {
                    return Err(structure(
                        at,
                        format!(
                            "header entry {} must be namespace-qualified and outside the SOAP namespace",
                            quote(self.tokens.bytes(name))
                        ),
                    ))
                }
                _ => (self.lax_kind(ns, local, name, at)?, state),
            },
            Kind::Body => match (state, ns, local) {
                (0, Ns::Messages, b"SendNotification") => (Kind::SendNotification, 1),
                _ => return Err(self.unexpected(name, at)),
            },
            Kind::SendNotification => match (state, ns, local) {
                (0, Ns::Messages, b"ResponseMessages") => (Kind::ResponseMessages, 1),
                _ => return Err(self.unexpected(name, at)),
            },
            Kind::ResponseMessages => match (ns, local) {
                (Ns::Messages, b"SendNotificationResponseMessage") => {
                    self.summary.response_messages += 1;
                    let max = self.limits.max_response_messages;
                    if self.summary.response_messages > max {
                        return Err(reject(
                            RejectionKind::LimitExceeded,
                            at,
                            format!("more than {max} response messages"),
                        ));
                    }
                    (Kind::ResponseMessage, 1)
                }
                (Ns::Messages, other) if vocabulary::contains(&vocabulary::RESPONSE_MESSAGE_ELEMENTS, other) => {
                    return Err(unsupported(
                        at,
                        format!(
                            "response message {} (only SendNotificationResponseMessage is accepted)",
                            quote(self.tokens.bytes(name))
                        ),
                    ))
                }
                _ => return Err(self.unexpected(name, at)),
            },
            Kind::ResponseMessage => match (ns, local) {
                (Ns::Messages, b"MessageText") if state < 1 => (Kind::Simple(Simple::MessageText), 1),
                (Ns::Messages, b"ResponseCode") if state < 2 => (Kind::Simple(Simple::ResponseCode), 2),
                (Ns::Messages, b"DescriptiveLinkKey") if state < 3 => {
                    (Kind::Simple(Simple::DescriptiveLinkKey), 3)
                }
                (Ns::Messages, b"MessageXml") if state < 4 => (Kind::MessageXml, 4),
                (Ns::Messages, b"Notification") if state < 5 => (Kind::Notification, 5),
                _ => return Err(self.unexpected(name, at)),
            },
            Kind::MessageXml | Kind::Foreign => (self.lax_kind(ns, local, name, at)?, state),
            Kind::Notification => match (ns, state, local) {
                (Ns::Types, 0, b"SubscriptionId") => (Kind::Simple(Simple::SubscriptionId), 1),
                (Ns::Types, 1, b"PreviousWatermark") => (Kind::Simple(Simple::PreviousWatermark), 2),
                (Ns::Types, 1 | 2, b"MoreEvents") => (Kind::Simple(Simple::MoreEvents), 3),
                (Ns::Types, 1.., local) => match event_kind(local) {
                    Some(kind) => {
                        self.summary.events += 1;
                        let max = self.limits.max_events;
                        if self.summary.events > max {
                            return Err(reject(
                                RejectionKind::LimitExceeded,
                                at,
                                format!("more than {max} events"),
                            ));
                        }
                        (Kind::Event(kind), 4)
                    }
                    None => return Err(self.unexpected(name, at)),
                },
                _ => return Err(self.unexpected(name, at)),
            },
            Kind::Event(event) => {
                if ns != Ns::Types {
                    return Err(self.unexpected(name, at));
                }
                Self::event_child(event, state, local).ok_or_else(|| self.unexpected(name, at))?
            }
            Kind::Simple(_) | Kind::Id(_) | Kind::RequestServerVersion => {
                return Err(structure(
                    at,
                    format!(
                        "element {} inside {}, which may only hold character data",
                        quote(self.tokens.bytes(name)),
                        self.name_of(parent)
                    ),
                ))
            }
        };
        Ok(kind_and_state)
    }

    /// The content models of the event types, as states: 0 start, 1 after Watermark, 2 after
    /// TimeStamp, 3 after ItemId/FolderId, 4 after ParentFolderId, 5 after OldItemId/OldFolderId,
    /// 6 complete (after OldParentFolderId or UnreadCount).
    fn event_child(event: EventKind, state: u8, local: &[u8]) -> Option<(Kind, u8)> {
        let moved_or_copied = event.has_old_ids();
        Some(match (state, local) {
            (0, b"Watermark") => (Kind::Simple(Simple::Watermark), 1),
            _ if event == EventKind::Status => return None,
            (0 | 1, b"TimeStamp") => (Kind::Simple(Simple::TimeStamp), 2),
            (2, b"ItemId") => (Kind::Id(IdRole::Object(ObjectKind::Item)), 3),
            (2, b"FolderId") => (Kind::Id(IdRole::Object(ObjectKind::Folder)), 3),
            (3, b"ParentFolderId") => (Kind::Id(IdRole::Parent), 4),
            (4, b"UnreadCount") if event == EventKind::Modified => {
                (Kind::Simple(Simple::UnreadCount), 6)
            }
            (4, b"OldItemId") if moved_or_copied => {
                (Kind::Id(IdRole::OldObject(ObjectKind::Item)), 5)
            }
            (4, b"OldFolderId") if moved_or_copied => {
                (Kind::Id(IdRole::OldObject(ObjectKind::Folder)), 5)
            }
            (5, b"OldParentFolderId") => (Kind::Id(IdRole::OldParent), 6),
            _ => return None,
        })
    }

    /// An element admitted by a lax wildcard: declared global elements are validated, other EWS
    /// and SOAP elements are refused as unsupported, anything else is accepted with its subtree.
    fn lax_kind(&self, ns: Ns, local: &[u8], name: Span, at: usize) -> Result<Kind, Rejection> {
        match (ns, local) {
            (Ns::Types, b"RequestServerVersion") => Ok(Kind::RequestServerVersion),
            (Ns::Types, b"Value") => Ok(Kind::Simple(Simple::Value {
                subscription_id: false,
            })),
            (Ns::Messages | Ns::Types | Ns::Soap, _) => Err(unsupported(
                at,
                format!(
                    "EWS or SOAP element {} inside a wildcard (pushgate validates only t:RequestServerVersion and t:Value there)",
                    quote(self.tokens.bytes(name))
                ),
            )),
            _ => Ok(Kind::Foreign),
        }
    }

    fn start(&mut self, ns: Ns, local: &[u8], name: Span, at: usize) -> Result<(), Rejection> {
        let parent_kind = self.current().kind;
        let (mut kind, parent_state) = self.child_kind(ns, local, name, at)?;
        if let Some(parent) = self.frames.last_mut() {
            parent.state = parent_state;
        }
        let response_class = self.check_attributes(&mut kind, parent_kind, name, at)?;
        self.frames.push(Frame {
            kind,
            state: 0,
            name,
            response_class,
        });
        match kind {
            Kind::ResponseMessage => {
                if let Some(class) = response_class {
                    self.model.message_start(class);
                }
            }
            Kind::Notification => self.model.notification_start(),
            Kind::Event(event) => self.model.event_start(event),
            Kind::Simple(_) => {
                self.value = Value::None;
                self.value_nonempty = false;
            }
            _ => {}
        }
        Ok(())
    }

    /// The normalised value of an attribute, borrowed from the body when it needs no decoding.
    fn attribute_value(&mut self, raw: Span, plain: bool) -> &[u8] {
        if plain {
            return self.tokens.bytes(raw);
        }
        self.buf.clear();
        for b in AttrValueBytes::new(self.tokens.bytes(raw)) {
            self.buf.push(b);
        }
        self.buf.as_slice()
    }

    /// Checks the attributes of a new element of `kind`; returns its ResponseClass for a
    /// response message, and marks a `t:Value` that carries the subscription id.
    fn check_attributes(
        &mut self,
        kind: &mut Kind,
        parent_kind: Kind,
        element: Span,
        at: usize,
    ) -> Result<Option<ResponseClass>, Rejection> {
        let count = self.tokens.attributes().len();
        // An xsi:type could change the element's type, so nothing else about it is judged first.
        for index in 0..count {
            let attr = self.tokens.attributes()[index];
            if !attr.is_namespace_declaration && attr.ns == Ns::Xsi {
                return Err(unsupported(
                    attr.name.start,
                    format!(
                        "xsi attribute {} on {}",
                        quote(self.tokens.bytes(attr.name)),
                        quote(self.tokens.bytes(element))
                    ),
                ));
            }
        }
        let mut class = None;
        let mut required_seen = false;
        for index in 0..count {
            let attr = self.tokens.attributes()[index];
            if attr.is_namespace_declaration {
                continue;
            }
            let local = self.tokens.bytes(Span {
                start: attr.local_start,
                end: attr.name.end,
            });
            let allowed = match *kind {
                Kind::Envelope | Kind::Header | Kind::Body => {
                    !matches!(attr.ns, Ns::None | Ns::Soap)
                }
                Kind::Foreign => true,
                Kind::ResponseMessage => attr.ns == Ns::None && local == b"ResponseClass",
                Kind::Id(_) => attr.ns == Ns::None && (local == b"Id" || local == b"ChangeKey"),
                Kind::RequestServerVersion => attr.ns == Ns::None && local == b"Version",
                Kind::Simple(Simple::Value { .. }) => attr.ns == Ns::None && local == b"Name",
                _ => false,
            };
            if !allowed {
                return Err(structure(
                    attr.name.start,
                    format!(
                        "attribute {} is not allowed on {}",
                        quote(self.tokens.bytes(attr.name)),
                        quote(self.tokens.bytes(element))
                    ),
                ));
            }
            let is_xml_lang = attr.ns == Ns::Xml && local == b"lang";
            let value_at = attr.value.start;
            match *kind {
                Kind::Envelope | Kind::Header | Kind::Body | Kind::Foreign
                    if is_xml_lang
                        && !datatypes::is_language(
                            self.attribute_value(attr.value, attr.plain),
                        ) =>
                {
                    return Err(invalid_value(value_at, "xml:lang is not a language tag"));
                }
                Kind::ResponseMessage => {
                    required_seen = true;
                    class = Some(match self.attribute_value(attr.value, attr.plain) {
                        b"Success" => ResponseClass::Success,
                        b"Warning" => ResponseClass::Warning,
                        b"Error" => ResponseClass::Error,
                        other => {
                            return Err(invalid_value(
                                value_at,
                                format!(
                                    "ResponseClass {} is not Success, Warning or Error",
                                    quote(other)
                                ),
                            ))
                        }
                    });
                }
                Kind::Id(_) => required_seen |= local == b"Id",
                Kind::RequestServerVersion => {
                    required_seen = true;
                    let value = self.attribute_value(attr.value, attr.plain);
                    if !vocabulary::contains(&vocabulary::EXCHANGE_VERSIONS, value) {
                        return Err(invalid_value(
                            value_at,
                            format!(
                                "Version {} is not an ExchangeVersionType value",
                                quote(value)
                            ),
                        ));
                    }
                }
                Kind::Simple(Simple::Value { .. }) => {
                    required_seen = true;
                    let is_subscription_id = parent_kind == Kind::MessageXml
                        && self.attribute_value(attr.value, attr.plain) == b"SubscriptionId";
                    *kind = Kind::Simple(Simple::Value {
                        subscription_id: is_subscription_id,
                    });
                }
                _ => {}
            }
        }
        let required = match *kind {
            Kind::ResponseMessage => Some("ResponseClass"),
            Kind::Id(_) => Some("Id"),
            Kind::RequestServerVersion => Some("Version"),
            Kind::Simple(Simple::Value { .. }) => Some("Name"),
            _ => None,
        };
        if let Some(required) = required.filter(|_| !required_seen) {
            return Err(structure(
                at,
                format!(
                    "{} lacks its required attribute {required}",
                    quote(self.tokens.bytes(element))
                ),
            ));
        }
        if let (Kind::Id(role), true) = (*kind, M::BUILDS) {
            self.emit_object_id(role);
        }
        Ok(class)
    }

    fn emit_object_id(&mut self, role: IdRole) {
        let mut id = String::new();
        let mut change_key = None;
        for attr in self.tokens.attributes() {
            if attr.is_namespace_declaration || attr.ns != Ns::None {
                continue;
            }
            let raw = self.tokens.bytes(attr.value);
            let value = if attr.plain {
                text(raw)
            } else {
                text(&AttrValueBytes::new(raw).collect::<Vec<u8>>())
            };
            match self.tokens.bytes(attr.name) {
                b"Id" => id = value,
                b"ChangeKey" => change_key = Some(value),
                _ => {}
            }
        }
        self.model.object_id(role, id, change_key);
    }

    fn needs_value(simple: Simple) -> bool {
        match simple {
            Simple::ResponseCode
            | Simple::DescriptiveLinkKey
            | Simple::MoreEvents
            | Simple::TimeStamp
            | Simple::UnreadCount => true,
            Simple::MessageText
            | Simple::SubscriptionId
            | Simple::PreviousWatermark
            | Simple::Watermark => M::BUILDS,
            Simple::Value { subscription_id } => M::BUILDS && subscription_id,
        }
    }

    /// Moves a borrowed value into the buffer, so more pieces can follow.
    fn buffer_value(&mut self) {
        match self.value {
            Value::Buffered => {}
            Value::None => {
                self.buf.clear();
            }
            Value::Slice(start, end) => {
                self.buf.clear();
                self.buf.extend_from_slice(&self.tokens.body()[start..end]);
            }
        }
        self.value = Value::Buffered;
    }

    fn add_character_data(&mut self, simple: Simple, raw: &[u8], has_cr: bool, at: usize) {
        if raw.is_empty() {
            return;
        }
        self.value_nonempty = true;
        if !Self::needs_value(simple) {
            return;
        }
        if matches!(self.value, Value::None) && !has_cr {
            self.value = Value::Slice(at, at + raw.len());
            return;
        }
        self.buffer_value();
        push_normalised_text(raw, &mut self.buf);
    }

    fn text(&mut self, raw: &[u8], has_cr: bool, at: usize) -> Result<(), Rejection> {
        let frame = self.current();
        match frame.kind.content_type() {
            ContentType::ElementOnly => {
                if let Some(offset) = raw.iter().position(|&b| !datatypes::is_xml_space(b)) {
                    return Err(structure(
                        at + offset,
                        format!(
                            "character data inside {}, which may only hold elements",
                            self.name_of(frame)
                        ),
                    ));
                }
            }
            ContentType::Empty => {
                return Err(structure(
                    at,
                    format!(
                        "character data inside {}, which must be empty",
                        self.name_of(frame)
                    ),
                ))
            }
            ContentType::Simple => {
                if let Kind::Simple(simple) = frame.kind {
                    self.add_character_data(simple, raw, has_cr, at);
                }
            }
            ContentType::Any => {}
        }
        Ok(())
    }

    fn reference(&mut self, ch: char, at: usize) -> Result<(), Rejection> {
        let frame = self.current();
        match frame.kind.content_type() {
            ContentType::ElementOnly => {
                if !matches!(ch, ' ' | '\t' | '\n' | '\r') {
                    return Err(structure(
                        at,
                        format!(
                            "character data inside {}, which may only hold elements",
                            self.name_of(frame)
                        ),
                    ));
                }
            }
            ContentType::Empty => {
                return Err(structure(
                    at,
                    format!(
                        "character data inside {}, which must be empty",
                        self.name_of(frame)
                    ),
                ))
            }
            ContentType::Simple => {
                if let Kind::Simple(simple) = frame.kind {
                    self.value_nonempty = true;
                    if Self::needs_value(simple) {
                        self.buffer_value();
                        let mut utf8 = [0; 4];
                        self.buf
                            .extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                    }
                }
            }
            ContentType::Any => {}
        }
        Ok(())
    }

    fn cdata(&mut self, raw: &[u8], at: usize) -> Result<(), Rejection> {
        let frame = self.current();
        match frame.kind.content_type() {
            ContentType::ElementOnly | ContentType::Empty => Err(structure(
                at,
                format!(
                    "CDATA section inside {}, which may not hold character data",
                    self.name_of(frame)
                ),
            )),
            ContentType::Simple => {
                if let Kind::Simple(simple) = frame.kind {
                    let has_cr = raw.contains(&b'\r');
                    // A CDATA section is a separate piece even when it follows text directly.
                    if !raw.is_empty() && Self::needs_value(simple) {
                        self.buffer_value();
                    }
                    self.add_character_data(simple, raw, has_cr, at);
                }
                Ok(())
            }
            ContentType::Any => Ok(()),
        }
    }

    fn value_bytes(&self) -> &[u8] {
        match self.value {
            Value::None => b"",
            Value::Slice(start, end) => &self.tokens.body()[start..end],
            Value::Buffered => self.buf.as_slice(),
        }
    }

    fn end(&mut self, at: usize) -> Result<(), Rejection> {
        let frame = self.current();
        let incomplete = |walker: &Self, what: &str| {
            structure(at, format!("{} ends early: {what}", walker.name_of(frame)))
        };
        match frame.kind {
            Kind::Envelope if frame.state != 2 => {
                return Err(incomplete(self, "soap:Body missing"))
            }
            Kind::Body if frame.state != 1 => {
                return Err(incomplete(self, "m:SendNotification missing"))
            }
            Kind::SendNotification if frame.state != 1 => {
                return Err(incomplete(self, "m:ResponseMessages missing"))
            }
            Kind::ResponseMessages if frame.state != 1 => {
                return Err(incomplete(self, "no m:SendNotificationResponseMessage"))
            }
            Kind::ResponseMessage => {
                if frame.state != 5 {
                    if frame.response_class != Some(ResponseClass::Error) {
                        return Err(incomplete(self, "m:Notification missing"));
                    }
                    self.summary.error_without_notification = true;
                }
                self.model.message_end();
            }
            Kind::Notification => {
                if frame.state == 0 {
                    return Err(incomplete(self, "t:SubscriptionId missing"));
                }
                if frame.state < 4 {
                    return Err(incomplete(self, "no event"));
                }
                self.model.notification_end();
            }
            Kind::Event(event) => {
                let complete = match event {
                    EventKind::Status => true,
                    EventKind::Moved | EventKind::Copied => frame.state == 6,
                    _ => frame.state == 4 || frame.state == 6,
                };
                if !complete {
                    let missing = match frame.state {
                        0 | 1 => "t:TimeStamp missing",
                        2 => "t:ItemId or t:FolderId missing",
                        3 => "t:ParentFolderId missing",
                        4 => "t:OldItemId or t:OldFolderId missing",
                        _ => "t:OldParentFolderId missing",
                    };
                    return Err(incomplete(self, missing));
                }
                self.model.event_end();
            }
            Kind::Simple(simple) => self.end_simple(simple, frame, at)?,
            _ => {}
        }
        self.frames.pop();
        Ok(())
    }

    fn end_simple(&mut self, simple: Simple, frame: Frame, at: usize) -> Result<(), Rejection> {
        let value = self.value_bytes();
        let bad = |datatype: &str| {
            invalid_value(
                at,
                format!(
                    "{} {} is not a valid {datatype}",
                    self.name_of(frame),
                    quote(value)
                ),
            )
        };
        let valid = match simple {
            Simple::SubscriptionId | Simple::PreviousWatermark | Simple::Watermark => {
                if !self.value_nonempty {
                    return Err(invalid_value(
                        at,
                        format!("{} is empty", self.name_of(frame)),
                    ));
                }
                true
            }
            Simple::MessageText | Simple::Value { .. } => true,
            Simple::ResponseCode => {
                if !vocabulary::contains(&vocabulary::RESPONSE_CODES, value) {
                    return Err(bad("ResponseCodeType value"));
                }
                true
            }
            Simple::DescriptiveLinkKey | Simple::UnreadCount => {
                datatypes::parse_int(value).is_some()
            }
            Simple::MoreEvents => datatypes::parse_boolean(value).is_some(),
            Simple::TimeStamp => datatypes::is_date_time(value),
        };
        if !valid {
            let datatype = match simple {
                Simple::MoreEvents => "xs:boolean",
                Simple::TimeStamp => "xs:dateTime",
                _ => "xs:int",
            };
            return Err(bad(datatype));
        }
        if M::BUILDS {
            let value: &[u8] = match self.value {
                Value::None => b"",
                Value::Slice(start, end) => &self.tokens.body()[start..end],
                Value::Buffered => self.buf.as_slice(),
            };
            self.model.value(simple, value);
        }
        self.value = Value::None;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
