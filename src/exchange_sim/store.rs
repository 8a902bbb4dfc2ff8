//! The simulated mailboxes: folders, calendar items and each mailbox's event log, with
//! Exchange's rules: ItemIds are stable until the item moves (a move gives a new id), every
//! modification gives a new ChangeKey, Deleted Items and the recoverable-items folder are real
//! folders whose items keep their fields, a hard delete removes. Every change appends to the log
//! the events Exchange raises for it (the item's event plus a ModifiedEvent for each folder whose
//! content changed); subscriptions read the log. Pure: the caller passes the time.

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;

use super::codec::{self, ItemKey};
use super::request::{ExtendedFieldUri, ExtendedValue};
use crate::notification::EventKind;

/// The folders of a simulated mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FolderKind {
    MsgFolderRoot,
    Calendar,
    DeletedItems,
    RecoverableItemsRoot,
    RecoverableItemsDeletions,
}

impl FolderKind {
    pub const ALL: [FolderKind; 5] = [
        FolderKind::MsgFolderRoot,
        FolderKind::Calendar,
        FolderKind::DeletedItems,
        FolderKind::RecoverableItemsRoot,
        FolderKind::RecoverableItemsDeletions,
    ];

    /// The `DistinguishedFolderId` name.
    pub fn distinguished_name(self) -> &'static str {
        match self {
            FolderKind::MsgFolderRoot => "msgfolderroot",
            FolderKind::Calendar => "calendar",
            FolderKind::DeletedItems => "deleteditems",
            FolderKind::RecoverableItemsRoot => "recoverableitemsroot",
            FolderKind::RecoverableItemsDeletions => "recoverableitemsdeletions",
        }
    }

    pub fn from_distinguished_name(name: &str) -> Option<FolderKind> {
        FolderKind::ALL
            .into_iter()
            .find(|f| f.distinguished_name() == name)
    }

    pub fn display_name(self) -> &'static str {
        match self {
            FolderKind::MsgFolderRoot => "Top of Information Store",
            FolderKind::Calendar => "Calendar",
            FolderKind::DeletedItems => "Deleted Items",
            FolderKind::RecoverableItemsRoot => "Recoverable Items",
            FolderKind::RecoverableItemsDeletions => "Deletions",
        }
    }

    pub fn folder_class(self) -> Option<&'static str> {
        match self {
            FolderKind::Calendar => Some("IPF.Appointment"),
            FolderKind::DeletedItems => Some("IPF.Note"),
            _ => None,
        }
    }

    /// The number inside its FolderId.
    pub fn number(self) -> u8 {
        match self {
            FolderKind::MsgFolderRoot => 1,
            FolderKind::Calendar => 2,
            FolderKind::DeletedItems => 3,
            FolderKind::RecoverableItemsRoot => 4,
            FolderKind::RecoverableItemsDeletions => 5,
        }
    }

    pub fn from_number(number: u8) -> Option<FolderKind> {
        FolderKind::ALL.into_iter().find(|f| f.number() == number)
    }

    /// The folder it sits in (the roots sit in the mailbox root, which is not simulated: they
    /// name themselves).
    pub fn parent(self) -> FolderKind {
        match self {
            FolderKind::Calendar | FolderKind::DeletedItems | FolderKind::MsgFolderRoot => {
                FolderKind::MsgFolderRoot
            }
            FolderKind::RecoverableItemsRoot | FolderKind::RecoverableItemsDeletions => {
                FolderKind::RecoverableItemsRoot
            }
        }
    }

    pub fn child_folder_count(self) -> u64 {
        match self {
            FolderKind::MsgFolderRoot => 2,
            FolderKind::RecoverableItemsRoot => 1,
            _ => 0,
        }
    }
}

/// A calendar item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub serial: u64,
    pub id: String,
    pub folder: FolderKind,
    /// Its version; the ChangeKey is derived from it.
    pub version: u64,
    pub subject: Option<String>,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub location: Option<String>,
    pub is_cancelled: bool,
    pub extended: Vec<(ExtendedFieldUri, ExtendedValue)>,
    pub created: OffsetDateTime,
    pub last_modified: OffsetDateTime,
}

impl Item {
    pub fn change_key(&self) -> String {
        codec::item_change_key(self.version)
    }

