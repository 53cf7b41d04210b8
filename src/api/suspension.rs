//! SuspendToken, ResumeToken and RevokeAllTokens (offboarding): the handlers
//! `TokenService` delegates to.

use tonic::{Request, Response, Status};

use crate::api::auth::peer_of;
use crate::api::tokens::TokenApi;
use crate::api::{requests, status, token_message};
use crate::domain::clock;
use crate::domain::model::{Actor, Owner};
use crate::domain::scope::MANAGE_TOKENS;
use crate::proto;
use crate::store::Suspended;

impl TokenApi {
    /// SuspendToken (`resume` false) or ResumeToken (`resume` true).
    pub(crate) async fn suspension(
        &self,
        request: Request<String>,
        resume: bool,
    ) -> Result<Response<proto::Token>, Status> {
        let method = if resume {
            "ResumeToken"
        } else {
            "SuspendToken"
        };
        let caller = self.caller(&request, method, MANAGE_TOKENS).await?;
        let id = requests::requested_id(request.get_ref())?.to_owned();
        // Resuming hands a working credential back: never more than the caller holds.
        let resume_with = resume.then(|| caller.authority.clone());
        let done = self
            .verifier()
            .set_suspended(caller.owner, id.clone(), resume_with, caller.actor.clone())
            .await?;
        match done {
            Suspended::Done {
                record, changed, ..
            } => {
                if changed {
                    let verb = if resume { "resumed" } else { "suspended" };
                    tracing::info!(token_id = %id, by = %caller.actor.principal, "token {verb}");
                }
                Ok(Response::new(token_message(*record, clock::now_micros())))
            }
            Suspended::NotFound => Err(status::not_found(&id)),
            Suspended::Exceeds(exceeds) => Err(Status::permission_denied(format!(
                "resuming token {id} would hand back more than the caller holds: {exceeds}"
            ))),
        }
    }

    pub(crate) async fn revoke_all(
        &self,
        request: Request<proto::RevokeAllTokensRequest>,
    ) -> Result<Response<proto::RevokeAllTokensResponse>, Status> {
        let named = request.get_ref();
        let owner = Owner::new(&named.subject, &named.account)?;
        let actor = match self.callers().identify(&request) {
            // Trusted callers offboard anyone.
            Some(name) => Actor::new(format!("trusted:{name}"), peer_of(&request)),
            None => {
                let caller = self
                    .caller(&request, "RevokeAllTokens", MANAGE_TOKENS)
                    .await?;
                if caller.owner != owner {
                    return Err(Status::permission_denied(
                        "a user token may revoke all tokens of its own subject and account only",
                    ));
                }
                caller.actor
            }
        };
        let revoked = self
            .verifier()
            .revoke_all(owner.clone(), actor.clone())
            .await?;
        tracing::info!(
            subject = %owner.subject,
            account = %owner.account,
            revoked,
            by = %actor.principal,
            "all tokens of an owner revoked"
        );
        Ok(Response::new(proto::RevokeAllTokensResponse {
            revoked_count: i32::try_from(revoked).unwrap_or(i32::MAX),
        }))
    }
}
