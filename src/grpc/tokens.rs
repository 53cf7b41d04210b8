//! `pat.v1.TokenService`: the caller's own tokens.

use std::net::IpAddr;
use std::time::Duration;

use tonic::{Code, Request, Response, Status};

use crate::authority::{Authority, Grant};
use crate::cidr::CidrList;
use crate::clock;
use crate::grpc::auth::{Caller, Callers, authenticate, bearer, peer_of};
use crate::grpc::refusals::{RefusalBudget, Refused, network_of};
use crate::grpc::token_message;
use crate::model::{Actor, MAX_NAME_CHARS, Owner, TokenSpec, TokenState, parse_scopes};
use crate::overload::KeyedRateLimit;
use crate::policy::Policy;
use crate::proto;
use crate::proto::token_service_server::TokenService;
use crate::scope::{CATALOG, MANAGE_TOKENS, READ_EVENTS};
use crate::store::{After, Cursor, Event, EventKind, Rotated, SortKey, TokenFilter, TokenOrder};
use crate::text::{sanitize, validate_filter};
use crate::token::is_valid_id;
use crate::verifier::Verifier;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

pub struct TokenApi {
    verifier: Verifier,
    callers: Callers,
    refusals: RefusalBudget,
    policy: Policy,
    leak_reports: KeyedRateLimit<Option<IpAddr>>,
}

/// Tokens per leak report, at most.
pub const MAX_LEAKED_TOKENS: usize = 1000;
/// Leak reports per minute from one address.
pub const LEAK_REPORTS_PER_MINUTE: u32 = 30;
const MAX_SOURCE_CHARS: usize = 200;

impl TokenApi {
    /// One page of tokens: the page token must come from the same query.
    async fn search(
        &self,
        owner: Option<&Owner>,
        filter: TokenFilter,
        order: TokenOrder,
        requested_page_size: i32,
        page_token: &str,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        let page_size = page_size(requested_page_size)?;
        let fingerprint = query_fingerprint(owner, &filter, order);
        let after = match page_token {
            "" => None,
            token => Some(decode_after(token, &fingerprint, order).ok_or_else(|| {
                Status::invalid_argument(
                    "page_token is malformed or belongs to other filters or order: pass next_page_token \
                     from the previous response, with the same request",
                )
            })?),
        };
        let now = clock::now_micros();
        let page = self
            .verifier
            .store()
            .search(owner, &filter, order, after.as_ref(), page_size, now)
            .await?;
        Ok(Response::new(proto::ListTokensResponse {
            tokens: page
                .tokens
                .into_iter()
                .map(|t| token_message(t, now))
                .collect(),
            next_page_token: page
                .next
                .map(|after| encode_after(&after, &fingerprint))
                .unwrap_or_default(),
        }))
    }

    /// Rotates `owner`'s token `id`, unless the new secret would exceed what
    /// `authority` (the caller's) holds.
    async fn rotate(
        &self,
        owner: Owner,
        authority: Authority,
        id: String,
        expires_at: Option<i64>,
        grace: Duration,
        actor: Actor,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let now = clock::now_micros();
        if let Some(expires_at) = expires_at {
            if expires_at <= now {
                return Err(Status::invalid_argument(format!(
                    "expires_at {} is not in the future",
                    clock::rfc3339(expires_at)
                )));
            }
            // A new expiry obeys the account's maximum lifetime, as at creation.
            self.policy
                .expiry(&owner.account, Some(expires_at), now)
                .map_err(Status::invalid_argument)?;
        }
        let rotated = self
            .verifier
            .rotate(
                owner,
                authority,
                id.clone(),
                expires_at,
                grace,
                actor.clone(),
            )
            .await?;
        let (record, secret) = match rotated {
            Ok(rotated) => rotated,
            Err(Rotated::NotFound) => return Err(not_found(&id)),
            Err(Rotated::Exceeds(exceeds)) => {
                return Err(Status::permission_denied(format!(
                    "rotating token {id} would hand out more than the caller holds: {exceeds}"
                )));
            }
            Err(Rotated::Inactive(state)) => {
                return Err(Status::failed_precondition(format!(
                    "token {id} is {}: only active tokens can be rotated",
                    state.as_str()
                )));
            }
            Err(Rotated::Conflict | Rotated::Done { .. }) => {
                return Err(Status::aborted(format!(
                    "token {id} changed while it was being rotated (rotated, revoked or deleted \
                     by another call); retry"
                )));
            }
        };
        tracing::info!(token_id = %id, rotated_by = %actor.principal, grace = ?grace, "token rotated");
        Ok(Response::new(proto::CreateTokenResponse {
            token: Some(token_message(record, now)),
            secret: secret.expose().to_owned(),
        }))
    }