    pub fn extended_value(&self, uri: &ExtendedFieldUri) -> Option<&ExtendedValue> {
        self.extended
            .iter()
            .find(|(u, _)| u == uri)
            .map(|(_, value)| value)
    }
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoggedObject {
    Item(String),
    Folder(FolderKind),
}

/// One entry of a mailbox's event log. Its position (1-based index) is what watermarks name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub kind: EventKind,
    pub object: LoggedObject,
    pub parent: FolderKind,
    /// Moved and Copied events: the item's id before, and where it was.
    pub old_item: Option<String>,
    pub old_parent: Option<FolderKind>,
    pub timestamp: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct Mailbox {
    pub address: String,
    /// Names the mailbox inside its ids and watermarks.
    pub tag: u32,
    /// Watermark epoch: expiring watermarks starts a new one.
    pub epoch: u32,
    pub items: BTreeMap<u64, Item>,
    pub log: Vec<LogEntry>,
    pub impersonation_denied: bool,
    folder_versions: HashMap<FolderKind, u64>,
}

impl Mailbox {
    /// The position of the newest log entry (0: empty log).
    pub fn head(&self) -> u64 {
        self.log.len() as u64
    }

    pub fn folder_id(&self, folder: FolderKind) -> String {
        codec::folder_id(self.tag, folder.number())
    }

    pub fn folder_change_key(&self, folder: FolderKind) -> String {
        codec::folder_change_key(self.folder_versions.get(&folder).copied().unwrap_or(0))
    }

    /// The folder a FolderId of this mailbox names.
    pub fn folder_by_id(&self, id: &str) -> Option<FolderKind> {
        let (tag, number) = codec::parse_folder_id(id)?;
        (tag == self.tag).then_some(())?;
        FolderKind::from_number(number)
    }

    pub fn items_in(&self, folder: FolderKind) -> impl Iterator<Item = &Item> {
        self.items.values().filter(move |i| i.folder == folder)
    }

    /// Calendar items with End > `start` and Start < `end`, by start time (CalendarView).
    pub fn calendar_view(&self, start: OffsetDateTime, end: OffsetDateTime) -> Vec<&Item> {
        let mut items: Vec<&Item> = self
            .items_in(FolderKind::Calendar)
            .filter(|i| i.end > start && i.start < end)
            .collect();
        items.sort_by_key(|i| (i.start, i.serial));
        items
    }
}

/// Why a change could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    UnknownMailbox(String),
    /// Malformed: not an id of ours.
    MalformedId(String),
    ItemNotFound(String),
    EndBeforeStart,
    /// The operation is not possible for an item in this folder.
    WrongFolder(FolderKind),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::UnknownMailbox(m) => write!(f, "no mailbox {m}"),
            StoreError::MalformedId(id) => write!(f, "malformed item id {id}"),
            StoreError::ItemNotFound(id) => write!(f, "no item {id}"),
            StoreError::EndBeforeStart => f.write_str("the end is before the start"),
            StoreError::WrongFolder(folder) => {
                write!(
                    f,
                    "not possible for an item in {}",
                    folder.distinguished_name()
                )
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// The fields of a new calendar item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    pub subject: Option<String>,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub location: Option<String>,
    pub extended: Vec<(ExtendedFieldUri, ExtendedValue)>,
}

/// A change to an item's fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldChanges {
    pub subject: Option<Option<String>>,
    pub start: Option<OffsetDateTime>,
    pub end: Option<OffsetDateTime>,
    pub location: Option<Option<String>>,
    pub is_cancelled: Option<bool>,
    /// Extended properties to set (`Some`) or remove (`None`).
    pub extended: Vec<(ExtendedFieldUri, Option<ExtendedValue>)>,
}

/// All simulated mailboxes.
#[derive(Debug, Clone, Default)]
pub struct Store {
    mailboxes: BTreeMap<String, Mailbox>,
    by_tag: HashMap<u32, String>,
    next_serial: u64,
    next_version: u64,
    salt: u64,
}

/// Mailbox addresses compare without regard to case, as SMTP addresses do in Exchange.
pub fn mailbox_key(address: &str) -> String {
    address.trim().to_ascii_lowercase()
}

impl Store {
    /// `seed` makes ids differ between simulator runs (a stale id from another run is unknown).
    pub fn new(seed: u64) -> Store {
        Store {
            salt: seed | 1,
            ..Store::default()
        }
    }

    fn next_salt(&mut self) -> u64 {
        // xorshift: cheap, deterministic per seed; ids only need to differ.
        let mut x = self.salt;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.salt = x;
        x
    }

