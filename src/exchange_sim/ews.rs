//! What each EWS operation does to the simulated mailboxes and what it answers: the checks
//! Exchange makes after the schema (the mailbox acted for, SendMeetingInvitations and friends,
//! ChangeKeys and conflict resolution, watermarks, the subscription limit, CalendarView's range)
//! and the answer messages, one per input, in input order. Pure apart from the state it is given.

use time::OffsetDateTime;

use super::answer::{Body, Fault, FolderView, ItemView, Message};
use super::codec;
use super::options::SimOptions;
use super::request::{
    CalendarFields, ConnectingSid, CreateItemRequest, DeleteItemRequest, ExtendedFieldUri,
    FindItemRequest, FolderRef, GetFolderRequest, GetItemRequest, ItemContent, ItemIdRef,
    ItemShape, Operation, PropertyPath, Request, SubscribeRequest, Update, UpdateItemRequest,
};
use super::state::State;
use super::store::{mailbox_key, FieldChanges, FolderKind, Item, Mailbox, NewItem, StoreError};
use super::subscriptions::{self, Subscription};

/// Who the caller authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An app-only bearer token: it must impersonate (or name a mailbox) to act for anyone.
    App,
    /// Basic credentials: the user acts for the mailbox of the same address unless impersonating.
    User(String),
}

/// What an operation led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Execution {
    Answer {
        messages: Vec<Message>,
        /// A subscription to start delivering for.
        new_subscription: Option<String>,
        /// The mailbox whose log grew (its delivery tasks are woken).
        changed_mailbox: Option<String>,
    },
    Fault(Fault),
}

impl Execution {
    fn answer(messages: Vec<Message>) -> Execution {
        Execution::Answer {
            messages,
            new_subscription: None,
            changed_mailbox: None,
        }
    }
}

const NOT_FOUND: &str = "The specified object was not found in the store.";
const MALFORMED: &str = "Id is malformed.";
const FOLDER_NOT_FOUND: &str = "The specified folder could not be found in the store.";

/// How many response messages a request gets (one per input element).
pub fn message_count(operation: &Operation) -> usize {
    match operation {
        Operation::GetItem(r) => r.ids.len(),
        Operation::CreateItem(r) => r.items.len(),
        Operation::UpdateItem(r) => r.changes.len(),
        Operation::DeleteItem(r) => r.ids.len(),
        Operation::FindItem(r) => r.parents.len(),
        Operation::GetFolder(r) => r.folders.len(),
        _ => 1,
    }
    .max(1)
}

/// The same error for every input of a request.
pub fn error_messages(operation: &Operation, code: &str, text: &str) -> Vec<Message> {
    (0..message_count(operation))
        .map(|_| Message::error(operation.name(), code, text))
        .collect()
}

/// Mailboxes a request names in `DistinguishedFolderId/Mailbox`.
fn named_mailboxes(operation: &Operation) -> Vec<&str> {
    let folders: Vec<&FolderRef> = match operation {
        Operation::Subscribe(r) => r.folders.iter().collect(),
        Operation::CreateItem(r) => r.saved_item_folder.iter().collect(),
        Operation::UpdateItem(r) => r.saved_item_folder.iter().collect(),
        Operation::FindItem(r) => r.parents.iter().collect(),
        Operation::GetFolder(r) => r.folders.iter().collect(),
        _ => Vec::new(),
    };
    folders
        .into_iter()
        .filter_map(|f| match f {
            FolderRef::Distinguished {
                mailbox: Some(m), ..
            } => Some(m.as_str()),
            _ => None,
        })
        .collect()
}

/// Why no mailbox can be acted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Answered with this code in every response message (or as a fault, by option).
    Messages {
        code: &'static str,
        text: String,
    },
    Fault(Box<Fault>),
}

