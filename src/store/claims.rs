//! The sync step's side of the event table: claiming stored events per subscription (a
//! subscription's events are handled by one worker at a time, in id order), finishing them,
//! retrying with back-off, and parking the ones that keep failing as dead letters.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::mailboxes::Lease;
use super::{StoreError, StoredEvent};

/// The oldest pending events of one subscription, claimed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedEvents {
    pub subscription_id: String,
    pub tenant: String,
    /// The mailbox the worker made the subscription for (absent for subscriptions registered
    /// under `unknown_subscriptions = "accept"`).
    pub mailbox: Option<String>,
    /// In id order: the order Exchange sent them in.
    pub events: Vec<StoredEvent>,
}

/// Claims on stored events, for the sync step.
///
/// A claim covers a subscription's oldest pending events and lasts until `lease.until`; while it
/// is live no other claim takes any event of that subscription, so events of one subscription
/// never overtake each other. A worker that dies leaves its claim to expire. Processing is at
/// least once: an event whose claim expired is claimed again.
#[async_trait]
pub trait EventClaims: Send + Sync {
    /// Claims, for at most `max_subscriptions` subscriptions (oldest waiting event first), up to
    /// `max_events` of their oldest pending events each: only subscriptions whose oldest pending
    /// event is due (`next_attempt_at` unset or passed) and none of whose events is claimed.
    async fn claim_events(
        &self,
        now: OffsetDateTime,
        lease: &Lease,
        max_subscriptions: usize,
        max_events: usize,
    ) -> Result<Vec<ClaimedEvents>, StoreError>;

    /// Marks events processed (their claims end with them). Returns how many were pending.
    async fn finish_events(&self, ids: &[i64], now: OffsetDateTime) -> Result<u64, StoreError>;

    /// Gives back `owner`'s claims on these events without processing them (shutdown, or the
    /// rest of a batch after a failure), so their subscription can be claimed at once.
    async fn release_events(&self, ids: &[i64], owner: &str) -> Result<u64, StoreError>;

    /// Processing the event failed: attempts + 1, the error kept, and the event (with every later
    /// event of its subscription) waits until `next_attempt_at`. `owner`'s claims on the
    /// subscription are released. False when the event is not pending.
    async fn retry_event(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        next_attempt_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Parks the event as a dead letter (state `failed`, the error kept), so the later events of
    /// its subscription go on; `owner`'s claims on the subscription are released. False when the
    /// event is not pending.
    async fn dead_letter(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Events waiting for the sync step (state `pending`, those waiting out a failed attempt
    /// included) in id order, after `after`, at most `limit` (`pushgate events list`).
    async fn pending_events(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Dead letters in id order, after `after`, at most `limit`.
    async fn dead_events(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Makes a dead letter pending again with a fresh count of attempts. It is then the oldest
    /// pending event of its subscription and is handled next (processing reads the item as it is
    /// now, so a late replay applies nothing stale). False when it was not a dead letter.
    async fn replay_event(&self, id: i64) -> Result<bool, StoreError>;

    /// Ends every lease an earlier run of this worker instance left behind: claims on events,
    /// outbox leases, mailbox leases and resync holds whose owner starts with `owner_prefix`. A
    /// worker killed without the chance to release them would otherwise hold them until they
    /// expire (minutes), and its subscriptions, writes and Subscribe calls would wait that long
    /// after a restart. Returns how many rows were released.
    async fn release_leases_of_previous_run(&self, owner_prefix: &str) -> Result<u64, StoreError>;
}

/// What [`EventClaims::release_leases_of_previous_run`] releases: (table, owner, until) of every
/// lease the worker takes (event claims, outbox writes, Subscribe calls, resyncs).
pub(crate) const RELEASE_PREVIOUS_RUN: [(&str, &str, &str); 4] = [
    ("notification_events", "claimed_by", "claimed_until"),
    ("outbox", "lease_owner", "lease_until"),
    ("mailboxes", "lease_owner", "lease_until"),
    ("mailboxes", "resync_owner", "resync_until"),
];

/// `UPDATE` releasing the leases of one table whose owner starts with parameter `param`.
pub(crate) fn release_previous_run_sql(
    (table, owner, until): (&str, &str, &str),
    param: &str,
) -> String {
    format!(
        "UPDATE {table} SET {owner} = NULL, {until} = NULL \
         WHERE {owner} IS NOT NULL AND substr({owner}, 1, length({param})) = {param}"
    )
}
