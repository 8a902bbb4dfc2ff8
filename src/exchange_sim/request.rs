//! EWS requests as the simulator reads them: the SOAP envelope, its header (server version,
//! impersonation) and the operation in the body, checked against the official schema's structure
//! for the parts the simulator implements (element order and cardinality, required attributes,
//! enumerations, datatypes). Pure: bytes in, typed request or violation out.
//!
//! Deliberate limits: elements of a calendar item the simulator does not model are checked for
//! their name and order, not their content, and are ignored; header elements in foreign
//! namespaces (WS-Addressing and the like) are ignored, as WCF does without `mustUnderstand`.

use time::OffsetDateTime;

use super::schema::{
    self, boolean, check_attributes, date_time, enumerated, int_in, leaf, required_attribute,
    Checked, Children, Site, Violation,
};
use super::xml::{self, Element, MESSAGES_NS, SOAP_NS, TYPES_NS};

/// `t:ExchangeImpersonation/t:ConnectingSID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectingSid {
    PrincipalName(String),
    Sid(String),
    PrimarySmtpAddress(String),
    SmtpAddress(String),
}

impl ConnectingSid {
    /// The mailbox address it names, when it names one by address (PrincipalName is a UPN, taken
    /// as the address; a SID names nobody the simulator knows).
    pub fn address(&self) -> Option<&str> {
        match self {
            ConnectingSid::PrincipalName(a)
            | ConnectingSid::PrimarySmtpAddress(a)
            | ConnectingSid::SmtpAddress(a) => Some(a),
            ConnectingSid::Sid(_) => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeader {
    pub server_version: Option<String>,
    pub impersonation: Option<ConnectingSid>,
}

/// A folder as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderRef {
    Distinguished {
        name: String,
        /// `t:Mailbox/t:EmailAddress`: delegate access to that mailbox.
        mailbox: Option<String>,
    },
    Id {
        id: String,
    },
    /// `t:AddressListId` (TargetFolderIdType only).
    AddressList,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRef {
    pub id: String,
    pub change_key: Option<String>,
}

/// An entry of `NonEmptyArrayOfBaseItemIdsType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemIdRef {
    Item(ItemRef),
    /// OccurrenceItemId, RecurringMasterItemId, RecurringMasterItemIdRanges: the simulator has
    /// no recurring items.
    Recurrence(String),
}

/// A property set of an extended property, normalised so the two spellings of PublicStrings
/// compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PropertySet {
    /// A distinguished set other than PublicStrings.
    Distinguished(String),
    /// A GUID, upper case. PublicStrings is `00020329-0000-0000-C000-000000000046`.
    Guid(String),
    /// Both DistinguishedPropertySetId and PropertySetId: not a valid combination.
    Conflicting,
    None,
}

pub const PUBLIC_STRINGS_GUID: &str = "00020329-0000-0000-C000-000000000046";

/// `t:ExtendedFieldURI`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtendedFieldUri {
    pub set: PropertySet,
    pub name: Option<String>,
    pub id: Option<i64>,
    pub tag: Option<String>,
    pub property_type: String,
}

impl ExtendedFieldUri {
    /// A valid attribute combination (the schema cannot say it): a set with a name or an id, or
    /// a tag alone.
    pub fn is_valid_combination(&self) -> bool {
        let named = self.name.is_some() as u8 + self.id.is_some() as u8;
        match (&self.set, &self.tag) {
            (PropertySet::Conflicting, _) => false,
            (PropertySet::None, Some(_)) => named == 0,
            (PropertySet::None, None) => false,
            (_, Some(_)) => false,
            (_, None) => named == 1,
        }
    }

    /// The PublicStrings/name/String triple of the reservation property.
    pub fn public_string(name: &str) -> ExtendedFieldUri {
        ExtendedFieldUri {
            set: PropertySet::Guid(PUBLIC_STRINGS_GUID.into()),
            name: Some(name.into()),
            id: None,
            tag: None,
            property_type: "String".into(),
        }
    }
}

/// A `t:Path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyPath {
    /// `t:FieldURI`, e.g. `calendar:Start`.
    Field(String),
    /// `t:IndexedFieldURI` (never set on calendar items here).
    Indexed(String),
    Extended(ExtendedFieldUri),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtendedValue {
    Single(String),
    Multiple(Vec<String>),
}

/// The fields of a `t:CalendarItem` in a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalendarFields {
    pub subject: Option<String>,
    pub start: Option<OffsetDateTime>,
    pub end: Option<OffsetDateTime>,
    pub location: Option<String>,
    pub is_cancelled: Option<bool>,
    pub extended: Vec<(ExtendedFieldUri, ExtendedValue)>,
    /// Names of every child element present (properties the simulator ignores included), in
    /// order: UpdateItem needs their count.
    pub present: Vec<String>,
    /// Read from a `t:Item` rather than a `t:CalendarItem`.
    pub generic_item: bool,
}