    fn bump_version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    /// Adds a mailbox; false when it exists already.
    pub fn add_mailbox(&mut self, address: &str) -> bool {
        let key = mailbox_key(address);
        if key.is_empty() || self.mailboxes.contains_key(&key) {
            return false;
        }
        let mut tag = (self.next_salt() >> 32) as u32;
        while tag == 0 || self.by_tag.contains_key(&tag) {
            tag = tag.wrapping_add(0x9E37_79B9);
        }
        self.by_tag.insert(tag, key.clone());
        self.mailboxes.insert(
            key,
            Mailbox {
                address: address.trim().to_string(),
                tag,
                epoch: 1,
                items: BTreeMap::new(),
                log: Vec::new(),
                impersonation_denied: false,
                folder_versions: HashMap::new(),
            },
        );
        true
    }

    pub fn mailbox(&self, address: &str) -> Option<&Mailbox> {
        self.mailboxes.get(&mailbox_key(address))
    }

    pub fn mailbox_mut(&mut self, address: &str) -> Option<&mut Mailbox> {
        self.mailboxes.get_mut(&mailbox_key(address))
    }

    pub fn mailboxes(&self) -> impl Iterator<Item = &Mailbox> {
        self.mailboxes.values()
    }

    fn existing(&mut self, address: &str) -> Result<&mut Mailbox, StoreError> {
        self.mailboxes
            .get_mut(&mailbox_key(address))
            .ok_or_else(|| StoreError::UnknownMailbox(address.to_string()))
    }

    /// The serial of the item `id` names in `address`. An id of another mailbox is not found
    /// there, as in Exchange when the id belongs to a mailbox the caller is not acting for.
    pub fn find(&self, address: &str, id: &str) -> Result<u64, StoreError> {
        let mailbox = self
            .mailbox(address)
            .ok_or_else(|| StoreError::UnknownMailbox(address.to_string()))?;
        let key = codec::parse_item_id(id).ok_or_else(|| StoreError::MalformedId(id.into()))?;
        match mailbox.items.get(&key.serial) {
            Some(item) if key.mailbox_tag == mailbox.tag && item.id == id => Ok(key.serial),
            _ => Err(StoreError::ItemNotFound(id.into())),
        }
    }

    pub fn item(&self, address: &str, id: &str) -> Result<&Item, StoreError> {
        let serial = self.find(address, id)?;
        self.mailbox(address)
            .and_then(|m| m.items.get(&serial))
            .ok_or_else(|| StoreError::ItemNotFound(id.into()))
    }

    fn log_folder_modified(mailbox: &mut Mailbox, folder: FolderKind, now: OffsetDateTime) {
        *mailbox.folder_versions.entry(folder).or_insert(0) += 1;
        mailbox.log.push(LogEntry {
            kind: EventKind::Modified,
            object: LoggedObject::Folder(folder),
            parent: folder.parent(),
            old_item: None,
            old_parent: None,
            timestamp: now,
        });
    }

    /// A new item in `folder` (the calendar, in practice): CreatedEvent, then the folder's
    /// ModifiedEvent.
    pub fn create_item(
        &mut self,
        address: &str,
        folder: FolderKind,
        new: NewItem,
        now: OffsetDateTime,
    ) -> Result<&Item, StoreError> {
        if new.end < new.start {
            return Err(StoreError::EndBeforeStart);
        }
        self.existing(address)?;
        self.next_serial += 1;
        let serial = self.next_serial;
        let version = self.bump_version();
        let salt = self.next_salt();
        let mailbox = self.existing(address)?;
        let id = codec::item_id(
            ItemKey {
                mailbox_tag: mailbox.tag,
                serial,
            },
            salt,
        );
        let mut extended: Vec<(ExtendedFieldUri, ExtendedValue)> = Vec::new();
        for (uri, value) in new.extended {
            set_extended(&mut extended, uri, Some(value));
        }
        mailbox.items.insert(
            serial,
            Item {
                serial,
                id: id.clone(),
                folder,
                version,
                subject: new.subject,
                start: new.start,
                end: new.end,
                location: new.location,
                is_cancelled: false,
                extended,
                created: now,
                last_modified: now,
            },
        );
        mailbox.log.push(LogEntry {
            kind: EventKind::Created,
            object: LoggedObject::Item(id),
            parent: folder,
            old_item: None,
            old_parent: None,
            timestamp: now,
        });
        Self::log_folder_modified(mailbox, folder, now);
        mailbox
            .items
            .get(&serial)
            .ok_or(StoreError::ItemNotFound(String::new()))
    }

