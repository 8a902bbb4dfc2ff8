//! Starting a simulator and driving it: [`Simulator::start`] gives a [`SimHandle`], whose methods
//! play the Outlook user and the service's bad day and observe what happened. The JSON control API
//! (`control.rs`) calls the same methods.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::client::connector_trusting;
use super::options::SimOptions;
use super::request::{ExtendedFieldUri, ExtendedValue};
use super::schema::format_date_time;
use super::state::{CallCounts, CallRecord, DeliveryRecord, State, SubscriptionInfo};
use super::store::{mailbox_key, FieldChanges, FolderKind, Item, NewItem, StoreError};
use super::subscriptions::Ended;

/// What the server task and the delivery tasks share.
pub struct Shared {
    pub options: SimOptions,
    state: Mutex<State>,
    pub push_connector: TlsConnector,
    pub control_token: String,
    pub ca_pem: Option<String>,
    pub base_url: String,
    pub addr: SocketAddr,
}

impl Shared {
    /// The state; a panic elsewhere while it was held does not make it unusable.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Errors of the control API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("no mailbox {0}")]
    UnknownMailbox(String),
    #[error("no item {0} in that mailbox")]
    UnknownItem(String),
    #[error("no live subscription {0}")]
    UnknownSubscription(String),
    #[error("invalid: {0}")]
    Invalid(String),
}

impl From<StoreError> for SimError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownMailbox(m) => SimError::UnknownMailbox(m),
            StoreError::MalformedId(id) | StoreError::ItemNotFound(id) => SimError::UnknownItem(id),
            other => SimError::Invalid(other.to_string()),
        }
    }
}

/// A calendar item as an Outlook user makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemSpec {
    pub subject: String,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub location: Option<String>,
    /// Written into the reservation property (the add-in's doing); `None`: an item that is not
    /// the product's.
    pub reservation_id: Option<String>,
}

/// A change an Outlook user makes; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemUpdate {
    pub subject: Option<String>,
    pub start: Option<OffsetDateTime>,
    pub end: Option<OffsetDateTime>,
    /// `Some(None)` clears the location.
    pub location: Option<Option<String>>,
    pub is_cancelled: Option<bool>,
    /// `Some(None)` removes the reservation property.
    pub reservation_id: Option<Option<String>>,
}

/// An item as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemSnapshot {
    pub mailbox: String,
    /// `calendar`, `deleteditems` or `recoverableitemsdeletions`.
    pub folder: String,
    pub id: String,
    /// The item's real ChangeKey (GetItem answers it).
    pub change_key: String,
    pub subject: Option<String>,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub location: Option<String>,
    pub is_cancelled: bool,
    /// The reservation property's value, when set.
    pub reservation_id: Option<String>,
    /// Every extended property as `(name or tag, value)`.
    pub extended: Vec<(String, String)>,
}