/// An item of `m:Items` in CreateItem, or the item inside a SetItemField.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemContent {
    Calendar(CalendarFields),
    /// Another item type (Message, Task...): the simulator stores calendar items only.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemShape {
    pub base_shape: String,
    pub additional: Vec<PropertyPath>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub subscribe_to_all_folders: bool,
    pub folders: Vec<FolderRef>,
    pub event_types: Vec<String>,
    pub watermark: Option<String>,
    pub status_frequency: u32,
    pub url: String,
    pub caller_data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetItemRequest {
    pub shape: ItemShape,
    pub ids: Vec<ItemIdRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateItemRequest {
    pub send_meeting_invitations: Option<String>,
    pub saved_item_folder: Option<FolderRef>,
    pub items: Vec<ItemContent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Set {
        path: PropertyPath,
        item: ItemContent,
    },
    Append {
        path: PropertyPath,
    },
    Delete {
        path: PropertyPath,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemChange {
    pub id: ItemIdRef,
    pub updates: Vec<Update>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateItemRequest {
    pub conflict_resolution: String,
    pub send_meeting_invitations_or_cancellations: Option<String>,
    pub saved_item_folder: Option<FolderRef>,
    pub changes: Vec<ItemChange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteItemRequest {
    pub delete_type: String,
    pub send_meeting_cancellations: Option<String>,
    pub ids: Vec<ItemIdRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarView {
    pub max_entries: Option<i64>,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindItemRequest {
    pub traversal: String,
    pub shape: ItemShape,
    pub calendar_view: Option<CalendarView>,
    /// A part of FindItem the simulator does not implement (another view, grouping, a
    /// restriction, a sort order, a query string).
    pub unsupported: Option<String>,
    pub parents: Vec<FolderRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetFolderRequest {
    pub base_shape: String,
    pub additional: Vec<PropertyPath>,
    pub folders: Vec<FolderRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Subscribe(SubscribeRequest),
    GetItem(GetItemRequest),
    CreateItem(CreateItemRequest),
    UpdateItem(UpdateItemRequest),
    DeleteItem(DeleteItemRequest),
    FindItem(FindItemRequest),
    GetFolder(GetFolderRequest),
    /// A pull or streaming subscription.
    UnsupportedSubscription(String),
    /// An EWS operation the simulator does not implement.
    Unsupported(String),
}

impl Operation {
    pub fn name(&self) -> &str {
        match self {
            Operation::Subscribe(_) | Operation::UnsupportedSubscription(_) => "Subscribe",
            Operation::GetItem(_) => "GetItem",
            Operation::CreateItem(_) => "CreateItem",
            Operation::UpdateItem(_) => "UpdateItem",
            Operation::DeleteItem(_) => "DeleteItem",
            Operation::FindItem(_) => "FindItem",
            Operation::GetFolder(_) => "GetFolder",
            Operation::Unsupported(name) => name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub header: RequestHeader,
    pub operation: Operation,
}

/// Why a request could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not well-formed, or not valid against the schema: Exchange's `ErrorSchemaValidation`.
    Schema { message: String, offset: usize },
}

impl From<Violation> for RequestError {
    fn from(v: Violation) -> Self {
        RequestError::Schema {
            message: v.message,
            offset: v.offset,
        }
    }
}

/// The name of the body's operation element, read leniently, so answers that need the operation
/// name (in-body throttling) can be written before the full check.
pub fn operation_name(root: &Element) -> Option<&str> {
    let body = root.child(SOAP_NS, "Body")?;
    let first = body.children.first()?;
    (first.ns == MESSAGES_NS).then_some(first.name.as_str())
}

/// Reads and checks a whole request.
pub fn parse_request(document: &[u8]) -> Result<Request, RequestError> {
    let root = xml::parse(document).map_err(|e| RequestError::Schema {
        message: e.message,
        offset: e.offset,
    })?;
    Ok(read_envelope(&root)?)
}

pub fn read_envelope(root: &Element) -> Checked<Request> {
    if !root.is(SOAP_NS, "Envelope") {
        return Err(Violation::at(
            root,
            format!(
                "The root element must be 'Envelope' in namespace '{SOAP_NS}', not '{}' in namespace '{}'.",
                root.name, root.ns
            ),
        ));
    }
    let mut children = Children::of(root)?;
    let header = match children.optional(SOAP_NS, "Header") {
        Some(header) => read_header(header)?,
        None => RequestHeader::default(),
    };
    let body = children.required(SOAP_NS, "Body")?;
    children.finish()?;
    if body.has_text() || body.children.len() != 1 {
        return Err(Violation::at(
            body,
            "The SOAP body must hold exactly one operation element.",
        ));
    }
    let operation = read_operation(&body.children[0])?;
    Ok(Request { header, operation })
}

const HEADER_ELEMENTS: &[&str] = &[
    "RequestServerVersion",
    "ExchangeImpersonation",
    "MailboxCulture",
    "TimeZoneContext",
    "DateTimePrecision",
    "ManagementRole",
    "SerializedSecurityContext",
];

fn read_header(header: &Element) -> Checked<RequestHeader> {
    Children::of(header)?;
    let mut result = RequestHeader::default();
    let mut seen: Vec<&str> = Vec::new();
    for element in &header.children {
        if element.ns != TYPES_NS && element.ns != MESSAGES_NS {
            continue;
        }
        if element.ns != TYPES_NS || !HEADER_ELEMENTS.contains(&element.name.as_str()) {
            return Err(Violation::at(
                element,
                format!(
                    "The element '{}' in namespace '{}' is not allowed in the SOAP header.",
                    element.name, element.ns
                ),
            ));
        }
        if seen.contains(&element.name.as_str()) {
            return Err(Violation::at(
                element,
                format!("The SOAP header holds '{}' twice.", element.name),
            ));
        }
        seen.push(&element.name);
        match element.name.as_str() {
            "RequestServerVersion" => {
                check_attributes(element, &["Version"], true)?;
                Children::of(element)?.finish()?;
                let version = required_attribute(element, "Version")?;
                let version = enumerated(
                    Site::Attribute(element, "Version"),
                    version,
                    "ExchangeVersionType",
                    schema::EXCHANGE_VERSIONS,
                )?;
                result.server_version = Some(version.to_string());
            }
            "ExchangeImpersonation" => {
                check_attributes(element, &[], true)?;
                let mut children = Children::of(element)?;
                let sid = children.required(TYPES_NS, "ConnectingSID")?;
                children.finish()?;
                check_attributes(sid, &[], false)?;
                let mut inner = Children::of(sid)?;
                let which = inner.required_choice(
                    TYPES_NS,
                    &["PrincipalName", "SID", "PrimarySmtpAddress", "SmtpAddress"],
                )?;
                inner.finish()?;
                check_attributes(which, &[], false)?;
                let value = non_empty(which, leaf(which)?)?.trim().to_string();
                result.impersonation = Some(match which.name.as_str() {
                    "PrincipalName" => ConnectingSid::PrincipalName(value),
                    "SID" => ConnectingSid::Sid(value),
                    "PrimarySmtpAddress" => ConnectingSid::PrimarySmtpAddress(value),
                    _ => ConnectingSid::SmtpAddress(value),
                });
            }
            // Accepted and not interpreted: the simulator answers in UTC, in English.
            _ => {}
        }
    }
    Ok(result)
}

fn non_empty<'v>(element: &Element, value: &'v str) -> Checked<&'v str> {
    if value.is_empty() {
        return Err(Violation::at(
            element,
            format!(
                "The '{}:{}' element is invalid - The value '' is invalid according to its datatype '{TYPES_NS}:NonEmptyStringType' - The actual length is less than the MinLength value.",
                element.ns, element.name
            ),
        ));
    }
    Ok(value)
}

fn read_operation(element: &Element) -> Checked<Operation> {
    if element.ns != MESSAGES_NS {
        return Err(Violation::at(
            element,
            format!(
                "The element '{}' in namespace '{}' is not an EWS operation.",
                element.name, element.ns
            ),
        ));
    }
    Ok(match element.name.as_str() {
        "Subscribe" => read_subscribe(element)?,
        "GetItem" => Operation::GetItem(read_get_item(element)?),
        "CreateItem" => Operation::CreateItem(read_create_item(element)?),
        "UpdateItem" => Operation::UpdateItem(read_update_item(element)?),
        "DeleteItem" => Operation::DeleteItem(read_delete_item(element)?),
        "FindItem" => Operation::FindItem(read_find_item(element)?),
        "GetFolder" => Operation::GetFolder(read_get_folder(element)?),
        other => Operation::Unsupported(other.to_string()),
    })
}

fn read_subscribe(element: &Element) -> Checked<Operation> {
    check_attributes(element, &[], false)?;
    let mut children = Children::of(element)?;
    let request = children.required_choice(
        MESSAGES_NS,
        &[
            "PullSubscriptionRequest",
            "PushSubscriptionRequest",
            "StreamingSubscriptionRequest",
        ],
    )?;
    children.finish()?;
    if request.name != "PushSubscriptionRequest" {
        return Ok(Operation::UnsupportedSubscription(request.name.clone()));
    }
    check_attributes(request, &["SubscribeToAllFolders"], false)?;
    let all = match request.attribute("SubscribeToAllFolders") {
        Some(value) => boolean(Site::Attribute(request, "SubscribeToAllFolders"), value)?,
        None => false,
    };
    let mut children = Children::of(request)?;
    let folders = match children.optional(TYPES_NS, "FolderIds") {
        Some(ids) => read_folder_ids(ids)?,
        None => Vec::new(),
    };
    let event_types = children.required(TYPES_NS, "EventTypes")?;
    let mut types = Vec::new();
    {
        check_attributes(event_types, &[], false)?;
        let mut inner = Children::of(event_types)?;
        for event_type in inner.repeated(TYPES_NS, "EventType", 1)? {
            check_attributes(event_type, &[], false)?;
            let value = enumerated(
                Site::Element(event_type),
                leaf(event_type)?,
                "NotificationEventTypeType",
                schema::EVENT_TYPES,
            )?;
            types.push(value.to_string());
        }
        inner.finish()?;
    }
    let watermark = match children.optional(TYPES_NS, "Watermark") {
        Some(w) => {
            check_attributes(w, &[], false)?;
            Some(non_empty(w, leaf(w)?)?.to_string())
        }
        None => None,
    };
    let frequency = children.required(TYPES_NS, "StatusFrequency")?;
    check_attributes(frequency, &[], false)?;
    let status_frequency = int_in(
        Site::Element(frequency),
        leaf(frequency)?,
        "SubscriptionStatusFrequencyType",
        1,
        1440,
    )?;
    let url = children.required(TYPES_NS, "URL")?;
    check_attributes(url, &[], false)?;
    let url = leaf(url)?.to_string();
    let caller_data = match children.optional(TYPES_NS, "CallerData") {
        Some(c) => {
            check_attributes(c, &[], false)?;
            Some(leaf(c)?.to_string())
        }
        None => None,
    };
    children.finish()?;
    Ok(Operation::Subscribe(SubscribeRequest {
        subscribe_to_all_folders: all,
        folders,
        event_types: types,
        watermark,
        status_frequency: u32::try_from(status_frequency).unwrap_or(1),
        url,
        caller_data,
    }))
}

fn read_folder_ids(element: &Element) -> Checked<Vec<FolderRef>> {
    check_attributes(element, &[], false)?;
    let mut children = Children::of(element)?;
    let ids = children.repeated_choice(TYPES_NS, &["FolderId", "DistinguishedFolderId"], 1)?;
    children.finish()?;
    ids.into_iter().map(read_folder_ref).collect()
}

fn read_target_folder(element: &Element) -> Checked<FolderRef> {
    check_attributes(element, &[], false)?;
    let mut children = Children::of(element)?;
    let id = children.required_choice(
        TYPES_NS,
        &["FolderId", "DistinguishedFolderId", "AddressListId"],
    )?;
    children.finish()?;
    read_folder_ref(id)
}

fn read_folder_ref(element: &Element) -> Checked<FolderRef> {
    match element.name.as_str() {
        "FolderId" => {
            check_attributes(element, &["Id", "ChangeKey"], false)?;
            Children::of(element)?.finish()?;
            Ok(FolderRef::Id {
                id: required_attribute(element, "Id")?.to_string(),
            })
        }
        "DistinguishedFolderId" => {
            check_attributes(element, &["Id", "ChangeKey"], false)?;
            let name = enumerated(
                Site::Attribute(element, "Id"),
                required_attribute(element, "Id")?,
                "DistinguishedFolderIdNameType",
                schema::DISTINGUISHED_FOLDER_NAMES,
            )?
            .to_string();
            let mut children = Children::of(element)?;
            let mailbox = match children.optional(TYPES_NS, "Mailbox") {
                Some(mailbox) => read_mailbox(mailbox)?,
                None => None,
            };
            children.finish()?;
            Ok(FolderRef::Distinguished { name, mailbox })
        }
        _ => {
            check_attributes(element, &["Id"], false)?;
            Ok(FolderRef::AddressList)
        }
    }
}

/// `t:EmailAddressType`: the address when given.
fn read_mailbox(element: &Element) -> Checked<Option<String>> {
    check_attributes(element, &[], false)?;
    let mut children = Children::of(element)?;
    let mut address = None;
    for name in [
        "Name",
        "EmailAddress",
        "RoutingType",
        "MailboxType",
        "ItemId",
        "OriginalDisplayName",
    ] {
        if let Some(child) = children.optional(TYPES_NS, name) {
            if name == "EmailAddress" {
                check_attributes(child, &[], false)?;
                address = Some(non_empty(child, leaf(child)?)?.trim().to_string());
            }
        }
    }
    children.finish()?;
    Ok(address)
}

fn read_item_ids(element: &Element) -> Checked<Vec<ItemIdRef>> {
    check_attributes(element, &[], false)?;
    let mut children = Children::of(element)?;
    let ids = children.repeated_choice(
        TYPES_NS,
        &[
            "ItemId",
            "OccurrenceItemId",
            "RecurringMasterItemId",
            "RecurringMasterItemIdRanges",
        ],
        1,
    )?;
    children.finish()?;
    ids.into_iter().map(read_item_id_ref).collect()
}

fn read_item_id_ref(element: &Element) -> Checked<ItemIdRef> {
    if element.name == "ItemId" {
        Ok(ItemIdRef::Item(read_item_id(element)?))
    } else {
        Ok(ItemIdRef::Recurrence(element.name.clone()))
    }
}

fn read_item_id(element: &Element) -> Checked<ItemRef> {
    check_attributes(element, &["Id", "ChangeKey"], false)?;
    Children::of(element)?.finish()?;
    Ok(ItemRef {
        id: required_attribute(element, "Id")?.to_string(),
        change_key: element.attribute("ChangeKey").map(str::to_string),
    })
}

fn read_path(element: &Element) -> Checked<PropertyPath> {
    match element.name.as_str() {
        "FieldURI" => {
            check_attributes(element, &["FieldURI"], false)?;
            Children::of(element)?.finish()?;
            let uri = required_attribute(element, "FieldURI")?;
            if !schema::is_field_uri(uri) {
                return Err(Violation::at(
                    element,
                    format!(
                        "The 'FieldURI' attribute is invalid - The value '{uri}' is invalid according to its datatype '{TYPES_NS}:UnindexedFieldURIType' - The Enumeration constraint failed."
                    ),
                ));
            }
            Ok(PropertyPath::Field(uri.to_string()))
        }
        "IndexedFieldURI" => {
            check_attributes(element, &["FieldURI", "FieldIndex"], false)?;
            Children::of(element)?.finish()?;
            let uri = required_attribute(element, "FieldURI")?;
            required_attribute(element, "FieldIndex")?;
            Ok(PropertyPath::Indexed(uri.to_string()))
        }
        _ => Ok(PropertyPath::Extended(read_extended_field_uri(element)?)),
    }
}

fn read_extended_field_uri(element: &Element) -> Checked<ExtendedFieldUri> {
    check_attributes(
        element,
        &[
            "DistinguishedPropertySetId",
            "PropertySetId",
            "PropertyTag",
            "PropertyName",
            "PropertyId",
            "PropertyType",
        ],
        false,
    )?;
    Children::of(element)?.finish()?;
    let property_type = enumerated(
        Site::Attribute(element, "PropertyType"),
        required_attribute(element, "PropertyType")?,
        "MapiPropertyTypeType",
        schema::MAPI_PROPERTY_TYPES,
    )?
    .to_string();
    let distinguished = match element.attribute("DistinguishedPropertySetId") {
        Some(value) => Some(enumerated(
            Site::Attribute(element, "DistinguishedPropertySetId"),
            value,
            "DistinguishedPropertySetType",
            schema::DISTINGUISHED_PROPERTY_SETS,
        )?),
        None => None,
    };
    let guid = match element.attribute("PropertySetId") {
        Some(value) if schema::is_guid(value.trim()) => Some(value.trim().to_ascii_uppercase()),
        Some(value) => {
            return Err(Violation::at(
                element,
                format!("The 'PropertySetId' attribute is invalid - The value '{value}' is invalid according to its datatype '{TYPES_NS}:GuidType' - The Pattern constraint failed."),
            ))
        }
        None => None,
    };
    let tag = match element.attribute("PropertyTag") {
        Some(value) if schema::is_property_tag(value) => Some(value.trim().to_ascii_lowercase()),
        Some(value) => {
            return Err(Violation::at(
                element,
                format!("The 'PropertyTag' attribute is invalid - The value '{value}' is invalid according to its datatype '{TYPES_NS}:PropertyTagType'."),
            ))
        }
        None => None,
    };
    let id = match element.attribute("PropertyId") {
        Some(value) => Some(int_in(
            Site::Attribute(element, "PropertyId"),
            value,
            "int",
            i64::from(i32::MIN),
            i64::from(i32::MAX),
        )?),
        None => None,
    };
    let set = match (distinguished, guid) {
        (Some(_), Some(_)) => PropertySet::Conflicting,
        (Some("PublicStrings"), None) => PropertySet::Guid(PUBLIC_STRINGS_GUID.into()),
        (Some(name), None) => PropertySet::Distinguished(name.to_string()),
        (None, Some(guid)) => PropertySet::Guid(guid),
        (None, None) => PropertySet::None,
    };
    Ok(ExtendedFieldUri {
        set,
        name: element.attribute("PropertyName").map(str::to_string),
        id,
        tag,
        property_type,
    })
}

fn read_shape(element: &Element) -> Checked<ItemShape> {
    check_attributes(element, &[], false)?;
    let mut children = Children::of(element)?;
    let base = children.required(TYPES_NS, "BaseShape")?;
    check_attributes(base, &[], false)?;
    let base_shape = enumerated(
        Site::Element(base),
        leaf(base)?,
        "DefaultShapeNamesType",
        schema::BASE_SHAPES,
    )?
    .to_string();
    for name in [
        "IncludeMimeContent",
        "BodyType",
        "UniqueBodyType",
        "NormalizedBodyType",
        "FilterHtmlContent",
        "ConvertHtmlCodePageToUTF8",
        "InlineImageUrlTemplate",
        "BlockExternalImages",
        "AddBlankTargetToLinks",
        "MaximumBodySize",
    ] {
        if let Some(option) = children.optional(TYPES_NS, name) {
            check_attributes(option, &[], false)?;
            let value = leaf(option)?;
            match name {
                "BodyType" | "UniqueBodyType" | "NormalizedBodyType" => {
                    enumerated(
                        Site::Element(option),
                        value,
                        "BodyTypeResponseType",
                        schema::BODY_TYPES,
                    )?;
                }
                "InlineImageUrlTemplate" => {}
                "MaximumBodySize" => {
                    int_in(
                        Site::Element(option),
                        value,
                        "int",
                        i64::from(i32::MIN),
                        i64::from(i32::MAX),
                    )?;
                }
                _ => {
                    boolean(Site::Element(option), value)?;
                }
            }
        }
    }
    let additional = match children.optional(TYPES_NS, "AdditionalProperties") {
        Some(list) => read_paths(list)?,
        None => Vec::new(),
    };
    children.finish()?;
    Ok(ItemShape {
        base_shape,
        additional,
    })
}

fn read_paths(list: &Element) -> Checked<Vec<PropertyPath>> {
    check_attributes(list, &[], false)?;
    let mut children = Children::of(list)?;
    let paths = children.repeated_choice(
        TYPES_NS,
        &["FieldURI", "IndexedFieldURI", "ExtendedFieldURI"],
        1,
    )?;
    children.finish()?;
    paths.into_iter().map(read_path).collect()
}

fn read_get_item(element: &Element) -> Checked<GetItemRequest> {
    check_attributes(element, &[], false)?;
    let mut children = Children::of(element)?;
    let shape = read_shape(children.required(MESSAGES_NS, "ItemShape")?)?;
    let ids = read_item_ids(children.required(MESSAGES_NS, "ItemIds")?)?;
    children.finish()?;
    Ok(GetItemRequest { shape, ids })
}

const ITEM_KINDS: &[&str] = &[
    "Item",
    "Message",
    "SharingMessage",
    "CalendarItem",
    "Contact",
    "DistributionList",
    "MeetingMessage",
    "MeetingRequest",
    "MeetingResponse",
    "MeetingCancellation",
    "Task",
    "PostItem",
    "ReplyToItem",
    "ForwardItem",
    "ReplyAllToItem",
    "AcceptItem",
    "TentativelyAcceptItem",
    "DeclineItem",
    "CancelCalendarItem",
    "RemoveItem",
    "SuppressReadReceipt",
    "PostReplyItem",
    "AcceptSharingInvitation",
    "RoleMember",
    "Network",
    "Person",
];

/// The item kinds SetItemField may hold.
const SET_ITEM_KINDS: &[&str] = &[
    "Item",
    "Message",
    "SharingMessage",
    "CalendarItem",
    "Contact",
    "DistributionList",
    "MeetingMessage",
    "MeetingRequest",
    "MeetingResponse",
    "MeetingCancellation",
    "Task",
    "PostItem",
    "RoleMember",
    "Network",
    "Person",
];

fn read_item_content(element: &Element) -> Checked<ItemContent> {
    // `t:Item` holds the properties every item has; SetItemField may use it for a calendar item.
    let calendar: &[&str] = match element.name.as_str() {
        "CalendarItem" => schema::CALENDAR_ITEM_ELEMENTS,
        "Item" => &[],
        _ => return Ok(ItemContent::Other(element.name.clone())),
    };
    check_attributes(element, &[], false)?;
    let mut children = Children::of(element)?;
    let mut fields = CalendarFields {
        generic_item: element.name == "Item",
        ..CalendarFields::default()
    };
    let order = schema::ITEM_ELEMENTS.iter().chain(calendar.iter());
    for name in order {
        let found = if *name == "ExtendedProperty" {
            children.repeated(TYPES_NS, name, 0)?
        } else {
            children.optional(TYPES_NS, name).into_iter().collect()
        };
        for child in found {
            fields.present.push(child.name.clone());
            read_calendar_field(child, &mut fields)?;
        }
    }
    children.finish()?;
    Ok(ItemContent::Calendar(fields))
}

fn read_calendar_field(child: &Element, fields: &mut CalendarFields) -> Checked<()> {
    match child.name.as_str() {
        "Subject" => {
            check_attributes(child, &[], false)?;
            fields.subject = Some(leaf(child)?.to_string());
        }
        "Location" => {
            check_attributes(child, &[], false)?;
            fields.location = Some(leaf(child)?.to_string());
        }
        "Start" => {
            check_attributes(child, &[], false)?;
            fields.start = Some(date_time(Site::Element(child), leaf(child)?)?);
        }
        "End" => {
            check_attributes(child, &[], false)?;
            fields.end = Some(date_time(Site::Element(child), leaf(child)?)?);
        }
        "IsCancelled" => {
            check_attributes(child, &[], false)?;
            fields.is_cancelled = Some(boolean(Site::Element(child), leaf(child)?)?);
        }
        "ExtendedProperty" => {
            check_attributes(child, &[], false)?;
            let mut inner = Children::of(child)?;
            let uri = read_extended_field_uri(inner.required(TYPES_NS, "ExtendedFieldURI")?)?;
            let value = inner.required_choice(TYPES_NS, &["Value", "Values"])?;
            inner.finish()?;
            check_attributes(value, &[], false)?;
            let value = if value.name == "Value" {
                ExtendedValue::Single(leaf(value)?.to_string())
            } else {
                let mut values = Children::of(value)?;
                let list = values.repeated(TYPES_NS, "Value", 1)?;
                values.finish()?;
                let mut out = Vec::new();
                for v in list {
                    check_attributes(v, &[], false)?;
                    out.push(leaf(v)?.to_string());
                }
                ExtendedValue::Multiple(out)
            };
            fields.extended.push((uri, value));
        }
        // Properties the simulator does not model: order checked above, content not.
        _ => {}
    }
    Ok(())
}

fn read_items(element: &Element, kinds: &'static [&'static str]) -> Checked<Vec<ItemContent>> {
    check_attributes(element, &[], false)?;
    let mut children = Children::of(element)?;
    let items = children.repeated_choice(TYPES_NS, kinds, 1)?;
    children.finish()?;
    items.into_iter().map(read_item_content).collect()
}

fn optional_enum_attribute<'a>(
    element: &'a Element,
    name: &str,
    datatype: &str,
    allowed: &[&str],
) -> Checked<Option<&'a str>> {
    match element.attribute(name) {
        Some(value) => Ok(Some(enumerated(
            Site::Attribute(element, name),
            value,
            datatype,
            allowed,
        )?)),
        None => Ok(None),
    }
}

fn read_create_item(element: &Element) -> Checked<CreateItemRequest> {
    check_attributes(
        element,
        &["MessageDisposition", "SendMeetingInvitations"],
        false,
    )?;
    optional_enum_attribute(
        element,
        "MessageDisposition",
        "MessageDispositionType",
        schema::MESSAGE_DISPOSITIONS,
    )?;
    let send = optional_enum_attribute(
        element,
        "SendMeetingInvitations",
        "CalendarItemCreateOrDeleteOperationType",
        schema::CREATE_OR_DELETE_OPERATIONS,
    )?;
    let mut children = Children::of(element)?;
    let saved = match children.optional(MESSAGES_NS, "SavedItemFolderId") {
        Some(target) => Some(read_target_folder(target)?),
        None => None,
    };
    let items = read_items(children.required(MESSAGES_NS, "Items")?, ITEM_KINDS)?;
    children.finish()?;
    Ok(CreateItemRequest {
        send_meeting_invitations: send.map(str::to_string),
        saved_item_folder: saved,
        items,
    })
}

fn read_update_item(element: &Element) -> Checked<UpdateItemRequest> {
    check_attributes(
        element,
        &[
            "ConflictResolution",
            "MessageDisposition",
            "SendMeetingInvitationsOrCancellations",
            "SuppressReadReceipts",
        ],
        false,
    )?;
    let conflict = enumerated(
        Site::Attribute(element, "ConflictResolution"),
        required_attribute(element, "ConflictResolution")?,
        "ConflictResolutionType",
        schema::CONFLICT_RESOLUTIONS,
    )?
    .to_string();
    optional_enum_attribute(
        element,
        "MessageDisposition",
        "MessageDispositionType",
        schema::MESSAGE_DISPOSITIONS,
    )?;
    let send = optional_enum_attribute(
        element,
        "SendMeetingInvitationsOrCancellations",
        "CalendarItemUpdateOperationType",
        schema::UPDATE_OPERATIONS,
    )?;
    if let Some(value) = element.attribute("SuppressReadReceipts") {
        boolean(Site::Attribute(element, "SuppressReadReceipts"), value)?;
    }
    let mut children = Children::of(element)?;
    let saved = match children.optional(MESSAGES_NS, "SavedItemFolderId") {
        Some(target) => Some(read_target_folder(target)?),
        None => None,
    };
    let list = children.required(MESSAGES_NS, "ItemChanges")?;
    children.finish()?;
    check_attributes(list, &[], false)?;
    let mut list_children = Children::of(list)?;
    let changes = list_children.repeated(TYPES_NS, "ItemChange", 1)?;
    list_children.finish()?;
    let changes = changes
        .into_iter()
        .map(read_item_change)
        .collect::<Checked<Vec<_>>>()?;
    Ok(UpdateItemRequest {
        conflict_resolution: conflict,
        send_meeting_invitations_or_cancellations: send.map(str::to_string),
        saved_item_folder: saved,
        changes,
    })
}

fn read_item_change(change: &Element) -> Checked<ItemChange> {
    check_attributes(change, &[], false)?;
    let mut children = Children::of(change)?;
    let id = children.required_choice(
        TYPES_NS,
        &["ItemId", "OccurrenceItemId", "RecurringMasterItemId"],
    )?;
    let id = read_item_id_ref(id)?;
    let updates = children.required(TYPES_NS, "Updates")?;
    children.optional(TYPES_NS, "CalendarActivityData");
    children.finish()?;
    check_attributes(updates, &[], false)?;
    let mut list = Children::of(updates)?;
    let entries = list.repeated_choice(
        TYPES_NS,
        &["AppendToItemField", "SetItemField", "DeleteItemField"],
        1,
    )?;
    list.finish()?;
    let mut out = Vec::new();
    for entry in entries {
        check_attributes(entry, &[], false)?;
        let mut inner = Children::of(entry)?;
        let path = inner.required_choice(
            TYPES_NS,
            &["FieldURI", "IndexedFieldURI", "ExtendedFieldURI"],
        )?;
        let path = read_path(path)?;
        let update = match entry.name.as_str() {
            "DeleteItemField" => Update::Delete { path },
            "AppendToItemField" => {
                inner.required_choice(TYPES_NS, ITEM_KINDS)?;
                Update::Append { path }
            }
            _ => {
                let item = read_item_content(inner.required_choice(TYPES_NS, SET_ITEM_KINDS)?)?;
                Update::Set { path, item }
            }
        };
        inner.finish()?;
        out.push(update);
    }
    Ok(ItemChange { id, updates: out })
}

fn read_delete_item(element: &Element) -> Checked<DeleteItemRequest> {
    check_attributes(
        element,
        &[
            "DeleteType",
            "SendMeetingCancellations",
            "AffectedTaskOccurrences",
            "SuppressReadReceipts",
        ],
        false,
    )?;
    let delete_type = enumerated(
        Site::Attribute(element, "DeleteType"),
        required_attribute(element, "DeleteType")?,
        "DisposalType",
        schema::DISPOSAL_TYPES,
    )?
    .to_string();
    let send = optional_enum_attribute(
        element,
        "SendMeetingCancellations",
        "CalendarItemCreateOrDeleteOperationType",
        schema::CREATE_OR_DELETE_OPERATIONS,
    )?;
    optional_enum_attribute(
        element,
        "AffectedTaskOccurrences",
        "AffectedTaskOccurrencesType",
        schema::AFFECTED_TASK_OCCURRENCES,
    )?;
    if let Some(value) = element.attribute("SuppressReadReceipts") {
        boolean(Site::Attribute(element, "SuppressReadReceipts"), value)?;
    }
    let mut children = Children::of(element)?;
    let ids = read_item_ids(children.required(MESSAGES_NS, "ItemIds")?)?;
    children.finish()?;
    Ok(DeleteItemRequest {
        delete_type,
        send_meeting_cancellations: send.map(str::to_string),
        ids,
    })
}

fn read_find_item(element: &Element) -> Checked<FindItemRequest> {
    check_attributes(element, &["Traversal"], false)?;
    let traversal = enumerated(
        Site::Attribute(element, "Traversal"),
        required_attribute(element, "Traversal")?,
        "ItemQueryTraversalType",
        schema::ITEM_TRAVERSALS,
    )?
    .to_string();
    let mut children = Children::of(element)?;
    let shape = read_shape(children.required(MESSAGES_NS, "ItemShape")?)?;
    let mut unsupported = None;
    let mut calendar_view = None;
    if let Some(view) = children.optional_choice(
        MESSAGES_NS,
        &[
            "IndexedPageItemView",
            "FractionalPageItemView",
            "SeekToConditionPageItemView",
            "CalendarView",
            "ContactsView",
        ],
    ) {
        if view.name == "CalendarView" {
            calendar_view = Some(read_calendar_view(view)?);
        } else {
            unsupported = Some(view.name.clone());
        }
    }
    let grouping = children.optional_choice(MESSAGES_NS, &["GroupBy", "DistinguishedGroupBy"]);
    let restriction = children.optional(MESSAGES_NS, "Restriction");
    let sort_order = children.optional(MESSAGES_NS, "SortOrder");
    for found in [grouping, restriction, sort_order].into_iter().flatten() {
        unsupported.get_or_insert_with(|| found.name.clone());
    }
    let parents = read_folder_ids(children.required(MESSAGES_NS, "ParentFolderIds")?)?;
    if let Some(query) = children.optional(MESSAGES_NS, "QueryString") {
        unsupported.get_or_insert_with(|| query.name.clone());
    }
    children.finish()?;
    Ok(FindItemRequest {
        traversal,
        shape,
        calendar_view,
        unsupported,
        parents,
    })
}

fn read_calendar_view(view: &Element) -> Checked<CalendarView> {
    check_attributes(view, &["MaxEntriesReturned", "StartDate", "EndDate"], false)?;
    Children::of(view)?.finish()?;
    let max_entries = match view.attribute("MaxEntriesReturned") {
        Some(value) => Some(int_in(
            Site::Attribute(view, "MaxEntriesReturned"),
            value,
            "int",
            i64::from(i32::MIN),
            i64::from(i32::MAX),
        )?),
        None => None,
    };
    let start = date_time(
        Site::Attribute(view, "StartDate"),
        required_attribute(view, "StartDate")?,
    )?;
    let end = date_time(
        Site::Attribute(view, "EndDate"),
        required_attribute(view, "EndDate")?,
    )?;
    Ok(CalendarView {
        max_entries,
        start,
        end,
    })
}

fn read_get_folder(element: &Element) -> Checked<GetFolderRequest> {
    check_attributes(element, &[], false)?;
    let mut children = Children::of(element)?;
    let shape = children.required(MESSAGES_NS, "FolderShape")?;
    let folders = read_folder_ids(children.required(MESSAGES_NS, "FolderIds")?)?;
    children.finish()?;
    check_attributes(shape, &[], false)?;
    let mut shape_children = Children::of(shape)?;
    let base = shape_children.required(TYPES_NS, "BaseShape")?;
    check_attributes(base, &[], false)?;
    let base_shape = enumerated(
        Site::Element(base),
        leaf(base)?,
        "DefaultShapeNamesType",
        schema::BASE_SHAPES,
    )?
    .to_string();
    let additional = match shape_children.optional(TYPES_NS, "AdditionalProperties") {
        Some(list) => read_paths(list)?,
        None => Vec::new(),
    };
    shape_children.finish()?;
    Ok(GetFolderRequest {
        base_shape,
        additional,
        folders,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: &str) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_NS}" xmlns:m="{MESSAGES_NS}" xmlns:t="{TYPES_NS}"><soap:Header><t:RequestServerVersion Version="Exchange2013"/><t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>room1@contoso.com</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"#
        )
        .into_bytes()
    }

    fn shared_example(name: &str) -> Option<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/ews-examples")
            .join(name);
        std::fs::read_to_string(path).ok()
    }

    const SUBSCRIBE: &str = r#"<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="calendar"/></t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType><t:EventType>MovedEvent</t:EventType></t:EventTypes><t:Watermark>AQAAAA==</t:Watermark><t:StatusFrequency>5</t:StatusFrequency><t:URL>https://127.0.0.1:8443/x?y</t:URL></m:PushSubscriptionRequest></m:Subscribe>"#;

    #[test]
    fn subscribe_is_read() {
        let request = parse_request(&envelope(SUBSCRIBE)).unwrap();
        assert_eq!(
            request.header.impersonation,
            Some(ConnectingSid::SmtpAddress("room1@contoso.com".into()))
        );
        assert_eq!(
            request.header.server_version.as_deref(),
            Some("Exchange2013")
        );
        let Operation::Subscribe(s) = request.operation else {
            panic!("not a subscribe")
        };
        assert_eq!(s.status_frequency, 5);
        assert_eq!(s.watermark.as_deref(), Some("AQAAAA=="));
        assert_eq!(s.event_types, vec!["CreatedEvent", "MovedEvent"]);
        assert_eq!(
            s.folders,
            vec![FolderRef::Distinguished {
                name: "calendar".into(),
                mailbox: None
            }]
        );
    }

    fn schema_error(body: &str) -> String {
        match parse_request(&envelope(body)) {
            Err(RequestError::Schema { message, .. }) => message,
            Ok(r) => panic!("accepted: {r:?}"),
        }
    }

    #[test]
    fn schema_violations_are_refused() {
        let m_watermark = SUBSCRIBE.replace(
            "<t:Watermark>AQAAAA==</t:Watermark>",
            "<m:Watermark>AQAAAA==</m:Watermark>",
        );
        let message = schema_error(&m_watermark);
        assert!(message.contains("invalid child element 'Watermark' in namespace 'http://schemas.microsoft.com/exchange/services/2006/messages'"), "{message}");
        let no_frequency = SUBSCRIBE.replace("<t:StatusFrequency>5</t:StatusFrequency>", "");
        assert!(schema_error(&no_frequency).contains("expected"));
        let zero = SUBSCRIBE.replace(">5<", ">0<");
        assert!(schema_error(&zero).contains("SubscriptionStatusFrequencyType"));
        let bad_event = SUBSCRIBE.replace("MovedEvent", "StatusEvent");
        assert!(schema_error(&bad_event).contains("Enumeration"));
        let bad_folder = SUBSCRIBE.replace("calendar", "Calendar");
        assert!(schema_error(&bad_folder).contains("DistinguishedFolderIdNameType"));
        // ExtendedProperty after Start: the order of the schema.
        let create = r#"<m:CreateItem SendMeetingInvitations="SendToNone"><m:Items><t:CalendarItem><t:Subject>x</t:Subject><t:Start>2026-05-06T08:00:00Z</t:Start><t:ExtendedProperty><t:ExtendedFieldURI DistinguishedPropertySetId="PublicStrings" PropertyName="ReservationId" PropertyType="String"/><t:Value>res</t:Value></t:ExtendedProperty></t:CalendarItem></m:Items></m:CreateItem>"#;
        let message = schema_error(create);
        assert!(
            message.contains("invalid child element 'ExtendedProperty'"),
            "{message}"
        );
        let update = r#"<m:UpdateItem SendMeetingInvitationsOrCancellations="SendToNone"><m:ItemChanges><t:ItemChange><t:ItemId Id="x"/><t:Updates><t:DeleteItemField><t:FieldURI FieldURI="calendar:Location"/></t:DeleteItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"#;
        assert!(schema_error(update).contains("ConflictResolution"));
        let delete = r#"<m:DeleteItem><m:ItemIds><t:ItemId Id="x"/></m:ItemIds></m:DeleteItem>"#;
        assert!(schema_error(delete).contains("DeleteType"));
        let get = r#"<m:GetItem><m:ItemIds><t:ItemId Id="x"/></m:ItemIds><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape></m:GetItem>"#;
        assert!(schema_error(get).contains("invalid child element 'ItemIds'"));
        let field = r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="calendar:start"/></t:AdditionalProperties></m:ItemShape><m:ItemIds><t:ItemId Id="x"/></m:ItemIds></m:GetItem>"#;
        assert!(schema_error(field).contains("UnindexedFieldURIType"));
        let no_id = r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId ChangeKey="x"/></m:ItemIds></m:GetItem>"#;
        assert!(schema_error(no_id).contains("required attribute 'Id'"));
        let unknown_attribute = r#"<m:GetItem Foo="1"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="x"/></m:ItemIds></m:GetItem>"#;
        assert!(schema_error(unknown_attribute).contains("not declared"));
        let view = r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:CalendarView StartDate="2026-05-01T00:00:00Z"/><m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>"#;
        assert!(schema_error(view).contains("EndDate"));
    }

    #[test]
    fn the_shared_request_examples_are_read_as_valid_or_not() {
        // The schema-valid examples are accepted, the negative ones refused.
        let valid = [
            "subscribe.xml",
            "getitem.xml",
            "createitem.xml",
            "updateitem.xml",
            "deleteitem.xml",
            "finditem.xml",
        ];
        let invalid = ["neg_mwatermark.xml", "neg_noSF.xml", "neg_order.xml"];
        for name in valid.iter().chain(invalid.iter()) {
            let Some(text) = shared_example(name) else {
                return super::super::missing_dependency(&format!(
                    "../shared/ews-examples/{name} not present"
                ));
            };
            let result = parse_request(&envelope(&text));
            assert_eq!(result.is_ok(), valid.contains(name), "{name}: {result:?}");
        }
    }

    #[test]
    fn extended_field_uri_combinations() {
        let uri = ExtendedFieldUri::public_string("ReservationId");
        assert!(uri.is_valid_combination());
        let tag_only = ExtendedFieldUri {
            set: PropertySet::None,
            name: None,
            id: None,
            tag: Some("0x3fa4".into()),
            property_type: "String".into(),
        };
        assert!(tag_only.is_valid_combination());
        let nothing = ExtendedFieldUri {
            tag: None,
            ..tag_only.clone()
        };
        assert!(!nothing.is_valid_combination());
        let both = ExtendedFieldUri { id: Some(1), ..uri };
        assert!(!both.is_valid_combination());
    }
}
