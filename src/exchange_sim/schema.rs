//! What the simulator checks of a request's structure, the way Exchange's schema validation does:
//! a cursor over an element's children that enforces an XSD sequence (order, cardinality,
//! no text in element-only content), attribute and value checks, and the enumerations of the
//! official schema that the checked requests use. Violations are worded like .NET's validator,
//! which is what Exchange puts in its `ErrorSchemaValidation` faults.

use time::OffsetDateTime;

use super::xml::{Element, SOAP_NS, TYPES_NS};

/// A schema violation at a position in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub message: String,
    pub offset: usize,
}

impl Violation {
    pub fn at(element: &Element, message: impl Into<String>) -> Violation {
        Violation {
            message: message.into(),
            offset: element.offset,
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Checked<T> = Result<T, Violation>;

/// Walks an element's children through an XSD sequence, in order.
pub struct Children<'a> {
    parent: &'a Element,
    position: usize,
    /// What could have come at the current position (for the violation message).
    expected: Vec<(&'static str, &'static str)>,
}

impl<'a> Children<'a> {
    /// Element-only content: text other than whitespace is a violation.
    pub fn of(parent: &'a Element) -> Checked<Children<'a>> {
        if parent.has_text() {
            return Err(Violation::at(
                parent,
                format!(
                    "The element '{}' in namespace '{}' cannot contain text.",
                    parent.name, parent.ns
                ),
            ));
        }
        Ok(Children {
            parent,
            position: 0,
            expected: Vec::new(),
        })
    }

    fn peek(&self) -> Option<&'a Element> {
        self.parent.children.get(self.position)
    }

    fn take(&mut self) -> Option<&'a Element> {
        let element = self.peek()?;
        self.position += 1;
        self.expected.clear();
        Some(element)
    }

    /// The next child if it is `ns:name` (minOccurs 0).
    pub fn optional(&mut self, ns: &'static str, name: &'static str) -> Option<&'a Element> {
        if self.peek().is_some_and(|c| c.is(ns, name)) {
            return self.take();
        }
        self.expected.push((ns, name));
        None
    }

    /// The next child, which must be `ns:name`.
    pub fn required(&mut self, ns: &'static str, name: &'static str) -> Checked<&'a Element> {
        match self.optional(ns, name) {
            Some(element) => Ok(element),
            None => Err(self.unexpected()),
        }
    }

    /// The next child if it is one of `names` (an optional choice).
    pub fn optional_choice(
        &mut self,
        ns: &'static str,
        names: &'static [&'static str],
    ) -> Option<&'a Element> {
        if let Some(child) = self.peek() {
            if child.ns == ns && names.contains(&child.name.as_str()) {
                return self.take();
            }
        }
        self.expected.extend(names.iter().map(|&n| (ns, n)));
        None
    }

    /// The next child, which must be one of `names` (a required choice).
    pub fn required_choice(
        &mut self,
        ns: &'static str,
        names: &'static [&'static str],
    ) -> Checked<&'a Element> {
        match self.optional_choice(ns, names) {
            Some(element) => Ok(element),
            None => Err(self.unexpected()),
        }
    }

    /// `min` or more of `ns:name`.
    pub fn repeated(
        &mut self,
        ns: &'static str,
        name: &'static str,
        min: usize,
    ) -> Checked<Vec<&'a Element>> {
        let mut found = Vec::new();
        while let Some(element) = self.optional(ns, name) {
            found.push(element);
        }
        if found.len() < min {
            return Err(self.unexpected());
        }
        Ok(found)
    }

    /// `min` or more elements out of `names`, in any mix.
    pub fn repeated_choice(
        &mut self,
        ns: &'static str,
        names: &'static [&'static str],
        min: usize,
    ) -> Checked<Vec<&'a Element>> {
        let mut found = Vec::new();
        while let Some(element) = self.optional_choice(ns, names) {
            found.push(element);
        }
        if found.len() < min {
            return Err(self.unexpected());
        }
        Ok(found)
    }

    /// No children may remain.
    pub fn finish(self) -> Checked<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.unexpected()),
        }
    }

    fn expected_list(&self) -> String {
        let mut by_ns: Vec<(&str, Vec<&str>)> = Vec::new();
        for (ns, name) in &self.expected {
            match by_ns.iter_mut().find(|(n, _)| n == ns) {
                Some((_, names)) => {
                    if !names.contains(name) {
                        names.push(name)
                    }
                }
                None => by_ns.push((ns, vec![name])),
            }
        }
        by_ns
            .iter()
            .map(|(ns, names)| format!("'{}' in namespace '{}'", names.join(", "), ns))
            .collect::<Vec<_>>()
            .join(" as well as ")
    }

    fn unexpected(&self) -> Violation {
        let parent = self.parent;
        let expected = if self.expected.is_empty() {
            String::new()
        } else {
            format!(
                " List of possible elements expected: {}.",
                self.expected_list()
            )
        };
        match self.peek() {
            Some(child) => Violation::at(
                child,
                format!(
                    "The element '{}' in namespace '{}' has invalid child element '{}' in namespace '{}'.{}",
                    parent.name, parent.ns, child.name, child.ns, expected
                ),
            ),
            None => Violation::at(
                parent,
                format!(
                    "The element '{}' in namespace '{}' has incomplete content.{}",
                    parent.name, parent.ns, expected
                ),
            ),
        }
    }
}

