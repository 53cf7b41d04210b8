//! What a token is, apart from how it is stored or sent: its owner, its state, and
//! the rules a new token must satisfy (shared by the gRPC API and the operator CLI).

use crate::domain::cidr::CidrList;
use crate::domain::clock;
use crate::domain::error::InvalidArgument;
use crate::domain::labels::Labels;
use crate::domain::resource::ResourceList;
use crate::domain::scope::ScopeSet;
use crate::domain::text::validate_text;
use crate::domain::token::{Secret, SecretHash, TokenFormat, generate_id};

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_PRINCIPAL_CHARS: usize = 200;

/// Who a token belongs to: a subject within an account.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub subject: String,
    pub account: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
    /// Stopped by its owner (or an operator) until resumed; expiry keeps running.
    Suspended,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
            TokenState::Suspended => "suspended",
        }
    }
}

/// A stored token (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub owner: Owner,
    pub scopes: ScopeSet,
    pub hint: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// When the token was last seen active, to the second; written behind, so it
    /// may lag by up to the flush interval.
    pub last_used_at: Option<i64>,
    /// The client address of the last use, when the caller of Introspect gave it.
    pub last_used_ip: Option<String>,
    /// When the secret was last replaced; `None`: never rotated.
    pub rotated_at: Option<i64>,
    /// Client networks the token may be used from; empty: any.
    pub allowed_cidrs: CidrList,
    /// Set while the token is suspended: since when.
    pub suspended_at: Option<i64>,
    /// What the token is for; empty: not said.
    pub description: String,
    pub labels: Labels,
    /// The resources the token may be used on; empty: every one.
    pub resources: ResourceList,
}

impl TokenRecord {
    /// Revocation wins over expiry, expiry over suspension (a suspended token
    /// that expires meanwhile stays expired when resumed); a token is expired
    /// from its `expires_at` on.
    pub fn state_at(&self, now: i64) -> TokenState {
        state_of(
            self.revoked_at.is_some(),
            self.expires_at,
            self.suspended_at.is_some(),
            now,
        )
    }

    /// What handing this token out (again) grants, with `expires_at` as its expiry.
    pub fn grant(&self, expires_at: Option<i64>) -> crate::domain::authority::Grant<'_> {
        crate::domain::authority::Grant {
            scopes: self.scopes,
            allowed_cidrs: &self.allowed_cidrs,
            expires_at,
            resources: &self.resources,
        }
    }
}

/// [`TokenRecord::state_at`] from the facts that decide it (also what the
/// cache keeps).
pub fn state_of(revoked: bool, expires_at: Option<i64>, suspended: bool, now: i64) -> TokenState {
    if revoked {
        TokenState::Revoked
    } else if expires_at.is_some_and(|expires_at| expires_at <= now) {
        TokenState::Expired
    } else if suspended {
        TokenState::Suspended
    } else {
        TokenState::Active
    }
}

/// Who made a change, and from where: what the audit trail records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// `token:<id>`, `trusted:<name>`, `operator` (the admin commands),
    /// `patd` (the server itself) or `anonymous`.
    pub principal: String,
    /// The caller's address, when known.
    pub peer: String,
}

impl Actor {
    pub fn new(principal: impl Into<String>, peer: Option<std::net::SocketAddr>) -> Actor {
        Actor {
            principal: principal.into(),
            peer: peer.map(|addr| addr.to_string()).unwrap_or_default(),
        }
    }

    /// The operator's `patd admin` commands, on the database directly.
    pub fn operator() -> Actor {
        Actor::new("operator", None)
    }
}

/// A token about to be stored, and the only holder of its hash.
#[derive(Debug)]
pub struct NewToken {
    pub record: TokenRecord,
    pub secret_hash: SecretHash,
}

/// What a caller asks for when creating a token.
pub struct TokenSpec<'a> {
    pub name: &'a str,
    /// From [`parse_scopes`], so never empty.
    pub scopes: ScopeSet,
    pub expires_at: Option<i64>,
    pub allowed_cidrs: CidrList,
    pub description: String,
    pub labels: Labels,
    pub resources: ResourceList,
}

