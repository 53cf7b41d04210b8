//! Webhooks: every token event leaves patd as a signed HTTP POST (Standard
//! Webhooks), at least once and in order per endpoint, from the audit trail
//! as a transactional outbox (`store::outbox`), with one replica delivering
//! each endpoint at a time (a lease); plus the expiry reminders that add
//! `token.expiring` and `token.expired` to the trail.
//!
//! `config` checks the configuration, `payload` renders events, `signing`
//! signs them, `client` posts them, `deliver` runs an endpoint's queue,
//! `reminders` finds expiring tokens.
//!
//! May use: `domain`, `metrics`, `store`.

pub mod client;
pub mod config;
pub mod deliver;
pub mod payload;
pub mod reminders;
pub mod signing;

use std::sync::Arc;
use std::time::Duration;

pub use config::{
    DeliveryConfig, DeliverySettings, Endpoint, EndpointConfig, ReminderSettings, WebhookSettings,
};

use crate::metrics::Metrics;
use crate::store::Store;

/// How this process names itself in leases: the host (a pod's name) and a
/// random part, so that a restarted process is a new holder.
pub fn lease_owner() -> String {
    let mut random = [0u8; 6];
    let _ = getrandom::fill(&mut random);
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "patd".to_owned());
    let host: String = host.chars().take(63).collect();
    let random: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{host}/{}/{random}", std::process::id())
}

/// Runs webhook delivery and the expiry reminders until dropped (the tasks
/// it starts end with it).
pub async fn run(store: Store, settings: WebhookSettings, metrics: Arc<Metrics>, owner: String) {
    let mut tasks = tokio::task::JoinSet::new();
    // token.expired is sent even with no lead times configured.
    tasks.spawn(reminders::remind(store.clone(), settings.reminders.clone()));
    for endpoint in &settings.endpoints {
        metrics.webhooks.register(&endpoint.name);
        // Registered before delivery starts (normally already, see
        // [`register`]); retried while storage is down.
        let mut retry = Duration::from_millis(200);
        while let Err(err) = store.ensure_endpoint(&endpoint.name).await {
            tracing::warn!(endpoint = %endpoint.name, error = %err, "webhook endpoint not registered yet");
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(Duration::from_secs(10));
        }
        tracing::info!(endpoint = %endpoint.name, url = %endpoint.target, "webhook endpoint");
        tasks.spawn(
            deliver::Worker {
                store: store.clone(),
                endpoint: endpoint.clone(),
                settings: settings.delivery.clone(),
                metrics: metrics.clone(),
                owner: owner.clone(),
            }
            .run(),
        );
    }
    while tasks.join_next().await.is_some() {}
}

/// Registers every endpoint that is new to the database. A new endpoint gets
/// the events that commit after this, so the server does it before it serves:
/// nothing this process writes is missed.
pub async fn register(
    store: &Store,
    settings: &WebhookSettings,
) -> Result<(), crate::store::StoreError> {
    for endpoint in &settings.endpoints {
        store.ensure_endpoint(&endpoint.name).await?;
    }
    Ok(())
}

/// Gives up this process's leases (at shutdown), so another replica takes
/// over at once instead of when they lapse.
pub async fn release(store: &Store, settings: &WebhookSettings, owner: &str) {
    for endpoint in &settings.endpoints {
        let _ = store.release_endpoint(&endpoint.name, owner).await;
    }
}