impl ItemSnapshot {
    fn of(mailbox: &str, item: &Item, property: &ExtendedFieldUri) -> ItemSnapshot {
        let value = |v: &ExtendedValue| match v {
            ExtendedValue::Single(s) => s.clone(),
            ExtendedValue::Multiple(list) => list.join(";"),
        };
        ItemSnapshot {
            mailbox: mailbox.to_string(),
            folder: item.folder.distinguished_name().to_string(),
            id: item.id.clone(),
            change_key: item.change_key(),
            subject: item.subject.clone(),
            start: item.start,
            end: item.end,
            location: item.location.clone(),
            is_cancelled: item.is_cancelled,
            reservation_id: item.extended_value(property).map(value),
            extended: item
                .extended
                .iter()
                .map(|(uri, v)| {
                    let name = uri
                        .name
                        .clone()
                        .or_else(|| uri.tag.clone())
                        .or_else(|| uri.id.map(|i| i.to_string()))
                        .unwrap_or_default();
                    (name, value(v))
                })
                .collect(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "mailbox": self.mailbox,
            "folder": self.folder,
            "id": self.id,
            "change_key": self.change_key,
            "subject": self.subject,
            "start": format_date_time(self.start),
            "end": format_date_time(self.end),
            "location": self.location,
            "is_cancelled": self.is_cancelled,
            "reservation_id": self.reservation_id,
        })
    }
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Listens on `options.listen` (loopback only) and serves EWS, the token endpoint and the
    /// control API until [`SimHandle::shutdown`].
    pub async fn start(options: SimOptions) -> anyhow::Result<SimHandle> {
        if !options.listen.ip().is_loopback() {
            anyhow::bail!(
                "the Exchange simulator listens on loopback only, not on {}",
                options.listen
            );
        }
        if let Some(source) = options.push_source {
            if !source.is_loopback() {
                anyhow::bail!("the push source address must be a loopback address, not {source}");
            }
        }
        if !options.time_scale.is_finite() || options.time_scale < 0.0 {
            anyhow::bail!("time_scale must be a finite, non-negative number");
        }
        let identity = if options.tls {
            Some(super::tls::generate().context("generating the simulator's certificate")?)
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("listening on {}", options.listen))?;
        let addr = listener.local_addr().context("the listening address")?;
        let seed = options.seed.unwrap_or_else(rand::random);
        let mut state = State::new(seed, options.latency);
        for mailbox in &options.mailboxes {
            state.add_mailbox(mailbox);
        }
        let control_token = match &options.control_token {
            Some(token) => token.clone(),
            None => format!("{:016x}{:016x}", state.random(), state.random()),
        };
        let push_connector = connector_trusting(options.push_ca_pem.as_deref().unwrap_or(""))
            .context("reading the push CA")?;
        let scheme = if identity.is_some() { "https" } else { "http" };
        let shared = Arc::new(Shared {
            options,
            state: Mutex::new(state),
            push_connector,
            control_token,
            ca_pem: identity.as_ref().map(|i| i.ca_pem.clone()),
            base_url: format!("{scheme}://{addr}"),
            addr,
        });
        let (stop, stopped) = watch::channel(false);
        let acceptor = identity.map(|i| tokio_rustls::TlsAcceptor::from(i.config));
        let server = tokio::spawn(super::server::serve(
            shared.clone(),
            listener,
            acceptor,
            stopped,
        ));
        Ok(SimHandle {
            shared,
            stop: Arc::new(stop),
            server: Arc::new(Mutex::new(Some(server))),
        })
    }
}

