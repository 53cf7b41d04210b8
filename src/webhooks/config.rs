//! The configuration of webhooks: `[[webhooks]]` endpoints, `[webhook_delivery]`
//! and the expiry reminders, checked at start-up. Nothing secret (a signing
//! secret, a header value, the URL's query) reaches `Debug` or an error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::client::Target;
use super::payload::EVENT_TYPES;
use super::signing::SigningSecret;
use crate::domain::clock;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Headers patd writes itself: configured headers may not replace them.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "user-agent",
];

/// One `[[webhooks]]` entry as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    pub url: String,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// Event types (`token.revoked`, ...); all of them when absent.
    pub events: Option<Vec<String>>,
    /// Only events of these accounts; all when absent.
    pub accounts: Option<Vec<String>>,
    pub timeout: Option<String>,
    /// Extra request headers (e.g. a SIEM's `Authorization`); values are secret.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// PEM CA bundle trusted for this https receiver, besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("url", &Target::redact_text(&self.url))
            .field("secret", &self.secret.as_ref().map(|_| "(redacted)"))
            .field("secret_file", &self.secret_file)
            .field("events", &self.events)
            .field("accounts", &self.accounts)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `[webhook_delivery]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    pub retry_for: Option<String>,
    pub lease: Option<String>,
    pub poll_interval: Option<String>,
}

/// A checked endpoint.
pub struct Endpoint {
    pub name: String,
    pub target: Target,
    pub secret: SigningSecret,
    /// The types sent (names from [`EVENT_TYPES`]).
    pub events: Vec<&'static str>,
    /// Empty: every account.
    pub accounts: Vec<String>,
    pub timeout: Duration,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.target.to_string())
            .field("events", &self.events)
            .field("accounts", &self.accounts)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Whether events of `event_type` about `account` go to this endpoint.
    pub fn wants(&self, event_type: &str, account: Option<&str>) -> bool {
        self.events.contains(&event_type)
            && (self.accounts.is_empty()
                || account.is_some_and(|account| self.accounts.iter().any(|a| a == account)))
    }
}

/// How deliveries are retried and shared among replicas.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// The first retry's delay; each later one doubles, up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long after its event a delivery is retried before it is dead-lettered.
    pub retry_for: Duration,
    /// How long an endpoint's lease lasts without renewal: how soon another
    /// replica takes over from one that died.
    pub lease: Duration,
    /// How often other replicas' events are looked for (this process's own
    /// wake delivery at once).
    pub poll_interval: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            retry_for: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// When `token.expiring` is sent (lead times before expiry) and how often
/// tokens are checked.
#[derive(Clone, Debug)]
pub struct ReminderSettings {
    /// Shortest first; empty: only `token.expired`.
    pub leads: Vec<Duration>,
    pub interval: Duration,
}

impl Default for ReminderSettings {
    fn default() -> Self {
        ReminderSettings {
            leads: vec![Duration::from_secs(86_400), Duration::from_secs(7 * 86_400)],
            interval: Duration::from_secs(60),
        }
    }
}

/// Everything webhooks need: endpoints, delivery and reminders.
#[derive(Clone, Debug, Default)]
pub struct WebhookSettings {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub delivery: DeliverySettings,
    pub reminders: ReminderSettings,
}

fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

fn duration_or(key: &str, text: &Option<String>, default: Duration) -> Result<Duration, String> {
    let value = match text {
        Some(text) => clock::parse_duration(key, text)?,
        None => default,
    };
    if value.is_zero() {
        return Err(format!("{key} must be longer than zero"));
    }
    Ok(value)
}

impl Endpoint {
    fn from_config(config: EndpointConfig) -> Result<Endpoint, String> {
        let name = config.name;
        if !valid_name(&name) {
            return Err(format!(
                "webhook name {name:?}: use 1 to 63 lowercase letters, digits, '-' or '_'"
            ));
        }
        let at = |message: String| format!("webhook {name:?}: {message}");
        let secret_text = match (config.secret, &config.secret_file) {
            (Some(secret), None) => secret,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|err| at(format!("secret_file {}: {err}", path.display())))?,
            _ => return Err(at("set exactly one of secret and secret_file".to_owned())),
        };
        let secret = SigningSecret::parse(&secret_text).map_err(at)?;
        let target = Target::parse(&config.url, config.ca_file.as_deref()).map_err(at)?;
        let events = match config.events {
            None => EVENT_TYPES.iter().map(|(_, name)| *name).collect(),
            Some(names) if names.is_empty() => {
                return Err(at(
                    "events is empty: leave it out to send every type".to_owned()
                ));
            }
            Some(names) => names
                .iter()
                .map(|wanted| {
                    EVENT_TYPES
                        .iter()
                        .map(|(_, name)| *name)
                        .find(|name| name == wanted)
                        .ok_or_else(|| {
                            at(format!(
                                "unknown event type {wanted:?}; known: {}",
                                EVENT_TYPES.map(|(_, name)| name).join(", ")
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let accounts = config.accounts.unwrap_or_default();
        if accounts.iter().any(|account| account.trim().is_empty()) {
            return Err(at("accounts may not hold an empty name".to_owned()));
        }
        let timeout = duration_or("timeout", &config.timeout, DEFAULT_TIMEOUT).map_err(at)?;
        if timeout > MAX_TIMEOUT {
            return Err(at(format!("timeout may be at most {MAX_TIMEOUT:?}")));
        }
        let mut headers = Vec::new();
        for (key, value) in config.headers {
            let header = http::HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
                at(format!(
                    "header name {key:?} is not a valid HTTP header name"
                ))
            })?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(at(format!(
                    "header {key:?} is set by patd and cannot be configured"
                )));
            }
            let mut value = http::HeaderValue::from_str(&value).map_err(|_| {
                at(format!(
                    "the value of header {key:?} is not a valid header value"
                ))
            })?;
            value.set_sensitive(true);
            headers.push((header, value));
        }
        Ok(Endpoint {
            name,
            target,
            secret,
            events,
            accounts,
            timeout,
            headers,
        })
    }
}

impl WebhookSettings {
    /// Checks the configuration file's webhook keys.
    pub fn new(
        endpoints: Vec<EndpointConfig>,
        delivery: &DeliveryConfig,
        reminders: Option<&[String]>,
        reminder_interval: &Option<String>,
    ) -> Result<WebhookSettings, String> {
        let defaults = DeliverySettings::default();
        let delivery = DeliverySettings {
            retry_initial: duration_or(
                "webhook_delivery.retry_initial",
                &delivery.retry_initial,
                defaults.retry_initial,
            )?,
            retry_max: duration_or(
                "webhook_delivery.retry_max",
                &delivery.retry_max,
                defaults.retry_max,
            )?,
            retry_for: duration_or(
                "webhook_delivery.retry_for",
                &delivery.retry_for,
                defaults.retry_for,
            )?,
            lease: duration_or("webhook_delivery.lease", &delivery.lease, defaults.lease)?,
            poll_interval: duration_or(
                "webhook_delivery.poll_interval",
                &delivery.poll_interval,
                defaults.poll_interval,
            )?,
        };
        if delivery.retry_max < delivery.retry_initial {
            return Err("webhook_delivery.retry_max is shorter than retry_initial".to_owned());
        }
        let mut checked: Vec<Arc<Endpoint>> = Vec::new();
        for config in endpoints {
            let endpoint = Endpoint::from_config(config)?;
            if checked.iter().any(|other| other.name == endpoint.name) {
                return Err(format!("webhook name {:?} is used twice", endpoint.name));
            }
            // A lease must outlast an attempt with room to spare (an attempt
            // starts only while two timeouts of it are left), or two replicas
            // could send at once.
            if delivery.lease < endpoint.timeout * 3 {
                return Err(format!(
                    "webhook_delivery.lease ({:?}) must be at least three times webhook {:?}'s timeout ({:?})",
                    delivery.lease, endpoint.name, endpoint.timeout
                ));
            }
            checked.push(Arc::new(endpoint));
        }
        let mut leads = match reminders {
            None => ReminderSettings::default().leads,
            Some(texts) => texts
                .iter()
                .map(|text| duration_or("expiry_reminders", &Some(text.clone()), Duration::ZERO))
                .collect::<Result<Vec<_>, _>>()?,
        };
        leads.sort();
        leads.dedup();
        if leads.len() > 8 {
            return Err("expiry_reminders: at most 8 lead times".to_owned());
        }
        let interval = duration_or(
            "expiry_reminder_interval",
            reminder_interval,
            ReminderSettings::default().interval,
        )?;
        Ok(WebhookSettings {
            endpoints: checked,
            delivery,
            reminders: ReminderSettings { leads, interval },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_dGVzdC1zaWduaW5nLXNlY3JldC1vZi0zMi1ieXRlcyE=";

    fn endpoint(name: &str, url: &str) -> EndpointConfig {
        EndpointConfig {
            name: name.to_owned(),
            url: url.to_owned(),
            secret: Some(SECRET.to_owned()),
            ..Default::default()
        }
    }

    fn check(endpoints: Vec<EndpointConfig>) -> Result<WebhookSettings, String> {
        WebhookSettings::new(endpoints, &DeliveryConfig::default(), None, &None)
    }

    #[test]
    fn defaults_send_every_type_with_7_and_1_day_reminders() {
        let settings = check(vec![endpoint("siem", "https://siem.example/hook")]).unwrap();
        assert_eq!(settings.endpoints[0].events.len(), EVENT_TYPES.len());
        assert_eq!(settings.endpoints[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(settings.reminders.leads.len(), 2);
        assert!(settings.endpoints[0].wants("token.revoked", Some("any")));
    }

    #[test]
    fn bad_endpoints_are_refused_with_what_is_wrong_and_no_secret() {
        let mut cases: Vec<(EndpointConfig, &str)> = vec![
            (endpoint("Bad Name", "http://x/"), "webhook name"),
            (endpoint("a", "ftp://x/"), "http:// or https://"),
            (endpoint("a", "http://user:pw@x/"), "credentials"),
            (endpoint("a", "not a url"), "not a valid URL"),
        ];
        let mut unknown = endpoint("a", "http://x/");
        unknown.events = Some(vec!["token.nope".into()]);
        cases.push((unknown, "unknown event type"));
        let mut both = endpoint("a", "http://x/");
        both.secret_file = Some("/nonexistent".into());
        cases.push((both, "exactly one of secret and secret_file"));
        let mut short = endpoint("a", "http://x/");
        short.secret = Some("too-short".into());
        cases.push((short, "at least 24"));
        let mut header = endpoint("a", "http://x/");
        header.headers.insert("webhook-id".into(), "x".into());
        cases.push((header, "set by patd"));
        let mut slow = endpoint("a", "http://x/");
        slow.timeout = Some("15s".into());
        cases.push((slow, "three times"));
        for (config, expected) in cases {
            let err = check(vec![config]).unwrap_err();
            assert!(err.contains(expected), "{err}");
            assert!(
                !err.contains("dGVzdC1z") && !err.contains("too-short"),
                "{err}"
            );
        }
        let twice = check(vec![endpoint("a", "http://x/"), endpoint("a", "http://y/")]);
        assert!(twice.unwrap_err().contains("used twice"));
    }

    #[test]
    fn debug_output_shows_no_secret_header_value_or_query() {
        let mut config = endpoint("siem", "https://siem.example/hook?token=q-secret");
        config
            .headers
            .insert("Authorization".into(), "Splunk h-secret".into());
        let shown = format!("{config:?}");
        let settings = check(vec![config]).unwrap();
        let shown = format!("{shown} {settings:?}");
        for secret in ["dGVzdC1z", "h-secret", "q-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("siem.example"), "{shown}");
    }

    #[test]
    fn accounts_filter_events() {
        let mut config = endpoint("a", "http://x/");
        config.accounts = Some(vec!["acme".into()]);
        config.events = Some(vec!["token.revoked".into()]);
        let settings = check(vec![config]).unwrap();
        let endpoint = &settings.endpoints[0];
        assert!(endpoint.wants("token.revoked", Some("acme")));
        assert!(!endpoint.wants("token.revoked", Some("globex")));
        assert!(!endpoint.wants("token.created", Some("acme")));
        assert!(!endpoint.wants("token.revoked", None));
    }
}
