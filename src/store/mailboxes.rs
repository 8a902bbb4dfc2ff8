//! Mailboxes with sync switched on or off, and the bookkeeping of their push subscriptions
//! (process A). The state changes are pure functions over a row; each backend loads the row
//! inside a transaction, applies one of them and writes the result back, so both backends follow
//! the same rules.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{StoreError, SubscriptionRecord, SubscriptionState};

/// Where a mailbox's subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailboxState {
    /// Sync was switched on; the first Subscribe is pending or running.
    Subscribing,
    /// A subscription is stored and believed alive.
    Active,
    /// The subscription is being replaced (silence, an Error notification, a watermark gap...).
    Renewing,
    /// Exchange refused to subscribe it (no such mailbox, impersonation denied, EWS off);
    /// retried hourly.
    Failed,
    /// Sync is switched off.
    Off,
}

impl MailboxState {
    pub const ALL: [MailboxState; 5] = [
        MailboxState::Subscribing,
        MailboxState::Active,
        MailboxState::Renewing,
        MailboxState::Failed,
        MailboxState::Off,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MailboxState::Subscribing => "subscribing",
            MailboxState::Active => "active",
            MailboxState::Renewing => "renewing",
            MailboxState::Failed => "failed",
            MailboxState::Off => "off",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// Why a subscription is renewed (the metric label `cause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RenewCause {
    /// Nothing heard for longer than 2 x StatusFrequency.
    Silence,
    /// Exchange sent an Error notification (it drops the subscription after one).
    ErrorNotification,
    /// A notification's PreviousWatermark did not match: events were missed.
    WatermarkGap,
    /// Exchange refused the watermark of a renewal: subscribed fresh, calendar to be resynced.
    RefusedWatermark,
    /// Found silent when the worker started.
    Start,
}

impl RenewCause {
    pub const ALL: [RenewCause; 5] = [
        RenewCause::Silence,
        RenewCause::ErrorNotification,
        RenewCause::WatermarkGap,
        RenewCause::RefusedWatermark,
        RenewCause::Start,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RenewCause::Silence => "silence",
            RenewCause::ErrorNotification => "error_notification",
            RenewCause::WatermarkGap => "watermark_gap",
            RenewCause::RefusedWatermark => "refused_watermark",
            RenewCause::Start => "start",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|cause| cause.as_str() == text)
    }
}

/// One row of `mailboxes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRecord {
    /// The SMTP address, lower-cased.
    pub address: String,
    pub tenant: String,
    pub sync: bool,
    pub state: MailboxState,
    pub subscription_id: Option<String>,
    pub last_error: Option<String>,
    pub renew_cause: Option<RenewCause>,
    /// Failed Subscribe attempts since the last success.
    pub attempts: u32,
    pub next_attempt_at: Option<OffsetDateTime>,
    pub subscribed_at: Option<OffsetDateTime>,
    pub resync_requested_at: Option<OffsetDateTime>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A mailbox with its current subscription's row, when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxView {
    pub mailbox: MailboxRecord,
    pub subscription: Option<SubscriptionRecord>,
}

impl MailboxView {
    /// When Exchange was last heard from for this mailbox's subscription, or, before its first
    /// notification, when the subscription was made.
    pub fn last_heard_at(&self) -> Option<OffsetDateTime> {
        self.subscription
            .as_ref()
            .and_then(|s| s.last_notification_at)
            .or(self.mailbox.subscribed_at)
    }
}

/// `PUT /api/v1/mailboxes/{address}` and `pushgate mailboxes add|remove`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutMailbox {
    pub address: String,
    /// `None` keeps the stored tenant (or the default for a new mailbox).
    pub tenant: Option<String>,
    pub sync: bool,
}

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub view: MailboxView,
    pub created: bool,
}

/// The result of a Subscribe call, for [`MailboxStore::finish_subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeOutcome {
    Subscribed {
        subscription_id: String,
        watermark: String,
        /// The calendar must be read again (a fresh subscription replaced one whose missed
        /// events cannot be replayed).
        resync: bool,
    },
    /// Retry later: the state stays (subscribing or renewing), or becomes `failed`.
    Failed {
        error: String,
        next_attempt_at: OffsetDateTime,
        failed: bool,
        /// A new cause for the retry (a refused watermark makes the retry a fresh one).
        cause: Option<RenewCause>,
    },
}

