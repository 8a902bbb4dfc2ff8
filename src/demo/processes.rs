//! The demo's sync scenes: the worker subscribing the rooms (process A), processes B–F of
//! PROTOCOL.md §6 with the reservation and the calendar item shown side by side before and
//! after, and a lost subscription recovered by a resync.

use std::collections::HashSet;

use time::{OffsetDateTime, Time};

use super::{wait_for, Demo, Report, Writes};
use crate::exchange_sim::{ItemSnapshot, ItemSpec, ItemUpdate};
use crate::notification::{EventKind, ObjectKind};
use crate::store::{
    EventState, LastChange, MailboxState, Reservation, ReservationStatus, StoredEvent, SyncState,
};

/// Rooms the scenes use: B and D in the first, C, E and F in the second, the lost subscription
/// in the third.
const WEB_ROOM: usize = 0;
const ADDIN_ROOM: usize = 1;
const LOST_ROOM: usize = 2;

/// Scene 3: the worker subscribes every room; Exchange confirms each with heartbeats.
pub(super) async fn subscriptions(demo: &Demo, report: &mut Report) -> anyhow::Result<()> {
    report.line(format!(
        "\n3. Subscriptions: sync switched on for {} rooms through the REST API; the worker subscribes them",
        demo.rooms.len()
    ));
    for room in &demo.rooms {
        demo.api.sync_on(room).await?;
    }
    let all_heard = wait_for(|| async {
        let mut heard = 0;
        for room in &demo.rooms {
            let view = demo.store.mailbox(room).await?;
            if view.is_some_and(|v| {
                v.mailbox.state == MailboxState::Active
                    && v.subscription
                        .as_ref()
                        .is_some_and(|s| s.last_notification_at.is_some())
            }) {
                heard += 1;
            }
        }
        Ok((heard == demo.rooms.len()).then_some(heard))
    })
    .await?;
    let alive: HashSet<String> = demo
        .sim
        .subscriptions()
        .into_iter()
        .filter(|s| s.alive)
        .map(|s| s.id)
        .collect();
    let mut owned = 0;
    for room in &demo.rooms {
        let view = demo.store.mailbox(room).await?;
        if view
            .and_then(|v| v.mailbox.subscription_id)
            .is_some_and(|id| alive.contains(&id))
        {
            owned += 1;
        }
    }
    report.check(
        "every room subscribed by the worker, and Exchange heard from on each",
        all_heard.is_some() && owned == demo.rooms.len(),
        format!(
            "({owned} of {} hold a live subscription; {} Subscribe calls; callback {})",
            demo.rooms.len(),
            demo.sim.call_counts().operation("Subscribe"),
            demo.config.subscriptions.endpoint_url
        ),
    );
    // Heartbeats: StatusEvents every StatusFrequency, through the gateway, stored by the worker.
    let heartbeats = wait_for(|| async {
        let mut beating = 0;
        for room in &demo.rooms {
            let Some(id) = subscription_of(demo, room).await? else {
                continue;
            };
            let statuses = demo
                .store
                .events(Some(&id))
                .await?
                .iter()
                .filter(|e| e.kind == EventKind::Status)
                .count();
            if statuses >= 2 {
                beating += 1;
            }
        }
        Ok((beating == demo.rooms.len()).then_some(beating))
    })
    .await?;
    let forwarded = super::metric_in(
        &demo.gateway_metrics().await,
        "pushgate_gateway_requests_total{",
    );
    report.check(
        "heartbeats: two or more StatusEvents per room came through the gateway and were stored",
        heartbeats.is_some(),
        format!(
            "(every {} ms here; {} requests through the gateway so far)",
            (f64::from(super::STATUS_FREQUENCY) * 60_000.0 * super::TIME_SCALE).round(),
            forwarded
        ),
    );
    // The worker reads each calendar once after a fresh subscription; the scenes start after it.
    for index in [WEB_ROOM, ADDIN_ROOM, LOST_ROOM] {
        let room = &demo.rooms[index];
        let resynced = wait_resynced(demo, room, None).await?;
        report.check(
            format!("{room}: calendar read after subscribing"),
            resynced,
            "",
        );
    }
    Ok(())
}