/// Checks an element against an ordered list of allowed child names (all optional, each at most
/// once except `repeatable`), as an XSD sequence of optional elements is. Returns the children.
pub fn ordered_optional_children<'a>(
    parent: &'a Element,
    ns: &'static str,
    order: &'static [&'static str],
    repeatable: &'static [&'static str],
) -> Checked<Vec<&'a Element>> {
    let mut children = Children::of(parent)?;
    let mut found = Vec::new();
    for name in order {
        if repeatable.contains(name) {
            found.extend(children.repeated(ns, name, 0)?);
        } else if let Some(element) = children.optional(ns, name) {
            found.push(element);
        }
    }
    children.finish()?;
    Ok(found)
}

/// Attributes: only `allowed` unqualified ones; qualified ones only in the SOAP namespace when
/// `soap_attributes` (the header elements' `xs:anyAttribute namespace=soap`).
pub fn check_attributes(element: &Element, allowed: &[&str], soap_attributes: bool) -> Checked<()> {
    for attribute in &element.attributes {
        let ok = if attribute.ns.is_empty() {
            allowed.contains(&attribute.name.as_str())
        } else {
            soap_attributes && attribute.ns == SOAP_NS
        };
        if !ok {
            let name = if attribute.ns.is_empty() {
                attribute.name.clone()
            } else {
                format!("{}:{}", attribute.ns, attribute.name)
            };
            return Err(Violation::at(
                element,
                format!("The '{name}' attribute is not declared."),
            ));
        }
    }
    Ok(())
}

pub fn required_attribute<'a>(element: &'a Element, name: &str) -> Checked<&'a str> {
    element.attribute(name).ok_or_else(|| {
        Violation::at(
            element,
            format!("The required attribute '{name}' is missing."),
        )
    })
}

/// An element with simple content: no child elements.
pub fn leaf(element: &Element) -> Checked<&str> {
    if let Some(child) = element.children.first() {
        return Err(Violation::at(
            child,
            format!(
                "The element '{}' in namespace '{}' cannot contain child element '{}' because the parent element's content model is text only.",
                element.name, element.ns, child.name
            ),
        ));
    }
    Ok(&element.text)
}

/// Where a value sits, for the message.
pub enum Site<'a> {
    Attribute(&'a Element, &'a str),
    Element(&'a Element),
}

