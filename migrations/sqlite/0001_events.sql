-- pushgate worker, SQLite: the event table, subscription bookkeeping and recorded incidents.
-- Instants are TEXT in one fixed-width UTC form (2026-11-20T08:15:02.123456Z), so they sort as text.

CREATE TABLE notification_events (
    id                           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant                       TEXT    NOT NULL,
    subscription_id              TEXT    NOT NULL,
    previous_watermark           TEXT,
    watermark                    TEXT,
    -- the watermark, or a digest of the event for one sent without a watermark
    dedupe_key                   TEXT    NOT NULL,
    position                     INTEGER NOT NULL,
    kind                         TEXT    NOT NULL,
    object_kind                  TEXT CHECK (object_kind IN ('item', 'folder')),
    object_id                    TEXT,
    object_change_key            TEXT,
    parent_folder_id             TEXT,
    parent_folder_change_key     TEXT,
    old_object_kind              TEXT CHECK (old_object_kind IN ('item', 'folder')),
    old_object_id                TEXT,
    old_object_change_key        TEXT,
    old_parent_folder_id         TEXT,
    old_parent_folder_change_key TEXT,
    unread_count                 INTEGER,
    event_time                   TEXT,
    received_at                  TEXT    NOT NULL,
    request_id                   TEXT,
    state                        TEXT    NOT NULL DEFAULT 'pending'
                                 CHECK (state IN ('pending', 'processing', 'processed', 'failed')),
    processed_at                 TEXT,
    UNIQUE (subscription_id, dedupe_key)
);

CREATE INDEX notification_events_state ON notification_events (state, processed_at);

CREATE TABLE subscriptions (
    subscription_id      TEXT PRIMARY KEY,
    tenant               TEXT NOT NULL,
    last_watermark       TEXT,
    last_notification_at TEXT,
    state                TEXT NOT NULL DEFAULT 'active'
                         CHECK (state IN ('active', 'resync_needed', 'resubscribe_needed', 'unsubscribed')),
    state_reason         TEXT,
    updated_at           TEXT NOT NULL
) WITHOUT ROWID;

CREATE INDEX subscriptions_state ON subscriptions (state);

CREATE TABLE subscription_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant          TEXT NOT NULL,
    subscription_id TEXT,
    kind            TEXT NOT NULL CHECK (kind IN ('error', 'watermark_gap')),
    response_class  TEXT,
    response_code   TEXT,
    message_text    TEXT,
    detail          TEXT,
    dedupe_key      TEXT NOT NULL UNIQUE,
    received_at     TEXT NOT NULL,
    request_id      TEXT
);

CREATE INDEX subscription_events_subscription ON subscription_events (subscription_id);
