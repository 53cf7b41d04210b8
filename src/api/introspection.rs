//! `pat.v1.IntrospectionService`: is this bearer token valid, whose is it, and
//! which scopes does it grant?

use tonic::{Request, Response, Status};

use crate::api::auth::Callers;
use crate::api::{requests, watch};
use crate::domain::clock;
use crate::metrics::IntrospectOutcome;
use crate::proto;
use crate::proto::introspection_service_server::IntrospectionService;
use crate::verify::{Lane, Verifier};

pub const TOKEN_TYPE: &str = "Bearer";

pub struct IntrospectionApi {
    verifier: Verifier,
    callers: Callers,
}

impl IntrospectionApi {
    pub fn new(verifier: Verifier, callers: Callers) -> IntrospectionApi {
        IntrospectionApi { verifier, callers }
    }
}

#[tonic::async_trait]
impl IntrospectionService for IntrospectionApi {
    type WatchChangesStream = watch::ChangeStream;

    #[tracing::instrument(skip_all)]
    async fn watch_changes(
        &self,
        request: Request<proto::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        self.callers.admit_introspection(&request)?;
        let after = requests::watch(request.get_ref())?;
        let stream = watch::subscribe(&self.verifier, after).await?;
        tracing::debug!(?after, "change stream opened");
        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all)]
    async fn introspect(
        &self,
        request: Request<proto::IntrospectRequest>,
    ) -> Result<Response<proto::IntrospectResponse>, Status> {
        self.callers.admit_introspection(&request)?;
        let requests::Introspection {
            required,
            client,
            resource,
        } = requests::introspect(request.get_ref())?;
        let request = request.into_inner();
        let metrics = self.verifier.metrics();
        // Storage errors propagate as UNAVAILABLE/INTERNAL: fail closed.
        let verified = self
            .verifier
            .verify(&request.token, Lane::Introspect, client)
            .await
            .inspect_err(|_| metrics.record_introspect(IntrospectOutcome::StorageError))?;
        let token = match verified {
            Ok(token) => token,
            Err(reason) => {
                tracing::debug!(?reason, "introspect: inactive");
                metrics.record_introspect(reason.into());
                return Ok(Response::new(proto::IntrospectResponse::default()));
            }
        };
        metrics.record_introspect(IntrospectOutcome::Active);
        tracing::debug!(token_id = %token.id(), "introspect: active");
        Ok(Response::new(proto::IntrospectResponse {
            active: true,
            token_id: token.id().to_owned(),
            name: token.name().to_owned(),
            subject: token.subject().to_owned(),
            account: token.account().to_owned(),
            scopes: token.scopes.to_names(),
            issued_at: Some(clock::to_timestamp(token.created_at)),
            expires_at: token.expires_at().map(clock::to_timestamp),
            token_type: TOKEN_TYPE.to_owned(),
            missing_scopes: required.minus(token.scopes).to_names(),
            resources: token.resources().to_strings(),
            resource_denied: resource.is_some_and(|resource| !token.resources().allows(&resource)),
        }))
    }
}
