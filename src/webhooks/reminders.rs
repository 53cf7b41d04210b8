//! Expiry reminders, sent by every process (the store makes each one exactly
//! once): `token.expiring` when a token enters a lead time's window, and
//! `token.expired` when it expires while active. Only the shortest window a
//! token is in counts, and a token created inside a window (it expires sooner
//! than the lead) gets no reminder for it: its owner just chose that expiry.

use std::time::Duration;

use super::config::ReminderSettings;
use crate::domain::clock;
use crate::store::{EXPIRED_LOOKBACK_MICROS, Store, StoreError};

/// Tokens handled per query.
const BATCH: i64 = 200;
/// Batches per lead time per round: a backlog is worked off over rounds.
const BATCHES: usize = 50;
const DAY_MICROS: i64 = 86_400 * 1_000_000;
/// Reminders sent long ago are deleted this often (a full scan of a small table).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Sends the reminders that are due, round after round.
pub async fn remind(store: Store, settings: ReminderSettings) {
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        ticks.tick().await;
        if !store.is_reachable() {
            continue;
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            let longest = settings.leads.last().copied().map_or(0, micros);
            let before = clock::now_micros() - EXPIRED_LOOKBACK_MICROS - longest - DAY_MICROS;
            if let Err(err) = store.prune_reminders(before).await {
                tracing::debug!(error = %err, "old reminders not pruned");
            }
        }
        match round(&store, &settings).await {
            Ok(0) => {}
            Ok(sent) => tracing::debug!(sent, "expiry reminders sent"),
            Err(err) => {
                tracing::warn!(error = %err, "expiry reminders: storage failed; next round retries")
            }
        }
    }
}

/// One round: every lead time, and expiry.
pub async fn round(store: &Store, settings: &ReminderSettings) -> Result<usize, StoreError> {
    let mut sent = 0;
    // (lead, the next shorter lead): leads are sorted shortest first.
    let mut windows: Vec<(i64, i64)> = vec![(0, 0)];
    let mut shorter = 0;
    for lead in &settings.leads {
        windows.push((micros(*lead), shorter));
        shorter = micros(*lead);
    }
    for (lead, shorter) in windows {
        for _ in 0..BATCHES {
            let now = clock::now_micros();
            let due = store.reminders_due(lead, shorter, now, BATCH).await?;
            for token in &due {
                let detail = if lead == 0 {
                    "expired".to_owned()
                } else {
                    format!(
                        "expires within {}",
                        humantime::format_duration(Duration::from_micros(lead as u64))
                    )
                };
                if store.send_reminder(token, lead, now, detail).await? {
                    sent += 1;
                }
            }
            if (due.len() as i64) < BATCH {
                break;
            }
        }
    }
    Ok(sent)
}
