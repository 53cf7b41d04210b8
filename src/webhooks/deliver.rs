//! One endpoint's delivery loop, run by every process: whoever holds the
//! endpoint's lease fans new audit events out into deliveries and sends them,
//! one at a time in order; the others wait to take over when the lease lapses.
//! A delivery is marked done only after the receiver's 2xx, so a process that
//! dies mid-delivery leaves it pending for the next lease holder (at least
//! once). Nothing waits in memory: the queue is the database's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{Sender, backoff};
use super::config::{DeliverySettings, Endpoint};
use super::payload;
use crate::domain::clock;
use crate::metrics::Metrics;
use crate::metrics::webhooks::DeliveryOutcome;
use crate::store::{Attempted, NewDelivery, PendingDelivery, Store};

/// Events read from the trail per fan-out batch.
const FANOUT_BATCH: i64 = 500;
/// Batches fanned out before sending resumes (fan-out is cheap; sending is
/// what receivers wait for).
const FANOUT_BATCHES: usize = 20;
/// Deliveries read per round.
const SEND_BATCH: i64 = 100;
/// Delivered and dead rows are kept this long for `patd admin webhooks`.
const KEEP_DELIVERED: Duration = Duration::from_secs(86_400);
const KEEP_DEAD: Duration = Duration::from_secs(30 * 86_400);
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// What a round of sending ended on.
enum Round {
    /// The queue is empty: wait for new events.
    Idle,
    /// The head waits for its retry time (or the endpoint is disabled).
    WaitUntil(Instant),
    /// The lease needs renewing before anything more is sent.
    Renew,
}

pub struct Worker {
    pub store: Store,
    pub endpoint: Arc<Endpoint>,
    pub settings: DeliverySettings,
    pub metrics: Arc<Metrics>,
    /// This process, as the lease names it.
    pub owner: String,
}