/// Scene 4: processes B to F, each with the reservation and the item before and after.
pub(super) async fn b_to_f(demo: &Demo, report: &mut Report) -> anyhow::Result<()> {
    report.line("\n4. Processes B–F: the reservation (worker) and the calendar item (Exchange) side by side");
    let room = demo.rooms[WEB_ROOM].clone();

    // B: a web booking gets one CreateItem; its echo (the CreatedEvent) no write.
    report.line(format!(
        "\n   B  the web application books {room}: the worker writes the calendar item"
    ));
    header(report);
    side_by_side(report, "before", None, None);
    let start = day(2, 9);
    let before = demo.writes();
    let mark = last_event_id(demo, &room).await?;
    let id = demo
        .api
        .book(&room, "web", "Board meeting", start, start + hours(1))
        .await?;
    let written = wait_reservation(demo, &id, |r| {
        r.sync_state == SyncState::Synced && r.item_id.is_some()
    })
    .await?;
    let write = demo.writes().since(before);
    let Some(written) = written else {
        report.check("B: the item is written", false, "(not within the wait)");
        return Ok(());
    };
    let item_id = written.item_id.clone().unwrap_or_default();
    let echo = wait_processed(demo, &room, mark, |e| {
        e.kind == EventKind::Created && names(e, &item_id)
    })
    .await?;
    let quiet = demo.quiet().await?;
    let (after, item) = show(report, demo, "after", &room, &id, &item_id).await?;
    let echo_writes = demo.writes().since(before).since(write);
    report.check_writes(
        "B web booking",
        "B: one CreateItem",
        true,
        write,
        Writes::CREATE,
    );
    report.check_writes(
        "B echo of the CreateItem",
        "B: the echo (CreatedEvent) processed: no write, no change",
        echo && quiet && shows(after.as_ref(), 1, LastChange::Web),
        echo_writes,
        Writes::NONE,
    );
    let b_ok = report.check(
        "B: item and reservation agree (subject, times, Location, reservation id)",
        in_step(after.as_ref(), item.as_ref()),
        "",
    );
    report.reconciled("B (web booking)", b_ok);

    // C: the add-in books; Outlook writes the item with the reservation id; the worker links it.
    let addin_room = demo.rooms[ADDIN_ROOM].clone();
    report.line(format!(
        "\n   C  the Outlook add-in books {addin_room}: Outlook writes the item, the worker links it"
    ));
    header(report);
    let start = day(3, 14);
    let addin_id = demo
        .api
        .book(&addin_room, "addin", "Team sync", start, start + hours(1))
        .await?;
    let booked = demo.store.reservation(&addin_id).await?;
    side_by_side(report, "booked", booked.as_ref(), None);
    let before = demo.writes();
    let made = demo.sim.create_item(
        &addin_room,
        ItemSpec {
            subject: "Team sync".into(),
            start,
            end: start + hours(1),
            location: Some(super::api::resource_of(&addin_room)),
            reservation_id: Some(addin_id.clone()),
        },
    )?;
    side_by_side(report, "Outlook", booked.as_ref(), Some(&made));
    let linked = wait_reservation(demo, &addin_id, |r| {
        r.item_id.as_deref() == Some(made.id.as_str())
    })
    .await?;
    let quiet = demo.quiet().await?;
    let (after, item) = show(report, demo, "after", &addin_room, &addin_id, &made.id).await?;
    let writes = demo.writes().since(before);
    report.check_writes(
        "C add-in booking (Outlook writes the item)",
        "C: the add-in's item linked to its reservation, synced, version 1, no write",
        linked.is_some() && quiet && shows(after.as_ref(), 1, LastChange::Addin),
        writes,
        Writes::NONE,
    );
    let c_ok = in_step(after.as_ref(), item.as_ref());
    report.reconciled("C (add-in booking)", c_ok);

    // D: a web change (one UpdateItem) and a web cancel (one DeleteItem); echoes no write.
    report.line(format!(
        "\n   D  the web application changes, then cancels, the booking of {room}"
    ));
    header(report);
    show(report, demo, "before", &room, &id, &item_id).await?;
    let start = day(4, 11);
    let before = demo.writes();
    let mark = last_event_id(demo, &room).await?;
    demo.api
        .change(
            &id,
            "web",
            "Board meeting (moved)",
            start,
            start + hours(1) + minutes(30),
        )
        .await?;
    let changed = wait_reservation(demo, &id, |r| {
        r.version == 2 && r.sync_state == SyncState::Synced
    })
    .await?;
    let write = demo.writes().since(before);
    let echo = wait_processed(demo, &room, mark, |e| {
        e.kind == EventKind::Modified && names(e, &item_id)
    })
    .await?;
    let quiet = demo.quiet().await?;
    let (after, item) = show(report, demo, "changed", &room, &id, &item_id).await?;
    let echo_writes = demo.writes().since(before).since(write);
    report.check_writes(
        "D web change",
        "D: the change written with one UpdateItem",
        changed.is_some(),
        write,
        Writes::UPDATE,
    );
    report.check_writes(
        "D echo of the UpdateItem",
        "D: its echo (ModifiedEvent, same ChangeKey) processed: no write, no change",
        echo && quiet && shows(after.as_ref(), 2, LastChange::Web),
        echo_writes,
        Writes::NONE,
    );
    let d_change_ok = in_step(after.as_ref(), item.as_ref());

    let before = demo.writes();
    let mark = last_event_id(demo, &room).await?;
    demo.api.cancel(&id, "web").await?;
    let cancelled = wait_reservation(demo, &id, |r| {
        r.status == ReservationStatus::Cancelled && r.sync_state == SyncState::Synced
    })
    .await?;
    let write = demo.writes().since(before);
    let echo = wait_processed(demo, &room, mark, |e| {
        e.kind == EventKind::Moved && e.old_object.as_ref().is_some_and(|o| o.id == item_id)
    })
    .await?;
    let quiet = demo.quiet().await?;
    let after = demo.store.reservation(&id).await?;
    let moved = items_carrying(demo, &room, &id)?;
    side_by_side(report, "cancelled", after.as_ref(), moved.first());
    let echo_writes = demo.writes().since(before).since(write);
    report.check_writes(
        "D web cancel",
        "D: the cancel written with one DeleteItem (the item moves to Deleted Items)",
        cancelled.is_some(),
        write,
        Writes::DELETE,
    );
    report.check_writes(
        "D echo of the DeleteItem",
        "D: its echo (MovedEvent) processed: no write, no change",
        echo && quiet && shows(after.as_ref(), 3, LastChange::Web),
        echo_writes,
        Writes::NONE,
    );
    let d_cancel_ok = cancelled_in_step(after.as_ref(), &moved);
    report.reconciled("D (web change, cancel)", d_change_ok && d_cancel_ok);

    // E: the add-in changes the booking; Outlook saves the item; the event shows no difference.
    report.line(format!(
        "\n   E  the Outlook add-in changes the booking of {addin_room}: Outlook saves the item"
    ));
    header(report);
    show(report, demo, "before", &addin_room, &addin_id, &made.id).await?;
    let start = day(3, 15);
    let before = demo.writes();
    let mark = last_event_id(demo, &addin_room).await?;
    demo.api
        .change(
            &addin_id,
            "addin",
            "Team sync (renamed)",
            start,
            start + hours(1),
        )
        .await?;
    demo.sim.update_item(
        &addin_room,
        &made.id,
        ItemUpdate {
            subject: Some("Team sync (renamed)".into()),
            start: Some(start),
            end: Some(start + hours(1)),
            ..ItemUpdate::default()
        },
    )?;
    let event = wait_processed(demo, &addin_room, mark, |e| {
        e.kind == EventKind::Modified && names(e, &made.id)
    })
    .await?;
    let quiet = demo.quiet().await?;
    let (after, item) = show(report, demo, "after", &addin_room, &addin_id, &made.id).await?;
    report.check_writes(
        "E add-in change (Outlook saves the item)",
        "E: one change (the add-in's), the ModifiedEvent found no difference, no write",
        event && quiet && shows(after.as_ref(), 2, LastChange::Addin),
        demo.writes().since(before),
        Writes::NONE,
    );
    report.reconciled("E (add-in change)", in_step(after.as_ref(), item.as_ref()));

    // F: the room's user edits the item in Outlook, then deletes it.
    report.line(format!(
        "\n   F  someone edits the item of {addin_room} in Outlook, then deletes it"
    ));
    header(report);
    side_by_side(report, "before", after.as_ref(), item.as_ref());
    let start = day(5, 10);
    let before = demo.writes();
    demo.sim.update_item(
        &addin_room,
        &made.id,
        ItemUpdate {
            subject: Some("Team sync, changed in OWA".into()),
            start: Some(start),
            end: Some(start + minutes(30)),
            ..ItemUpdate::default()
        },
    )?;
    let followed = wait_reservation(demo, &addin_id, |r| {
        r.subject == "Team sync, changed in OWA"
    })
    .await?;
    let quiet = demo.quiet().await?;
    let (after, item) = show(report, demo, "changed", &addin_room, &addin_id, &made.id).await?;
    report.check_writes(
        "F Outlook change",
        "F: the reservation follows the Outlook change (by exchange), no write",
        followed.is_some() && quiet && shows(after.as_ref(), 3, LastChange::Exchange),
        demo.writes().since(before),
        Writes::NONE,
    );
    let f_change_ok = in_step(after.as_ref(), item.as_ref());

    let before = demo.writes();
    demo.sim.move_to_deleted_items(&addin_room, &made.id)?;
    let cancelled = wait_reservation(demo, &addin_id, |r| {
        r.status == ReservationStatus::Cancelled
    })
    .await?;
    let quiet = demo.quiet().await?;
    let after = demo.store.reservation(&addin_id).await?;
    let moved = items_carrying(demo, &addin_room, &addin_id)?;
    side_by_side(report, "deleted", after.as_ref(), moved.first());
    report.check_writes(
        "F Outlook delete (to Deleted Items)",
        "F: Outlook's delete (a move to Deleted Items) cancels the reservation, no write",
        cancelled.is_some() && quiet && shows(after.as_ref(), 4, LastChange::Exchange),
        demo.writes().since(before),
        Writes::NONE,
    );
    report.reconciled(
        "F (Outlook change, delete)",
        f_change_ok && cancelled_in_step(after.as_ref(), &moved),
    );
    Ok(())
}