    /// Changes fields: a new ChangeKey, a ModifiedEvent for the item and one for its folder.
    pub fn update_item(
        &mut self,
        address: &str,
        id: &str,
        changes: FieldChanges,
        now: OffsetDateTime,
    ) -> Result<&Item, StoreError> {
        let serial = self.find(address, id)?;
        let version = self.bump_version();
        let mailbox = self.existing(address)?;
        let item = mailbox
            .items
            .get_mut(&serial)
            .ok_or_else(|| StoreError::ItemNotFound(id.into()))?;
        let start = changes.start.unwrap_or(item.start);
        let end = changes.end.unwrap_or(item.end);
        if end < start {
            return Err(StoreError::EndBeforeStart);
        }
        item.start = start;
        item.end = end;
        if let Some(subject) = changes.subject {
            item.subject = subject;
        }
        if let Some(location) = changes.location {
            item.location = location;
        }
        if let Some(cancelled) = changes.is_cancelled {
            item.is_cancelled = cancelled;
        }
        for (uri, value) in changes.extended {
            set_extended(&mut item.extended, uri, value);
        }
        item.version = version;
        item.last_modified = now;
        let folder = item.folder;
        mailbox.log.push(LogEntry {
            kind: EventKind::Modified,
            object: LoggedObject::Item(id.to_string()),
            parent: folder,
            old_item: None,
            old_parent: None,
            timestamp: now,
        });
        Self::log_folder_modified(mailbox, folder, now);
        mailbox
            .items
            .get(&serial)
            .ok_or_else(|| StoreError::ItemNotFound(id.into()))
    }

    /// Moves an item: it gets a new ItemId (and ChangeKey) and keeps its fields; a MovedEvent
    /// with the old id and folder, and a ModifiedEvent for both folders. Moving to the folder it
    /// is in changes nothing.
    pub fn move_item(
        &mut self,
        address: &str,
        id: &str,
        to: FolderKind,
        now: OffsetDateTime,
    ) -> Result<&Item, StoreError> {
        let serial = self.find(address, id)?;
        let current = self
            .mailbox(address)
            .and_then(|m| m.items.get(&serial))
            .map(|i| i.folder);
        if current == Some(to) {
            return self.item(address, id);
        }
        self.next_serial += 1;
        let new_serial = self.next_serial;
        let version = self.bump_version();
        let salt = self.next_salt();
        let mailbox = self.existing(address)?;
        let mut item = mailbox
            .items
            .remove(&serial)
            .ok_or_else(|| StoreError::ItemNotFound(id.into()))?;
        let from = item.folder;
        let new_id = codec::item_id(
            ItemKey {
                mailbox_tag: mailbox.tag,
                serial: new_serial,
            },
            salt,
        );
        item.serial = new_serial;
        item.id = new_id.clone();
        item.folder = to;
        item.version = version;
        item.last_modified = now;
        mailbox.items.insert(new_serial, item);
        mailbox.log.push(LogEntry {
            kind: EventKind::Moved,
            object: LoggedObject::Item(new_id),
            parent: to,
            old_item: Some(id.to_string()),
            old_parent: Some(from),
            timestamp: now,
        });
        Self::log_folder_modified(mailbox, from, now);
        Self::log_folder_modified(mailbox, to, now);
        mailbox
            .items
            .get(&new_serial)
            .ok_or_else(|| StoreError::ItemNotFound(id.into()))
    }

    /// Removes an item for good: a DeletedEvent and the folder's ModifiedEvent.
    pub fn hard_delete(
        &mut self,
        address: &str,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let serial = self.find(address, id)?;
        let mailbox = self.existing(address)?;
        let item = mailbox
            .items
            .remove(&serial)
            .ok_or_else(|| StoreError::ItemNotFound(id.into()))?;
        mailbox.log.push(LogEntry {
            kind: EventKind::Deleted,
            object: LoggedObject::Item(item.id),
            parent: item.folder,
            old_item: None,
            old_parent: None,
            timestamp: now,
        });
        Self::log_folder_modified(mailbox, item.folder, now);
        Ok(())
    }

    /// Starts a new watermark epoch: every watermark handed out so far is refused from now on
    /// (Exchange keeps events for 30 days).
    pub fn expire_watermarks(&mut self, address: &str) -> Result<(), StoreError> {
        let mailbox = self.existing(address)?;
        mailbox.epoch += 1;
        Ok(())
    }
}

