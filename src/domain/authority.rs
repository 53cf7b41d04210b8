//! The subset rule: a credential never hands out more than it holds.
//!
//! Every path that hands out a secret (create, rotate, rotate-self, and any
//! later one) checks the credential it would hand out against the caller's
//! [`Authority`] with [`Authority::check`]. A user's token bounds what it hands
//! out in three ways, each of which must hold:
//!
//! - **scopes**: every scope of the new credential is one the caller holds;
//! - **networks**: a caller limited to an allowlist hands out credentials limited
//!   to blocks inside its own (no allowlist at all would be wider);
//! - **lifetime**: a caller that expires hands out credentials that expire no
//!   later than it does (no expiry at all would be longer);
//! - **resources**: a caller restricted to resources hands out credentials
//!   restricted to a non-empty subset of them (no restriction would be wider).
//!
//! Trusted internal callers (and the operator's `patd admin`) are unlimited.

use std::fmt;

use crate::domain::cidr::CidrList;
use crate::domain::clock;
use crate::domain::resource::ResourceList;
use crate::domain::scope::ScopeSet;

/// What a caller may hand out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    pub scopes: ScopeSet,
    /// Empty: usable from anywhere.
    pub allowed_cidrs: CidrList,
    /// `None`: never expires.
    pub expires_at: Option<i64>,
    /// Empty: every resource.
    pub resources: ResourceList,
}

/// The limits of a credential about to be handed out.
#[derive(Clone, Copy, Debug)]
pub struct Grant<'a> {
    pub scopes: ScopeSet,
    pub allowed_cidrs: &'a CidrList,
    pub expires_at: Option<i64>,
    pub resources: &'a ResourceList,
}

/// Why a grant exceeds the caller's authority: every way it does, for the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeds {
    pub lacking_scopes: ScopeSet,
    /// The caller's allowlist, when the grant is not inside it.
    pub networks: Option<CidrList>,
    /// The caller's expiry, when the grant would outlive it.
    pub lifetime: Option<i64>,
    /// The caller's resources, when the grant is not restricted to some of them.
    pub resources: Option<ResourceList>,
}