/// Scene 5: Exchange loses every subscription (a restart nobody is told about) and forgets the
/// third room's events; a change made meanwhile is repaired by reading the calendar again.
pub(super) async fn lost_subscription(demo: &Demo, report: &mut Report) -> anyhow::Result<()> {
    let room = demo.rooms[LOST_ROOM].clone();
    report.line(format!(
        "\n5. A lost subscription: Exchange drops all {} subscriptions silently and forgets {room}'s events",
        demo.rooms.len()
    ));
    let start = day(6, 9);
    let before = demo.writes();
    let id = demo
        .api
        .book(&room, "web", "Lunch & learn", start, start + hours(1))
        .await?;
    let written = wait_reservation(demo, &id, |r| {
        r.sync_state == SyncState::Synced && r.item_id.is_some()
    })
    .await?;
    let item_id = written
        .as_ref()
        .and_then(|r| r.item_id.clone())
        .unwrap_or_default();
    let quiet = demo.quiet().await?;
    let write = demo.writes().since(before);
    header(report);
    let (r, item) = show(report, demo, "before", &room, &id, &item_id).await?;
    let b_ok = report.check_writes(
        "B web booking (before the loss)",
        "a web booking written before the loss (one CreateItem)",
        written.is_some() && quiet,
        write,
        Writes::CREATE,
    );
    report.reconciled(
        "B (web booking)",
        b_ok && in_step(r.as_ref(), item.as_ref()),
    );
    let mut old = Vec::new();
    for room in &demo.rooms {
        old.push(subscription_of(demo, room).await?);
    }
    let resynced_before = demo
        .store
        .mailbox_calendar(&room)
        .await?
        .and_then(|c| c.resynced_at);

    let dropped = demo.sim.drop_all_subscriptions();
    demo.sim.expire_watermarks(&room)?;
    let before = demo.writes();
    demo.sim.update_item(
        &room,
        &item_id,
        ItemUpdate {
            subject: Some("Lunch & learn, renamed offline".into()),
            ..ItemUpdate::default()
        },
    )?;
    show(report, demo, "meanwhile", &room, &id, &item_id).await?;

    let renewed = wait_for(|| async {
        let mut renewed = 0;
        for (room, old) in demo.rooms.iter().zip(&old) {
            let view = demo.store.mailbox(room).await?;
            if view.is_some_and(|v| {
                v.mailbox.state == MailboxState::Active
                    && v.mailbox.subscription_id.is_some()
                    && v.mailbox.subscription_id != *old
            }) {
                renewed += 1;
            }
        }
        Ok((renewed == demo.rooms.len()).then_some(renewed))
    })
    .await?;
    let silence = demo
        .worker_metric("pushgate_subscription_renewals_total{cause=\"silence\"}")
        .await;
    report.check(
        "the worker noticed the silence and subscribed every room again",
        renewed.is_some(),
        format!("({dropped} dropped; {silence} renewals for silence)"),
    );
    let refused = demo.sim.calls().into_iter().any(|c| {
        c.operation == "Subscribe"
            && c.mailbox.as_deref() == Some(room.as_str())
            && c.outcome == "ErrorInvalidWatermark"
    });
    let resynced = wait_resynced(demo, &room, resynced_before).await?;
    report.check(
        format!("{room}: its old watermark refused, a fresh subscription and a resync"),
        refused && resynced,
        "",
    );
    let repaired =
        wait_reservation(demo, &id, |r| r.subject == "Lunch & learn, renamed offline").await?;
    let quiet = demo.quiet().await?;
    let (after, item) = show(report, demo, "after", &room, &id, &item_id).await?;
    report.check_writes(
        "resync after the lost subscription",
        "the change made while nobody listened reached the reservation through the resync, no write",
        repaired.is_some() && quiet && shows(after.as_ref(), 2, LastChange::Exchange),
        demo.writes().since(before),
        Writes::NONE,
    );
    report.reconciled(
        "resync (lost subscription)",
        in_step(after.as_ref(), item.as_ref()),
    );
    Ok(())
}