/// What [`MailboxStore::finish_subscribe`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishOutcome {
    /// Recorded on the mailbox.
    Recorded,
    /// The mailbox was switched off, forgotten, or taken over meanwhile: a new subscription was
    /// stored as unwanted (its notifications get `Unsubscribe`), nothing else changed.
    Abandoned,
}

/// Counts for the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailboxSummary {
    pub by_state: Vec<(MailboxState, u64)>,
    /// The longest an active mailbox's subscription has been silent, as its last-heard instant.
    pub oldest_heard_at: Option<OffsetDateTime>,
}

/// The mailbox half of the worker's storage.
#[async_trait]
pub trait MailboxStore: Send + Sync {
    /// Switches sync on or off (idempotent) for every request, creating mailboxes that are new,
    /// in one transaction (an operator's list of 10,000 rooms is one commit). Switching off marks
    /// the current subscription unwanted in the same transaction. One outcome per request.
    async fn put_mailboxes(
        &self,
        requests: &[PutMailbox],
        now: OffsetDateTime,
    ) -> Result<Vec<PutOutcome>, StoreError>;

    /// [`MailboxStore::put_mailboxes`] for one mailbox.
    async fn put_mailbox(
        &self,
        request: &PutMailbox,
        now: OffsetDateTime,
    ) -> Result<PutOutcome, StoreError> {
        self.put_mailboxes(std::slice::from_ref(request), now)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Unavailable("no outcome for a put".into()))
    }

    async fn mailbox(&self, address: &str) -> Result<Option<MailboxView>, StoreError>;

    /// Mailboxes in address order, after `after` (a cursor), at most `limit`.
    async fn mailboxes(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MailboxView>, StoreError>;

    /// Switches sync off and forgets the mailbox; false when it was unknown.
    async fn delete_mailbox(&self, address: &str, now: OffsetDateTime) -> Result<bool, StoreError>;

    /// Mailboxes with sync on and no live lease that may need a Subscribe: attempts that are
    /// due, and active ones whose subscription is flagged by ingest or was last heard from
    /// before `silent_before`. Oldest need first, at most `limit`.
    async fn due_mailboxes(
        &self,
        now: OffsetDateTime,
        silent_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<MailboxView>, StoreError>;

    /// Takes the lease on each mailbox of `begins` and moves it to its state and cause, in one
    /// transaction, skipping mailboxes with sync off or a live lease. Returns the mailboxes taken,
    /// as they now stand.
    async fn begin_subscribes(
        &self,
        begins: &[BeginSubscribe],
        lease: &Lease,
        now: OffsetDateTime,
    ) -> Result<Vec<MailboxView>, StoreError>;

    /// [`MailboxStore::begin_subscribes`] for one mailbox; `None` when it was not taken.
    async fn begin_subscribe(
        &self,
        address: &str,
        lease: &Lease,
        state: MailboxState,
        cause: Option<RenewCause>,
        now: OffsetDateTime,
    ) -> Result<Option<MailboxView>, StoreError> {
        let begin = BeginSubscribe {
            address: address.to_string(),
            state,
            cause,
        };
        Ok(self
            .begin_subscribes(std::slice::from_ref(&begin), lease, now)
            .await?
            .pop())
    }

    /// Records the results of Subscribe calls made under `lease` and releases their leases, in
    /// one transaction. A new subscription replaces the old one (which becomes unwanted). One
    /// outcome per result.
    async fn finish_subscribes(
        &self,
        results: &[(String, SubscribeOutcome)],
        lease: &Lease,
        now: OffsetDateTime,
    ) -> Result<Vec<FinishOutcome>, StoreError>;

    /// [`MailboxStore::finish_subscribes`] for one mailbox.
    async fn finish_subscribe(
        &self,
        address: &str,
        lease: &Lease,
        outcome: &SubscribeOutcome,
        now: OffsetDateTime,
    ) -> Result<FinishOutcome, StoreError> {
        self.finish_subscribes(&[(address.to_string(), outcome.clone())], lease, now)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Unavailable("no outcome for a Subscribe".into()))
    }

    /// Gives back the leases `lease.owner` holds on `addresses` without a result (calls that
    /// never started, at shutdown), so another worker need not wait for them to expire.
    async fn release_leases(&self, addresses: &[String], lease: &Lease) -> Result<(), StoreError>;

    /// Is any Subscribe call running (a live lease on a subscribing or renewing mailbox)?
    async fn subscribe_in_flight(&self, now: OffsetDateTime) -> Result<bool, StoreError>;

    async fn mailbox_summary(&self) -> Result<MailboxSummary, StoreError>;

    /// What the sync step keeps for a mailbox's calendar; `None` when the mailbox is unknown.
    async fn mailbox_calendar(&self, address: &str) -> Result<Option<MailboxCalendar>, StoreError>;

    /// Stores the calendar's own folder id (GetFolder's answer). False when the mailbox is
    /// unknown.
    async fn set_calendar_folder_id(
        &self,
        address: &str,
        folder_id: &str,
    ) -> Result<bool, StoreError>;

    /// Asks for the mailbox's calendar to be read again (`pushgate sync resync`). False when
    /// the mailbox is unknown.
    async fn request_resync(&self, address: &str, now: OffsetDateTime) -> Result<bool, StoreError>;

    /// Takes up to `limit` resync requests, oldest first, each held by `lease` until it is
    /// finished, deferred or expires: only of mailboxes with sync on whose subscription is
    /// active (changes made after the calendar is read then arrive as events) and whose request
    /// nobody holds.
    async fn take_resyncs(
        &self,
        now: OffsetDateTime,
        lease: &Lease,
        limit: usize,
    ) -> Result<Vec<ResyncRequest>, StoreError>;

    /// The resync taken for the request made at `requested_at` is done: the request is cleared
    /// unless a newer one came meanwhile, `resynced_at` becomes `now`, the hold ends.
    async fn finish_resync(
        &self,
        address: &str,
        requested_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// The resync `owner` holds failed: the request stays and nobody takes it before `until`.
    async fn defer_resync(
        &self,
        address: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<(), StoreError>;
}

/// The sync step's per-mailbox state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxCalendar {
    pub address: String,
    /// The calendar's own folder id, once GetFolder was asked.
    pub calendar_folder_id: Option<String>,
    pub resync_requested_at: Option<OffsetDateTime>,
    /// When the last resync finished.
    pub resynced_at: Option<OffsetDateTime>,
}

/// A resync request taken by [`MailboxStore::take_resyncs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncRequest {
    pub address: String,
    pub tenant: String,
    /// Give it back to [`MailboxStore::finish_resync`]: a newer request is not cleared.
    pub requested_at: OffsetDateTime,
    pub calendar_folder_id: Option<String>,
}

