//! `pat.v1.TokenService`: the caller's own tokens.

use std::net::IpAddr;
use std::time::Duration;

use tonic::{Code, Request, Response, Status};

use crate::api::auth::{Caller, Callers, authenticate, bearer, peer_of};
use crate::api::rate::KeyedRateLimit;
use crate::api::refusals::{RefusalBudget, Refused, network_of};
use crate::api::{requests, status, token_message};
use crate::domain::authority::{Authority, Grant};
use crate::domain::clock;
use crate::domain::model::{Actor, Owner, TokenSpec};
use crate::domain::policy::Policy;
use crate::domain::scope::{CATALOG, MANAGE_TOKENS, READ_EVENTS};
use crate::proto;
use crate::proto::token_service_server::TokenService;
use crate::store::{Cursor, Event, EventKind};
use crate::verify::Verifier;

pub struct TokenApi {
    verifier: Verifier,
    callers: Callers,
    refusals: RefusalBudget,
    policy: Policy,
    leak_reports: KeyedRateLimit<Option<IpAddr>>,
}

/// Leak reports per minute from one address.
pub const LEAK_REPORTS_PER_MINUTE: u32 = 30;

impl TokenApi {
    /// One page of tokens: the page token must come from the same query.
    async fn search(
        &self,
        owner: Option<&Owner>,
        search: requests::Search,
        page_token: &str,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        let after = requests::decode_page(page_token, owner, &search)?;
        let requests::Search {
            filter,
            order,
            page_size,
        } = search;
        let fingerprint = requests::query_fingerprint(owner, &filter, order);
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
                .map(|after| requests::encode_after(&after, &fingerprint))
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
        rotation: requests::Rotation,
        actor: Actor,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let requests::Rotation { expires_at, grace } = rotation;
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
        let (record, secret) = rotated.map_err(|refused| status::rotation_refused(&id, refused))?;
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

    pub(crate) fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub(crate) fn callers(&self) -> &Callers {
        &self.callers
    }

    /// The caller of `method`, which needs `scope`. A refusal is recorded in the
    /// audit trail within the budgets of [`RefusalBudget`].
    pub(crate) async fn caller<T>(
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
            token: String::new(),
        };
        if let Err(err) = self.verifier.store().record_event(&event).await {
            tracing::warn!(error = %err, "could not record a refused call");
        }
        Err(status)
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

#[tonic::async_trait]
impl TokenService for TokenApi {
    #[tracing::instrument(skip_all)]
    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let caller = self.caller(&request, "CreateToken", MANAGE_TOKENS).await?;
        let requests::NewToken {
            name,
            scopes: wanted,
            expires_at,
            allowed_cidrs,
            description,
            labels,
            resources,
        } = requests::create(request.get_ref())?;
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
                resources: &resources,
            })
            .map_err(|exceeds| {
                Status::permission_denied(format!(
                    "the new token would exceed the caller's: {exceeds}"
                ))
            })?;
        let spec = TokenSpec {
            name: &name,
            scopes: wanted,
            expires_at,
            allowed_cidrs,
            description,
            labels,
            resources,
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
        let id = requests::requested_id(&request.get_ref().id)?;
        let record = self.verifier.store().get(&caller.owner, id).await?;
        let record = record.ok_or_else(|| status::not_found(id))?;
        Ok(Response::new(token_message(record, clock::now_micros())))
    }

    #[tracing::instrument(skip_all)]
    async fn list_tokens(
        &self,
        request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        let caller = self.caller(&request, "ListTokens", MANAGE_TOKENS).await?;
        let search = requests::list(request.get_ref())?;
        self.search(Some(&caller.owner), search, &request.get_ref().page_token)
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn update_token(
        &self,
        request: Request<proto::UpdateTokenRequest>,
    ) -> Result<Response<proto::Token>, Status> {
        self.update(request).await
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
        let search = requests::list_expiring(request.get_ref())?;
        self.search(None, search, &request.get_ref().page_token)
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::Token>, Status> {
        let caller = self.caller(&request, "RevokeToken", MANAGE_TOKENS).await?;
        let id = requests::requested_id(&request.get_ref().id)?;
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
        let record = revoked.ok_or_else(|| status::not_found(id))?;
        tracing::info!(token_id = %id, revoked_by = %caller.actor.principal, "token revoked");
        Ok(Response::new(token_message(record, now)))
    }

    #[tracing::instrument(skip_all)]
    async fn suspend_token(
        &self,
        request: Request<proto::SuspendTokenRequest>,
    ) -> Result<Response<proto::Token>, Status> {
        self.suspension(request.map(|r| r.id), false).await
    }

    #[tracing::instrument(skip_all)]
    async fn resume_token(
        &self,
        request: Request<proto::ResumeTokenRequest>,
    ) -> Result<Response<proto::Token>, Status> {
        self.suspension(request.map(|r| r.id), true).await
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_all_tokens(
        &self,
        request: Request<proto::RevokeAllTokensRequest>,
    ) -> Result<Response<proto::RevokeAllTokensResponse>, Status> {
        self.revoke_all(request).await
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_token(
        &self,
        request: Request<proto::RotateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let caller = self.caller(&request, "RotateToken", MANAGE_TOKENS).await?;
        let (id, rotation) = requests::rotate(request.get_ref())?;
        self.rotate(caller.owner, caller.authority, id, rotation, caller.actor)
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_self(
        &self,
        request: Request<proto::RotateSelfRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let token = bearer(&self.verifier, &request).await?;
        let actor = Actor::new(format!("token:{}", token.id()), peer_of(&request));
        let rotation = requests::rotate_self(request.get_ref())?;
        // A token bounds itself: rotating cannot extend (or remove) its expiry.
        self.rotate(
            token.owner(),
            token.authority(),
            token.id().to_owned(),
            rotation,
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
        let source = requests::leak_report(request.get_ref())?;
        let request = request.into_inner();
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
        let (page_size, cursor) = requests::list_events(request.get_ref())?;
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
        let id = requests::requested_id(&request.get_ref().id)?;
        if !self
            .verifier
            .delete(caller.owner, id.to_owned(), caller.actor.clone())
            .await?
        {
            return Err(status::not_found(id));
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