// ---- what the scenes read ----

async fn subscription_of(demo: &Demo, room: &str) -> anyhow::Result<Option<String>> {
    Ok(demo
        .store
        .mailbox(room)
        .await?
        .and_then(|v| v.mailbox.subscription_id))
}

/// The newest event of the room's current subscription (0 when none).
async fn last_event_id(demo: &Demo, room: &str) -> anyhow::Result<i64> {
    let Some(id) = subscription_of(demo, room).await? else {
        return Ok(0);
    };
    Ok(demo
        .store
        .events(Some(&id))
        .await?
        .last()
        .map_or(0, |e| e.id))
}

fn names(event: &StoredEvent, item_id: &str) -> bool {
    event
        .object
        .as_ref()
        .is_some_and(|o| o.kind == ObjectKind::Item && o.id == item_id)
}

/// Waits until an event of the room stored after `after` and matching `check` is processed.
async fn wait_processed(
    demo: &Demo,
    room: &str,
    after: i64,
    check: impl Fn(&StoredEvent) -> bool,
) -> anyhow::Result<bool> {
    let found = wait_for(|| async {
        let Some(id) = subscription_of(demo, room).await? else {
            return Ok(None);
        };
        let events = demo.store.events(Some(&id)).await?;
        Ok(events
            .iter()
            .any(|e| e.id > after && check(e) && e.state == EventState::Processed)
            .then_some(()))
    })
    .await?;
    Ok(found.is_some())
}

