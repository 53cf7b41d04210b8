//! `patd admin webhooks`: each endpoint's queue as the database holds it (for
//! the whole fleet), its dead letters, and sending them again.

use clap::Subcommand;

use patd::config::Config;
use patd::domain::clock;
use patd::store::{Retried, Store};

use super::CliResult;
use super::output::shown;

/// Dead letters listed per endpoint.
const DEAD_LETTERS_SHOWN: i64 = 20;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Every endpoint: enabled or disabled, pending, oldest pending, dead
    /// letters (the newest listed), and which process holds its lease
    List,
    /// Queue an endpoint's dead letters again (and enable it if a 410 Gone
    /// disabled it); with --event, only that event, dead or delivered
    Retry {
        /// The endpoint's name, as in [[webhooks]]
        name: String,
        /// Only this event (its id, evt_...), e.g. to send a delivered one again
        #[arg(long)]
        event: Option<String>,
    },
}

fn ago(now: i64, at: i64) -> String {
    let seconds = (now - at).max(0) / 1_000_000;
    humantime::format_duration(std::time::Duration::from_secs(seconds as u64)).to_string()
}

pub async fn run(config: &Config, store: &Store, command: WebhooksCommand) -> CliResult {
    let configured: Vec<&str> = config
        .server
        .webhooks
        .endpoints
        .iter()
        .map(|endpoint| endpoint.name.as_str())
        .collect();
    let now = clock::now_micros();
    match command {
        WebhooksCommand::List => {
            out!(
                "{:<20}  {:<12}  {:>8}  {:<12}  {:>6}  LEASE",
                "ENDPOINT",
                "STATE",
                "PENDING",
                "OLDEST",
                "DEAD"
            );
            let statuses = store.endpoint_statuses().await?;
            for status in &statuses {
                let state = if status.disabled_at.is_some() {
                    "disabled"
                } else if !configured.contains(&status.name.as_str()) {
                    "unconfigured"
                } else {
                    "enabled"
                };
                let lease = if status.lease_until > now {
                    format!(
                        "{} (for {})",
                        shown(&status.lease_owner),
                        ago(status.lease_until, now)
                    )
                } else {
                    "-".to_owned()
                };
                out!(
                    "{:<20}  {:<12}  {:>8}  {:<12}  {:>6}  {lease}",
                    status.name,
                    state,
                    status.pending,
                    status
                        .oldest_pending_at
                        .map_or("-".to_owned(), |at| ago(now, at)),
                    status.dead,
                );
                if let Some(at) = status.disabled_at {
                    out!(
                        "  disabled {} ago: {}",
                        ago(now, at),
                        shown(&status.disabled_reason)
                    );
                }
                if status.dead > 0 {
                    for dead in store.dead_letters(&status.name, DEAD_LETTERS_SHOWN).await? {
                        out!(
                            "  dead {}  {}  {}  {} attempts, last: {}",
                            dead.event_id,
                            dead.event_type,
                            clock::rfc3339(dead.event_at),
                            dead.attempts,
                            shown(&dead.last_error)
                        );
                    }
                }
            }
            for name in &configured {
                if !statuses.iter().any(|status| status.name == *name) {
                    out!("{name:<20}  not yet registered (no server has started with it)");
                }
            }
            Ok(())
        }
        WebhooksCommand::Retry { name, event } => {
            let window = i64::try_from(config.server.webhooks.delivery.retry_for.as_micros())
                .unwrap_or(i64::MAX);
            match store
                .retry_deliveries(&name, event.as_deref(), now, now.saturating_add(window))
                .await?
            {
                Retried::NoEndpoint => Err(format!("no webhook endpoint named {name:?}").into()),
                Retried::Queued { deliveries: 0, .. } if event.is_some() => Err(format!(
                    "endpoint {name:?} has no delivered or dead event {:?} (pending ones are queued already)",
                    event.unwrap_or_default()
                )
                .into()),
                Retried::Queued {
                    deliveries,
                    was_disabled,
                } => {
                    note!("queued {deliveries} deliveries to {name} again");
                    if was_disabled {
                        note!("{name} was disabled (410 Gone) and is enabled again");
                    }
                    if !configured.contains(&name.as_str()) {
                        note!("{name} is not in this configuration: a server configured with it delivers them");
                    }
                    Ok(())
                }
            }
        }
    }
}
