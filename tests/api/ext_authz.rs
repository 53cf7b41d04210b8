//! Envoy external authorization: CheckRequests built as Envoy's ext_authz filter
//! sends them (lower-cased header keys, pseudo-headers, peer addresses, the
//! route's context extensions), over gRPC to the real server.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address as EnvoyAddress, HeaderMap, HeaderValue, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use patd::proto::introspection_service_client::IntrospectionServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::backend_tests;
use crate::helpers::{TestApp, health_of};

fn peer(address: &str, port: u32) -> Peer {
    Peer {
        address: Some(EnvoyAddress {
            address: Some(Address::SocketAddress(SocketAddress {
                address: address.to_owned(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..SocketAddress::default()
            })),
        }),
        ..Peer::default()
    }
}

/// A CheckRequest for `GET /api/licenses` with `authorization` (if any) and the
/// route's `required_scopes` (if any), headers in Envoy's `headers` map.
pub fn check_request(authorization: Option<&str>, required_scopes: Option<&str>) -> CheckRequest {
    let mut headers: HashMap<String, String> = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", "/api/licenses?page=2"),
        (":scheme", "https"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "0f6a3c1e-9d1b-4b55-8f0e-3f1f3d1c2b7a"),
        // A client trying to smuggle an identity past the filter.
        ("x-patd-subject", "mallory"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if let Some(value) = authorization {
        headers.insert("authorization".to_owned(), value.to_owned());
    }
    let context_extensions = required_scopes
        .map(|scopes| HashMap::from([("required_scopes".to_owned(), scopes.to_owned())]))
        .unwrap_or_default();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("203.0.113.7", 51234)),
            destination: Some(peer("10.0.0.12", 8443)),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "4398046511104".to_owned(),
                    method: "GET".to_owned(),
                    headers,
                    path: "/api/licenses?page=2".to_owned(),
                    host: "api.example.com".to_owned(),
                    scheme: "https".to_owned(),
                    protocol: "HTTP/1.1".to_owned(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            context_extensions,
            ..AttributeContext::default()
        }),
    }
}

/// The same request with `encode_raw_headers: true`: a `header_map` of raw values.
fn raw_check_request(authorizations: &[&str], required_scopes: Option<&str>) -> CheckRequest {
    let mut request = check_request(None, required_scopes);
    let http = request
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    let mut raw: Vec<HeaderValue> = std::mem::take(&mut http.headers)
        .into_iter()
        .map(|(key, value)| HeaderValue {
            key,
            raw_value: value.into_bytes(),
            ..HeaderValue::default()
        })
        .collect();
    for value in authorizations {
        raw.push(HeaderValue {
            key: "authorization".to_owned(),
            raw_value: value.as_bytes().to_vec(),
            ..HeaderValue::default()
        });
    }
    http.header_map = Some(HeaderMap { headers: raw });
    request
}

pub async fn check(app: &TestApp, request: CheckRequest) -> CheckResponse {
    AuthorizationClient::new(app.channel().await)
        .check(request)
        .await
        .expect("Check answers with a decision, not an error status")
        .into_inner()
}

fn allowed(response: &CheckResponse) -> &OkHttpResponse {
    assert_eq!(response.status.as_ref().unwrap().code, 0, "{response:?}");
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("not allowed: {other:?}"),
    }
}

/// The gRPC code, HTTP status, `www-authenticate` and body of a denial.
pub fn denied(response: &CheckResponse) -> (i32, i32, Option<String>, String) {
    let code = response.status.as_ref().unwrap().code;
    let Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
        status,
        headers,
        body,
    })) = &response.http_response
    else {
        panic!("not denied: {response:?}");
    };
    let challenge = headers
        .iter()
        .filter_map(|option| option.header.as_ref())
        .find(|header| header.key == "www-authenticate")
        .map(|header| header.value.clone());
    (code, status.as_ref().unwrap().code, challenge, body.clone())
}

fn upstream_headers(ok: &OkHttpResponse) -> HashMap<String, String> {
    for option in &ok.headers {
        assert_eq!(
            option.append_action(),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
            "a client-sent x-patd-* header must be replaced, not kept"
        );
    }
    ok.headers
        .iter()
        .filter_map(|option| option.header.as_ref())
        .map(|header| (header.key.clone(), header.value.clone()))
        .collect()
}

async fn allowed_requests_carry_the_callers_identity_upstream(app: TestApp) {
    let (secret, record) = app
        .mint(("alice", "acme"), &["license:read", "tag:read"], None)
        .await;
    let bearer = format!("Bearer {secret}");
    for request in [
        check_request(Some(&bearer), Some("license:read")),
        check_request(Some(&bearer), Some(" license:read , tag:read ")),
        check_request(Some(&bearer), None),
        raw_check_request(&[&bearer], Some("license:read")),
    ] {
        let response = check(&app, request).await;
        let ok = allowed(&response);
        let headers = upstream_headers(ok);
        assert_eq!(headers["x-patd-subject"], "alice");
        assert_eq!(headers["x-patd-account"], "acme");
        assert_eq!(headers["x-patd-token-id"], record.id);
        assert_eq!(headers["x-patd-scopes"], "license:read tag:read");
        assert!(
            ok.headers_to_remove.is_empty(),
            "authorization is kept unless configured"
        );
    }
    assert_eq!(
        health_of(&app.channel().await, "envoy.service.auth.v3.Authorization").await,
        ServingStatus::Serving
    );
}

