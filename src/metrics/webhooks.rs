//! Webhook delivery counters, by endpoint (names come from the configuration,
//! so the series are bounded): attempts, outcomes, and the delay from an
//! event's commit to its receiver's 2xx. The queue's gauges (pending, oldest,
//! dead letters) are read from storage by `serve::metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::Histogram;

/// How one delivery attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Anything else; retried later.
    Failed,
    /// Failed, and out of retries: dead-lettered.
    DeadLettered,
    /// 410 Gone: the endpoint is disabled.
    Gone,
}

const OUTCOMES: [(DeliveryOutcome, &str); 4] = [
    (DeliveryOutcome::Delivered, "delivered"),
    (DeliveryOutcome::Failed, "failed"),
    (DeliveryOutcome::DeadLettered, "dead_lettered"),
    (DeliveryOutcome::Gone, "gone"),
];

#[derive(Debug, Default)]
struct EndpointSeries {
    outcomes: [AtomicU64; OUTCOMES.len()],
    /// Commit to 2xx, for delivered events.
    delay: Histogram,
}

#[derive(Debug, Default)]
pub struct WebhookMetrics {
    endpoints: RwLock<BTreeMap<String, Arc<EndpointSeries>>>,
}

impl WebhookMetrics {
    /// Starts the series of `endpoint` at zero.
    pub fn register(&self, endpoint: &str) {
        self.series(endpoint);
    }

    fn series(&self, endpoint: &str) -> Arc<EndpointSeries> {
        if let Some(series) = self.endpoints.read().expect("lock poisoned").get(endpoint) {
            return series.clone();
        }
        let mut endpoints = self.endpoints.write().expect("lock poisoned");
        endpoints.entry(endpoint.to_owned()).or_default().clone()
    }

    /// One attempt at `endpoint`; `delay` is the event's age when delivered.
    pub fn record(&self, endpoint: &str, outcome: DeliveryOutcome, delay: Option<Duration>) {
        let series = self.series(endpoint);
        let index = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        series.outcomes[index].fetch_add(1, Ordering::Relaxed);
        if let Some(delay) = delay {
            series.delay.observe(delay);
        }
    }

    /// Attempts at `endpoint` that ended with `outcome` so far.
    pub fn count(&self, endpoint: &str, outcome: DeliveryOutcome) -> u64 {
        let index = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.series(endpoint).outcomes[index].load(Ordering::Relaxed)
    }

    pub fn render(&self, out: &mut String) {
        let endpoints = self.endpoints.read().expect("lock poisoned");
        if endpoints.is_empty() {
            return;
        }
        out.push_str(
            "# HELP patd_webhook_deliveries_total Delivery attempts, by endpoint and outcome.\n\
             # TYPE patd_webhook_deliveries_total counter\n",
        );
        for (name, series) in endpoints.iter() {
            for (i, (_, outcome)) in OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "patd_webhook_deliveries_total{{endpoint=\"{name}\",outcome=\"{outcome}\"}} {}",
                    series.outcomes[i].load(Ordering::Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP patd_webhook_attempts_total Delivery attempts, by endpoint.\n\
             # TYPE patd_webhook_attempts_total counter\n",
        );
        for (name, series) in endpoints.iter() {
            let total: u64 = series
                .outcomes
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .sum();
            let _ = writeln!(
                out,
                "patd_webhook_attempts_total{{endpoint=\"{name}\"}} {total}"
            );
        }
        out.push_str(
            "# HELP patd_webhook_delivery_delay_seconds From an event's commit to its receiver's 2xx.\n\
             # TYPE patd_webhook_delivery_delay_seconds histogram\n",
        );
        for (name, series) in endpoints.iter() {
            series.delay.write(
                out,
                "patd_webhook_delivery_delay_seconds",
                &format!("endpoint=\"{name}\""),
            );
        }
    }
}