/// The mailbox a request acts for: the impersonated one (which must exist, be impersonable and,
/// by default, match `X-AnchorMailbox`), else the first mailbox named in a folder id, else the
/// Basic user's own.
pub fn acting_mailbox(
    state: &State,
    options: &SimOptions,
    identity: &Identity,
    request: &Request,
    anchor: Option<&str>,
) -> Result<String, Refusal> {
    if let Some(sid) = &request.header.impersonation {
        let address = match sid {
            ConnectingSid::Sid(_) => None,
            other => other.address(),
        };
        let mailbox = address.and_then(|a| state.store.mailbox(a));
        let Some(mailbox) = mailbox else {
            return Err(Refusal::Messages {
                code: "ErrorNonExistentMailbox",
                text: "The SMTP address has no mailbox associated with it.".into(),
            });
        };
        if mailbox.impersonation_denied {
            return Err(Refusal::Messages {
                code: "ErrorImpersonateUserDenied",
                text: "The account does not have permission to impersonate the requested user."
                    .into(),
            });
        }
        let key = mailbox_key(&mailbox.address);
        if options.require_anchor_mailbox && anchor.map(mailbox_key).as_deref() != Some(&key) {
            return Err(Refusal::Fault(Box::new(Fault::other(
                "ErrorInvalidRequest",
                "The request is invalid: with impersonation the simulator requires the X-AnchorMailbox header to name the impersonated mailbox (Microsoft documents it as mandatory).",
            ))));
        }
        return Ok(key);
    }
    let named = named_mailboxes(&request.operation);
    let own = match identity {
        Identity::User(user) => Some(user.as_str()),
        Identity::App => None,
    };
    match named.first().copied().or(own) {
        Some(address) => match state.store.mailbox(address) {
            Some(mailbox)
                if mailbox.impersonation_denied
                    && own.is_none_or(|o| mailbox_key(o) != mailbox_key(address)) =>
            {
                Err(Refusal::Messages {
                    code: "ErrorAccessDenied",
                    text: "Access is denied. Check credentials and try again.".into(),
                })
            }
            Some(mailbox) => Ok(mailbox_key(&mailbox.address)),
            None => Err(Refusal::Messages {
                code: "ErrorNonExistentMailbox",
                text: "The SMTP address has no mailbox associated with it.".into(),
            }),
        },
        None => Err(Refusal::Fault(Box::new(Fault::other(
            "ErrorInvalidExchangeImpersonationHeaderData",
            "ExchangeImpersonation SOAP header must be present for this type of OAuth token.",
        )))),
    }
}

/// Runs an operation for `mailbox` (already resolved and allowed).
pub fn execute(
    state: &mut State,
    options: &SimOptions,
    mailbox: &str,
    request: &Request,
    now: OffsetDateTime,
) -> Execution {
    match &request.operation {
        Operation::Subscribe(r) => subscribe(state, options, mailbox, r),
        Operation::GetItem(r) => get_item(state, mailbox, r),
        Operation::CreateItem(r) => create_item(state, mailbox, r, now),
        Operation::UpdateItem(r) => update_item(state, mailbox, r, now),
        Operation::DeleteItem(r) => delete_item(state, mailbox, r, now),
        Operation::FindItem(r) => find_item(state, mailbox, r),
        Operation::GetFolder(r) => get_folder(state, mailbox, r),
        Operation::UnsupportedSubscription(kind) => Execution::Fault(Fault::other(
            "ErrorInvalidRequest",
            &format!("The Exchange simulator implements push subscriptions only, not {kind}."),
        )),
        Operation::Unsupported(name) => Execution::Fault(unsupported(name)),
    }
}

pub fn unsupported(what: &str) -> Fault {
    Fault::other(
        "ErrorInvalidRequest",
        &format!("The request is valid but the Exchange simulator does not implement {what}."),
    )
}

/// A folder a request names, in the mailbox acted for.
fn resolve_folder<'m>(
    state: &'m State,
    mailbox: &str,
    folder: &FolderRef,
) -> Result<(&'m Mailbox, FolderKind), (&'static str, String)> {
    let (address, kind) = match folder {
        FolderRef::Distinguished {
            name,
            mailbox: named,
        } => {
            let address = named.as_deref().unwrap_or(mailbox);
            (address, FolderKind::from_distinguished_name(name))
        }
        FolderRef::Id { id } => {
            let kind = state
                .store
                .mailbox(mailbox)
                .and_then(|m| m.folder_by_id(id));
            (mailbox, kind)
        }
        FolderRef::AddressList => (mailbox, None),
    };
    let owner = state.store.mailbox(address).ok_or((
        "ErrorNonExistentMailbox",
        "The SMTP address has no mailbox associated with it.".to_string(),
    ))?;
    if mailbox_key(address) != mailbox_key(mailbox) && owner.impersonation_denied {
        return Err((
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.".into(),
        ));
    }
    match kind {
        Some(kind) => Ok((owner, kind)),
        None => Err(("ErrorFolderNotFound", FOLDER_NOT_FOUND.into())),
    }
}