impl Site<'_> {
    fn invalid(&self, value: &str, datatype: &str, constraint: &str) -> Violation {
        let (element, what) = match self {
            Site::Attribute(element, name) => (*element, format!("The '{name}' attribute")),
            Site::Element(element) => (
                *element,
                format!("The '{}:{}' element", element.ns, element.name),
            ),
        };
        Violation::at(
            element,
            format!(
                "{what} is invalid - The value '{value}' is invalid according to its datatype '{datatype}'{constraint}."
            ),
        )
    }
}

fn types_datatype(name: &str) -> String {
    format!("{TYPES_NS}:{name}")
}

/// A value of an enumerated simple type (whitespace collapsed, as xs:string restrictions in the
/// EWS schema are token-like in practice).
pub fn enumerated<'v>(
    site: Site<'_>,
    value: &'v str,
    datatype: &str,
    allowed: &[&str],
) -> Checked<&'v str> {
    let trimmed = value.trim();
    if allowed.contains(&trimmed) {
        Ok(trimmed)
    } else {
        Err(site.invalid(
            value,
            &types_datatype(datatype),
            " - The Enumeration constraint failed",
        ))
    }
}

pub fn boolean(site: Site<'_>, value: &str) -> Checked<bool> {
    match value.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(site.invalid(value, "http://www.w3.org/2001/XMLSchema:boolean", "")),
    }
}

pub fn int_in(site: Site<'_>, value: &str, datatype: &str, min: i64, max: i64) -> Checked<i64> {
    let parsed: Option<i64> = value.trim().parse::<i32>().ok().map(i64::from);
    match parsed {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(_) => Err(site.invalid(
            value,
            &types_datatype(datatype),
            " - The value is out of range",
        )),
        None => Err(site.invalid(value, "http://www.w3.org/2001/XMLSchema:int", "")),
    }
}

pub fn date_time(site: Site<'_>, value: &str) -> Checked<OffsetDateTime> {
    parse_date_time(value.trim())
        .ok_or_else(|| site.invalid(value, "http://www.w3.org/2001/XMLSchema:dateTime", ""))
}

/// `xs:dateTime`: with `Z` or an offset, or without (taken as UTC: the simulator has no
/// TimeZoneContext; Exchange would use the request's time zone).
pub fn parse_date_time(value: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(parsed) = OffsetDateTime::parse(value, &Rfc3339) {
        return Some(parsed.to_offset(time::UtcOffset::UTC));
    }
    let has_offset = value.ends_with('Z')
        || value
            .rsplit_once('T')
            .is_some_and(|(_, t)| t.contains('+') || t.contains('-'));
    if has_offset {
        return None;
    }
    OffsetDateTime::parse(&format!("{value}Z"), &Rfc3339).ok()
}

/// `2026-05-06T08:00:00Z`, as Exchange writes times.
pub fn format_date_time(value: OffsetDateTime) -> String {
    let utc = value.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    )
}

pub fn is_guid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub fn is_property_tag(value: &str) -> bool {
    let value = value.trim();
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        return (1..=4).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    value.parse::<u16>().is_ok()
}

/// `t:FieldURI/@FieldURI`: checked against the schema's enumeration for the `item:`,
/// `calendar:` and `folder:` properties the simulator deals in; other prefixes of the schema are
/// accepted by their prefix (their properties are never set, so never answered).
pub fn is_field_uri(value: &str) -> bool {
    match value.split_once(':') {
        Some(("item", name)) => ITEM_FIELD_URIS.contains(&name),
        Some(("calendar", name)) => CALENDAR_FIELD_URIS.contains(&name),
        Some(("folder", name)) => FOLDER_FIELD_URIS.contains(&name),
        Some((prefix, name)) => OTHER_FIELD_URI_PREFIXES.contains(&prefix) && !name.is_empty(),
        None => false,
    }
}