impl Worker {
    pub async fn run(self) {
        let name = self.endpoint.name.clone();
        let mut sender = Sender::new(self.endpoint.clone());
        let mut written = self.store.subscribe_events();
        let ttl = self.settings.lease;
        let ttl_micros = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        let mut last_prune = Instant::now() - PRUNE_EVERY;
        let mut holding = false;
        loop {
            let asked = Instant::now();
            let wait = match self
                .store
                .lease_endpoint(&name, &self.owner, ttl_micros)
                .await
            {
                Ok(Some(disabled)) => {
                    if !holding {
                        tracing::info!(endpoint = %name, "webhook lease taken: delivering");
                        holding = true;
                    }
                    // The lease is trusted for less than it lasts, by the time
                    // the longest attempt may take (config keeps ttl >= 3 timeouts).
                    let valid_until = asked + ttl.saturating_sub(self.endpoint.timeout);
                    if let Err(err) = self.fan_out(&name).await {
                        tracing::warn!(endpoint = %name, error = %err, "webhook fan-out failed");
                    }
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        last_prune = Instant::now();
                        self.prune().await;
                    }
                    if disabled {
                        Some(Instant::now() + self.settings.poll_interval)
                    } else {
                        match self.send_round(&name, &mut sender, valid_until).await {
                            Ok(Round::Idle) => None,
                            Ok(Round::WaitUntil(at)) => Some(at),
                            Ok(Round::Renew) => continue,
                            Err(err) => {
                                tracing::warn!(endpoint = %name, error = %err, "webhook delivery stalled");
                                Some(Instant::now() + self.settings.poll_interval)
                            }
                        }
                    }
                }
                Ok(None) => {
                    if holding {
                        tracing::info!(endpoint = %name, "webhook lease lost: another process delivers");
                        holding = false;
                    }
                    Some(Instant::now() + self.settings.poll_interval)
                }
                Err(err) => {
                    tracing::debug!(endpoint = %name, error = %err, "webhook lease not renewed");
                    Some(Instant::now() + self.settings.poll_interval)
                }
            };
            // Renew well before the lease lapses, even while waiting.
            let renew = asked + ttl / 3;
            let until = match wait {
                Some(at) => at.min(renew),
                None if holding => (Instant::now() + self.settings.poll_interval).min(renew),
                None => Instant::now() + self.settings.poll_interval,
            };
            let _ = tokio::time::timeout_at(until.into(), written.changed()).await;
        }
    }

    /// Turns new audit events into this endpoint's deliveries.
    async fn fan_out(&self, name: &str) -> Result<(), crate::store::StoreError> {
        let retry_for = i64::try_from(self.settings.retry_for.as_micros()).unwrap_or(i64::MAX);
        for _ in 0..FANOUT_BATCHES {
            let (events, mark, moved) = self.store.outbox_batch(name, FANOUT_BATCH).await?;
            let read = events.len();
            let deliveries: Vec<NewDelivery> = events
                .iter()
                .filter_map(|event| {
                    let (event_type, event_id, body) = payload::render(event)?;
                    self.endpoint
                        .wants(event_type, event.account.as_deref())
                        .then(|| NewDelivery {
                            event_seq: event.seq,
                            event_id,
                            event_type,
                            event_at: event.at,
                            body,
                            deadline: event.at.saturating_add(retry_for),
                        })
                })
                .collect();
            if read == 0 && !moved {
                return Ok(());
            }
            let held = self
                .store
                .enqueue_deliveries(name, &self.owner, &deliveries, mark, clock::now_micros())
                .await?;
            // A short batch is the end of what has committed.
            if !held || (read as i64) < FANOUT_BATCH {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sends pending deliveries in order until the queue is empty, the head
    /// must wait, or the lease needs renewing.
    async fn send_round(
        &self,
        name: &str,
        sender: &mut Sender,
        valid_until: Instant,
    ) -> Result<Round, crate::store::StoreError> {
        loop {
            let pending = self.store.pending_deliveries(name, SEND_BATCH).await?;
            if pending.is_empty() {
                return Ok(Round::Idle);
            }
            for delivery in &pending {
                let now = clock::now_micros();
                if delivery.next_attempt_at > now {
                    let wait = Duration::from_micros((delivery.next_attempt_at - now) as u64);
                    return Ok(Round::WaitUntil(Instant::now() + wait));
                }
                if Instant::now() + self.endpoint.timeout >= valid_until {
                    return Ok(Round::Renew);
                }
                match self.attempt(name, sender, delivery).await? {
                    DeliveryOutcome::Delivered | DeliveryOutcome::DeadLettered => {}
                    DeliveryOutcome::Failed => {
                        // The head waits for its retry; nothing behind it passes.
                        return Ok(Round::Renew);
                    }
                    DeliveryOutcome::Gone => {
                        return Ok(Round::WaitUntil(
                            Instant::now() + self.settings.poll_interval,
                        ));
                    }
                }
            }
        }
    }

    async fn attempt(
        &self,
        name: &str,
        sender: &mut Sender,
        delivery: &PendingDelivery,
    ) -> Result<DeliveryOutcome, crate::store::StoreError> {
        let sent_at = clock::now_micros();
        let result = sender
            .post(&delivery.event_id, sent_at / 1_000_000, &delivery.body)
            .await;
        let now = clock::now_micros();
        let (outcome, error) = match result {
            Ok(status) if (200..300).contains(&status) => {
                (DeliveryOutcome::Delivered, String::new())
            }
            Ok(410) => (DeliveryOutcome::Gone, "410 Gone".to_owned()),
            Ok(status) => (DeliveryOutcome::Failed, format!("HTTP {status}")),
            Err(err) => (DeliveryOutcome::Failed, err),
        };
        let outcome = match outcome {
            DeliveryOutcome::Delivered => {
                self.store
                    .record_attempt(delivery.position, Attempted::Delivered, now)
                    .await?;
                let delay =
                    Duration::from_micros(now.saturating_sub(delivery.event_at).max(0) as u64);
                self.metrics
                    .webhooks
                    .record(name, DeliveryOutcome::Delivered, Some(delay));
                return Ok(DeliveryOutcome::Delivered);
            }
            DeliveryOutcome::Gone => {
                tracing::warn!(endpoint = %name, url = %self.endpoint.target,
                    "webhook receiver answered 410 Gone: endpoint disabled until `patd admin webhooks retry`");
                self.store.disable_endpoint(name, "410 Gone", now).await?;
                let retry = Attempted::Failed {
                    error: &error,
                    next_attempt_at: Some(now),
                };
                self.store
                    .record_attempt(delivery.position, retry, now)
                    .await?;
                DeliveryOutcome::Gone
            }
            _ => {
                let failures = u32::try_from(delivery.attempts + 1).unwrap_or(u32::MAX);
                let delay = backoff(
                    failures,
                    self.settings.retry_initial,
                    self.settings.retry_max,
                );
                let next = now.saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX));
                let dead = next > delivery.deadline;
                let attempted = Attempted::Failed {
                    error: &error,
                    next_attempt_at: (!dead).then_some(next),
                };
                self.store
                    .record_attempt(delivery.position, attempted, now)
                    .await?;
                if dead {
                    tracing::warn!(endpoint = %name, event = %delivery.event_id, error = %error,
                        attempts = failures, "webhook delivery dead-lettered: out of retries");
                    DeliveryOutcome::DeadLettered
                } else {
                    tracing::info!(endpoint = %name, event = %delivery.event_id, error = %error,
                        attempts = failures, retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs())),
                        "webhook delivery failed; will retry");
                    DeliveryOutcome::Failed
                }
            }
        };
        self.metrics.webhooks.record(name, outcome, None);
        Ok(outcome)
    }

    async fn prune(&self) {
        let now = clock::now_micros();
        let delivered = now - KEEP_DELIVERED.as_micros() as i64;
        let dead = now - KEEP_DEAD.as_micros() as i64;
        if let Err(err) = self.store.prune_deliveries(delivered, dead).await {
            tracing::debug!(error = %err, "webhook deliveries not pruned");
        }
    }
}
