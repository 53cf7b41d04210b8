//! The decision a gateway asks for: may the request carrying these
//! `authorization` values, needing these scopes, on this resource, from this
//! client, pass? Shared
//! by Envoy's `Check` (`ext_authz`) and HTTP forward auth (`forward_auth`), which
//! only differ in how they say the answer.

use std::net::IpAddr;
use std::sync::Arc;

use crate::domain::resource::Resource;
use crate::domain::scope::ScopeSet;
use crate::metrics::{Check, IntrospectOutcome};
use crate::store::StoreError;
use crate::verify::cache::CachedToken;
use crate::verify::{Lane, Verifier};

pub const REALM: &str = "Bearer realm=\"patd\"";

/// What a gateway is to do with a request.
pub enum Gate {
    Allowed(Arc<CachedToken>),
    /// No credential at all (RFC 6750 §3: a challenge without an error code).
    NoCredential,
    /// A credential, but not one `Bearer <token>` (`invalid_request`).
    BadCredential(&'static str),
    /// A token that is not active (`invalid_token`); never says why.
    Inactive(IntrospectOutcome),
    /// Active, without every required scope: the scopes required.
    MissingScopes(ScopeSet, ScopeSet),
    /// Active with every scope, but restricted to other resources than the one
    /// the request acts on (refused like a missing scope); the required scopes.
    ResourceDenied(ScopeSet, Resource),
    /// The route requires a scope that does not exist: fail closed, loudly.
    Misconfigured(String),
    /// Storage could not be asked: fail closed, temporarily.
    Unavailable(StoreError),
}

impl Gate {
    /// The outcome as the metrics count it.
    pub fn check(&self) -> Check {
        match self {
            Gate::Allowed(_) => Check::Allowed,
            Gate::NoCredential | Gate::BadCredential(_) => Check::NoToken,
            Gate::Inactive(outcome) => Check::Inactive(*outcome),
            Gate::MissingScopes(..) => Check::MissingScopes,
            Gate::ResourceDenied(..) => Check::ResourceDenied,
            Gate::Misconfigured(_) => Check::Misconfigured,
            Gate::Unavailable(_) => Check::StorageError,
        }
    }

    /// The `WWW-Authenticate` challenge of a refusal (none for allowed,
    /// misconfigured or unavailable).
    pub fn challenge(&self) -> Option<String> {
        match self {
            Gate::NoCredential => Some(REALM.to_owned()),
            Gate::BadCredential(_) => Some(format!("{REALM}, error=\"invalid_request\"")),
            Gate::Inactive(_) => Some(format!("{REALM}, error=\"invalid_token\"")),
            Gate::MissingScopes(required, _) | Gate::ResourceDenied(required, _) => Some(format!(
                "{REALM}, error=\"insufficient_scope\", scope=\"{}\"",
                required.to_names().join(" ")
            )),
            Gate::Allowed(_) | Gate::Misconfigured(_) | Gate::Unavailable(_) => None,
        }
    }
}

/// What a request needs: scopes by name, and the resource it acts on (names
/// as given, still to be checked: none, or one), both from the gateway's
/// configuration.
pub struct Needs<'a> {
    pub scopes: &'a [String],
    pub resources: &'a [String],
}

/// Decides for a request with the `authorization` header `values`, needing
/// `needs`, from `client`.
pub async fn decide(
    verifier: &Verifier,
    values: &[&str],
    needs: Needs<'_>,
    client: Option<IpAddr>,
) -> Gate {
    let required = match ScopeSet::parse(needs.scopes) {
        Ok(required) => required,
        Err(unknown) => return Gate::Misconfigured(format!("required scopes: {unknown}")),
    };
    let resource = match needs.resources {
        [] => None,
        [name] => match Resource::parse("resource", name) {
            Ok(resource) => Some(resource),
            Err(invalid) => return Gate::Misconfigured(invalid.to_string()),
        },
        _ => {
            return Gate::Misconfigured(
                "more than one resource named: which one the upstream acts on is unknown"
                    .to_owned(),
            );
        }
    };
    let value = match values {
        [] => return Gate::NoCredential,
        [value] if !value.contains(',') => value,
        _ => return Gate::BadCredential("more than one authorization header"),
    };
    let (scheme, presented) = value.split_once(' ').unwrap_or((value, ""));
    let presented = presented.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || presented.is_empty() {
        return Gate::BadCredential("authorization must be `Bearer <token>`");
    }
    let token = match verifier.verify(presented, Lane::Introspect, client).await {
        Ok(Ok(token)) => token,
        Ok(Err(inactive)) => {
            tracing::debug!(reason = ?inactive, "gate: token inactive");
            return Gate::Inactive(IntrospectOutcome::from(inactive));
        }
        Err(err) => return Gate::Unavailable(err),
    };
    let missing = required.minus(token.scopes);
    if !missing.is_empty() {
        return Gate::MissingScopes(required, missing);
    }
    match resource {
        Some(resource) if !token.resources().allows(&resource) => {
            Gate::ResourceDenied(required, resource)
        }
        _ => Gate::Allowed(token),
    }
}