/// One mailbox to lease for a Subscribe, with the state and cause it moves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginSubscribe {
    pub address: String,
    pub state: MailboxState,
    pub cause: Option<RenewCause>,
}

/// A worker's claim on a mailbox while its Subscribe call runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: OffsetDateTime,
}

/// Tenant of mailboxes created without one.
pub const DEFAULT_TENANT: &str = crate::endpoint::DEFAULT_TENANT;

/// Longest `last_error` kept (of mailboxes, reservations, outbox rows and events).
pub(crate) const MAX_ERROR_CHARS: usize = 500;

/// What a put does to the stored row: the new row, whether it is new, and the subscription that
/// becomes unwanted.
pub(crate) fn apply_put(
    existing: Option<MailboxRecord>,
    request: &PutMailbox,
    now: OffsetDateTime,
) -> (MailboxRecord, bool, Option<String>) {
    let Some(mut record) = existing else {
        let record = MailboxRecord {
            address: request.address.clone(),
            tenant: request
                .tenant
                .clone()
                .unwrap_or_else(|| DEFAULT_TENANT.to_string()),
            sync: request.sync,
            state: if request.sync {
                MailboxState::Subscribing
            } else {
                MailboxState::Off
            },
            subscription_id: None,
            last_error: None,
            renew_cause: None,
            attempts: 0,
            next_attempt_at: request.sync.then_some(now),
            subscribed_at: None,
            resync_requested_at: None,
            lease_owner: None,
            lease_until: None,
            created_at: now,
            updated_at: now,
        };
        return (record, true, None);
    };
    let tenant_changed = request
        .tenant
        .as_ref()
        .is_some_and(|tenant| *tenant != record.tenant);
    if let Some(tenant) = &request.tenant {
        record.tenant = tenant.clone();
    }
    let mut retire = None;
    if !request.sync {
        if record.sync || record.subscription_id.is_some() {
            retire = record.subscription_id.take();
            switch_off(&mut record);
            record.updated_at = now;
        }
        return (record, false, retire);
    }
    if !record.sync || tenant_changed {
        // Switched on again, or the callback URL (which names the tenant) changes: a fresh
        // subscription, and the old one (if any) is no longer wanted.
        retire = record.subscription_id.take();
        record.sync = true;
        record.state = MailboxState::Subscribing;
        record.renew_cause = None;
        record.attempts = 0;
        record.last_error = None;
        record.next_attempt_at = Some(now);
        record.subscribed_at = None;
        record.lease_owner = None;
        record.lease_until = None;
        record.updated_at = now;
    } else if record.state == MailboxState::Failed {
        // An operator switching sync on again after fixing the cause wants a retry now, not
        // within the hour.
        record.next_attempt_at = Some(now);
        record.updated_at = now;
    }
    (record, false, retire)
}

