-- pushgate worker, PostgreSQL: the event table, subscription bookkeeping and recorded incidents.
-- Several worker replicas may share these tables.

CREATE TABLE notification_events (
    id                           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant                       TEXT        NOT NULL,
    subscription_id              TEXT        NOT NULL,
    previous_watermark           TEXT,
    watermark                    TEXT,
    -- the watermark, or a digest of the event for one sent without a watermark
    dedupe_key                   TEXT        NOT NULL,
    position                     INTEGER     NOT NULL,
    kind                         TEXT        NOT NULL,
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
    received_at                  TIMESTAMPTZ NOT NULL,
    request_id                   TEXT,
    state                        TEXT        NOT NULL DEFAULT 'pending'
                                 CHECK (state IN ('pending', 'processing', 'processed', 'failed')),
    processed_at                 TIMESTAMPTZ,
    UNIQUE (subscription_id, dedupe_key)
);

CREATE INDEX notification_events_state ON notification_events (state, processed_at);

CREATE TABLE subscriptions (
    subscription_id      TEXT PRIMARY KEY,
    tenant               TEXT        NOT NULL,
    last_watermark       TEXT,
    last_notification_at TIMESTAMPTZ,
    state                TEXT        NOT NULL DEFAULT 'active'
                         CHECK (state IN ('active', 'resync_needed', 'resubscribe_needed', 'unsubscribed')),
    state_reason         TEXT,
    updated_at           TIMESTAMPTZ NOT NULL
);

CREATE INDEX subscriptions_state ON subscriptions (state);

CREATE TABLE subscription_events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant          TEXT        NOT NULL,
    subscription_id TEXT,
    kind            TEXT        NOT NULL CHECK (kind IN ('error', 'watermark_gap')),
    response_class  TEXT,
    response_code   TEXT,
    message_text    TEXT,
    detail          TEXT,
    dedupe_key      TEXT        NOT NULL UNIQUE,
    received_at     TIMESTAMPTZ NOT NULL,
    request_id      TEXT
);

CREATE INDEX subscription_events_subscription ON subscription_events (subscription_id);