async fn denials_say_401_or_403_with_a_bearer_challenge(app: TestApp) {
    let (secret, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (revoked, _) = app.mint_revoked(("alice", "acme"), &["license:read"]).await;
    let unknown = app.format.generate().expose().to_owned();

    let (code, http, challenge, body) = denied(&check(&app, check_request(None, None)).await);
    assert_eq!((code, http), (16, 401));
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"patd\""));
    assert!(body.contains("missing bearer token"), "{body}");

    for wrong in ["Basic YWxpY2U6c2VjcmV0", "Bearer", &secret] {
        let (code, http, challenge, body) =
            denied(&check(&app, check_request(Some(wrong), None)).await);
        assert_eq!((code, http), (16, 401), "{wrong}");
        assert!(challenge.unwrap().contains("error=\"invalid_request\""));
        assert!(body.contains("Bearer <token>"), "{body}");
        assert!(!body.contains(&secret), "the secret is never echoed");
    }

    // Junk, unknown and revoked tokens are denied alike: nothing says why.
    let mut bodies = Vec::new();
    for token in ["patd_junk", unknown.as_str(), revoked.as_str()] {
        let (code, http, challenge, body) =
            denied(&check(&app, check_request(Some(&format!("Bearer {token}")), None)).await);
        assert_eq!((code, http), (16, 401), "{token}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"patd\", error=\"invalid_token\"")
        );
        assert!(!body.contains(token));
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");

    // Envoy joins repeated headers with commas in the `headers` map.
    let joined = check_request(Some(&format!("Bearer {secret}, Bearer other")), None);
    let (code, http, _, body) = denied(&check(&app, joined).await);
    assert_eq!((code, http), (16, 401));
    assert!(body.contains("more than one"), "{body}");

    let duplicate = raw_check_request(&[&format!("Bearer {secret}"), "Bearer other"], None);
    let (code, http, _, body) = denied(&check(&app, duplicate).await);
    assert_eq!((code, http), (16, 401));
    assert!(body.contains("more than one"), "{body}");

    let bearer = format!("Bearer {secret}");
    let (code, http, challenge, body) = denied(
        &check(
            &app,
            check_request(Some(&bearer), Some("tag:read,license:read,license:write")),
        )
        .await,
    );
    assert_eq!((code, http), (7, 403));
    assert!(
        body.contains("license:read, license:write") && !body.contains("tag:read"),
        "names exactly the missing scopes: {body}"
    );
    let challenge = challenge.unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );

    let (code, http, _, body) =
        denied(&check(&app, check_request(Some(&bearer), Some("licence:read"))).await);
    assert_eq!(
        (code, http),
        (13, 500),
        "a misspelt route scope fails closed"
    );
    assert!(body.contains("licence:read"), "{body}");
    let log = crate::helpers::logs();
    for token in [&secret, &revoked, &unknown] {
        assert!(
            !log.contains(&token[5..45]),
            "a checked token reached the log"
        );
    }
}

fn removing_authorization() -> patd::serve::ServerSettings {
    patd::serve::ServerSettings {
        ext_authz_remove_authorization: true,
        ..TestApp::settings()
    }
}

async fn authorization_is_removed_when_configured(app: TestApp) {
    let (secret, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let response = check(&app, check_request(Some(&format!("Bearer {secret}")), None)).await;
    assert_eq!(allowed(&response).headers_to_remove, ["authorization"]);
}

/// Envoy reaches patd over a plain HTTP/2 channel, as its `grpc_service` does.
async fn check_is_served_beside_the_other_services(app: TestApp) {
    let channel: Channel = app.channel().await;
    let (secret, _) = app.mint(("bob", "acme"), &["tag:read"], None).await;
    let mut client = AuthorizationClient::new(channel.clone());
    let response = client
        .check(check_request(
            Some(&format!("bearer {secret}")),
            Some("tag:read"),
        ))
        .await
        .unwrap()
        .into_inner();
    allowed(&response);
    let introspected = IntrospectionServiceClient::new(channel)
        .introspect(patd::proto::IntrospectRequest {
            token: secret,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(introspected.active, "Introspect on the same channel");
}

backend_tests!(
    allowed_requests_carry_the_callers_identity_upstream,
    denials_say_401_or_403_with_a_bearer_challenge,
    authorization_is_removed_when_configured with removing_authorization,
    check_is_served_beside_the_other_services,
);
