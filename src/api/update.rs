//! UpdateToken: renaming, describing and labelling a token (Google AIP-134),
//! the handler `TokenService` delegates to. Nothing a token grants can change
//! here, so no authority beyond managing one's own tokens is needed.

use tonic::{Request, Response, Status};

use crate::api::tokens::TokenApi;
use crate::api::{requests, status, token_message};
use crate::domain::clock;
use crate::domain::scope::MANAGE_TOKENS;
use crate::proto;
use crate::store::Updated;

impl TokenApi {
    pub(crate) async fn update(
        &self,
        request: Request<proto::UpdateTokenRequest>,
    ) -> Result<Response<proto::Token>, Status> {
        let caller = self.caller(&request, "UpdateToken", MANAGE_TOKENS).await?;
        let (id, update) = requests::update(request.get_ref())?;
        let updated = self
            .verifier()
            .update(caller.owner, id.clone(), update, caller.actor.clone())
            .await?;
        match updated {
            Updated::Done { record, .. } => {
                tracing::info!(token_id = %id, updated_by = %caller.actor.principal, "token updated");
                Ok(Response::new(token_message(*record, clock::now_micros())))
            }
            Updated::NotFound => Err(status::not_found(&id)),
        }
    }
}
