//! Which refused management calls the audit trail records, so that a flood of
//! refusals can neither become a flood of writes nor starve other callers'
//! refusals out of the trail.
//!
//! A refusal is recorded when every budget it falls under has room:
//!
//! | caller | per caller | per owner | all such callers |
//! |---|---|---|---|
//! | a valid credential (`token:<id>`, `trusted:<name>`) | 10 a minute | 60 a minute per subject | 50 a second |
//! | no valid credential (`anonymous`) | 10 a minute per network (IPv4 address, IPv6 /64) | — | 20 a second |
//!
//! Anonymous refusals have a global budget of their own, so a spray from many
//! networks cannot use up the budget of refusals by known credentials. When a
//! caller's refusal is recorded after some of its refusals were not, the
//! recorded one says how many were skipped; every skipped refusal is counted
//! in `patd_audit_refusals_unrecorded_total`.

use std::net::IpAddr;
use std::time::Duration;

use crate::api::rate::{KeyedRateLimit, RateLimit};
use crate::domain::model::Owner;

/// Refusals recorded per minute for one credential.
pub const PER_CREDENTIAL_PER_MINUTE: u32 = 10;
/// Refusals recorded per minute for one owner, whatever its credentials.
pub const PER_OWNER_PER_MINUTE: u32 = 60;
/// Refusals of valid credentials recorded per second, in all.
pub const CREDENTIALED_PER_SECOND: u32 = 50;
/// Refusals without a valid credential recorded per minute from one network.
pub const ANONYMOUS_PER_NETWORK_PER_MINUTE: u32 = 10;
/// Refusals without a valid credential recorded per second, in all.
pub const ANONYMOUS_PER_SECOND: u32 = 20;

/// Keys tracked per table; beyond, new keys share one budget.
const MAX_KEYS: usize = 10_000;

/// Who was refused, as the budgets see it.
pub enum Refused<'a> {
    /// A valid credential (`token:<id>` or `trusted:<name>`) and the owner the
    /// call concerned.
    Credential {
        principal: &'a str,
        owner: Option<&'a Owner>,
    },
    /// No valid credential, from this peer.
    Anonymous { peer: Option<IpAddr> },
}

pub struct RefusalBudget {
    per_credential: KeyedRateLimit<String>,
    per_owner: KeyedRateLimit<Owner>,
    credentialed: RateLimit,
    per_network: KeyedRateLimit<Option<IpAddr>>,
    anonymous: RateLimit,
}

impl Default for RefusalBudget {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        RefusalBudget {
            per_credential: KeyedRateLimit::new(PER_CREDENTIAL_PER_MINUTE, minute, MAX_KEYS),
            per_owner: KeyedRateLimit::new(PER_OWNER_PER_MINUTE, minute, MAX_KEYS),
            credentialed: RateLimit::new(CREDENTIALED_PER_SECOND),
            per_network: KeyedRateLimit::new(ANONYMOUS_PER_NETWORK_PER_MINUTE, minute, MAX_KEYS),
            anonymous: RateLimit::new(ANONYMOUS_PER_SECOND),
        }
    }
}

impl RefusalBudget {
    /// Whether to record this refusal: `Some(n)` when it is to be recorded, `n`
    /// being how many of the same caller's refusals were not recorded since its
    /// last recorded one.
    pub fn admit(&self, refused: Refused<'_>) -> Option<u32> {
        match refused {
            Refused::Credential { principal, owner } => {
                let key = principal.to_owned();
                let skipped = self.per_credential.admit_noting(&key)?;
                let rest = owner.is_none_or(|owner| self.per_owner.admit(owner))
                    && self.credentialed.admit();
                if rest {
                    Some(skipped)
                } else {
                    self.per_credential.note_refused(&key, skipped + 1);
                    None
                }
            }
            Refused::Anonymous { peer } => {
                let network = peer.map(network_of);
                let skipped = self.per_network.admit_noting(&network)?;
                if self.anonymous.admit() {
                    Some(skipped)
                } else {
                    self.per_network.note_refused(&network, skipped + 1);
                    None
                }
            }
        }
    }
}

/// The network a budget counts an address in: IPv6 hosts usually hold a whole
/// /64, so that is one key; IPv4 addresses (mapped ones included) count singly.
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(principal: &str) -> Refused<'_> {
        Refused::Credential {
            principal,
            owner: None,
        }
    }

    #[test]
    fn one_flooding_token_cannot_starve_another() {
        let budget = RefusalBudget::default();
        let recorded = (0..1_000)
            .filter(|_| budget.admit(token("token:flood")).is_some())
            .count();
        assert_eq!(recorded, PER_CREDENTIAL_PER_MINUTE as usize);
        assert_eq!(budget.admit(token("token:other")), Some(0));
    }

    #[test]
    fn one_owner_with_many_tokens_is_bounded_too() {
        let budget = RefusalBudget {
            credentialed: RateLimit::new(1_000),
            ..RefusalBudget::default()
        };
        let owner = Owner::new("mallory", "acme").unwrap();
        let names: Vec<String> = (0..100).map(|i| format!("token:{i}")).collect();
        let recorded = names
            .iter()
            .filter(|principal| {
                budget
                    .admit(Refused::Credential {
                        principal,
                        owner: Some(&owner),
                    })
                    .is_some()
            })
            .count();
        assert_eq!(recorded, PER_OWNER_PER_MINUTE as usize);
        let alice = Owner::new("alice", "acme").unwrap();
        let other = Refused::Credential {
            principal: "token:alice",
            owner: Some(&alice),
        };
        assert_eq!(budget.admit(other), Some(0), "another owner is recorded");
    }

    #[test]
    fn an_anonymous_spray_cannot_use_up_the_credentialed_budget() {
        let budget = RefusalBudget::default();
        let recorded = (0..10_000u32)
            .filter(|i| {
                let peer = Some(IpAddr::from(i.to_be_bytes()));
                budget.admit(Refused::Anonymous { peer }).is_some()
            })
            .count();
        assert_eq!(recorded, ANONYMOUS_PER_SECOND as usize);
        assert_eq!(budget.admit(token("token:victim")), Some(0));
    }

    #[test]
    fn the_next_recorded_refusal_counts_the_skipped_ones() {
        let budget = RefusalBudget {
            per_credential: KeyedRateLimit::new(1, Duration::from_millis(50), 10),
            ..RefusalBudget::default()
        };
        assert_eq!(budget.admit(token("token:a")), Some(0));
        for _ in 0..5 {
            assert_eq!(budget.admit(token("token:a")), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(budget.admit(token("token:a")), Some(5));
    }

    #[test]
    fn budgets_count_ipv4_singly_even_when_mapped_and_ipv6_by_64() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(network_of(ip("::ffff:198.51.100.7")), ip("198.51.100.7"));
        assert_ne!(
            network_of(ip("::ffff:198.51.100.7")),
            network_of(ip("::ffff:198.51.100.8"))
        );
        assert_eq!(
            network_of(ip("2001:db8:1:2:aaaa::1")),
            network_of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            network_of(ip("2001:db8:1:2::1")),
            network_of(ip("2001:db8:1:3::1"))
        );
    }
}
