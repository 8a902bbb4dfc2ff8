//! `pushgate events list [--dead]`, `pushgate events replay ID` and `pushgate sync resync
//! MAILBOX`: the operators' door to the sync step's state, over the same store as the worker. A
//! running worker picks a replayed event or a resync request up at its next poll.

use anyhow::Context;
use time::OffsetDateTime;

use crate::config::Config;
use crate::store::{self, StoredEvent};

/// What the command was asked to do.
#[derive(Debug, Clone)]
pub enum SyncCommand {
    /// Events waiting for the sync step, or (`dead`) the dead letters.
    ListEvents { dead: bool, limit: usize },
    /// Makes a dead letter pending again.
    Replay { id: i64 },
    /// Asks for a mailbox's calendar to be read again.
    Resync { mailbox: String },
}

/// Runs the command; the text goes to stdout. An unknown event or mailbox is an error.
pub fn run(config: &Config, command: SyncCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a runtime")?;
    runtime.block_on(async move {
        let store = store::open(&config.worker.database_url)
            .await
            .context("opening the worker's database")?;
        match command {
            SyncCommand::ListEvents { dead, limit } => {
                let mut after = None;
                let mut shown = 0usize;
                while shown < limit {
                    let page_size = (limit - shown).min(500);
                    let page = if dead {
                        store.dead_events(after, page_size).await?
                    } else {
                        store.pending_events(after, page_size).await?
                    };
                    for event in &page {
                        println!("{}", event_line(event));
                    }
                    shown += page.len();
                    after = page.last().map(|e| e.id);
                    if page.len() < page_size {
                        break;
                    }
                }
                if shown == 0 {
                    println!(
                        "{}",
                        if dead {
                            "no dead letters"
                        } else {
                            "no events waiting"
                        }
                    );
                }
                Ok(())
            }
            SyncCommand::Replay { id } => {
                if store.replay_event(id).await? {
                    println!("event {id}: pending again; the worker handles it next");
                    Ok(())
                } else {
                    anyhow::bail!("event {id} is not a dead letter (see pushgate events list --dead)")
                }
            }
            SyncCommand::Resync { mailbox } => {
                let address = crate::worker::api::mailbox_address(&mailbox)
                    .map_err(|e| anyhow::anyhow!("{mailbox:?}: {}", e.message))?;
                if store
                    .request_resync(&address, OffsetDateTime::now_utc())
                    .await?
                {
                    println!("{address}: resync requested; the worker reads its calendar once its subscription is active");
                    Ok(())
                } else {
                    anyhow::bail!("{address}: no such mailbox")
                }
            }
        }
    })
}

/// One event as a line: id, state, kind, item, attempts, arrival, last error.
pub fn event_line(event: &StoredEvent) -> String {
    let item = event.object.as_ref().map_or("-", |o| o.id.as_str());
    let mut line = format!(
        "{id}\t{state}\t{kind}\tsubscription={subscription}\titem={item}\tattempts={attempts}\treceived={received}",
        id = event.id,
        state = event.state.as_str(),
        kind = event.kind.as_str(),
        subscription = event.subscription_id,
        attempts = event.attempts,
        received = store::format_utc(event.received_at),
    );
    if let Some(next) = event.next_attempt_at {
        line.push_str(&format!("\tnext_attempt={}", store::format_utc(next)));
    }
    if let Some(error) = &event.last_error {
        // One line per event, whatever the error text holds.
        let error: String = error
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        line.push_str(&format!("\terror={error}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::{EventKind, ObjectId, ObjectKind};
    use crate::store::EventState;

    #[test]
    fn an_event_is_one_line_with_its_error() {
        let event = StoredEvent {
            id: 42,
            tenant: "default".into(),
            subscription_id: "S1".into(),
            previous_watermark: None,
            watermark: Some("W".into()),
            dedupe_key: "W".into(),
            position: 0,
            kind: EventKind::Modified,
            object: Some(ObjectId {
                kind: ObjectKind::Item,
                id: "AAMk1".into(),
                change_key: None,
            }),
            parent_folder_id: None,
            old_object: None,
            old_parent_folder_id: None,
            unread_count: None,
            event_time: None,
            received_at: OffsetDateTime::UNIX_EPOCH,
            request_id: None,
            state: EventState::Failed,
            processed_at: None,
            attempts: 10,
            last_error: Some("EWS: ErrorAccessDenied:\naccess denied".into()),
            next_attempt_at: None,
        };
        let line = event_line(&event);
        assert!(!line.contains('\n'), "{line}");
        for part in [
            "42\t",
            "failed",
            "modified",
            "item=AAMk1",
            "attempts=10",
            "error=EWS: ErrorAccessDenied: access denied",
        ] {
            assert!(line.contains(part), "{part} missing from {line}");
        }
    }
}