fn switch_off(record: &mut MailboxRecord) {
    record.sync = false;
    record.state = MailboxState::Off;
    record.renew_cause = None;
    record.attempts = 0;
    record.next_attempt_at = None;
    record.lease_owner = None;
    record.lease_until = None;
}

/// Takes the lease, or `None` when sync is off or a lease is live.
pub(crate) fn apply_begin(
    mut record: MailboxRecord,
    lease: &Lease,
    state: MailboxState,
    cause: Option<RenewCause>,
    now: OffsetDateTime,
) -> Option<MailboxRecord> {
    if !record.sync {
        return None;
    }
    // Any live lease, this worker's own included: one Subscribe per mailbox at a time.
    let held = record.lease_owner.is_some() && record.lease_until.is_some_and(|until| until > now);
    if held {
        return None;
    }
    record.lease_owner = Some(lease.owner.clone());
    record.lease_until = Some(lease.until);
    record.state = state;
    if cause.is_some() {
        record.renew_cause = cause;
    }
    record.updated_at = now;
    Some(record)
}

/// What finishing a Subscribe does: the mailbox row to write (if it still takes the result), the
/// new subscription row, and the subscription that becomes unwanted.
pub(crate) struct FinishPlan {
    pub mailbox: Option<MailboxRecord>,
    pub new_subscription: Option<SubscriptionRecord>,
    pub retire: Option<String>,
    pub outcome: FinishOutcome,
}

pub(crate) fn apply_finish(
    existing: Option<MailboxRecord>,
    lease: &Lease,
    outcome: &SubscribeOutcome,
    now: OffsetDateTime,
) -> FinishPlan {
    let tenant = existing
        .as_ref()
        .map_or_else(|| DEFAULT_TENANT.to_string(), |r| r.tenant.clone());
    let taken = existing.filter(|record| {
        record.sync && record.lease_owner.as_deref() == Some(lease.owner.as_str())
    });
    let Some(mut record) = taken else {
        // Switched off, forgotten or taken over while the call ran: a subscription made now is
        // nobody's, and its notifications must be answered Unsubscribe.
        let new_subscription = match outcome {
            SubscribeOutcome::Subscribed {
                subscription_id, ..
            } => Some(SubscriptionRecord {
                subscription_id: subscription_id.clone(),
                tenant,
                last_watermark: None,
                last_notification_at: None,
                state: SubscriptionState::Unsubscribed,
                state_reason: Some("the mailbox no longer wanted it when it was made".into()),
                updated_at: now,
                mailbox: None,
                replay_from: None,
            }),
            SubscribeOutcome::Failed { .. } => None,
        };
        return FinishPlan {
            mailbox: None,
            new_subscription,
            retire: None,
            outcome: FinishOutcome::Abandoned,
        };
    };
    record.lease_owner = None;
    record.lease_until = None;
    record.updated_at = now;
    match outcome {
        SubscribeOutcome::Subscribed {
            subscription_id,
            watermark,
            resync,
        } => {
            let retire = record
                .subscription_id
                .replace(subscription_id.clone())
                .filter(|old| old != subscription_id);
            record.state = MailboxState::Active;
            record.last_error = None;
            record.renew_cause = None;
            record.attempts = 0;
            record.next_attempt_at = None;
            record.subscribed_at = Some(now);
            if *resync {
                record.resync_requested_at = Some(now);
            }
            let new_subscription = SubscriptionRecord {
                subscription_id: subscription_id.clone(),
                tenant: record.tenant.clone(),
                last_watermark: Some(watermark.clone()),
                last_notification_at: None,
                state: SubscriptionState::Active,
                state_reason: None,
                updated_at: now,
                mailbox: Some(record.address.clone()),
                replay_from: None,
            };
            FinishPlan {
                mailbox: Some(record),
                new_subscription: Some(new_subscription),
                retire,
                outcome: FinishOutcome::Recorded,
            }
        }
        SubscribeOutcome::Failed {
            error,
            next_attempt_at,
            failed,
            cause,
        } => {
            record.last_error = Some(truncate(error));
            if cause.is_some() {
                record.renew_cause = *cause;
            }
            record.attempts = record.attempts.saturating_add(1);
            record.next_attempt_at = Some(*next_attempt_at);
            if *failed {
                record.state = MailboxState::Failed;
            }
            FinishPlan {
                mailbox: Some(record),
                new_subscription: None,
                retire: None,
                outcome: FinishOutcome::Recorded,
            }
        }
    }
}

