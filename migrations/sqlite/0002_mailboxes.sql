-- pushgate worker, SQLite: mailboxes with sync switched on or off, and the link from each
-- subscription to the mailbox it was made for (process A: one live push subscription per synced
-- mailbox). Instants are TEXT in the fixed-width UTC form of 0001.

CREATE TABLE mailboxes (
    -- the SMTP address, lower-cased
    address             TEXT PRIMARY KEY,
    tenant              TEXT    NOT NULL,
    sync                INTEGER NOT NULL CHECK (sync IN (0, 1)),
    state               TEXT    NOT NULL
                        CHECK (state IN ('subscribing', 'active', 'renewing', 'failed', 'off')),
    -- the mailbox's current subscription (subscriptions.subscription_id)
    subscription_id     TEXT,
    last_error          TEXT,
    -- why the pending or running renewal was started
    renew_cause         TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    -- earliest next Subscribe attempt (back-off, hourly retry of failed mailboxes)
    next_attempt_at     TEXT,
    subscribed_at       TEXT,
    -- set when the calendar must be read again (fresh subscription, refused watermark)
    resync_requested_at TEXT,
    -- a worker holds the mailbox while its Subscribe call runs
    lease_owner         TEXT,
    lease_until         TEXT,
    created_at          TEXT    NOT NULL,
    updated_at          TEXT    NOT NULL
) WITHOUT ROWID;

CREATE INDEX mailboxes_work ON mailboxes (sync, state, next_attempt_at);
CREATE INDEX mailboxes_subscription ON mailboxes (subscription_id);

ALTER TABLE subscriptions ADD COLUMN mailbox TEXT;
-- the last watermark stored before a gap was seen: a renewal replays from here
ALTER TABLE subscriptions ADD COLUMN replay_from TEXT;
