//! Token policies from the server configuration: maximum and default lifetime,
//! and the number of active tokens a subject may hold, with per-account
//! overrides.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::clock;

/// `[policy]` and `[policy.accounts.<account>]` in the configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(flatten)]
    pub defaults: LimitsConfig,
    #[serde(default)]
    pub accounts: HashMap<String, LimitsConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_lifetime: Option<String>,
    pub default_lifetime: Option<String>,
    pub max_active_tokens_per_subject: Option<u32>,
}

/// The limits that apply to one account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_lifetime: Option<Duration>,
    pub default_lifetime: Option<Duration>,
    pub max_active_tokens_per_subject: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    defaults: Limits,
    accounts: HashMap<String, Limits>,
}

fn parse(key: &str, text: &Option<String>) -> Result<Option<Duration>, String> {
    text.as_deref()
        .map(|text| {
            humantime::parse_duration(text).map_err(|err| {
                format!(
                    "policy {key} is not a duration like \"30d\": {}",
                    crate::domain::clock::duration_error(&err)
                )
            })
        })
        .transpose()
}

impl Limits {
    /// `config` over `base`: a key set in `config` wins.
    fn from_config(config: &LimitsConfig, base: Limits, scope: &str) -> Result<Limits, String> {
        let limits = Limits {
            max_lifetime: parse("max_lifetime", &config.max_lifetime)?.or(base.max_lifetime),
            default_lifetime: parse("default_lifetime", &config.default_lifetime)?
                .or(base.default_lifetime),
            max_active_tokens_per_subject: config
                .max_active_tokens_per_subject
                .or(base.max_active_tokens_per_subject),
        };
        if let (Some(default), Some(max)) = (limits.default_lifetime, limits.max_lifetime)
            && default > max
        {
            return Err(format!(
                "{scope}: default_lifetime ({}) exceeds max_lifetime ({})",
                humantime::format_duration(default),
                humantime::format_duration(max)
            ));
        }
        if limits.max_lifetime.is_some_and(|max| max.is_zero())
            || limits.max_active_tokens_per_subject == Some(0)
        {
            return Err(format!(
                "{scope}: max_lifetime and max_active_tokens_per_subject must be above zero"
            ));
        }
        Ok(limits)
    }
}

impl Policy {
    pub fn new(config: &PolicyConfig) -> Result<Policy, String> {
        let defaults = Limits::from_config(&config.defaults, Limits::default(), "policy")?;
        let accounts = config
            .accounts
            .iter()
            .map(|(account, limits)| {
                let scope = format!("policy.accounts.{account}");
                Ok((
                    account.clone(),
                    Limits::from_config(limits, defaults, &scope)?,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(Policy { defaults, accounts })
    }

    pub fn limits(&self, account: &str) -> Limits {
        self.accounts.get(account).copied().unwrap_or(self.defaults)
    }

    /// The expiry a new token (or a renewed one) gets in `account`: the one asked
    /// for, or the default lifetime; refused past the maximum lifetime.
    pub fn expiry(
        &self,
        account: &str,
        asked: Option<i64>,
        now: i64,
    ) -> Result<Option<i64>, String> {
        let limits = self.limits(account);
        let micros = |lifetime: Duration| {
            now.saturating_add(i64::try_from(lifetime.as_micros()).unwrap_or(i64::MAX))
        };
        let expires_at = asked.or(limits.default_lifetime.map(micros));
        if let Some(max) = limits.max_lifetime {
            let latest = micros(max);
            match expires_at {
                None => {
                    return Err(format!(
                        "tokens in account {account} must expire within {}: set expires_at",
                        humantime::format_duration(max)
                    ));
                }
                Some(at) if at > latest => {
                    return Err(format!(
                        "expires_at {} is beyond the maximum lifetime of {} in account {account} (latest {})",
                        clock::rfc3339(at),
                        humantime::format_duration(max),
                        clock::rfc3339(latest)
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn policy(text: &str) -> Result<Policy, String> {
        let config: PolicyConfig = toml::from_str(text).map_err(|err| err.to_string())?;
        Policy::new(&config)
    }

    #[test]
    fn lifetimes_apply_per_account_over_the_defaults() {
        let policy = policy(
            "max_lifetime = \"90d\"\ndefault_lifetime = \"30d\"\n\
             [accounts.acme]\nmax_lifetime = \"7d\"\ndefault_lifetime = \"1d\"\n\
             [accounts.free]\nmax_active_tokens_per_subject = 3\n",
        )
        .unwrap();
        let now = 1_000 * DAY;
        assert_eq!(policy.expiry("other", None, now), Ok(Some(now + 30 * DAY)));
        assert_eq!(policy.expiry("acme", None, now), Ok(Some(now + DAY)));
        assert!(
            policy
                .expiry("acme", Some(now + 8 * DAY), now)
                .unwrap_err()
                .contains("7days")
        );
        assert_eq!(
            policy.expiry("free", Some(now + 60 * DAY), now),
            Ok(Some(now + 60 * DAY))
        );
        assert_eq!(policy.limits("free").max_active_tokens_per_subject, Some(3));
        assert_eq!(
            policy.limits("free").max_lifetime,
            Some(Duration::from_secs(90 * 86_400))
        );
    }

    #[test]
    fn no_expiry_is_refused_under_a_maximum_without_a_default() {
        let policy = policy("max_lifetime = \"30d\"").unwrap();
        let err = policy.expiry("acme", None, 0).unwrap_err();
        assert!(err.contains("must expire within 30days"), "{err}");
        assert_eq!(Policy::default().expiry("acme", None, 0), Ok(None));
    }

    #[test]
    fn contradictions_are_refused() {
        for (text, expected) in [
            (
                "max_lifetime = \"1d\"\ndefault_lifetime = \"2d\"",
                "exceeds",
            ),
            (
                "max_lifetime = \"30d\"\n[accounts.acme]\ndefault_lifetime = \"31d\"",
                "policy.accounts.acme",
            ),
            ("max_active_tokens_per_subject = 0", "above zero"),
            ("max_lifetime = \"soon\"", "max_lifetime"),
            ("max_lifetim = \"1d\"", "unknown field"),
        ] {
            let err = policy(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
