//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (and Istio's) external
//! authorization, on the same port. The bearer token comes from the HTTP request's
//! `authorization` header; the scopes a route needs from the `required_scopes`
//! context extension (comma-separated); the resource the request acts on from the
//! `resource` context extension or, failing that, the `x-patd-resource` request
//! header (which the gateway must set, overwriting any client's). Allowed
//! requests reach the upstream with the caller's identity in `x-patd-*` headers.

use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use std::net::IpAddr;

use tonic::{Code, Request, Response, Status};

use crate::api::auth::Callers;
use crate::api::gate::{self, Gate};
use crate::metrics::Check;
use crate::verify::Verifier;

/// The context extension listing the scopes a route requires.
pub const REQUIRED_SCOPES_KEY: &str = "required_scopes";
/// The context extension naming the resource a route acts on.
pub const RESOURCE_KEY: &str = "resource";
/// The request header naming it, when the route's configuration does not.
pub const RESOURCE_HEADER: &str = "x-patd-resource";
pub const SUBJECT_HEADER: &str = "x-patd-subject";
pub const ACCOUNT_HEADER: &str = "x-patd-account";
pub const TOKEN_ID_HEADER: &str = "x-patd-token-id";
pub const SCOPES_HEADER: &str = "x-patd-scopes";

pub struct ExtAuthzApi {
    verifier: Verifier,
    callers: Callers,
    /// Drop `authorization` before the request goes upstream, so that the
    /// secret reaches only patd.
    remove_authorization: bool,
}

impl ExtAuthzApi {
    pub fn new(verifier: Verifier, callers: Callers, remove_authorization: bool) -> ExtAuthzApi {
        ExtAuthzApi {
            verifier,
            callers,
            remove_authorization,
        }
    }
}

/// The request's `authorization` header values, from `headers` or, when Envoy
/// sends raw headers (`encode_raw_headers`), from `header_map`.
fn authorization_headers(check: &CheckRequest) -> Vec<String> {
    request_headers(check, "authorization")
}

/// The values of the request header `name` (lowercase), as
/// [`authorization_headers`] finds them.
fn request_headers(check: &CheckRequest, name: &str) -> Vec<String> {
    let Some(http) = check
        .attributes
        .as_ref()
        .and_then(|attributes| attributes.request.as_ref())
        .and_then(|request| request.http.as_ref())
    else {
        return Vec::new();
    };
    if let Some(value) = http.headers.get(name) {
        return vec![value.clone()];
    }
    http.header_map
        .iter()
        .flat_map(|map| &map.headers)
        .filter(|header| header.key.eq_ignore_ascii_case(name))
        .map(|header| {
            if header.raw_value.is_empty() {
                header.value.clone()
            } else {
                String::from_utf8_lossy(&header.raw_value).into_owned()
            }
        })
        .collect()
}

/// The downstream client's address, as Envoy reports it (its `source` peer);
/// an IPv4-mapped address is the IPv4 address it is.
fn client_address(check: &CheckRequest) -> Option<IpAddr> {
    check
        .get_client_address()?
        .parse()
        .ok()
        .map(|ip: IpAddr| ip.to_canonical())
}

fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            ..HeaderValue::default()
        }),
        // Never let a client-sent x-patd-* header through alongside ours.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

/// A denial: the gRPC `code` for Envoy, the HTTP status and `www-authenticate`
/// for the client, and a short body saying what was wrong.
fn deny(code: Code, http: HttpStatusCode, challenge: Option<String>, body: &str) -> CheckResponse {
    let mut headers = vec![header(
        "content-type",
        "text/plain; charset=utf-8".to_owned(),
    )];
    if let Some(challenge) = challenge {
        headers.push(header("www-authenticate", challenge));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: code.into(),
            message: body.to_owned(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http.into() }),
            headers,
            body: format!("{body}\n"),
        })),
        ..CheckResponse::default()
    }
}

fn unauthenticated(challenge: Option<String>, body: &str) -> CheckResponse {
    deny(
        Code::Unauthenticated,
        HttpStatusCode::Unauthorized,
        challenge,
        body,
    )
}

impl ExtAuthzApi {
    async fn decide(&self, check: &CheckRequest) -> (CheckResponse, Check) {
        let extensions = check
            .attributes
            .as_ref()
            .map(|attributes| &attributes.context_extensions);
        let required_names: Vec<String> = extensions
            .and_then(|extensions| extensions.get(REQUIRED_SCOPES_KEY))
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let resources = match extensions.and_then(|extensions| extensions.get(RESOURCE_KEY)) {
            Some(resource) => vec![resource.clone()],
            None => request_headers(check, RESOURCE_HEADER),
        };
        let values = authorization_headers(check);
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let needs = gate::Needs {
            scopes: &required_names,
            resources: &resources,
        };
        let gate = gate::decide(&self.verifier, &values, needs, client_address(check)).await;
        let outcome = gate.check();
        let challenge = gate.challenge();
        let response = match gate {
            Gate::Allowed(token) => {
                let ok = OkHttpResponse {
                    headers: vec![
                        header(SUBJECT_HEADER, token.subject().to_owned()),
                        header(ACCOUNT_HEADER, token.account().to_owned()),
                        header(TOKEN_ID_HEADER, token.id().to_owned()),
                        header(SCOPES_HEADER, token.scopes.to_names().join(" ")),
                    ],
                    headers_to_remove: if self.remove_authorization {
                        vec!["authorization".to_owned()]
                    } else {
                        Vec::new()
                    },
                    ..OkHttpResponse::default()
                };
                CheckResponse {
                    status: Some(rpc::Status::default()),
                    http_response: Some(HttpResponse::OkResponse(ok)),
                    ..CheckResponse::default()
                }
            }
            Gate::NoCredential => unauthenticated(challenge, "missing bearer token"),
            Gate::BadCredential(why) => unauthenticated(challenge, why),
            // Like Introspect, never say why (RFC 7662 §2.2).
            Gate::Inactive(_) => unauthenticated(challenge, "bearer token is not active"),
            Gate::MissingScopes(_, missing) => deny(
                Code::PermissionDenied,
                HttpStatusCode::Forbidden,
                challenge,
                &format!(
                    "token lacks the required scopes: {}",
                    missing.to_names().join(", ")
                ),
            ),
            Gate::ResourceDenied(_, resource) => deny(
                Code::PermissionDenied,
                HttpStatusCode::Forbidden,
                challenge,
                &format!("token is not allowed on the resource {resource}"),
            ),
            Gate::Misconfigured(unknown) => {
                tracing::error!(%unknown, "ext_authz: route requires an unknown scope or resource");
                deny(
                    Code::Internal,
                    HttpStatusCode::InternalServerError,
                    None,
                    &format!("authorization is misconfigured: {unknown}"),
                )
            }
            // Fail closed, and say it is temporary.
            Gate::Unavailable(err) => deny(
                Code::Unavailable,
                HttpStatusCode::ServiceUnavailable,
                None,
                Status::from(err).message(),
            ),
        };
        (response, outcome)
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    #[tracing::instrument(skip_all)]
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // The caller here is Envoy itself (its `initial_metadata` or client
        // certificate), not the HTTP client whose request is being checked.
        self.callers.admit_introspection(&request)?;
        let check = request.into_inner();
        let (response, outcome) = self.decide(&check).await;
        self.verifier.metrics().record_check(outcome);
        Ok(Response::new(response))
    }
}