    pub fn new(verifier: Verifier, callers: Callers, policy: Policy) -> TokenApi {
        TokenApi {
            verifier,
            callers,
            policy,
            refusals: RefusalBudget::default(),
            leak_reports: KeyedRateLimit::new(
                LEAK_REPORTS_PER_MINUTE,
                Duration::from_secs(60),
                10_000,
            ),
        }
    }

    /// The caller of `method`, which needs `scope`. A refusal is recorded in the
    /// audit trail within the budgets of [`RefusalBudget`].
    async fn caller<T>(
        &self,
        request: &Request<T>,
        method: &str,
        scope: &str,
    ) -> Result<Caller, Status> {
        let refusal = match authenticate(&self.verifier, &self.callers, request, scope).await {
            Ok(caller) => return Ok(caller),
            Err(refusal) => refusal,
        };
        let status = refusal.status;
        if !matches!(
            status.code(),
            Code::Unauthenticated | Code::PermissionDenied
        ) {
            return Err(status);
        }
        let peer = peer_of(request);
        let refused = match &refusal.principal {
            Some(principal) => Refused::Credential {
                principal,
                owner: refusal.owner.as_ref(),
            },
            None => Refused::Anonymous {
                peer: peer.map(|addr| addr.ip()),
            },
        };
        let Some(skipped) = self.refusals.admit(refused) else {
            self.verifier.metrics().record_unrecorded_refusal();
            return Err(status);
        };
        let mut detail = format!("{method}: {}", status.message());
        if skipped > 0 {
            detail.push_str(&format!(
                " ({skipped} earlier refusals of this caller were not recorded)"
            ));
        }
        let event = Event {
            seq: 0,
            at: clock::now_micros(),
            kind: EventKind::Denied,
            token_id: None,
            subject: refusal.owner.as_ref().map(|owner| owner.subject.clone()),
            account: refusal.owner.map(|owner| owner.account),
            actor: Actor::new(refusal.principal.as_deref().unwrap_or("anonymous"), peer),
            detail,
        };
        if let Err(err) = self.verifier.store().record_event(&event).await {
            tracing::warn!(error = %err, "could not record a refused call");
        }
        Err(status)
    }
}

/// An enum field of a request: a value this server does not know (a newer
/// client's, or a negative number) is refused, never read as the default.
fn requested_enum<E>(field: &str, value: i32) -> Result<E, Status>
where
    E: TryFrom<i32> + EnumNames,
{
    E::try_from(value).map_err(|_| {
        Status::invalid_argument(format!(
            "{field} {value} is not one of {}",
            E::names().join(", ")
        ))
    })
}

/// The names of a request enum's values, for messages.
trait EnumNames {
    fn names() -> Vec<&'static str>;
}

impl EnumNames for proto::TokenState {
    fn names() -> Vec<&'static str> {
        (0..)
            .map_while(|n| proto::TokenState::try_from(n).ok())
            .map(|state| state.as_str_name())
            .collect()
    }
}

impl EnumNames for proto::TokenOrder {
    fn names() -> Vec<&'static str> {
        (0..)
            .map_while(|n| proto::TokenOrder::try_from(n).ok())
            .map(|order| order.as_str_name())
            .collect()
    }
}

/// A token id from a request: malformed ids are refused before any lookup.
fn requested_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("id is required"));
    }
    if !is_valid_id(id) {
        return Err(Status::invalid_argument(
            "id is malformed: token ids are 22 letters and digits",
        ));
    }
    Ok(id)
}

/// An expiry from a request, if set.
fn requested_expiry(timestamp: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Status> {
    requested_time("expires_at", timestamp)
}

/// The longest a rotated-away secret may keep working.
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

fn requested_grace(grace: Option<&prost_types::Duration>) -> Result<Duration, Status> {
    let Some(grace) = grace else {
        return Ok(Duration::ZERO);
    };
    let invalid = || {
        Status::invalid_argument(format!(
            "grace_period must be between 0 and {}",
            humantime::format_duration(MAX_GRACE)
        ))
    };
    let grace = Duration::try_from(*grace).map_err(|_| invalid())?;
    if grace > MAX_GRACE {
        return Err(invalid());
    }
    Ok(grace)
}

/// A time from a request's `field`, if set.
fn requested_time(
    field: &str,
    timestamp: Option<&prost_types::Timestamp>,
) -> Result<Option<i64>, Status> {
    timestamp
        .map(|timestamp| {
            clock::from_timestamp(timestamp).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{field} must be between 1970-01-01 and 9999-12-31 with nanos in 0..1e9"
                ))
            })
        })
        .transpose()
}

