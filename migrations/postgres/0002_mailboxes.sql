-- pushgate worker, PostgreSQL: mailboxes with sync switched on or off, and the link from each
-- subscription to the mailbox it was made for (process A: one live push subscription per synced
-- mailbox). Replicas share the rows; a lease keeps one Subscribe per mailbox in flight.

CREATE TABLE mailboxes (
    address             TEXT PRIMARY KEY,
    tenant              TEXT        NOT NULL,
    sync                BOOLEAN     NOT NULL,
    state               TEXT        NOT NULL
                        CHECK (state IN ('subscribing', 'active', 'renewing', 'failed', 'off')),
    subscription_id     TEXT,
    last_error          TEXT,
    renew_cause         TEXT,
    attempts            INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at     TIMESTAMPTZ,
    subscribed_at       TIMESTAMPTZ,
    resync_requested_at TIMESTAMPTZ,
    lease_owner         TEXT,
    lease_until         TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);

CREATE INDEX mailboxes_work ON mailboxes (sync, state, next_attempt_at);
CREATE INDEX mailboxes_subscription ON mailboxes (subscription_id);

ALTER TABLE subscriptions ADD COLUMN mailbox TEXT;
ALTER TABLE subscriptions ADD COLUMN replay_from TEXT;