async fn wait_reservation(
    demo: &Demo,
    id: &str,
    check: impl Fn(&Reservation) -> bool,
) -> anyhow::Result<Option<Reservation>> {
    wait_for(|| async { Ok(demo.store.reservation(id).await?.filter(|r| check(r))) }).await
}

/// Waits until the room's calendar was read again (after `after`, when given).
async fn wait_resynced(
    demo: &Demo,
    room: &str,
    after: Option<OffsetDateTime>,
) -> anyhow::Result<bool> {
    let done = wait_for(|| async {
        let calendar = demo.store.mailbox_calendar(room).await?;
        Ok(calendar
            .and_then(|c| c.resynced_at)
            .filter(|at| after.is_none_or(|after| *at > after)))
    })
    .await?;
    Ok(done.is_some())
}

/// Shows the reservation and the item as they are now, side by side; returns both.
async fn show(
    report: &mut Report,
    demo: &Demo,
    when: &str,
    room: &str,
    id: &str,
    item_id: &str,
) -> anyhow::Result<(Option<Reservation>, Option<ItemSnapshot>)> {
    let reservation = demo.store.reservation(id).await?;
    let item = demo.sim.item(room, item_id).ok();
    side_by_side(report, when, reservation.as_ref(), item.as_ref());
    Ok((reservation, item))
}