const SEARCH_TOKEN_TAG: &str = "p2.";

/// Identifies a query (owner, filters, order), so that a page token is only ever
/// used to continue the query that issued it.
fn query_fingerprint(owner: Option<&Owner>, filter: &TokenFilter, order: TokenOrder) -> [u8; 8] {
    let text = format!("{owner:?}|{filter:?}|{order:?}");
    let hash = blake3::hash(text.as_bytes());
    hash.as_bytes()[..8].try_into().expect("8 bytes")
}

/// `p2.` then hex of: the query fingerprint, the last row's seq, and its sort
/// key (`i` and 8 bytes, or `t` and the text).
fn encode_after(after: &After, fingerprint: &[u8; 8]) -> String {
    let mut bytes = fingerprint.to_vec();
    bytes.extend_from_slice(&after.seq.to_be_bytes());
    match &after.key {
        SortKey::Int(value) => {
            bytes.push(b'i');
            bytes.extend_from_slice(&value.to_be_bytes());
        }
        SortKey::Text(value) => {
            bytes.push(b't');
            bytes.extend_from_slice(value.as_bytes());
        }
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{SEARCH_TOKEN_TAG}{hex}")
}

fn decode_after(text: &str, fingerprint: &[u8; 8], order: TokenOrder) -> Option<After> {
    let hex = text.strip_prefix(SEARCH_TOKEN_TAG)?;
    if hex.len() % 2 != 0 || hex.len() > 2 * 1024 {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    if bytes.len() < 17 || bytes[..8] != fingerprint[..] {
        return None;
    }
    let seq = i64::from_be_bytes(bytes[8..16].try_into().ok()?);
    let key = match (bytes[16], &bytes[17..]) {
        (b'i', value) if value.len() == 8 => {
            SortKey::Int(i64::from_be_bytes(value.try_into().ok()?))
        }
        (b't', value) => SortKey::Text(String::from_utf8(value.to_vec()).ok()?),
        _ => return None,
    };
    // The fingerprint is no seal: a hand-made token must still fit the order.
    let text_key = order == TokenOrder::NameAsc;
    if text_key != matches!(key, SortKey::Text(_)) {
        return None;
    }
    Some(After { key, seq })
}

fn page_cursor(page_token: &str) -> Result<Option<Cursor>, Status> {
    match page_token {
        "" => Ok(None),
        token => Cursor::decode(token).map(Some).ok_or_else(|| {
            Status::invalid_argument(
                "page_token is malformed: pass next_page_token from the previous response unchanged",
            )
        }),
    }
}

fn event_message(event: Event) -> proto::TokenEvent {
    proto::TokenEvent {
        time: Some(clock::to_timestamp(event.at)),
        kind: event.kind.as_str().to_owned(),
        token_id: event.token_id.unwrap_or_default(),
        subject: event.subject.unwrap_or_default(),
        account: event.account.unwrap_or_default(),
        actor: event.actor.principal,
        peer: event.actor.peer,
        detail: event.detail,
    }
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("no token with id {id}"))
}

fn page_size(requested: i32) -> Result<u32, Status> {
    match requested {
        ..0 => Err(Status::invalid_argument(format!(
            "page_size must not be negative (got {requested})"
        ))),
        0 => Ok(DEFAULT_PAGE_SIZE),
        // Larger pages are coerced to the maximum (Google AIP-158).
        size => Ok((size as u32).min(MAX_PAGE_SIZE)),
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    #[tracing::instrument(skip_all)]
    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let caller = self.caller(&request, "CreateToken", MANAGE_TOKENS).await?;
        let request = request.into_inner();
        let expires_at = requested_expiry(request.expires_at.as_ref())?;
        let allowed_cidrs = CidrList::parse(&request.allowed_cidrs)?;
        let wanted = parse_scopes(&request.scopes)?;
        let now = clock::now_micros();
        let account = caller.owner.account.clone();
        let expires_at = self
            .policy
            .expiry(&account, expires_at, now)
            .map_err(Status::invalid_argument)?;
        // No escalation: a token hands out nothing beyond what it holds.
        caller
            .authority
            .check(Grant {
                scopes: wanted,
                allowed_cidrs: &allowed_cidrs,
                expires_at,
            })
            .map_err(|exceeds| {
                Status::permission_denied(format!(
                    "the new token would exceed the caller's: {exceeds}"
                ))
            })?;
        let spec = TokenSpec {
            name: &request.name,
            scopes: wanted,
            expires_at,
            allowed_cidrs,
        };
        let (new, secret) = spec.issue(self.verifier.format(), caller.owner, now)?;
        let store = self.verifier.store();
        if let Some(max) = self.policy.limits(&account).max_active_tokens_per_subject {
            if !store.insert_limited(&new, &caller.actor, max).await? {
                return Err(Status::failed_precondition(format!(
                    "{} already holds {max} active tokens, the most account {account} allows: \
                     revoke or delete one first",
                    new.record.owner.subject
                )));
            }
        } else {
            store.insert(&new, &caller.actor).await?;
        }
        tracing::info!(token_id = %new.record.id, created_by = %caller.actor.principal, "token created");
        Ok(Response::new(proto::CreateTokenResponse {
            token: Some(token_message(new.record, now)),
            secret: secret.expose().to_owned(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_token(
        &self,
        request: Request<proto::GetTokenRequest>,
    ) -> Result<Response<proto::Token>, Status> {
        let caller = self.caller(&request, "GetToken", MANAGE_TOKENS).await?;
        let id = requested_id(&request.get_ref().id)?;
        let record = self.verifier.store().get(&caller.owner, id).await?;
        let record = record.ok_or_else(|| not_found(id))?;
        Ok(Response::new(token_message(record, clock::now_micros())))
    }

    #[tracing::instrument(skip_all)]
    async fn list_tokens(
        &self,
        request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        let caller = self.caller(&request, "ListTokens", MANAGE_TOKENS).await?;
        let request = request.into_inner();
        let filter = TokenFilter {
            state: match requested_enum::<proto::TokenState>("state", request.state)? {
                proto::TokenState::Unspecified => None,
                proto::TokenState::Active => Some(TokenState::Active),
                proto::TokenState::Expired => Some(TokenState::Expired),
                proto::TokenState::Revoked => Some(TokenState::Revoked),
            },
            created_after: requested_time("created_after", request.created_after.as_ref())?,
            created_before: requested_time("created_before", request.created_before.as_ref())?,
            expires_after: requested_time("expires_after", request.expires_after.as_ref())?,
            expires_before: requested_time("expires_before", request.expires_before.as_ref())?,
            last_used_after: requested_time("last_used_after", request.last_used_after.as_ref())?,
            last_used_before: requested_time(
                "last_used_before",
                request.last_used_before.as_ref(),
            )?,
            name_contains: validate_filter(
                "name_contains",
                &request.name_contains,
                MAX_NAME_CHARS,
            )?,
        };
        let order = match requested_enum::<proto::TokenOrder>("order_by", request.order_by)? {
            proto::TokenOrder::Unspecified | proto::TokenOrder::CreatedDesc => {
                TokenOrder::CreatedDesc
            }
            proto::TokenOrder::CreatedAsc => TokenOrder::CreatedAsc,
            proto::TokenOrder::ExpiresAsc => TokenOrder::ExpiresAsc,
            proto::TokenOrder::LastUsedDesc => TokenOrder::LastUsedDesc,
            proto::TokenOrder::NameAsc => TokenOrder::NameAsc,
        };
        self.search(
            Some(&caller.owner),
            filter,
            order,
            request.page_size,
            &request.page_token,
        )
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_expiring_tokens(
        &self,
        request: Request<proto::ListExpiringTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        if self.callers.identify(&request).is_none() {
            return Err(Status::unauthenticated(
                "only trusted internal callers may list expiring tokens: present a service credential or client certificate",
            ));
        }
        let request = request.into_inner();
        let expires_before = requested_time("expires_before", request.expires_before.as_ref())?
            .ok_or_else(|| Status::invalid_argument("expires_before is required"))?;
        let filter = TokenFilter {
            state: Some(TokenState::Active),
            expires_before: Some(expires_before),
            ..TokenFilter::default()
        };
        self.search(
            None,
            filter,
            TokenOrder::ExpiresAsc,
            request.page_size,
            &request.page_token,
        )
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::Token>, Status> {
        let caller = self.caller(&request, "RevokeToken", MANAGE_TOKENS).await?;
        let id = requested_id(&request.get_ref().id)?;
        let now = clock::now_micros();
        let revoked = self
            .verifier
            .revoke(
                caller.owner,
                id.to_owned(),
                now,
                caller.actor.clone(),
                EventKind::Revoked,
            )
            .await?;
        let record = revoked.ok_or_else(|| not_found(id))?;
        tracing::info!(token_id = %id, revoked_by = %caller.actor.principal, "token revoked");
        Ok(Response::new(token_message(record, now)))
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_token(
        &self,
        request: Request<proto::RotateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let caller = self.caller(&request, "RotateToken", MANAGE_TOKENS).await?;
        let request = request.into_inner();
        let id = requested_id(&request.id)?.to_owned();
        let expires_at = requested_expiry(request.expires_at.as_ref())?;
        let grace = requested_grace(request.grace_period.as_ref())?;
        self.rotate(
            caller.owner,
            caller.authority,
            id,
            expires_at,
            grace,
            caller.actor,
        )
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_self(
        &self,
        request: Request<proto::RotateSelfRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let token = bearer(&self.verifier, &request).await?;
        let actor = Actor::new(format!("token:{}", token.id()), peer_of(&request));
        let request = request.into_inner();
        let expires_at = requested_expiry(request.expires_at.as_ref())?;
        let grace = requested_grace(request.grace_period.as_ref())?;
        // A token bounds itself: rotating cannot extend (or remove) its expiry.
        self.rotate(
            token.owner(),
            token.authority(),
            token.id().to_owned(),
            expires_at,
            grace,
            actor,
        )
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_self(
        &self,
        request: Request<proto::GetSelfRequest>,
    ) -> Result<Response<proto::Token>, Status> {
        let token = bearer(&self.verifier, &request).await?;
        let record = self
            .verifier
            .store()
            .get(&token.owner(), token.id())
            .await?;
        // Deleted between the check and the read.
        let record =
            record.ok_or_else(|| Status::unauthenticated("bearer token is not recognised"))?;
        Ok(Response::new(token_message(record, clock::now_micros())))
    }

    #[tracing::instrument(skip_all)]
    async fn report_leaked_tokens(
        &self,
        request: Request<proto::ReportLeakedTokensRequest>,
    ) -> Result<Response<proto::ReportLeakedTokensResponse>, Status> {
        let peer = peer_of(&request);
        if !self
            .leak_reports
            .admit(&peer.map(|addr| network_of(addr.ip())))
        {
            return Err(Status::resource_exhausted(format!(
                "at most {LEAK_REPORTS_PER_MINUTE} leak reports a minute from one address; retry later"
            )));
        }
        let request = request.into_inner();
        if request.tokens.len() > MAX_LEAKED_TOKENS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_LEAKED_TOKENS} tokens per report (got {}); split it",
                request.tokens.len()
            )));
        }
        // Kept whatever it holds (it must never stop a revocation), but defused.
        let source = sanitize(&request.source, MAX_SOURCE_CHARS);
        let actor = Actor::new("anonymous", peer);
        let revoked = self
            .verifier
            .revoke_leaked(
                request.tokens.clone(),
                actor,
                format!("reported leaked: {source}"),
            )
            .await?;
        tracing::info!(received = request.tokens.len(), revoked, "leak report");
        Ok(Response::new(proto::ReportLeakedTokensResponse {
            received: i32::try_from(request.tokens.len()).unwrap_or(i32::MAX),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_token_events(
        &self,
        request: Request<proto::ListTokenEventsRequest>,
    ) -> Result<Response<proto::ListTokenEventsResponse>, Status> {
        let caller = self
            .caller(&request, "ListTokenEvents", READ_EVENTS)
            .await?;
        let request = request.into_inner();
        let page_size = page_size(request.page_size)?;
        let cursor = page_cursor(&request.page_token)?;
        let page = self
            .verifier
            .store()
            .list_events(Some(&caller.owner.account), cursor, page_size)
            .await?;
        Ok(Response::new(proto::ListTokenEventsResponse {
            events: page.events.into_iter().map(event_message).collect(),
            next_page_token: page.next.map(Cursor::encode).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_token(
        &self,
        request: Request<proto::DeleteTokenRequest>,
    ) -> Result<Response<proto::DeleteTokenResponse>, Status> {
        let caller = self.caller(&request, "DeleteToken", MANAGE_TOKENS).await?;
        let id = requested_id(&request.get_ref().id)?;
        if !self
            .verifier
            .delete(caller.owner, id.to_owned(), caller.actor.clone())
            .await?
        {
            return Err(not_found(id));
        }
        tracing::info!(token_id = %id, deleted_by = %caller.actor.principal, "token deleted");
        Ok(Response::new(proto::DeleteTokenResponse {}))
    }

    async fn list_scopes(
        &self,
        _request: Request<proto::ListScopesRequest>,
    ) -> Result<Response<proto::ListScopesResponse>, Status> {
        let scopes = CATALOG
            .iter()
            .map(|def| proto::Scope {
                name: def.name.to_owned(),
                description: def.description.to_owned(),
            })
            .collect();
        Ok(Response::new(proto::ListScopesResponse { scopes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_and_clamps() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(i32::MAX).unwrap(), MAX_PAGE_SIZE);
        assert_eq!(
            page_size(-1).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
