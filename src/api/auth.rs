//! Who is calling: a user's bearer token, or a trusted internal caller (by service
//! credential or verified client certificate) acting for a subject it names. Also
//! the one place where internal errors become `tonic::Status`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::api::peer::PeerInfo;
use crate::api::status;
use crate::domain::authority::Authority;
use crate::domain::model::{Actor, Owner};
use crate::domain::token::TokenFormat;
use crate::verify::cache::CachedToken;
use crate::verify::{Lane, Verifier};

/// Metadata a trusted caller uses to name the owner it acts for.
pub const ACT_AS_SUBJECT: &str = "x-patd-act-as-subject";
pub const ACT_AS_ACCOUNT: &str = "x-patd-act-as-account";
/// Service credentials look like tokens with this prefix; only their hash is
/// configured.
pub const SERVICE_CREDENTIAL_PREFIX: &str = "patdsvc_";
const SERVICE_CREDENTIAL_CONTEXT: &str = "patd 2026-11-27 service credential v1";

/// One `[[trusted_callers]]` entry of the configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedCallerConfig {
    pub name: String,
    /// `patd admin service-credential` prints a credential and this hash.
    pub credential_hash: Option<String>,
    /// A DNS subject alternative name the caller's client certificate carries.
    pub client_cert_dns_name: Option<String>,
}

/// Who may call `Introspect` and `Check` (RFC 7662 §4 asks for authenticated
/// callers, to stop token scanning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IntrospectionCallers {
    #[default]
    Any,
    /// Only trusted callers (service credential or client certificate).
    Trusted,
}

struct TrustedCaller {
    name: String,
    credential_hash: Option<blake3::Hash>,
    client_cert_dns_name: Option<String>,
}

/// The configured trusted callers and the introspection policy.
#[derive(Clone, Default)]
pub struct Callers {
    trusted: Arc<Vec<TrustedCaller>>,
    introspection: IntrospectionCallers,
}

impl fmt::Debug for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .trusted
            .iter()
            .map(|caller| caller.name.as_str())
            .collect();
        f.debug_struct("Callers")
            .field("trusted", &names)
            .field("introspection", &self.introspection)
            .finish()
    }
}

/// The hash a service credential is configured by.
pub fn service_credential_hash(credential: &str) -> blake3::Hash {
    blake3::Hash::from(blake3::derive_key(
        SERVICE_CREDENTIAL_CONTEXT,
        credential.as_bytes(),
    ))
}

/// A fresh service credential from the OS CSPRNG.
pub fn generate_service_credential() -> String {
    TokenFormat::new(SERVICE_CREDENTIAL_PREFIX)
        .expect("the service credential prefix is valid")
        .generate()
        .expose()
        .to_owned()
}

impl Callers {
    pub fn new(
        configs: Vec<TrustedCallerConfig>,
        introspection: IntrospectionCallers,
    ) -> Result<Callers, String> {
        let mut trusted: Vec<TrustedCaller> = Vec::with_capacity(configs.len());
        for config in configs {
            let name = config.name.trim().to_owned();
            if name.is_empty() || trusted.iter().any(|caller| caller.name == name) {
                return Err(format!(
                    "trusted_callers: names must be unique and non-empty ({name:?})"
                ));
            }
            let credential_hash = config
                .credential_hash
                .map(|hex| {
                    blake3::Hash::from_hex(hex.trim()).map_err(|_| {
                        format!("trusted caller {name}: credential_hash must be 64 hex digits (from `patd admin service-credential`)")
                    })
                })
                .transpose()?;
            if let Some(dns_name) = &config.client_cert_dns_name
                && rustls_pki_types::DnsName::try_from(dns_name.as_str()).is_err()
            {
                return Err(format!(
                    "trusted caller {name}: client_cert_dns_name {dns_name:?} is not a DNS name"
                ));
            }
            if credential_hash.is_none() && config.client_cert_dns_name.is_none() {
                return Err(format!(
                    "trusted caller {name}: set credential_hash, client_cert_dns_name, or both"
                ));
            }
            trusted.push(TrustedCaller {
                name,
                credential_hash,
                client_cert_dns_name: config.client_cert_dns_name,
            });
        }
        if introspection == IntrospectionCallers::Trusted && trusted.is_empty() {
            return Err(
                "introspection_callers = \"trusted\" needs at least one trusted caller".to_owned(),
            );
        }
        Ok(Callers {
            trusted: Arc::new(trusted),
            introspection,
        })
    }

