//! Why the validator refuses a body: the kind (one metric label each) and a short detail. Its own
//! module so that the tokenizer and the schema walk both use it without depending on each other.

/// Why a body was refused. Each kind is one metric label ([`Rejection::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// Not well-formed XML 1.0: syntax, encoding errors, characters XML forbids, undeclared
    /// entities. `xmllint` refuses these too.
    NotWellFormed,
    /// A Namespaces-in-XML error: undeclared prefix, a name that is not a QName, `xmlns:p=""`,
    /// misuse of the `xml`/`xmlns` prefixes, one attribute twice under two prefixes. libxml2
    /// reports these but recovers and may still validate the document, so this is a deviation.
    NamespaceError,
    /// A declared encoding other than UTF-8, a UTF-16/32 body, or an XML version other than 1.0.
    UnsupportedDeclaration,
    /// A DOCTYPE (so no entity is ever declared or expanded) or a processing instruction.
    ForbiddenMarkup,
    /// One of the configured bounds (`[validator]`): depth, name, attribute or text size,
    /// attribute count, events, response messages.
    LimitExceeded,
    /// Content the schema might accept that pushgate does not validate: EWS or SOAP elements
    /// inside the header or `m:MessageXml` wildcards, other response message types, `xsi:*`
    /// attributes.
    UnsupportedExtension,
    /// An element or attribute where the schema allows none, or a required one missing, or
    /// character data where only elements may be.
    SchemaStructure,
    /// A value outside its datatype: enumerations, `xs:dateTime`, `xs:int`, `xs:boolean`,
    /// non-empty strings, `xs:language`.
    SchemaValue,
}

impl RejectionKind {
    pub const ALL: [RejectionKind; 8] = [
        RejectionKind::NotWellFormed,
        RejectionKind::NamespaceError,
        RejectionKind::UnsupportedDeclaration,
        RejectionKind::ForbiddenMarkup,
        RejectionKind::LimitExceeded,
        RejectionKind::UnsupportedExtension,
        RejectionKind::SchemaStructure,
        RejectionKind::SchemaValue,
    ];

    /// The stable metric label.
    pub fn reason(self) -> &'static str {
        match self {
            RejectionKind::NotWellFormed => "xml_not_well_formed",
            RejectionKind::NamespaceError => "xml_namespace_error",
            RejectionKind::UnsupportedDeclaration => "xml_unsupported_declaration",
            RejectionKind::ForbiddenMarkup => "xml_forbidden_markup",
            RejectionKind::LimitExceeded => "limit_exceeded",
            RejectionKind::UnsupportedExtension => "schema_unsupported_extension",
            RejectionKind::SchemaStructure => "schema_invalid_structure",
            RejectionKind::SchemaValue => "schema_invalid_value",
        }
    }

    /// True for the rules that are stricter than `xmllint --schema`.
    pub fn is_xsd_deviation(self) -> bool {
        !matches!(
            self,
            RejectionKind::NotWellFormed
                | RejectionKind::SchemaStructure
                | RejectionKind::SchemaValue
        )
    }
}

/// A refused body: the kind (for metrics) and a short, single-line detail with the byte offset.
/// The detail quotes at most 40 bytes of the body, escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", .kind.reason(), .detail)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub detail: String,
}

impl Rejection {
    /// Stable snake_case metric label; one per [`RejectionKind`] (see the module documentation).
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }

    /// True when the XSD itself might accept the body and only pushgate's stricter rules refuse
    /// it (DTD, PIs, limits, non-UTF-8, namespace errors libxml2 recovers from, unsupported
    /// extensions, `xsi:*`).
    pub fn is_xsd_deviation(&self) -> bool {
        self.kind.is_xsd_deviation()
    }
}
