-- pushgate worker, SQLite: reservations and the outbox of calendar writes that follows each web
-- change (processes B-F), the sync step's claims and retries on stored events, and what it
-- keeps per mailbox. Instants are TEXT in the fixed-width UTC form of 0001.

CREATE TABLE reservations (
    -- `res-` and 32 hex digits: the AppointmentOid carried by the calendar item
    id          TEXT PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    -- the room mailbox's address, lower-cased
    mailbox     TEXT    NOT NULL,
    resource    TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    start_at    TEXT    NOT NULL,
    end_at      TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('active', 'cancelled')),
    -- who created it, and so who created the calendar item
    source      TEXT    NOT NULL CHECK (source IN ('web', 'addin')),
    item_id     TEXT,
    change_key  TEXT,
    sync_state  TEXT    NOT NULL CHECK (sync_state IN ('pending', 'synced', 'retrying', 'failed')),
    -- 1 at creation, +1 for every change of subject, start, end, resource or status
    version     INTEGER NOT NULL CHECK (version >= 1),
    last_change TEXT    NOT NULL CHECK (last_change IN ('web', 'addin', 'exchange')),
    last_error  TEXT,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    -- the API asks for start < end; an item shortened to nothing in Outlook is mirrored as is
    CHECK (start_at <= end_at)
) WITHOUT ROWID;

-- One reservation per item: the item an event names finds its reservation here.
CREATE UNIQUE INDEX reservations_item ON reservations (mailbox, item_id) WHERE item_id IS NOT NULL;
-- Lists by mailbox and by time (cursor order is start, id); the resync's window per mailbox.
CREATE INDEX reservations_mailbox_start ON reservations (mailbox, start_at, id);
CREATE INDEX reservations_start ON reservations (start_at, id);

-- Calendar writes owed to Exchange: one row per web change, written in the change's transaction.
-- The writer brings the item to the reservation's current state, then marks every row up to the
-- version written as done.
CREATE TABLE outbox (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    reservation_id         TEXT    NOT NULL,
    -- the reservation version to bring the item to
    version                INTEGER NOT NULL,
    state                  TEXT    NOT NULL DEFAULT 'pending'
                           CHECK (state IN ('pending', 'done', 'failed')),
    attempts               INTEGER NOT NULL DEFAULT 0,
    next_attempt_at        TEXT    NOT NULL,
    -- a CreateItem may have happened: look for the item carrying the reservation id first
    create_outcome_unknown INTEGER NOT NULL DEFAULT 0 CHECK (create_outcome_unknown IN (0, 1)),
    last_error             TEXT,
    lease_owner            TEXT,
    lease_until            TEXT,
    created_at             TEXT    NOT NULL,
    updated_at             TEXT    NOT NULL
);

CREATE INDEX outbox_reservation ON outbox (reservation_id, state, id);
CREATE INDEX outbox_pending ON outbox (id, next_attempt_at) WHERE state = 'pending';

ALTER TABLE notification_events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE notification_events ADD COLUMN last_error TEXT;
-- a failed attempt makes the event (and its subscription's later events) wait until then
ALTER TABLE notification_events ADD COLUMN next_attempt_at TEXT;
ALTER TABLE notification_events ADD COLUMN claimed_by TEXT;
ALTER TABLE notification_events ADD COLUMN claimed_until TEXT;

-- A subscription's pending events in order: what a claim takes.
CREATE INDEX notification_events_pending ON notification_events (subscription_id, id)
    WHERE state = 'pending';

-- the calendar's own folder id (GetFolder), to tell moves out of the calendar from moves in it
ALTER TABLE mailboxes ADD COLUMN calendar_folder_id TEXT;
ALTER TABLE mailboxes ADD COLUMN resynced_at TEXT;
-- a worker holds the resync request while it reads the calendar (or defers it after a failure)
ALTER TABLE mailboxes ADD COLUMN resync_owner TEXT;
ALTER TABLE mailboxes ADD COLUMN resync_until TEXT;

CREATE INDEX mailboxes_resync ON mailboxes (resync_requested_at) WHERE resync_requested_at IS NOT NULL;