pub const EXCHANGE_VERSIONS: &[&str] = &[
    "Exchange2007",
    "Exchange2007_SP1",
    "Exchange2009",
    "Exchange2010",
    "Exchange2010_SP1",
    "Exchange2010_SP2",
    "Exchange2012",
    "Exchange2013",
    "Exchange2013_SP1",
    "Exchange2015",
    "Exchange2016",
    "V2015_10_05",
    "V2016_01_06",
    "V2016_04_13",
    "V2016_07_13",
    "V2016_10_10",
    "V2017_01_07",
    "V2017_04_14",
    "V2017_07_11",
    "V2017_10_09",
    "V2018_01_08",
];
pub const BASE_SHAPES: &[&str] = &["IdOnly", "Default", "AllProperties", "PcxPeopleSearch"];
pub const BODY_TYPES: &[&str] = &["Best", "HTML", "Text"];
pub const DISPOSAL_TYPES: &[&str] = &["HardDelete", "SoftDelete", "MoveToDeletedItems"];
pub const CREATE_OR_DELETE_OPERATIONS: &[&str] =
    &["SendToNone", "SendOnlyToAll", "SendToAllAndSaveCopy"];
pub const UPDATE_OPERATIONS: &[&str] = &[
    "SendToNone",
    "SendOnlyToAll",
    "SendOnlyToChanged",
    "SendToAllAndSaveCopy",
    "SendToChangedAndSaveCopy",
];
pub const CONFLICT_RESOLUTIONS: &[&str] = &["NeverOverwrite", "AutoResolve", "AlwaysOverwrite"];
pub const MESSAGE_DISPOSITIONS: &[&str] = &["SaveOnly", "SendOnly", "SendAndSaveCopy"];
pub const AFFECTED_TASK_OCCURRENCES: &[&str] = &["AllOccurrences", "SpecifiedOccurrenceOnly"];
pub const ITEM_TRAVERSALS: &[&str] = &["Shallow", "SoftDeleted", "Associated"];
pub const EVENT_TYPES: &[&str] = &[
    "CopiedEvent",
    "CreatedEvent",
    "DeletedEvent",
    "ModifiedEvent",
    "MovedEvent",
    "NewMailEvent",
    "FreeBusyChangedEvent",
];
pub const DISTINGUISHED_PROPERTY_SETS: &[&str] = &[
    "Meeting",
    "Appointment",
    "Common",
    "PublicStrings",
    "Address",
    "InternetHeaders",
    "CalendarAssistant",
    "UnifiedMessaging",
    "Task",
    "Sharing",
];
pub const MAPI_PROPERTY_TYPES: &[&str] = &[
    "ApplicationTime",
    "ApplicationTimeArray",
    "Binary",
    "BinaryArray",
    "Boolean",
    "CLSID",
    "CLSIDArray",
    "Currency",
    "CurrencyArray",
    "Double",
    "DoubleArray",
    "Error",
    "Float",
    "FloatArray",
    "Integer",
    "IntegerArray",
    "Long",
    "LongArray",
    "Null",
    "Object",
    "ObjectArray",
    "Short",
    "ShortArray",
    "SystemTime",
    "SystemTimeArray",
    "String",
    "StringArray",
];
pub const DISTINGUISHED_FOLDER_NAMES: &[&str] = &[
    "calendar",
    "contacts",
    "deleteditems",
    "drafts",
    "inbox",
    "journal",
    "notes",
    "outbox",
    "sentitems",
    "tasks",
    "msgfolderroot",
    "publicfoldersroot",
    "root",
    "junkemail",
    "searchfolders",
    "voicemail",
    "recoverableitemsroot",
    "recoverableitemsdeletions",
    "recoverableitemsversions",
    "recoverableitemspurges",
    "recoverableitemsdiscoveryholds",
    "archiveroot",
    "archivemsgfolderroot",
    "archivedeleteditems",
    "archiveinbox",
    "archiverecoverableitemsroot",
    "archiverecoverableitemsdeletions",
    "archiverecoverableitemsversions",
    "archiverecoverableitemspurges",
    "archiverecoverableitemsdiscoveryholds",
    "syncissues",
    "conflicts",
    "localfailures",
    "serverfailures",
    "recipientcache",
    "quickcontacts",
    "conversationhistory",
    "adminauditlogs",
    "todosearch",
    "mycontacts",
    "directory",
    "imcontactlist",
    "peopleconnect",
    "favorites",
    "mecontact",
    "personmetadata",
    "teamspaceactivity",
    "teamspacemessaging",
    "teamspaceworkitems",
    "scheduled",
    "orionnotes",
    "tagitems",
    "alltaggeditems",
    "allcategorizeditems",
    "externalcontacts",
    "teamchat",
    "teamchathistory",
    "yammerdata",
    "yammerroot",
    "yammerinbound",
    "yammeroutbound",
    "yammerfeeds",
    "kaizaladata",
    "messageingestion",
    "onedriveroot",
    "onedriverecylebin",
    "onedrivesystem",
    "onedrivevolume",
    "important",
    "starred",
    "archive",
];