/// A running simulator. Cheap to clone; every clone drives the same simulator.
#[derive(Clone)]
pub struct SimHandle {
    pub(crate) shared: Arc<Shared>,
    stop: Arc<watch::Sender<bool>>,
    server: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl SimHandle {
    /// A handle for the control API's requests (it cannot stop the server).
    pub(crate) fn from_shared(shared: Arc<Shared>) -> SimHandle {
        let (stop, _) = watch::channel(false);
        SimHandle {
            shared,
            stop: Arc::new(stop),
            server: Arc::new(Mutex::new(None)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http(s)://127.0.0.1:PORT/EWS/Exchange.asmx`.
    pub fn ews_url(&self) -> String {
        format!("{}/EWS/Exchange.asmx", self.shared.base_url)
    }

    /// The client-credentials token endpoint (`/{tenant}/oauth2/v2.0/token` works too).
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/v2.0/token", self.shared.base_url)
    }

    /// The JSON control API's base (`Authorization: Bearer` [`SimHandle::control_token`]).
    pub fn control_url(&self) -> String {
        format!("{}/control", self.shared.base_url)
    }

    pub fn control_token(&self) -> &str {
        &self.shared.control_token
    }

    /// The CA that issued the HTTPS certificate (PEM), when TLS is on.
    pub fn ca_pem(&self) -> Option<&str> {
        self.shared.ca_pem.as_deref()
    }

    pub fn options(&self) -> &SimOptions {
        &self.shared.options
    }

    fn property(&self) -> ExtendedFieldUri {
        ExtendedFieldUri::public_string(&self.shared.options.reservation_property)
    }

    // ---- mailboxes ----

    /// Adds a mailbox; false when it exists.
    pub fn add_mailbox(&self, address: &str) -> bool {
        self.shared.lock().add_mailbox(address)
    }

    /// The service account may no longer impersonate this mailbox (ErrorImpersonateUserDenied).
    pub fn deny_impersonation(&self, address: &str) -> Result<(), SimError> {
        self.set_impersonation_denied(address, true)
    }

    pub fn allow_impersonation(&self, address: &str) -> Result<(), SimError> {
        self.set_impersonation_denied(address, false)
    }

    fn set_impersonation_denied(&self, address: &str, denied: bool) -> Result<(), SimError> {
        let mut state = self.shared.lock();
        let mailbox = state
            .store
            .mailbox_mut(address)
            .ok_or_else(|| SimError::UnknownMailbox(address.into()))?;
        mailbox.impersonation_denied = denied;
        Ok(())
    }

    // ---- the Outlook user ----

    /// Creates a calendar item, with the reservation property when `reservation_id` is given.
    pub fn create_item(&self, mailbox: &str, spec: ItemSpec) -> Result<ItemSnapshot, SimError> {
        let property = self.property();
        let mut state = self.shared.lock();
        let new = NewItem {
            subject: Some(spec.subject),
            start: spec.start,
            end: spec.end,
            location: spec.location,
            extended: spec
                .reservation_id
                .map(|r| (property.clone(), ExtendedValue::Single(r)))
                .into_iter()
                .collect(),
        };
        let item = state.store.create_item(
            mailbox,
            FolderKind::Calendar,
            new,
            OffsetDateTime::now_utc(),
        )?;
        let snapshot = ItemSnapshot::of(&mailbox_key(mailbox), item, &property);
        state.publish(mailbox);
        Ok(snapshot)
    }

    /// Changes fields of an item (subject, start, end, location, IsCancelled, the property).
    pub fn update_item(
        &self,
        mailbox: &str,
        id: &str,
        update: ItemUpdate,
    ) -> Result<ItemSnapshot, SimError> {
        let property = self.property();
        let changes = FieldChanges {
            subject: update.subject.map(Some),
            start: update.start,
            end: update.end,
            location: update.location,
            is_cancelled: update.is_cancelled,
            extended: update
                .reservation_id
                .map(|r| (property.clone(), r.map(ExtendedValue::Single)))
                .into_iter()
                .collect(),
        };
        let mut state = self.shared.lock();
        let item = state
            .store
            .update_item(mailbox, id, changes, OffsetDateTime::now_utc())?;
        let snapshot = ItemSnapshot::of(&mailbox_key(mailbox), item, &property);
        state.publish(mailbox);
        Ok(snapshot)
    }

    /// Sets IsCancelled (the organiser cancelled the meeting).
    pub fn cancel_item(&self, mailbox: &str, id: &str) -> Result<ItemSnapshot, SimError> {
        self.update_item(
            mailbox,
            id,
            ItemUpdate {
                is_cancelled: Some(true),
                ..ItemUpdate::default()
            },
        )
    }

    fn move_item(&self, mailbox: &str, id: &str, to: FolderKind) -> Result<String, SimError> {
        let mut state = self.shared.lock();
        let new_id = state
            .store
            .move_item(mailbox, id, to, OffsetDateTime::now_utc())?
            .id
            .clone();
        state.publish(mailbox);
        Ok(new_id)
    }

    /// Outlook's delete: the item moves to Deleted Items; answers its new id.
    pub fn move_to_deleted_items(&self, mailbox: &str, id: &str) -> Result<String, SimError> {
        self.move_item(mailbox, id, FolderKind::DeletedItems)
    }

    /// Exchange Online's soft delete: into the recoverable-items folder; answers the new id.
    pub fn soft_delete(&self, mailbox: &str, id: &str) -> Result<String, SimError> {
        self.move_item(mailbox, id, FolderKind::RecoverableItemsDeletions)
    }

    /// Back to the calendar from Deleted Items or the recoverable items; answers the new id.
    pub fn restore_item(&self, mailbox: &str, id: &str) -> Result<String, SimError> {
        self.move_item(mailbox, id, FolderKind::Calendar)
    }

    pub fn hard_delete(&self, mailbox: &str, id: &str) -> Result<(), SimError> {
        let mut state = self.shared.lock();
        state
            .store
            .hard_delete(mailbox, id, OffsetDateTime::now_utc())?;
        state.publish(mailbox);
        Ok(())
    }

    /// Every item of a mailbox, in every folder.
    pub fn items(&self, mailbox: &str) -> Result<Vec<ItemSnapshot>, SimError> {
        let property = self.property();
        let state = self.shared.lock();
        let owner = state
            .store
            .mailbox(mailbox)
            .ok_or_else(|| SimError::UnknownMailbox(mailbox.into()))?;
        let key = mailbox_key(mailbox);
        Ok(owner
            .items
            .values()
            .map(|item| ItemSnapshot::of(&key, item, &property))
            .collect())
    }

    pub fn item(&self, mailbox: &str, id: &str) -> Result<ItemSnapshot, SimError> {
        let property = self.property();
        let state = self.shared.lock();
        let item = state.store.item(mailbox, id)?;
        Ok(ItemSnapshot::of(&mailbox_key(mailbox), item, &property))
    }

    // ---- the bad day ----

    /// Every subscription vanishes silently, as in a server restart; answers how many were alive.
    /// Mailbox contents and their event logs stay (watermarks stay valid).
    pub fn drop_all_subscriptions(&self) -> usize {
        let mut state = self.shared.lock();
        let mut dropped = 0;
        for subscription in state.subscriptions.values_mut() {
            if subscription.is_alive() {
                subscription.ended = Some(Ended::Dropped);
                dropped += 1;
            }
        }
        for (_, task) in state.tasks.drain() {
            task.handle.abort();
        }
        dropped
    }

    /// Sends ErrorReadEventsFailed (after any notification in flight), then the subscription is
    /// gone.
    pub fn send_error_notification(&self, subscription_id: &str) -> Result<(), SimError> {
        let mut state = self.shared.lock();
        let subscription = state
            .subscriptions
            .get_mut(subscription_id)
            .filter(|s| s.is_alive())
            .ok_or_else(|| SimError::UnknownSubscription(subscription_id.into()))?;
        subscription.error_requested = true;
        if let Some(task) = state.tasks.get(subscription_id) {
            task.wake.notify_one();
        }
        Ok(())
    }

    /// ErrorServerBusy with this BackOffMilliseconds hint for `duration` (real time): in the
    /// response messages for some operations, as an HTTP 500 fault for others
    /// ([`SimOptions::busy_fault_operations`]).
    pub fn busy_for(&self, duration: Duration, back_off: Duration) {
        let mut state = self.shared.lock();
        state.faults.busy_until = Some(Instant::now() + duration);
        state.faults.busy_back_off = back_off;
    }

    /// EWS requests get no answer for `duration` (real time); the connection is then closed.
    /// Nothing they asked for is done.
    pub fn stall_for(&self, duration: Duration) {
        self.shared.lock().faults.stall_until = Some(Instant::now() + duration);
    }

    /// Every watermark handed out for this mailbox so far is refused (ErrorInvalidWatermark), as
    /// after Exchange's 30 days.
    pub fn expire_watermarks(&self, mailbox: &str) -> Result<(), SimError> {
        Ok(self.shared.lock().store.expire_watermarks(mailbox)?)
    }

    /// Exchange Online's EWS switch: HTTP 403 for every EWS call while disabled.
    pub fn set_ews_disabled(&self, disabled: bool) {
        self.shared.lock().faults.ews_disabled = disabled;
    }

    /// The next CreateItem is carried out at once but answered only after `delay` (real time):
    /// longer than the client's timeout, it leaves the client not knowing the outcome.
    pub fn answer_next_create_after(&self, delay: Duration) {
        self.shared.lock().faults.answer_next_create_after = Some(delay);
    }

    /// Real time added to every EWS answer.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().faults.latency = latency;
    }

    /// Every token issued so far is refused from now on (as after its expiry).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for expiry in self.shared.lock().tokens.issued.values_mut() {
            *expiry = now;
        }
    }

    // ---- observation ----

    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        self.shared
            .lock()
            .subscriptions
            .values()
            .map(SubscriptionInfo::from)
            .collect()
    }

    pub fn subscription(&self, id: &str) -> Option<SubscriptionInfo> {
        self.shared
            .lock()
            .subscriptions
            .get(id)
            .map(SubscriptionInfo::from)
    }

    pub fn call_counts(&self) -> CallCounts {
        self.shared.lock().counts.clone()
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.shared.lock().calls.iter().cloned().collect()
    }

    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.shared.lock().deliveries.iter().cloned().collect()
    }

    /// How many tokens the OAuth endpoint issued.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.lock().tokens.count
    }

    /// Stops listening and ends every delivery task.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        {
            let mut state = self.shared.lock();
            for (_, task) in state.tasks.drain() {
                task.handle.abort();
            }
        }
        let server = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(server) = server {
            let _ = server.await;
        }
    }
}