/// `text` cut to [`MAX_ERROR_CHARS`], so one runaway message cannot bloat a row.
pub(crate) fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// The reason written on a subscription the worker no longer wants.
pub(crate) const RETIRED_REASON: &str = "replaced or switched off by the worker";

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-01 10:00 UTC);

    fn put(address: &str, sync: bool) -> PutMailbox {
        PutMailbox {
            address: address.into(),
            tenant: None,
            sync,
        }
    }

    fn lease(owner: &str) -> Lease {
        Lease {
            owner: owner.into(),
            until: NOW + time::Duration::minutes(2),
        }
    }

    fn active(subscription: &str) -> MailboxRecord {
        let (mut record, _, _) = apply_put(None, &put("room1@contoso.com", true), NOW);
        record.state = MailboxState::Active;
        record.subscription_id = Some(subscription.into());
        record.next_attempt_at = None;
        record
    }

    #[test]
    fn new_mailbox_with_sync_is_due_now() {
        let (record, created, retire) = apply_put(None, &put("room1@contoso.com", true), NOW);
        assert!(created);
        assert_eq!(retire, None);
        assert_eq!(record.state, MailboxState::Subscribing);
        assert_eq!(record.tenant, DEFAULT_TENANT);
        assert_eq!(record.next_attempt_at, Some(NOW));
        let (off, created, _) = apply_put(None, &put("room2@contoso.com", false), NOW);
        assert!(created);
        assert_eq!(off.state, MailboxState::Off);
        assert_eq!(off.next_attempt_at, None);
    }

    #[test]
    fn putting_the_same_thing_twice_changes_nothing() {
        let record = active("sub-1");
        let later = NOW + time::Duration::minutes(5);
        let (again, created, retire) =
            apply_put(Some(record.clone()), &put("room1@contoso.com", true), later);
        assert!(!created);
        assert_eq!(retire, None);
        assert_eq!(again, record);
        let (off, _, retire) = apply_put(Some(record), &put("room1@contoso.com", false), later);
        let (off_again, _, retire_again) =
            apply_put(Some(off.clone()), &put("room1@contoso.com", false), later);
        assert_eq!(retire.as_deref(), Some("sub-1"));
        assert_eq!(retire_again, None);
        assert_eq!(off_again, off);
        assert_eq!(off.state, MailboxState::Off);
        assert_eq!(off.subscription_id, None);
    }

    #[test]
    fn a_new_tenant_means_a_new_subscription() {
        let record = active("sub-1");
        let request = PutMailbox {
            address: "room1@contoso.com".into(),
            tenant: Some("fabrikam".into()),
            sync: true,
        };
        let (record, _, retire) = apply_put(Some(record), &request, NOW);
        assert_eq!(retire.as_deref(), Some("sub-1"));
        assert_eq!(record.state, MailboxState::Subscribing);
        assert_eq!(record.tenant, "fabrikam");
    }

    #[test]
    fn a_failed_mailbox_is_retried_at_once_when_switched_on_again() {
        let mut record = active("sub-1");
        record.state = MailboxState::Failed;
        record.next_attempt_at = Some(NOW + time::Duration::hours(1));
        let (record, _, retire) = apply_put(Some(record), &put("room1@contoso.com", true), NOW);
        assert_eq!(retire, None);
        assert_eq!(record.state, MailboxState::Failed);
        assert_eq!(record.next_attempt_at, Some(NOW));
    }

    #[test]
    fn a_live_lease_of_another_worker_is_respected() {
        let record = active("sub-1");
        let mine = apply_begin(
            record,
            &lease("a"),
            MailboxState::Renewing,
            Some(RenewCause::Silence),
            NOW,
        )
        .unwrap();
        assert_eq!(mine.state, MailboxState::Renewing);
        assert_eq!(mine.renew_cause, Some(RenewCause::Silence));
        assert!(
            apply_begin(mine.clone(), &lease("b"), MailboxState::Renewing, None, NOW).is_none()
        );
        assert!(
            apply_begin(mine.clone(), &lease("a"), MailboxState::Renewing, None, NOW).is_none(),
            "not twice by the same worker either"
        );
        // Expired: taken over.
        let later = NOW + time::Duration::minutes(3);
        assert!(apply_begin(mine, &lease("b"), MailboxState::Renewing, None, later).is_some());
        let mut off = active("sub-1");
        off.sync = false;
        assert!(apply_begin(off, &lease("a"), MailboxState::Renewing, None, NOW).is_none());
    }

    #[test]
    fn success_replaces_the_old_subscription() {
        let record = apply_begin(
            active("sub-1"),
            &lease("a"),
            MailboxState::Renewing,
            Some(RenewCause::ErrorNotification),
            NOW,
        )
        .unwrap();
        let plan = apply_finish(
            Some(record),
            &lease("a"),
            &SubscribeOutcome::Subscribed {
                subscription_id: "sub-2".into(),
                watermark: "wm-9".into(),
                resync: true,
            },
            NOW,
        );
        assert_eq!(plan.outcome, FinishOutcome::Recorded);
        assert_eq!(plan.retire.as_deref(), Some("sub-1"));
        let mailbox = plan.mailbox.unwrap();
        assert_eq!(mailbox.state, MailboxState::Active);
        assert_eq!(mailbox.subscription_id.as_deref(), Some("sub-2"));
        assert_eq!(mailbox.lease_owner, None);
        assert_eq!(mailbox.renew_cause, None);
        assert_eq!(mailbox.resync_requested_at, Some(NOW));
        let subscription = plan.new_subscription.unwrap();
        assert_eq!(subscription.state, SubscriptionState::Active);
        assert_eq!(subscription.last_watermark.as_deref(), Some("wm-9"));
        assert_eq!(subscription.mailbox.as_deref(), Some("room1@contoso.com"));
    }

    #[test]
    fn a_subscription_made_for_a_mailbox_switched_off_meanwhile_is_unwanted() {
        let record = apply_begin(
            active("sub-1"),
            &lease("a"),
            MailboxState::Renewing,
            None,
            NOW,
        )
        .unwrap();
        let (off, _, _) = apply_put(Some(record), &put("room1@contoso.com", false), NOW);
        let plan = apply_finish(
            Some(off),
            &lease("a"),
            &SubscribeOutcome::Subscribed {
                subscription_id: "sub-2".into(),
                watermark: "wm".into(),
                resync: false,
            },
            NOW,
        );
        assert_eq!(plan.outcome, FinishOutcome::Abandoned);
        assert!(plan.mailbox.is_none());
        assert_eq!(
            plan.new_subscription.map(|s| s.state),
            Some(SubscriptionState::Unsubscribed)
        );
    }

    #[test]
    fn failures_count_and_wait() {
        let record = apply_begin(
            active("sub-1"),
            &lease("a"),
            MailboxState::Renewing,
            Some(RenewCause::Silence),
            NOW,
        )
        .unwrap();
        let retry_at = NOW + time::Duration::seconds(30);
        let plan = apply_finish(
            Some(record),
            &lease("a"),
            &SubscribeOutcome::Failed {
                error: "x".repeat(2000),
                next_attempt_at: retry_at,
                failed: false,
                cause: None,
            },
            NOW,
        );
        let mailbox = plan.mailbox.unwrap();
        assert_eq!(mailbox.state, MailboxState::Renewing);
        assert_eq!(mailbox.renew_cause, Some(RenewCause::Silence));
        assert_eq!(mailbox.attempts, 1);
        assert_eq!(mailbox.next_attempt_at, Some(retry_at));
        assert_eq!(mailbox.subscription_id.as_deref(), Some("sub-1"));
        assert!(mailbox.last_error.unwrap().chars().count() <= MAX_ERROR_CHARS + 3);
    }
}