/// The children of `t:ItemType`, in schema order.
pub const ITEM_ELEMENTS: &[&str] = &[
    "MimeContent",
    "ItemId",
    "ParentFolderId",
    "ItemClass",
    "Subject",
    "Sensitivity",
    "Body",
    "Attachments",
    "DateTimeReceived",
    "Size",
    "Categories",
    "Importance",
    "InReplyTo",
    "IsSubmitted",
    "IsDraft",
    "IsFromMe",
    "IsResend",
    "IsUnmodified",
    "InternetMessageHeaders",
    "DateTimeSent",
    "DateTimeCreated",
    "ResponseObjects",
    "ReminderDueBy",
    "ReminderIsSet",
    "ReminderNextTime",
    "ReminderMinutesBeforeStart",
    "DisplayCc",
    "DisplayTo",
    "DisplayBcc",
    "HasAttachments",
    "ExtendedProperty",
    "Culture",
    "EffectiveRights",
    "LastModifiedName",
    "LastModifiedTime",
    "IsAssociated",
    "WebClientReadFormQueryString",
    "WebClientEditFormQueryString",
    "ConversationId",
    "UniqueBody",
    "Flag",
    "StoreEntryId",
    "InstanceKey",
    "NormalizedBody",
    "EntityExtractionResult",
    "PolicyTag",
    "ArchiveTag",
    "RetentionDate",
    "Preview",
    "RightsManagementLicenseData",
    "PredictedActionReasons",
    "IsClutter",
    "BlockStatus",
    "HasBlockedImages",
    "TextBody",
    "IconIndex",
    "SearchKey",
    "SortKey",
    "Hashtags",
    "Mentions",
    "MentionedMe",
    "MentionsPreview",
    "MentionsEx",
    "AppliedHashtags",
    "AppliedHashtagsPreview",
    "Likes",
    "LikesPreview",
    "PendingSocialActivityTagIds",
    "AtAllMention",
    "CanDelete",
    "InferenceClassification",
];

/// The children `t:CalendarItemType` adds after those of `t:ItemType`, in schema order.
pub const CALENDAR_ITEM_ELEMENTS: &[&str] = &[
    "UID",
    "RecurrenceId",
    "DateTimeStamp",
    "Start",
    "End",
    "OriginalStart",
    "IsAllDayEvent",
    "LegacyFreeBusyStatus",
    "Location",
    "When",
    "IsMeeting",
    "IsCancelled",
    "IsRecurring",
    "MeetingRequestWasSent",
    "IsResponseRequested",
    "CalendarItemType",
    "MyResponseType",
    "Organizer",
    "RequiredAttendees",
    "OptionalAttendees",
    "Resources",
    "InboxReminders",
    "ConflictingMeetingCount",
    "AdjacentMeetingCount",
    "ConflictingMeetings",
    "AdjacentMeetings",
    "Duration",
    "TimeZone",
    "AppointmentReplyTime",
    "AppointmentSequenceNumber",
    "AppointmentState",
    "Recurrence",
    "FirstOccurrence",
    "LastOccurrence",
    "ModifiedOccurrences",
    "DeletedOccurrences",
    "MeetingTimeZone",
    "StartTimeZone",
    "EndTimeZone",
    "ConferenceType",
    "AllowNewTimeProposal",
    "IsOnlineMeeting",
    "MeetingWorkspaceUrl",
    "NetShowUrl",
    "EnhancedLocation",
    "StartWallClock",
    "EndWallClock",
    "StartTimeZoneId",
    "EndTimeZoneId",
    "IntendedFreeBusyStatus",
    "JoinOnlineMeetingUrl",
    "OnlineMeetingSettings",
    "IsOrganizer",
    "CalendarActivityData",
    "DoNotForwardMeeting",
];

