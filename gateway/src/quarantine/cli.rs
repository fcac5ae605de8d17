//! `clerk-sync-gateway quarantine list|show|retry|drop`: the operator's view
//! of quarantined deliveries. `retry` runs the current release's pipeline
//! (mapping and apply) on the stored body and drops the record once the
//! sync-service has committed the event.

use std::{fmt::Write as _, io::Write};

use clap::Subcommand;
use clerk_sync_api::v1::QuarantinedEvent;

use super::Quarantine;
use crate::{
    Error,
    pipeline::{self, Carriage},
    sync_service::{SyncService, SyncServiceSettings},
    upstream::Upstream,
    verify::Delivery,
};

/// What `clerk-sync-gateway quarantine` does.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum QuarantineCommand {
    /// Lists quarantined deliveries, oldest first (no bodies).
    List {
        /// Most records to show.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Shows one delivery with its raw body.
    Show {
        /// The event id (svix-id).
        event_id: String,
    },
    /// Re-runs today's mapping and apply on deliveries; each one the
    /// sync-service commits is dropped from the quarantine.
    Retry {
        /// The event id (svix-id); with `--all`, every record.
        #[arg(required_unless_present = "all")]
        event_id: Option<String>,
        /// Retry every quarantined delivery, oldest first.
        #[arg(long, conflicts_with = "event_id")]
        all: bool,
    },
    /// Deletes one delivery from the quarantine for good.
    Drop {
        /// The event id (svix-id).
        event_id: String,
    },
}

/// Runs `command` against the sync-service `settings` name, writing the
/// operator's report to `out`. `max_message_bytes` is the server's
/// (`--max-message-bytes`): a quarantined body and a retried event must fit.
/// Fails when a call fails or a retried delivery is still refused (it stays
/// quarantined, with the new reason).
pub async fn run(
    settings: &SyncServiceSettings,
    max_message_bytes: usize,
    command: QuarantineCommand,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let service = SyncService::new(settings)?;
    let upstream = Upstream::new(&service);
    let quarantine = Quarantine::new(&service, max_message_bytes);
    let carriage = Carriage {
        max_message_bytes,
        private_metadata: settings.private_metadata,
    };
    let write_error = |error: std::io::Error| Error::Io(error);
    match command {
        QuarantineCommand::List { limit } => {
            let events = list(&quarantine, limit as usize).await?;
            writeln!(out, "{} quarantined", events.len()).map_err(write_error)?;
            for event in &events {
                writeln!(out, "{}", summary(event)).map_err(write_error)?;
            }
        }
        QuarantineCommand::Show { event_id } => {
            let event = quarantine.get(&event_id).await?;
            out.write_all(details(&event).as_bytes())
                .map_err(write_error)?;
        }
        QuarantineCommand::Drop { event_id } => {
            quarantine.drop(&event_id).await?;
            writeln!(out, "dropped {event_id}").map_err(write_error)?;
        }
        QuarantineCommand::Retry { event_id, all } => {
            let ids = match event_id {
                Some(id) if !all => vec![id],
                _ => list(&quarantine, usize::MAX)
                    .await?
                    .into_iter()
                    .map(|event| event.event_id)
                    .collect(),
            };
            let mut still_refused = 0;
            for id in ids {
                match retry(&quarantine, &upstream, carriage, &id).await {
                    Ok(outcome) => {
                        writeln!(out, "{id}: {outcome}; dropped from the quarantine")
                            .map_err(write_error)?;
                    }
                    Err(error) if error.is_poison() => {
                        still_refused += 1;
                        writeln!(out, "{id}: still refused: {}", error.reason())
                            .map_err(write_error)?;
                    }
                    Err(error) => return Err(error),
                }
            }
            if still_refused > 0 {
                return Err(Error::StillQuarantined(still_refused));
            }
        }
    }
    Ok(())
}

/// Every record up to `limit`, oldest first.
async fn list(quarantine: &Quarantine, limit: usize) -> Result<Vec<QuarantinedEvent>, Error> {
    let mut events = Vec::new();
    let mut token = String::new();
    loop {
        let page_size = (limit - events.len()).min(1000) as i32;
        let page = quarantine.list(page_size, token).await?;
        events.extend(page.events);
        if page.next_page_token.is_empty() || events.len() >= limit {
            return Ok(events);
        }
        token = page.next_page_token;
    }
}

/// Runs the pipeline on one quarantined delivery; drops it once applied, or
/// records the new refusal (count, last seen, reason) and returns it.
async fn retry(
    quarantine: &Quarantine,
    upstream: &Upstream,
    carriage: Carriage,
    event_id: &str,
) -> Result<&'static str, Error> {
    let event = quarantine.get(event_id).await?;
    let delivery = Delivery {
        id: &event.event_id,
        timestamp: event.delivered_at.map_or(0, |at| at.seconds),
    };
    let forwarded = pipeline::forward(upstream, carriage, &event.body, &delivery, &mut None).await;
    match forwarded {
        Ok(outcome) => {
            quarantine.drop(event_id).await?;
            Ok(outcome.map_or("not a user event, acknowledged", |outcome| {
                outcome.as_str_name()
            }))
        }
        Err(error) if error.is_poison() => {
            quarantine
                .store(
                    &delivery,
                    &event.body,
                    pipeline::event_type_of(&event.body),
                    error.reason(),
                )
                .await?;
            Err(error)
        }
        Err(error) => Err(error),
    }
}

fn time(at: Option<prost_types::Timestamp>) -> String {
    at.map_or_else(|| "-".to_owned(), |at| at.to_string())
}

/// One line per record: id, type, first seen, count, size, reason.
fn summary(event: &QuarantinedEvent) -> String {
    format!(
        "{}\t{}\tfirst seen {}\tseen {}×\t{} bytes\t{}",
        event.event_id,
        if event.event_type.is_empty() {
            "-"
        } else {
            &event.event_type
        },
        time(event.first_seen_at),
        event.seen_count,
        event.body_size,
        event.reason.replace('\n', " "),
    )
}

/// Every field, then the body (lossy UTF-8).
fn details(event: &QuarantinedEvent) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "event id:      {}", event.event_id);
    let _ = writeln!(text, "type:          {}", event.event_type);
    let _ = writeln!(text, "reason:        {}", event.reason);
    let _ = writeln!(text, "delivered at:  {}", time(event.delivered_at));
    let _ = writeln!(text, "first seen:    {}", time(event.first_seen_at));
    let _ = writeln!(text, "last seen:     {}", time(event.last_seen_at));
    let _ = writeln!(text, "seen:          {} times", event.seen_count);
    let _ = writeln!(text, "body:          {} bytes", event.body_size);
    text.push_str(&String::from_utf8_lossy(&event.body));
    text.push('\n');
    text
}