/// Every item of the room (any folder) carrying the reservation id.
fn items_carrying(demo: &Demo, room: &str, id: &str) -> anyhow::Result<Vec<ItemSnapshot>> {
    Ok(demo
        .sim
        .items(room)?
        .into_iter()
        .filter(|i| i.reservation_id.as_deref() == Some(id))
        .collect())
}

/// The reservation is at `version`, last changed by `by`.
fn shows(reservation: Option<&Reservation>, version: i64, by: LastChange) -> bool {
    reservation.is_some_and(|r| r.version == version && r.last_change == by)
}

/// An active reservation and its calendar item say the same.
fn in_step(reservation: Option<&Reservation>, item: Option<&ItemSnapshot>) -> bool {
    let (Some(r), Some(item)) = (reservation, item) else {
        return false;
    };
    r.status == ReservationStatus::Active
        && r.sync_state == SyncState::Synced
        && item.folder == "calendar"
        && !item.is_cancelled
        && r.item_id.as_deref() == Some(item.id.as_str())
        && r.change_key.as_deref() == Some(item.change_key.as_str())
        && item.subject.as_deref() == Some(r.subject.as_str())
        && item.start == r.start
        && item.end == r.end
        && item.reservation_id.as_deref() == Some(r.id.as_str())
        && item.location.as_deref() == Some(r.resource.as_str())
}

/// A cancelled reservation whose item is no longer in the calendar.
fn cancelled_in_step(reservation: Option<&Reservation>, items: &[ItemSnapshot]) -> bool {
    reservation.is_some_and(|r| r.status == ReservationStatus::Cancelled)
        && items.iter().all(|i| i.folder != "calendar")
}

// ---- how the scenes are shown ----

const RESERVATION_WIDTH: usize = 70;

fn header(report: &mut Report) {
    report.line(format!(
        "      {:<10}{:<RESERVATION_WIDTH$} | {}",
        "",
        "reservation (worker): version, status, sync (last change by)",
        "calendar item (Exchange): folder"
    ));
}

fn side_by_side(
    report: &mut Report,
    when: &str,
    reservation: Option<&Reservation>,
    item: Option<&ItemSnapshot>,
) {
    report.line(format!(
        "      {when:<10}{:<RESERVATION_WIDTH$} | {}",
        reservation.map_or_else(|| "none".to_string(), reservation_cell),
        item.map_or_else(|| "none".to_string(), item_cell)
    ));
}

fn reservation_cell(r: &Reservation) -> String {
    format!(
        "v{} {} {} ({}) \"{}\" {}",
        r.version,
        r.status.as_str(),
        r.sync_state.as_str(),
        r.last_change.as_str(),
        r.subject,
        span(r.start, r.end)
    )
}

fn item_cell(item: &ItemSnapshot) -> String {
    let carries = if item.reservation_id.is_some() {
        ", with the reservation id"
    } else {
        ""
    };
    format!(
        "{}{} \"{}\" {}{}",
        item.folder,
        if item.is_cancelled {
            " (cancelled)"
        } else {
            ""
        },
        item.subject.as_deref().unwrap_or(""),
        span(item.start, item.end),
        carries
    )
}

/// `12-03 09:00-10:00` (UTC).
fn span(start: OffsetDateTime, end: OffsetDateTime) -> String {
    format!(
        "{:02}-{:02} {:02}:{:02}-{:02}:{:02}",
        u8::from(start.month()),
        start.day(),
        start.hour(),
        start.minute(),
        end.hour(),
        end.minute()
    )
}

/// `hour` o'clock UTC, `days` from today.
fn day(days: i64, hour: u8) -> OffsetDateTime {
    let date = (OffsetDateTime::now_utc() + time::Duration::days(days)).date();
    date.with_time(Time::MIDNIGHT).assume_utc() + time::Duration::hours(i64::from(hour))
}

fn hours(n: i64) -> time::Duration {
    time::Duration::hours(n)
}

fn minutes(n: i64) -> time::Duration {
    time::Duration::minutes(n)
}