impl fmt::Display for Exceeds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.lacking_scopes.is_empty() {
            parts.push(format!(
                "the caller's token lacks scopes: {}",
                self.lacking_scopes.to_names().join(", ")
            ));
        }
        if let Some(networks) = &self.networks {
            parts.push(format!(
                "the caller's token may be used only from {}, so the token it hands out must \
                 have allowed_cidrs inside those blocks",
                networks.to_strings().join(", ")
            ));
        }
        if let Some(expires_at) = self.lifetime {
            parts.push(format!(
                "the caller's token expires at {}, so the token it hands out must expire no \
                 later (set expires_at)",
                clock::rfc3339(expires_at)
            ));
        }
        if let Some(resources) = &self.resources {
            parts.push(format!(
                "the caller's token is restricted to the resources {}, so the token it hands out \
                 must be restricted to some of them (set resources)",
                resources.to_strings().join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

impl Authority {
    /// No limits: trusted internal callers and the operator.
    pub fn unlimited() -> Authority {
        Authority {
            scopes: ScopeSet::ALL,
            allowed_cidrs: CidrList::default(),
            expires_at: None,
            resources: ResourceList::default(),
        }
    }

    /// Whether handing out a credential with `grant`'s limits stays within this
    /// authority; if not, every limit it exceeds.
    pub fn check(&self, grant: Grant<'_>) -> Result<(), Exceeds> {
        let exceeds = Exceeds {
            lacking_scopes: grant.scopes.minus(self.scopes),
            networks: (!self.allowed_cidrs.covers(grant.allowed_cidrs))
                .then(|| self.allowed_cidrs.clone()),
            lifetime: self
                .expires_at
                .filter(|&limit| grant.expires_at.is_none_or(|expires_at| expires_at > limit)),
            resources: (!self.resources.covers(grant.resources)).then(|| self.resources.clone()),
        };
        if exceeds.lacking_scopes.is_empty()
            && exceeds.networks.is_none()
            && exceeds.lifetime.is_none()
            && exceeds.resources.is_none()
        {
            Ok(())
        } else {
            Err(exceeds)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn scopes(names: &[&str]) -> ScopeSet {
        ScopeSet::parse(names).unwrap()
    }

    fn cidrs(blocks: &[&str]) -> CidrList {
        CidrList::parse(blocks).unwrap()
    }

    fn authority(names: &[&str], blocks: &[&str], expires_at: Option<i64>) -> Authority {
        Authority {
            scopes: scopes(names),
            allowed_cidrs: cidrs(blocks),
            expires_at,
            resources: ResourceList::default(),
        }
    }

    fn resources(names: &[&str]) -> ResourceList {
        ResourceList::parse("resources", names).unwrap()
    }

    #[test]
    fn each_limit_is_checked_and_named() {
        let caller = authority(&["license:read", "tag:read"], &["10.0.0.0/8"], Some(1_000));
        let inside = cidrs(&["10.1.0.0/16"]);
        let every = ResourceList::default();
        let ok = Grant {
            scopes: scopes(&["tag:read"]),
            allowed_cidrs: &inside,
            expires_at: Some(1_000),
            resources: &every,
        };
        assert_eq!(caller.check(ok), Ok(()));

        let wider = Grant {
            scopes: scopes(&["tag:read", "user:write"]),
            ..ok
        };
        let err = caller.check(wider).unwrap_err();
        assert_eq!(err.lacking_scopes, scopes(&["user:write"]));
        assert!(
            err.to_string().contains("lacks scopes: user:write"),
            "{err}"
        );

        let anywhere = CidrList::default();
        let outside = cidrs(&["10.0.0.0/8", "192.0.2.0/24"]);
        for allowed_cidrs in [&anywhere, &outside] {
            let err = caller
                .check(Grant {
                    allowed_cidrs,
                    ..ok
                })
                .unwrap_err();
            assert_eq!(err.networks, Some(cidrs(&["10.0.0.0/8"])));
            assert!(err.to_string().contains("only from 10.0.0.0/8"), "{err}");
        }

        for expires_at in [None, Some(1_001)] {
            let err = caller.check(Grant { expires_at, ..ok }).unwrap_err();
            assert_eq!(err.lifetime, Some(1_000));
            assert!(err.to_string().contains("must expire no later"), "{err}");
        }

        let restricted = Authority {
            resources: resources(&["product:a", "product:b"]),
            ..caller.clone()
        };
        let some = resources(&["product:b"]);
        assert_eq!(
            restricted.check(Grant {
                resources: &some,
                ..ok
            }),
            Ok(())
        );
        for wider in [every.clone(), resources(&["product:a", "product:c"])] {
            let err = restricted
                .check(Grant {
                    resources: &wider,
                    ..ok
                })
                .unwrap_err();
            assert_eq!(err.resources, Some(resources(&["product:a", "product:b"])));
            assert!(
                err.to_string()
                    .contains("restricted to the resources product:a, product:b"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_unlimited_authority_grants_anything() {
        let anywhere = CidrList::default();
        let every = ResourceList::default();
        let grant = Grant {
            scopes: ScopeSet::ALL,
            allowed_cidrs: &anywhere,
            expires_at: None,
            resources: &every,
        };
        assert_eq!(Authority::unlimited().check(grant), Ok(()));
    }

    fn any_scopes() -> impl Strategy<Value = ScopeSet> {
        (0u32..(1 << 29)).prop_map(|bits| {
            ScopeSet::from_stored(
                &ScopeSet::ALL
                    .names()
                    .enumerate()
                    .filter(|(i, _)| bits & (1 << i) != 0)
                    .map(|(_, name)| name)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
    }

    fn any_cidrs() -> impl Strategy<Value = CidrList> {
        prop::collection::vec((0u8..4, 8u8..=32), 0..3).prop_map(|blocks| {
            let blocks: Vec<String> = blocks
                .into_iter()
                .map(|(net, len)| format!("10.{net}.0.0/{len}"))
                .collect();
            CidrList::parse(&blocks).unwrap()
        })
    }

    fn any_resources() -> impl Strategy<Value = ResourceList> {
        prop::collection::vec(0u8..5, 0..4).prop_map(|ids| {
            let names: Vec<String> = ids.iter().map(|id| format!("product:{id}")).collect();
            ResourceList::parse("resources", &names).unwrap()
        })
    }

    proptest! {
        /// Whatever the caller and the grant, an accepted grant is inside the
        /// caller in every respect, and a refused one is outside in a way named.
        #[test]
        fn accepted_grants_never_exceed_the_caller(
            held in any_scopes(), asked in any_scopes(),
            held_cidrs in any_cidrs(), asked_cidrs in any_cidrs(),
            held_expiry in prop::option::of(0i64..100), asked_expiry in prop::option::of(0i64..100),
            held_resources in any_resources(), asked_resources in any_resources(),
        ) {
            let caller = Authority { scopes: held, allowed_cidrs: held_cidrs.clone(), expires_at: held_expiry, resources: held_resources.clone() };
            let grant = Grant { scopes: asked, allowed_cidrs: &asked_cidrs, expires_at: asked_expiry, resources: &asked_resources };
            match caller.check(grant) {
                Ok(()) => {
                    prop_assert!(asked.minus(held).is_empty());
                    // Inside, checked by addresses rather than by `covers`: both
                    // ends of every block handed out are allowed to the caller.
                    if !held_cidrs.is_empty() {
                        prop_assert!(!asked_cidrs.is_empty());
                    }
                    for block in asked_cidrs.to_strings() {
                        let net: ipnet::IpNet = block.parse().unwrap();
                        prop_assert!(held_cidrs.allows(net.network()), "{block}");
                        prop_assert!(held_cidrs.allows(net.broadcast()), "{block}");
                    }
                    if let Some(limit) = held_expiry {
                        prop_assert!(asked_expiry.is_some_and(|at| at <= limit));
                    }
                    if !held_resources.is_empty() {
                        prop_assert!(!asked_resources.is_empty());
                        for name in asked_resources.to_strings() {
                            prop_assert!(held_resources.to_strings().contains(&name), "{name}");
                        }
                    }
                }
                Err(exceeds) => prop_assert!(!exceeds.to_string().is_empty()),
            }
        }
    }
}
