//! The typed form of an EWS push notification, as the worker stores it. Built by
//! [`super::parse`] from a body that passed every check of the validator, and written back to XML by
//! [`super::write::notification_xml`] (the simulator and the benchmarks use that direction).

/// One `m:SendNotification` request body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notification {
    /// `m:ResponseMessages/m:SendNotificationResponseMessage`, in document order (Exchange sends one).
    pub response_messages: Vec<ResponseMessage>,
}

/// `m:SendNotificationResponseMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseMessage {
    pub response_class: ResponseClass,
    /// `m:ResponseCode` (one of the XSD's `ResponseCodeType` values), when present.
    pub response_code: Option<String>,
    /// `m:MessageText`, when present.
    pub message_text: Option<String>,
    /// `t:Notification/t:SubscriptionId`; for the observed Error message without `Notification`,
    /// the text of `m:MessageXml/t:Value[@Name="SubscriptionId"]` when Exchange included it.
    pub subscription_id: Option<String>,
    /// `t:Notification`; `None` only for the documented Error deviation.
    pub notification: Option<NotificationContent>,
}

/// `m:ResponseClass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseClass {
    Success,
    Warning,
    Error,
}

impl ResponseClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseClass::Success => "Success",
            ResponseClass::Warning => "Warning",
            ResponseClass::Error => "Error",
        }
    }
}

/// The content of `t:Notification` after its `t:SubscriptionId`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NotificationContent {
    /// `t:PreviousWatermark`: must equal the last watermark stored for the subscription.
    pub previous_watermark: Option<String>,
    /// `t:MoreEvents`; `false` when absent.
    pub more_events: bool,
    /// The events, in document order (at least one).
    pub events: Vec<Event>,
}

/// One `t:*Event` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// `t:Watermark`: opaque, compare for equality only.
    pub watermark: Option<String>,
    /// `t:TimeStamp`, its lexical `xs:dateTime` form as sent (absent only on `StatusEvent`).
    pub timestamp: Option<String>,
    /// `t:ItemId` or `t:FolderId` (absent only on `StatusEvent`).
    pub object: Option<ObjectId>,
    /// `t:ParentFolderId` (absent only on `StatusEvent`).
    pub parent_folder_id: Option<ObjectId>,
    /// `t:OldItemId` or `t:OldFolderId` (Moved and Copied events only).
    pub old_object: Option<ObjectId>,
    /// `t:OldParentFolderId` (Moved and Copied events only).
    pub old_parent_folder_id: Option<ObjectId>,
    /// `t:UnreadCount` (Modified events only, optional there).
    pub unread_count: Option<i32>,
}

impl Event {
    /// An event of `kind` with nothing else filled in yet.
    pub fn bare(kind: EventKind) -> Event {
        Event {
            kind,
            watermark: None,
            timestamp: None,
            object: None,
            parent_folder_id: None,
            old_object: None,
            old_parent_folder_id: None,
            unread_count: None,
        }
    }
}

/// The event element names of `t:NotificationType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Copied,
    Created,
    Deleted,
    Modified,
    Moved,
    NewMail,
    Status,
    FreeBusyChanged,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Copied,
        EventKind::Created,
        EventKind::Deleted,
        EventKind::Modified,
        EventKind::Moved,
        EventKind::NewMail,
        EventKind::Status,
        EventKind::FreeBusyChanged,
    ];

    /// The element's local name, e.g. `ModifiedEvent`.
    pub fn element_name(self) -> &'static str {
        match self {
            EventKind::Copied => "CopiedEvent",
            EventKind::Created => "CreatedEvent",
            EventKind::Deleted => "DeletedEvent",
            EventKind::Modified => "ModifiedEvent",
            EventKind::Moved => "MovedEvent",
            EventKind::NewMail => "NewMailEvent",
            EventKind::Status => "StatusEvent",
            EventKind::FreeBusyChanged => "FreeBusyChangedEvent",
        }
    }

    /// Short lower-case name for tables and metric labels, e.g. `modified`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Copied => "copied",
            EventKind::Created => "created",
            EventKind::Deleted => "deleted",
            EventKind::Modified => "modified",
            EventKind::Moved => "moved",
            EventKind::NewMail => "new_mail",
            EventKind::Status => "status",
            EventKind::FreeBusyChanged => "free_busy_changed",
        }
    }

    pub fn from_element_name(name: &[u8]) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.element_name().as_bytes() == name)
    }

    pub fn from_str_name(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// Moved and Copied events carry the old ids.
    pub fn has_old_ids(self) -> bool {
        matches!(self, EventKind::Moved | EventKind::Copied)
    }
}

/// `t:ItemId` / `t:FolderId` and their `Old` and `Parent` forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectId {
    pub kind: ObjectKind,
    /// The `Id` attribute.
    pub id: String,
    /// The `ChangeKey` attribute. In notifications it is an object-type marker, not a version.
    pub change_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Item,
    Folder,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Item => "item",
            ObjectKind::Folder => "folder",
        }
    }
}

impl Notification {
    /// Every event of every response message.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.response_messages
            .iter()
            .filter_map(|message| message.notification.as_ref())
            .flat_map(|content| content.events.iter())
    }
}