impl TokenSpec<'_> {
    /// Checks the spec and mints the token: id, secret, hash and hint.
    pub fn issue(
        &self,
        format: &TokenFormat,
        owner: Owner,
        now: i64,
    ) -> Result<(NewToken, Secret), InvalidArgument> {
        let name = validate_text("name", self.name, MAX_NAME_CHARS)?;
        if let Some(expires_at) = self.expires_at
            && expires_at <= now
        {
            return Err(InvalidArgument(format!(
                "expires_at {} is not in the future (now is {})",
                clock::rfc3339(expires_at),
                clock::rfc3339(now)
            )));
        }
        let secret = format.generate();
        let record = TokenRecord {
            id: generate_id(),
            name,
            owner,
            scopes: self.scopes,
            hint: format.hint(&secret),
            created_at: now,
            expires_at: self.expires_at,
            revoked_at: None,
            suspended_at: None,
            last_used_at: None,
            last_used_ip: None,
            rotated_at: None,
            allowed_cidrs: self.allowed_cidrs.clone(),
            description: self.description.clone(),
            labels: self.labels.clone(),
            resources: self.resources.clone(),
        };
        let secret_hash = SecretHash::of(secret.expose());
        Ok((
            NewToken {
                record,
                secret_hash,
            },
            secret,
        ))
    }
}

/// A non-empty scope list of catalog names (or aliases).
pub fn parse_scopes(names: &[String]) -> Result<ScopeSet, InvalidArgument> {
    let scopes = ScopeSet::parse(names)?;
    if scopes.is_empty() {
        return Err(InvalidArgument(
            "scopes must name at least one scope (ListScopes lists the catalog)".to_owned(),
        ));
    }
    Ok(scopes)
}

impl Owner {
    /// An owner named by an operator: both parts are checked like a token name.
    pub fn new(subject: &str, account: &str) -> Result<Owner, InvalidArgument> {
        Ok(Owner {
            subject: validate_text("subject", subject, MAX_PRINCIPAL_CHARS)?,
            account: validate_text("account", account, MAX_PRINCIPAL_CHARS)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner::new("alice", "acme").unwrap()
    }

    fn spec<'a>(name: &'a str, scopes: &[&str], expires_at: Option<i64>) -> TokenSpec<'a> {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        TokenSpec {
            name,
            scopes: parse_scopes(&scopes).unwrap(),
            expires_at,
            allowed_cidrs: Default::default(),
            description: String::new(),
            labels: Default::default(),
            resources: Default::default(),
        }
    }

    #[test]
    fn issue_trims_name_and_canonicalises_scopes() {
        let (new, secret) = spec(
            "  ci  ",
            &["licenseTemaplate:write", "account:read"],
            Some(2_000),
        )
        .issue(&TokenFormat::default(), owner(), 1_000)
        .unwrap();
        assert_eq!(new.record.name, "ci");
        assert_eq!(
            new.record.scopes.to_names(),
            vec!["account:read", "licenseTemplate:write"]
        );
        assert_eq!(new.secret_hash, SecretHash::of(secret.expose()));
        assert_eq!(new.record.state_at(1_999), TokenState::Active);
        assert_eq!(new.record.state_at(2_000), TokenState::Expired);
    }

    #[test]
    fn issue_refuses_bad_specs_with_reasons() {
        let format = TokenFormat::default();
        let long_name = "n".repeat(101);
        let cases = [
            (spec(" ", &["account:read"], None), "name is required"),
            (spec(&long_name, &["account:read"], None), "at most 100"),
            (
                spec("a\u{7}b", &["account:read"], None),
                "control, format or bidirectional",
            ),
            (
                spec("ci", &["account:read"], Some(1_000)),
                "not in the future",
            ),
        ];
        for (spec, expected) in cases {
            let err = spec.issue(&format, owner(), 1_000).unwrap_err();
            assert!(err.0.contains(expected), "{err} should contain {expected}");
        }
    }

    #[test]
    fn scope_lists_must_be_known_and_non_empty() {
        let err = parse_scopes(&[]).unwrap_err();
        assert!(err.0.contains("at least one scope"), "{err}");
        let err = parse_scopes(&["bogus:read".to_owned()]).unwrap_err();
        assert!(err.0.contains("unknown scope \"bogus:read\""), "{err}");
    }

    #[test]
    fn revocation_wins_over_expiry() {
        let (mut new, _) = spec("ci", &["account:read"], Some(10))
            .issue(&TokenFormat::default(), owner(), 1)
            .unwrap();
        new.record.revoked_at = Some(5);
        assert_eq!(new.record.state_at(20), TokenState::Revoked);
    }

    #[test]
    fn owner_parts_are_validated() {
        assert!(Owner::new("", "acme").is_err());
        assert!(Owner::new("alice", &"a".repeat(201)).is_err());
        assert_eq!(Owner::new(" alice ", "acme").unwrap().subject, "alice");
    }
}