fn subscribe(
    state: &mut State,
    options: &SimOptions,
    mailbox: &str,
    request: &SubscribeRequest,
) -> Execution {
    let fail =
        |code: &str, text: &str| Execution::answer(vec![Message::error("Subscribe", code, text)]);
    let folders = if request.subscribe_to_all_folders {
        if !request.folders.is_empty() {
            return fail(
                "ErrorInvalidSubscriptionRequest",
                "FolderIds cannot be given with SubscribeToAllFolders.",
            );
        }
        None
    } else {
        if request.folders.is_empty() {
            return fail(
                "ErrorInvalidSubscriptionRequest",
                "A subscription needs FolderIds or SubscribeToAllFolders.",
            );
        }
        let mut kinds = Vec::new();
        for folder in &request.folders {
            match resolve_folder(state, mailbox, folder) {
                Ok((owner, _)) if mailbox_key(&owner.address) != mailbox_key(mailbox) => {
                    return fail(
                        "ErrorSubscriptionDelegateAccessNotSupported",
                        "Subscriptions are not supported for delegate user access.",
                    )
                }
                Ok((_, kind)) => kinds.push(kind),
                Err((code, text)) => return fail(code, &text),
            }
        }
        Some(kinds)
    };
    let callback = match subscriptions::parse_callback_url(request.url.trim()) {
        Ok(callback) => callback,
        Err(why) => {
            return fail(
                "ErrorInvalidPushSubscriptionUrl",
                &format!("The push subscription URL is invalid: {why}."),
            )
        }
    };
    let Some(owner) = state.store.mailbox(mailbox) else {
        return fail(
            "ErrorNonExistentMailbox",
            "The SMTP address has no mailbox associated with it.",
        );
    };
    let (cursor, watermark) = match &request.watermark {
        Some(watermark) => match subscriptions::watermark_position(owner, watermark) {
            Some(position) => (position, watermark.clone()),
            None => {
                return fail(
                    "ErrorInvalidWatermark",
                    "The watermark used for creating this subscription was not found.",
                )
            }
        },
        None => {
            let head = owner.head();
            (head, String::new())
        }
    };
    if state.alive_subscriptions(mailbox) >= options.max_subscriptions_per_mailbox {
        return fail(
            "ErrorExceededSubscriptionCount",
            "You have exceeded the available subscriptions for your account. Remove unnecessary subscriptions and try your request again.",
        );
    }
    let watermark = if watermark.is_empty() {
        let nonce = state.nonce();
        match state.store.mailbox(mailbox) {
            Some(owner) => subscriptions::watermark_at(owner, cursor, nonce),
            None => return fail("ErrorNonExistentMailbox", "The mailbox is gone."),
        }
    } else {
        watermark
    };
    state.next_subscription += 1;
    let random = state.random();
    let id = codec::subscription_id(state.next_subscription, random);
    let subscription = Subscription {
        id: id.clone(),
        mailbox: mailbox_key(mailbox),
        url: request.url.trim().to_string(),
        callback,
        status_frequency_minutes: request.status_frequency,
        folders,
        event_types: subscriptions::event_kinds(&request.event_types),
        cursor,
        last_watermark: watermark.clone(),
        ended: None,
        error_requested: false,
        notifications_sent: 0,
        notifications_accepted: 0,
        notifications_failed: 0,
        attempts: 0,
        attempts_failed: 0,
        events_sent: 0,
    };
    state.add_subscription(subscription);
    Execution::Answer {
        messages: vec![Message::success(Body::Subscription {
            id: id.clone(),
            watermark,
        })],
        new_subscription: Some(id),
        changed_mailbox: None,
    }
}

fn store_error(operation: &str, error: &StoreError) -> Message {
    match error {
        StoreError::MalformedId(_) => {
            Message::error(operation, "ErrorInvalidIdMalformed", MALFORMED)
        }
        StoreError::ItemNotFound(_) => Message::error(operation, "ErrorItemNotFound", NOT_FOUND),
        StoreError::UnknownMailbox(_) => Message::error(
            operation,
            "ErrorNonExistentMailbox",
            "The SMTP address has no mailbox associated with it.",
        ),
        StoreError::EndBeforeStart => Message::error(
            operation,
            "ErrorCalendarEndDateIsEarlierThanStartDate",
            "EndDate is earlier than StartDate",
        ),
        StoreError::WrongFolder(_) => Message::error(
            operation,
            "ErrorCannotCreateCalendarItemInNonCalendarFolder",
            "Calendar items can only be created in a calendar folder.",
        ),
    }
}

/// The properties a shape asks for.
struct Wanted<'a> {
    default_fields: bool,
    all_fields: bool,
    fields: Vec<&'a str>,
    extended: Vec<&'a ExtendedFieldUri>,
}