const ITEM_FIELD_URIS: &[&str] = &[
    "ItemId",
    "ParentFolderId",
    "ItemClass",
    "MimeContent",
    "Attachments",
    "Subject",
    "DateTimeReceived",
    "Size",
    "Categories",
    "HasAttachments",
    "Importance",
    "InReplyTo",
    "InternetMessageHeaders",
    "IsAssociated",
    "IsDraft",
    "IsFromMe",
    "IsResend",
    "IsSubmitted",
    "IsUnmodified",
    "DateTimeSent",
    "DateTimeCreated",
    "Body",
    "ResponseObjects",
    "Sensitivity",
    "ReminderDueBy",
    "ReminderIsSet",
    "ReminderNextTime",
    "ReminderMinutesBeforeStart",
    "DisplayTo",
    "DisplayCc",
    "DisplayBcc",
    "Culture",
    "EffectiveRights",
    "LastModifiedName",
    "LastModifiedTime",
    "ConversationId",
    "UniqueBody",
    "Flag",
    "StoreEntryId",
    "InstanceKey",
    "NormalizedBody",
    "EntityExtractionResult",
    "PolicyTag",
    "ArchiveTag",
    "RetentionDate",
    "Preview",
    "PredictedActionReasons",
    "IsClutter",
    "RightsManagementLicenseData",
    "BlockStatus",
    "HasBlockedImages",
    "WebClientReadFormQueryString",
    "WebClientEditFormQueryString",
    "TextBody",
    "IconIndex",
    "MimeContentUTF8",
    "Mentions",
    "MentionedMe",
    "MentionsPreview",
    "MentionsEx",
    "Hashtags",
    "AppliedHashtags",
    "AppliedHashtagsPreview",
    "Likes",
    "LikesPreview",
    "PendingSocialActivityTagIds",
    "AtAllMention",
    "CanDelete",
    "InferenceClassification",
    "FirstBody",
];

const CALENDAR_FIELD_URIS: &[&str] = &[
    "Start",
    "End",
    "OriginalStart",
    "StartWallClock",
    "EndWallClock",
    "StartTimeZoneId",
    "EndTimeZoneId",
    "IsAllDayEvent",
    "LegacyFreeBusyStatus",
    "Location",
    "EnhancedLocation",
    "When",
    "IsMeeting",
    "IsCancelled",
    "IsRecurring",
    "MeetingRequestWasSent",
    "IsResponseRequested",
    "CalendarItemType",
    "MyResponseType",
    "Organizer",
    "RequiredAttendees",
    "OptionalAttendees",
    "Resources",
    "ConflictingMeetingCount",
    "AdjacentMeetingCount",
    "ConflictingMeetings",
    "AdjacentMeetings",
    "InboxReminders",
    "Duration",
    "TimeZone",
    "AppointmentReplyTime",
    "AppointmentSequenceNumber",
    "AppointmentState",
    "Recurrence",
    "FirstOccurrence",
    "LastOccurrence",
    "ModifiedOccurrences",
    "DeletedOccurrences",
    "MeetingTimeZone",
    "ConferenceType",
    "AllowNewTimeProposal",
    "IsOnlineMeeting",
    "MeetingWorkspaceUrl",
    "NetShowUrl",
    "UID",
    "RecurrenceId",
    "DateTimeStamp",
    "StartTimeZone",
    "EndTimeZone",
    "JoinOnlineMeetingUrl",
    "OnlineMeetingSettings",
    "IsOrganizer",
    "CalendarActivityData",
    "DoNotForwardMeeting",
];