    pub fn needs_client_certs(&self) -> bool {
        self.trusted
            .iter()
            .any(|caller| caller.client_cert_dns_name.is_some())
    }

    /// The trusted caller behind `request`, if any: by its verified client
    /// certificate, or by a service credential in `authorization`.
    pub fn identify<T>(&self, request: &Request<T>) -> Option<&str> {
        if let Some(caller) = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|peer| self.by_certificate(peer))
        {
            return Some(caller);
        }
        self.by_credential(bearer_token(request.metadata()).ok()?)
    }

    /// The trusted caller whose client certificate `peer` presented.
    pub fn by_certificate(&self, peer: &PeerInfo) -> Option<&str> {
        self.trusted
            .iter()
            .find(|caller| {
                caller
                    .client_cert_dns_name
                    .as_deref()
                    .is_some_and(|name| peer.client_cert_names(name))
            })
            .map(|caller| caller.name.as_str())
    }

    /// The trusted caller whose service credential `presented` is.
    pub fn by_credential(&self, presented: &str) -> Option<&str> {
        if !presented.starts_with(SERVICE_CREDENTIAL_PREFIX) {
            return None;
        }
        let hash = service_credential_hash(presented);
        // Compare with every configured hash (constant time each), not stopping
        // at the first match.
        let mut found = None;
        for caller in self.trusted.iter() {
            if caller.credential_hash.is_some_and(|stored| stored == hash) {
                found = Some(caller.name.as_str());
            }
        }
        found
    }

    /// Whether Introspect-like calls must come from a trusted caller.
    pub fn introspection_needs_trust(&self) -> bool {
        self.introspection == IntrospectionCallers::Trusted
    }

    /// Refuses `Introspect`/`Check` callers the policy does not admit.
    pub fn admit_introspection<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match self.introspection {
            IntrospectionCallers::Any => Ok(()),
            IntrospectionCallers::Trusted => match self.identify(request) {
                Some(_) => Ok(()),
                None => Err(Status::unauthenticated(
                    "this server answers only trusted callers: present a service credential \
                     (`authorization: Bearer patdsvc_…`) or a trusted client certificate",
                )),
            },
        }
    }
}

/// The active token presented as `authorization: Bearer <token>`, whatever its
/// scopes: for calls about the token itself (GetSelf, RotateSelf).
pub async fn bearer<T>(
    verifier: &Verifier,
    request: &Request<T>,
) -> Result<Arc<CachedToken>, Status> {
    let presented = bearer_token(request.metadata())?;
    // The peer is the client using the token (for its allowlist and last use).
    let client = peer_of(request).map(|addr| addr.ip());
    if presented.starts_with(SERVICE_CREDENTIAL_PREFIX) {
        return Err(Status::unauthenticated(
            "service credential is not recognised",
        ));
    }
    match verifier.verify(presented, Lane::Management, client).await? {
        // A secret in its grace period keeps clients working, but must not be
        // able to mint, rotate or manage anything: it may be the leaked one.
        Ok(token) if token.is_retired() => Err(Status::unauthenticated(
            "bearer token has been rotated: use its new secret",
        )),
        Ok(token) => Ok(token),
        Err(inactive) => {
            tracing::debug!(reason = ?inactive, "caller token inactive");
            Err(status::inactive_credential(inactive))
        }
    }
}

/// Whom a management call acts for, and with what authority.
#[derive(Debug)]
pub struct Caller {
    pub owner: Owner,
    /// What the caller may hand out: a user's token's own limits, or none for a
    /// trusted caller.
    pub authority: Authority,
    /// Who is calling and from where, for logs and the audit trail.
    pub actor: Actor,
}

/// The address of the peer that sent `request`.
pub fn peer_of<T>(request: &Request<T>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|peer| peer.remote_addr)
}