fn set_extended(
    list: &mut Vec<(ExtendedFieldUri, ExtendedValue)>,
    uri: ExtendedFieldUri,
    value: Option<ExtendedValue>,
) {
    list.retain(|(u, _)| *u != uri);
    if let Some(value) = value {
        list.push((uri, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-05-04 09:00 UTC);

    fn new_item(start: OffsetDateTime, end: OffsetDateTime) -> NewItem {
        NewItem {
            subject: Some("Board meeting".into()),
            start,
            end,
            location: Some("Room 1".into()),
            extended: vec![(
                ExtendedFieldUri::public_string("AppointmentOid"),
                ExtendedValue::Single("res-1".into()),
            )],
        }
    }

    fn store() -> Store {
        let mut store = Store::new(7);
        assert!(store.add_mailbox("Room1@contoso.com"));
        assert!(!store.add_mailbox("room1@CONTOSO.com"), "case-insensitive");
        store
    }

    #[test]
    fn ids_stay_change_keys_change_moves_renew_ids() {
        let mut store = store();
        let item = store
            .create_item(
                "room1@contoso.com",
                FolderKind::Calendar,
                new_item(
                    datetime!(2026-05-06 08:00 UTC),
                    datetime!(2026-05-06 09:00 UTC),
                ),
                NOW,
            )
            .unwrap()
            .clone();
        let updated = store
            .update_item(
                "room1@contoso.com",
                &item.id,
                FieldChanges {
                    subject: Some(Some("Changed".into())),
                    ..FieldChanges::default()
                },
                NOW,
            )
            .unwrap()
            .clone();
        assert_eq!(updated.id, item.id, "the id is stable");
        assert_ne!(updated.change_key(), item.change_key(), "a new change key");
        let moved = store
            .move_item("room1@contoso.com", &item.id, FolderKind::DeletedItems, NOW)
            .unwrap()
            .clone();
        assert_ne!(moved.id, item.id, "a move gives a new id");
        assert_eq!(moved.subject.as_deref(), Some("Changed"), "fields kept");
        assert_eq!(moved.extended, updated.extended);
        assert!(matches!(
            store.item("room1@contoso.com", &item.id),
            Err(StoreError::ItemNotFound(_))
        ));
        assert!(matches!(
            store.item("room1@contoso.com", "not-an-id"),
            Err(StoreError::MalformedId(_))
        ));
        let restored = store
            .move_item("room1@contoso.com", &moved.id, FolderKind::Calendar, NOW)
            .unwrap()
            .clone();
        store
            .hard_delete("room1@contoso.com", &restored.id, NOW)
            .unwrap();
        let mailbox = store.mailbox("room1@contoso.com").unwrap();
        assert!(mailbox.items.is_empty());
        let kinds: Vec<(EventKind, bool)> = mailbox
            .log
            .iter()
            .map(|e| (e.kind, matches!(e.object, LoggedObject::Folder(_))))
            .collect();
        use EventKind::*;
        assert_eq!(
            kinds,
            vec![
                (Created, false),
                (Modified, true),
                (Modified, false),
                (Modified, true),
                (Moved, false),
                (Modified, true),
                (Modified, true),
                (Moved, false),
                (Modified, true),
                (Modified, true),
                (Deleted, false),
                (Modified, true),
            ]
        );
        let moved_entry = &mailbox.log[4];
        assert_eq!(moved_entry.old_item.as_deref(), Some(item.id.as_str()));
        assert_eq!(moved_entry.old_parent, Some(FolderKind::Calendar));
        assert_eq!(moved_entry.parent, FolderKind::DeletedItems);
    }

    #[test]
    fn ids_of_another_mailbox_are_not_found_there() {
        let mut store = store();
        store.add_mailbox("room2@contoso.com");
        let id = store
            .create_item(
                "room1@contoso.com",
                FolderKind::Calendar,
                new_item(
                    datetime!(2026-05-06 08:00 UTC),
                    datetime!(2026-05-06 09:00 UTC),
                ),
                NOW,
            )
            .unwrap()
            .id
            .clone();
        assert!(matches!(
            store.item("room2@contoso.com", &id),
            Err(StoreError::ItemNotFound(_))
        ));
    }

    #[test]
    fn calendar_view_overlaps_and_end_before_start() {
        let mut store = store();
        let at = |h: u8| datetime!(2026-05-06 00:00 UTC) + time::Duration::hours(i64::from(h));
        for (s, e) in [(8, 9), (9, 10), (10, 12), (13, 14)] {
            store
                .create_item(
                    "room1@contoso.com",
                    FolderKind::Calendar,
                    new_item(at(s), at(e)),
                    NOW,
                )
                .unwrap();
        }
        let mailbox = store.mailbox("room1@contoso.com").unwrap();
        let starts: Vec<OffsetDateTime> = mailbox
            .calendar_view(at(9), at(11))
            .iter()
            .map(|i| i.start)
            .collect();
        // End > 09:00 and Start < 11:00: not the 08-09 item, not the 13-14 one.
        assert_eq!(starts, vec![at(9), at(10)]);
        assert_eq!(
            store.create_item(
                "room1@contoso.com",
                FolderKind::Calendar,
                new_item(at(10), at(9)),
                NOW
            ),
            Err(StoreError::EndBeforeStart)
        );
    }
}