const FOLDER_FIELD_URIS: &[&str] = &[
    "FolderId",
    "ParentFolderId",
    "DisplayName",
    "UnreadCount",
    "TotalCount",
    "ChildFolderCount",
    "FolderClass",
    "SearchParameters",
    "ManagedFolderInformation",
    "PermissionSet",
    "EffectiveRights",
    "SharingEffectiveRights",
    "DistinguishedFolderId",
    "PolicyTag",
    "ArchiveTag",
    "ReplicaList",
];

const OTHER_FIELD_URI_PREFIXES: &[&str] = &[
    "abchperson",
    "booking",
    "contacts",
    "distributionlist",
    "insight",
    "meeting",
    "meetingRequest",
    "message",
    "network",
    "person",
    "postitem",
    "rolemember",
    "sharingMessage",
    "task",
];

#[cfg(test)]
mod tests {
    use super::super::xml::{parse, MESSAGES_NS};
    use super::*;

    #[test]
    fn sequence_order_and_messages() {
        let doc = format!(
            r#"<m:X xmlns:m="{MESSAGES_NS}" xmlns:t="{TYPES_NS}"><t:A/><t:C/><t:B/></m:X>"#
        );
        let root = parse(doc.as_bytes()).unwrap();
        let mut children = Children::of(&root).unwrap();
        assert!(children.required(TYPES_NS, "A").is_ok());
        assert!(children.optional(TYPES_NS, "B").is_none());
        assert!(children.required(TYPES_NS, "C").is_ok());
        let error = children.finish().unwrap_err();
        assert_eq!(
            error.message,
            format!("The element 'X' in namespace '{MESSAGES_NS}' has invalid child element 'B' in namespace '{TYPES_NS}'.")
        );
        let mut children = Children::of(&root).unwrap();
        children.required(TYPES_NS, "A").unwrap();
        let error = children.required(TYPES_NS, "B").unwrap_err();
        assert!(
            error.message.contains("invalid child element 'C'")
                && error.message.contains("expected: 'B' in namespace"),
            "{}",
            error.message
        );
    }

    #[test]
    fn values() {
        let root = parse(b"<a/>").unwrap();
        assert!(boolean(Site::Element(&root), " true ").unwrap());
        assert!(boolean(Site::Element(&root), "True").is_err());
        assert_eq!(
            int_in(Site::Element(&root), "1440", "X", 1, 1440).unwrap(),
            1440
        );
        assert!(int_in(Site::Element(&root), "0", "X", 1, 1440).is_err());
        assert!(int_in(Site::Element(&root), "five", "X", 1, 1440).is_err());
        let t = parse_date_time("2026-05-06T10:00:00+02:00").unwrap();
        assert_eq!(format_date_time(t), "2026-05-06T08:00:00Z");
        assert_eq!(
            format_date_time(parse_date_time("2026-05-06T08:00:00.123").unwrap()),
            "2026-05-06T08:00:00Z"
        );
        assert!(parse_date_time("2026-05-06").is_none());
        assert!(parse_date_time("2026-05-06T08:00:00+0200").is_none());
        assert!(is_field_uri("calendar:Start") && is_field_uri("message:From"));
        assert!(!is_field_uri("calendar:start") && !is_field_uri("Subject"));
        assert!(is_guid("00020329-0000-0000-C000-000000000046"));
        assert!(!is_guid("00020329-0000-0000-C000-00000000004"));
        assert!(is_property_tag("0x3fA4") && is_property_tag("65535"));
        assert!(!is_property_tag("65536") && !is_property_tag("0x12345"));
    }
}