impl<'a> Wanted<'a> {
    fn of(shape: &'a ItemShape) -> Wanted<'a> {
        let mut wanted = Wanted {
            default_fields: shape.base_shape != "IdOnly",
            all_fields: shape.base_shape == "AllProperties",
            fields: Vec::new(),
            extended: Vec::new(),
        };
        for path in &shape.additional {
            match path {
                PropertyPath::Field(uri) => wanted.fields.push(uri.as_str()),
                PropertyPath::Extended(uri) => wanted.extended.push(uri),
                PropertyPath::Indexed(_) => {}
            }
        }
        wanted
    }

    fn has(&self, uri: &str, in_default: bool) -> bool {
        self.all_fields || (self.default_fields && in_default) || self.fields.contains(&uri)
    }
}

fn item_view(mailbox: &Mailbox, item: &Item, wanted: &Wanted<'_>) -> ItemView {
    ItemView {
        id: item.id.clone(),
        change_key: item.change_key(),
        parent_folder_id: wanted
            .has("item:ParentFolderId", true)
            .then(|| mailbox.folder_id(item.folder)),
        item_class: wanted
            .has("item:ItemClass", true)
            .then(|| "IPM.Appointment".to_string()),
        subject: item
            .subject
            .clone()
            .filter(|_| wanted.has("item:Subject", true)),
        date_time_created: wanted
            .has("item:DateTimeCreated", false)
            .then_some(item.created),
        extended: wanted
            .extended
            .iter()
            .filter_map(|uri| {
                item.extended_value(uri)
                    .map(|value| ((*uri).clone(), value.clone()))
            })
            .collect(),
        last_modified: wanted
            .has("item:LastModifiedTime", false)
            .then_some(item.last_modified),
        start: wanted.has("calendar:Start", true).then_some(item.start),
        end: wanted.has("calendar:End", true).then_some(item.end),
        location: item
            .location
            .clone()
            .filter(|_| wanted.has("calendar:Location", true)),
        is_cancelled: wanted
            .has("calendar:IsCancelled", true)
            .then_some(item.is_cancelled),
    }
}

fn invalid_extended(operation: &str) -> Message {
    Message::error(
        operation,
        "ErrorInvalidExtendedProperty",
        "The extended property attribute combination is invalid.",
    )
}

fn get_item(state: &State, mailbox: &str, request: &GetItemRequest) -> Execution {
    let wanted = Wanted::of(&request.shape);
    let bad_uri = wanted.extended.iter().any(|u| !u.is_valid_combination());
    let Some(owner) = state.store.mailbox(mailbox) else {
        return Execution::answer(
            request
                .ids
                .iter()
                .map(|_| {
                    Message::error(
                        "GetItem",
                        "ErrorNonExistentMailbox",
                        "The SMTP address has no mailbox associated with it.",
                    )
                })
                .collect(),
        );
    };
    let messages = request
        .ids
        .iter()
        .map(|id| {
            if bad_uri {
                return invalid_extended("GetItem");
            }
            match id {
                ItemIdRef::Recurrence(_) => Message::error(
                    "GetItem",
                    "ErrorItemNotFound",
                    "The simulator has no recurring items.",
                ),
                ItemIdRef::Item(item) => match state.store.item(mailbox, &item.id) {
                    Ok(found) => {
                        Message::success(Body::Items(vec![item_view(owner, found, &wanted)]))
                    }
                    Err(e) => store_error("GetItem", &e),
                },
            }
        })
        .collect();
    Execution::answer(messages)
}

fn create_item(
    state: &mut State,
    mailbox: &str,
    request: &CreateItemRequest,
    now: OffsetDateTime,
) -> Execution {
    let folder = match &request.saved_item_folder {
        None => Ok(FolderKind::Calendar),
        Some(folder) => match resolve_folder(state, mailbox, folder) {
            Ok((owner, _)) if mailbox_key(&owner.address) != mailbox_key(mailbox) => Err((
                "ErrorAccessDenied",
                "The simulator creates items only in the mailbox acted for.".to_string(),
            )),
            Ok((_, FolderKind::Calendar)) => Ok(FolderKind::Calendar),
            Ok(_) => Err((
                "ErrorCannotCreateCalendarItemInNonCalendarFolder",
                "Calendar items can only be created in a calendar folder.".to_string(),
            )),
            Err(e) => Err(e),
        },
    };
    let mut messages = Vec::new();
    let mut changed = false;
    for item in &request.items {
        let message = match (&folder, item) {
            (Err((code, text)), _) => Message::error("CreateItem", code, text.as_str()),
            (Ok(_), ItemContent::Calendar(fields)) if fields.generic_item => Message::error(
                "CreateItem",
                "ErrorInvalidRequest",
                "The Exchange simulator stores calendar items only, not Item.",
            ),
            (Ok(_), ItemContent::Other(kind)) => Message::error(
                "CreateItem",
                "ErrorInvalidRequest",
                format!("The Exchange simulator stores calendar items only, not {kind}."),
            ),
            (Ok(folder), ItemContent::Calendar(fields)) => {
                match new_item(request.send_meeting_invitations.is_some(), fields) {
                    Err(message) => message,
                    Ok(new) => match state.store.create_item(mailbox, *folder, new, now) {
                        Ok(created) => {
                            changed = true;
                            Message::success(Body::Items(vec![ItemView {
                                id: created.id.clone(),
                                change_key: created.change_key(),
                                ..ItemView::default()
                            }]))
                        }
                        Err(e) => store_error("CreateItem", &e),
                    },
                }
            }
        };
        messages.push(message);
    }
    Execution::Answer {
        messages,
        new_subscription: None,
        changed_mailbox: changed.then(|| mailbox.to_string()),
    }
}

fn new_item(send_given: bool, fields: &CalendarFields) -> Result<NewItem, Message> {
    if !send_given {
        return Err(Message::error(
            "CreateItem",
            "ErrorSendMeetingInvitationsRequired",
            "SendMeetingInvitations attribute is required for calendar items.",
        ));
    }
    if fields.is_cancelled.is_some() {
        return Err(Message::error(
            "CreateItem",
            "ErrorInvalidPropertySet",
            "Set action is invalid for property: IsCancelled.",
        ));
    }
    if fields
        .extended
        .iter()
        .any(|(u, _)| !u.is_valid_combination())
    {
        return Err(invalid_extended("CreateItem"));
    }
    let (Some(start), Some(end)) = (fields.start, fields.end) else {
        return Err(Message::error(
            "CreateItem",
            "ErrorCalendarInvalidPropertyValue",
            "The Exchange simulator needs Start and End on a new calendar item.",
        ));
    };
    Ok(NewItem {
        subject: fields.subject.clone(),
        start,
        end,
        location: fields.location.clone(),
        extended: fields.extended.clone(),
    })
}

/// The element a property path names inside an item (`calendar:Start` → `Start`).
fn path_element(path: &PropertyPath) -> Option<&str> {
    match path {
        PropertyPath::Field(uri) => uri.split_once(':').map(|(_, name)| name),
        PropertyPath::Extended(_) => Some("ExtendedProperty"),
        PropertyPath::Indexed(_) => None,
    }
}

fn changes_of(updates: &[Update]) -> Result<FieldChanges, Message> {
    let fail = |code: &str, text: &str| Err(Message::error("UpdateItem", code, text));
    let mut changes = FieldChanges::default();
    for update in updates {
        match update {
            Update::Append { .. } => {
                return fail(
                    "ErrorInvalidPropertyAppend",
                    "The property cannot be appended to.",
                )
            }
            Update::Delete { path } => match path {
                PropertyPath::Field(uri) => match uri.as_str() {
                    "item:Subject" => changes.subject = Some(None),
                    "calendar:Location" => changes.location = Some(None),
                    "calendar:Start" | "calendar:End" | "calendar:IsCancelled" => {
                        return fail(
                            "ErrorInvalidPropertyDelete",
                            "The property cannot be deleted.",
                        )
                    }
                    // Properties the simulator does not model: nothing to delete.
                    _ => {}
                },
                PropertyPath::Extended(uri) => {
                    if !uri.is_valid_combination() {
                        return Err(invalid_extended("UpdateItem"));
                    }
                    changes.extended.push((uri.clone(), None));
                }
                PropertyPath::Indexed(_) => {}
            },
            Update::Set { path, item } => {
                let ItemContent::Calendar(fields) = item else {
                    return fail(
                        "ErrorObjectTypeChanged",
                        "The item type of a calendar item cannot be changed.",
                    );
                };
                if fields.present.len() != 1 {
                    return fail(
                        "ErrorIncorrectUpdatePropertyCount",
                        "An object within a change description must contain one and only one property to modify.",
                    );
                }
                let matches = path_element(path) == Some(fields.present[0].as_str())
                    && match path {
                        PropertyPath::Extended(uri) => {
                            fields.extended.first().map(|(u, _)| u) == Some(uri)
                        }
                        _ => true,
                    };
                if !matches {
                    return fail(
                        "ErrorUpdatePropertyMismatch",
                        "The property in the change description doesn't match the property specified by the path.",
                    );
                }
                match fields.present[0].as_str() {
                    "Subject" => changes.subject = Some(fields.subject.clone()),
                    "Start" => changes.start = fields.start,
                    "End" => changes.end = fields.end,
                    "Location" => changes.location = Some(fields.location.clone()),
                    "IsCancelled" => {
                        return fail(
                            "ErrorInvalidPropertySet",
                            "Set action is invalid for property: IsCancelled.",
                        )
                    }
                    "ExtendedProperty" => {
                        for (uri, value) in &fields.extended {
                            if !uri.is_valid_combination() {
                                return Err(invalid_extended("UpdateItem"));
                            }
                            changes.extended.push((uri.clone(), Some(value.clone())));
                        }
                    }
                    // Accepted and ignored: properties the simulator does not model.
                    _ => {}
                }
            }
        }
    }
    Ok(changes)
}

fn update_item(
    state: &mut State,
    mailbox: &str,
    request: &UpdateItemRequest,
    now: OffsetDateTime,
) -> Execution {
    let mut messages = Vec::new();
    let mut changed = false;
    for change in &request.changes {
        let message = (|| {
            let ItemIdRef::Item(reference) = &change.id else {
                return Message::error(
                    "UpdateItem",
                    "ErrorItemNotFound",
                    "The simulator has no recurring items.",
                );
            };
            let item = match state.store.item(mailbox, &reference.id) {
                Ok(item) => item,
                Err(e) => return store_error("UpdateItem", &e),
            };
            // Every item here is a calendar item: Exchange wants the attribute for those.
            if request.send_meeting_invitations_or_cancellations.is_none() {
                return Message::error(
                    "UpdateItem",
                    "ErrorSendMeetingInvitationsOrCancellationsRequired",
                    "SendMeetingInvitationsOrCancellations attribute is required for calendar items.",
                );
            }
            match &reference.change_key {
                Some(key) => match codec::parse_item_change_key(key) {
                    None => {
                        return Message::error(
                            "UpdateItem",
                            "ErrorInvalidChangeKey",
                            "The change key is invalid.",
                        )
                    }
                    Some(version)
                        if version != item.version
                            && request.conflict_resolution == "NeverOverwrite" =>
                    {
                        return Message::error(
                            "UpdateItem",
                            "ErrorIrresolvableConflict",
                            "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item.",
                        )
                    }
                    Some(_) => {}
                },
                None if request.conflict_resolution == "AutoResolve" => {
                    return Message::error(
                        "UpdateItem",
                        "ErrorChangeKeyRequired",
                        "The change key is required for this operation.",
                    )
                }
                None => {}
            }
            let changes = match changes_of(&change.updates) {
                Ok(changes) => changes,
                Err(message) => return message,
            };
            match state
                .store
                .update_item(mailbox, &reference.id, changes, now)
            {
                Ok(updated) => {
                    changed = true;
                    Message::success(Body::UpdatedItems(vec![ItemView {
                        id: updated.id.clone(),
                        change_key: updated.change_key(),
                        ..ItemView::default()
                    }]))
                }
                Err(e) => store_error("UpdateItem", &e),
            }
        })();
        messages.push(message);
    }
    Execution::Answer {
        messages,
        new_subscription: None,
        changed_mailbox: changed.then(|| mailbox.to_string()),
    }
}

fn delete_item(
    state: &mut State,
    mailbox: &str,
    request: &DeleteItemRequest,
    now: OffsetDateTime,
) -> Execution {
    let mut messages = Vec::new();
    let mut changed = false;
    for id in &request.ids {
        let message = (|| {
            let ItemIdRef::Item(reference) = id else {
                return Message::error(
                    "DeleteItem",
                    "ErrorItemNotFound",
                    "The simulator has no recurring items.",
                );
            };
            let folder = match state.store.item(mailbox, &reference.id) {
                Ok(item) => item.folder,
                Err(e) => return store_error("DeleteItem", &e),
            };
            if let Some(key) = &reference.change_key {
                // A stale ChangeKey does not stop a delete (observed Exchange behaviour), a
                // malformed one does.
                if codec::parse_item_change_key(key).is_none() {
                    return Message::error(
                        "DeleteItem",
                        "ErrorInvalidChangeKey",
                        "The change key is invalid.",
                    );
                }
            }
            if request.send_meeting_cancellations.is_none() {
                return Message::error(
                    "DeleteItem",
                    "ErrorSendMeetingCancellationsRequired",
                    "SendMeetingCancellations attribute is required for calendar items.",
                );
            }
            let result = match (request.delete_type.as_str(), folder) {
                ("HardDelete", _) | (_, FolderKind::RecoverableItemsDeletions) => {
                    state.store.hard_delete(mailbox, &reference.id, now)
                }
                ("SoftDelete", _) | ("MoveToDeletedItems", FolderKind::DeletedItems) => state
                    .store
                    .move_item(
                        mailbox,
                        &reference.id,
                        FolderKind::RecoverableItemsDeletions,
                        now,
                    )
                    .map(|_| ()),
                _ => state
                    .store
                    .move_item(mailbox, &reference.id, FolderKind::DeletedItems, now)
                    .map(|_| ()),
            };
            match result {
                Ok(()) => {
                    changed = true;
                    Message::success(Body::Nothing)
                }
                Err(e) => store_error("DeleteItem", &e),
            }
        })();
        messages.push(message);
    }
    Execution::Answer {
        messages,
        new_subscription: None,
        changed_mailbox: changed.then(|| mailbox.to_string()),
    }
}

/// Whether `end` lies more than two calendar years after `start` (ErrorCalendarViewRangeTooBig).
pub fn range_too_big(start: OffsetDateTime, end: OffsetDateTime) -> bool {
    let limit = start
        .replace_year(start.year() + 2)
        .or_else(|_| (start + time::Duration::days(1)).replace_year(start.year() + 2))
        .unwrap_or(start + time::Duration::days(731));
    end > limit
}

fn find_item(state: &State, mailbox: &str, request: &FindItemRequest) -> Execution {
    if let Some(what) = &request.unsupported {
        return Execution::Fault(unsupported(&format!("FindItem with {what}")));
    }
    if request.traversal != "Shallow" {
        return Execution::Fault(unsupported(&format!(
            "FindItem with Traversal=\"{}\"",
            request.traversal
        )));
    }
    let wanted = Wanted::of(&request.shape);
    if wanted.extended.iter().any(|u| !u.is_valid_combination()) {
        return Execution::answer(
            request
                .parents
                .iter()
                .map(|_| invalid_extended("FindItem"))
                .collect(),
        );
    }
    let messages = request
        .parents
        .iter()
        .map(|parent| {
            let (owner, folder) = match resolve_folder(state, mailbox, parent) {
                Ok(found) => found,
                Err((code, text)) => return Message::error("FindItem", code, text),
            };
            let (items, total, complete) = match &request.calendar_view {
                None => {
                    let items: Vec<&Item> = owner.items_in(folder).collect();
                    let total = items.len();
                    (items, total, true)
                }
                Some(view) => {
                    if folder != FolderKind::Calendar {
                        return Message::error(
                            "FindItem",
                            "ErrorCalendarFolderIsInvalidForCalendarView",
                            "CalendarView can only be used with a calendar folder.",
                        );
                    }
                    if view.end < view.start {
                        return Message::error(
                            "FindItem",
                            "ErrorCalendarEndDateIsEarlierThanStartDate",
                            "EndDate is earlier than StartDate",
                        );
                    }
                    if range_too_big(view.start, view.end) {
                        return Message::error(
                            "FindItem",
                            "ErrorCalendarViewRangeTooBig",
                            "The time window specified is larger than the maximum of 2 years.",
                        );
                    }
                    if view.max_entries.is_some_and(|m| m < 1) {
                        return Message::error(
                            "FindItem",
                            "ErrorInvalidRequest",
                            "MaxEntriesReturned must be positive.",
                        );
                    }
                    let mut items = owner.calendar_view(view.start, view.end);
                    let total = items.len();
                    let max = view
                        .max_entries
                        .and_then(|m| usize::try_from(m).ok())
                        .unwrap_or(usize::MAX);
                    let complete = items.len() <= max;
                    items.truncate(max);
                    (items, total, complete)
                }
            };
            Message::success(Body::RootFolder {
                total_items_in_view: total,
                includes_last_item_in_range: complete,
                items: items
                    .into_iter()
                    .map(|item| item_view(owner, item, &wanted))
                    .collect(),
            })
        })
        .collect();
    Execution::answer(messages)
}

fn get_folder(state: &State, mailbox: &str, request: &GetFolderRequest) -> Execution {
    let default = request.base_shape != "IdOnly";
    let wants = |uri: &str| {
        default
            || request
                .additional
                .iter()
                .any(|p| matches!(p, PropertyPath::Field(f) if f == uri))
    };
    let messages = request
        .folders
        .iter()
        .map(
            |reference| match resolve_folder(state, mailbox, reference) {
                Err((code, text)) => Message::error("GetFolder", code, text),
                Ok((owner, folder)) => Message::success(Body::Folders(vec![FolderView {
                    element: if folder == FolderKind::Calendar {
                        "CalendarFolder"
                    } else {
                        "Folder"
                    },
                    id: owner.folder_id(folder),
                    change_key: owner.folder_change_key(folder),
                    parent_folder_id: wants("folder:ParentFolderId")
                        .then(|| owner.folder_id(folder.parent())),
                    folder_class: folder
                        .folder_class()
                        .filter(|_| wants("folder:FolderClass"))
                        .map(str::to_string),
                    display_name: wants("folder:DisplayName")
                        .then(|| folder.display_name().to_string()),
                    total_count: wants("folder:TotalCount")
                        .then(|| owner.items_in(folder).count() as u64),
                    child_folder_count: wants("folder:ChildFolderCount")
                        .then(|| folder.child_folder_count()),
                }])),
            },
        )
        .collect();
    Execution::answer(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange_sim::request::{parse_request, CalendarFields};
    use crate::exchange_sim::xml::{MESSAGES_NS, SOAP_NS, TYPES_NS};
    use time::macros::datetime;

    fn request(impersonate: Option<&str>, body: &str) -> Request {
        let header = impersonate
            .map(|m| format!("<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{m}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"))
            .unwrap_or_default();
        let text = format!(
            r#"<s:Envelope xmlns:s="{SOAP_NS}" xmlns:m="{MESSAGES_NS}" xmlns:t="{TYPES_NS}"><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"#
        );
        parse_request(text.as_bytes()).unwrap()
    }

    const GET_FOLDER: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="calendar"><t:Mailbox><t:EmailAddress>room2@contoso.com</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></m:FolderIds></m:GetFolder>"#;

    #[test]
    fn the_mailbox_acted_for() {
        let mut state = State::new(1, std::time::Duration::ZERO);
        state.add_mailbox("room1@contoso.com");
        state.add_mailbox("room2@contoso.com");
        let options = SimOptions::default();
        let get = request(Some("ROOM1@contoso.com"), GET_FOLDER);
        assert_eq!(
            acting_mailbox(
                &state,
                &options,
                &Identity::App,
                &get,
                Some("room1@CONTOSO.com")
            ),
            Ok("room1@contoso.com".to_string())
        );
        assert!(matches!(
            acting_mailbox(&state, &options, &Identity::App, &get, None),
            Err(Refusal::Fault(_))
        ));
        let relaxed = SimOptions {
            require_anchor_mailbox: false,
            ..SimOptions::default()
        };
        assert!(acting_mailbox(&state, &relaxed, &Identity::App, &get, None).is_ok());
        // Without impersonation: the mailbox the folder id names (delegate access).
        let delegate = request(None, GET_FOLDER);
        assert_eq!(
            acting_mailbox(&state, &options, &Identity::App, &delegate, None),
            Ok("room2@contoso.com".to_string())
        );
        let unknown = request(Some("nobody@contoso.com"), GET_FOLDER);
        assert!(matches!(
            acting_mailbox(
                &state,
                &options,
                &Identity::App,
                &unknown,
                Some("nobody@contoso.com")
            ),
            Err(Refusal::Messages {
                code: "ErrorNonExistentMailbox",
                ..
            })
        ));
        if let Some(mailbox) = state.store.mailbox_mut("room1@contoso.com") {
            mailbox.impersonation_denied = true;
        }
        assert!(matches!(
            acting_mailbox(
                &state,
                &options,
                &Identity::App,
                &get,
                Some("room1@contoso.com")
            ),
            Err(Refusal::Messages {
                code: "ErrorImpersonateUserDenied",
                ..
            })
        ));
    }

    fn set(path: &str, present: &[&str]) -> Update {
        Update::Set {
            path: PropertyPath::Field(path.into()),
            item: ItemContent::Calendar(CalendarFields {
                subject: Some("s".into()),
                present: present.iter().map(|p| p.to_string()).collect(),
                ..CalendarFields::default()
            }),
        }
    }

    fn code_of(result: Result<FieldChanges, Message>) -> String {
        match result {
            Ok(_) => "NoError".into(),
            Err(message) => message.code,
        }
    }

    #[test]
    fn update_descriptions_are_checked_as_exchange_does() {
        assert_eq!(
            code_of(changes_of(&[set("item:Subject", &["Subject"])])),
            "NoError"
        );
        assert_eq!(
            code_of(changes_of(&[set("item:Subject", &["Subject", "Location"])])),
            "ErrorIncorrectUpdatePropertyCount"
        );
        assert_eq!(
            code_of(changes_of(&[set("calendar:Location", &["Subject"])])),
            "ErrorUpdatePropertyMismatch"
        );
        assert_eq!(
            code_of(changes_of(&[set("calendar:IsCancelled", &["IsCancelled"])])),
            "ErrorInvalidPropertySet"
        );
        assert_eq!(
            code_of(changes_of(&[Update::Delete {
                path: PropertyPath::Field("calendar:Start".into())
            }])),
            "ErrorInvalidPropertyDelete"
        );
        let cleared = changes_of(&[Update::Delete {
            path: PropertyPath::Field("calendar:Location".into()),
        }]);
        assert_eq!(cleared.ok().and_then(|c| c.location), Some(None));
    }

    #[test]
    fn calendar_view_range_limit_is_two_calendar_years() {
        let start = datetime!(2026-03-01 00:00 UTC);
        assert!(!range_too_big(start, datetime!(2028-03-01 00:00 UTC)));
        assert!(range_too_big(start, datetime!(2028-03-01 00:00:01 UTC)));
        let leap = datetime!(2028-02-29 12:00 UTC);
        assert!(!range_too_big(leap, datetime!(2030-03-01 12:00 UTC)));
        assert!(range_too_big(leap, datetime!(2030-03-02 12:00 UTC)));
    }
}