fn act_as(metadata: &MetadataMap) -> Result<Option<Owner>, Status> {
    let read = |key: &str| -> Result<Option<&str>, Status> {
        // Two values would leave which owner is meant to whichever one a
        // proxy or library happens to pick: refuse, as for `authorization`.
        if metadata.get_all(key).iter().nth(1).is_some() {
            return Err(Status::invalid_argument(format!(
                "more than one {key} entry: send exactly one"
            )));
        }
        metadata
            .get(key)
            .map(|value| {
                value
                    .to_str()
                    .map_err(|_| Status::invalid_argument(format!("{key} is not printable ASCII")))
            })
            .transpose()
    };
    match (read(ACT_AS_SUBJECT)?, read(ACT_AS_ACCOUNT)?) {
        (None, None) => Ok(None),
        (Some(subject), Some(account)) => Ok(Some(Owner::new(subject, account)?)),
        _ => Err(Status::invalid_argument(format!(
            "send both {ACT_AS_SUBJECT} and {ACT_AS_ACCOUNT}, or neither"
        ))),
    }
}

/// A refused management call: the status for the caller, and the owner it
/// concerned when known (for the audit trail).
#[derive(Debug)]
pub struct Refusal {
    pub status: Status,
    pub owner: Option<Owner>,
    /// The refused caller, when its credential was valid (`token:<id>`).
    pub principal: Option<String>,
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Refusal {
        Refusal {
            status,
            owner: None,
            principal: None,
        }
    }
}

/// Authenticates a management call: a trusted caller acting for the owner named
/// in `x-patd-act-as-*`, or the `authorization: Bearer <token>` of a token with
/// the `scope` the call needs. Messages say what is wrong but never echo a secret.
pub async fn authenticate<T>(
    verifier: &Verifier,
    callers: &Callers,
    request: &Request<T>,
    scope: &str,
) -> Result<Caller, Refusal> {
    let metadata = request.metadata();
    let acting_for = act_as(metadata)?;
    if let Some(name) = callers.identify(request) {
        let owner = acting_for.ok_or_else(|| {
            Status::invalid_argument(format!(
                "trusted caller {name}: name the owner you act for in {ACT_AS_SUBJECT} and {ACT_AS_ACCOUNT}"
            ))
        })?;
        return Ok(Caller {
            owner,
            authority: Authority::unlimited(),
            actor: Actor::new(format!("trusted:{name}"), peer_of(request)),
        });
    }
    let token = bearer(verifier, request).await?;
    let principal = format!("token:{}", token.id());
    let refuse = |message: String| Refusal {
        status: Status::permission_denied(message),
        owner: Some(token.owner()),
        principal: Some(principal.clone()),
    };
    if acting_for.is_some() {
        return Err(refuse(format!(
            "only trusted internal callers may act for another owner ({ACT_AS_SUBJECT})"
        )));
    }
    if !token.scopes.contains(scope) {
        return Err(refuse(format!(
            "the caller's token lacks the {scope} scope"
        )));
    }
    Ok(Caller {
        owner: token.owner(),
        authority: token.authority(),
        actor: Actor::new(principal, peer_of(request)),
    })
}

/// The token of the single `authorization` entry, which must use the Bearer
/// scheme (matched case-insensitively, RFC 6750).
fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let mut values = metadata.get_all("authorization").iter();
    let value = values.next().ok_or_else(|| {
        Status::unauthenticated(
            "missing authorization metadata: send `authorization: Bearer <token>`",
        )
    })?;
    if values.next().is_some() {
        return Err(Status::unauthenticated(
            "more than one authorization entry: send exactly one",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization metadata is not printable ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Status::unauthenticated(
            "authorization must use the Bearer scheme: `authorization: Bearer <token>`",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Status::unauthenticated("bearer token is empty"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(values: &[&str]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for value in values {
            map.append("authorization", value.parse().unwrap());
        }
        map
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_is_trimmed() {
        for header in ["Bearer abc", "bearer abc", "BEARER  abc "] {
            assert_eq!(bearer_token(&metadata(&[header])).unwrap(), "abc");
        }
    }

    #[test]
    fn missing_duplicate_and_foreign_schemes_are_unauthenticated() {
        let cases = [
            (metadata(&[]), "missing authorization"),
            (metadata(&["Bearer a", "Bearer b"]), "more than one"),
            (
                metadata(&["Basic YWxhZGRpbjpvcGVuc2VzYW1l"]),
                "Bearer scheme",
            ),
            (metadata(&["Bearer"]), "empty"),
            (metadata(&["Bearer   "]), "empty"),
            (metadata(&["patd_abc"]), "Bearer scheme"),
        ];
        for (map, expected) in cases {
            let status = bearer_token(&map).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains(expected), "{}", status.message());
        }
    }
}
