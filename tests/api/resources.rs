//! Resource-restricted tokens through the real server on both backends: a
//! token limited to named resources is refused on any other by Introspect
//! (`resource_denied`), Envoy's Check, both HTTP endpoints and patd-client, and
//! the subset rule keeps a restricted caller from handing out (by create,
//! rotate or resume) anything wider than its own resources.

use patd::proto::{
    CreateTokenRequest, IntrospectRequest, IntrospectResponse, ResumeTokenRequest,
    RotateSelfRequest, RotateTokenRequest, SuspendTokenRequest,
};
use patd_client::VerifyError;
use tonic::Code;

use crate::backend_tests;
use crate::ext_authz::{check, check_request, denied};
use crate::forward_auth::behind_trusted_proxy;
use crate::helpers::{TestApp, authed};
use crate::oauth::send;

fn restricted(name: &str, scopes: &[&str], resources: &[&str]) -> CreateTokenRequest {
    CreateTokenRequest {
        name: name.to_owned(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        resources: resources.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

/// CreateToken as `caller`: the new token's id and secret, or the refusal.
async fn create(
    app: &TestApp,
    caller: &str,
    request: CreateTokenRequest,
) -> Result<(String, String), tonic::Status> {
    let answer = app
        .tokens()
        .await
        .create_token(authed(caller, request))
        .await?;
    let answer = answer.into_inner();
    Ok((answer.token.unwrap().id, answer.secret))
}

async fn introspect_for(
    app: &TestApp,
    secret: &str,
    resource: &str,
) -> Result<IntrospectResponse, tonic::Status> {
    let request = IntrospectRequest {
        token: secret.to_owned(),
        resource: resource.to_owned(),
        ..Default::default()
    };
    let answer = app.introspection().await.introspect(request).await?;
    Ok(answer.into_inner())
}

/// Check for `secret` with `resource` as the route's context extension, or
/// (`in_header`) as the x-patd-resource request header.
async fn check_for(
    app: &TestApp,
    secret: &str,
    resource: &str,
    in_header: bool,
) -> (i32, i32, String) {
    let mut request = check_request(Some(&format!("Bearer {secret}")), Some("tag:read"));
    let attributes = request.attributes.as_mut().unwrap();
    if in_header {
        let http = attributes.request.as_mut().unwrap().http.as_mut().unwrap();
        http.headers
            .insert("x-patd-resource".into(), resource.into());
    } else {
        attributes
            .context_extensions
            .insert("resource".into(), resource.into());
    }
    let response = check(app, request).await;
    if response.status.as_ref().unwrap().code == 0 {
        return (0, 200, String::new());
    }
    let (code, http, challenge, body) = denied(&response);
    if http == 403 {
        let challenge = challenge.expect("a 403 carries a challenge");
        assert!(challenge.contains("insufficient_scope"), "{challenge}");
    }
    (code, http, body)
}

async fn http_introspect(app: &TestApp, form: String) -> (u16, serde_json::Value) {
    let answer = send(
        app.http_addr,
        "POST /oauth2/introspect HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded"
            .into(),
        form.into_bytes(),
    )
    .await;
    let body = serde_json::from_str(&answer.body).unwrap_or(serde_json::Value::Null);
    (answer.status, body)
}

async fn forward_auth(app: &TestApp, query: &str, secret: &str, extra: &str) -> u16 {
    let head = format!("GET /auth{query} HTTP/1.1\r\nAuthorization: Bearer {secret}{extra}");
    send(app.http_addr, head, Vec::new()).await.status
}

async fn restricted_tokens_are_refused_on_other_resources_everywhere(app: TestApp) {
    let alice = app.manager("alice", &["tag:read"]).await;
    let (_, secret) = create(
        &app,
        &alice,
        restricted("pr7", &["tag:read"], &["product:PR-7", "license:LK-1"]),
    )
    .await
    .unwrap();
    let (_, open) = create(&app, &alice, restricted("open", &["tag:read"], &[]))
        .await
        .unwrap();

    // Introspect: listed always; denied only for another resource.
    let answer = introspect_for(&app, &secret, "").await.unwrap();
    assert!(answer.active && !answer.resource_denied);
    assert_eq!(answer.resources, ["license:LK-1", "product:PR-7"]);
    let answer = introspect_for(&app, &secret, "product:PR-7").await.unwrap();
    assert!(answer.active && !answer.resource_denied);
    let answer = introspect_for(&app, &secret, "product:PR-8").await.unwrap();
    assert!(answer.active && answer.resource_denied, "{answer:?}");
    assert_eq!(answer.resources, ["license:LK-1", "product:PR-7"]);
    let answer = introspect_for(&app, &open, "product:PR-8").await.unwrap();
    assert!(answer.active && !answer.resource_denied && answer.resources.is_empty());
    for bad in ["PR-8", "product:", "pro duct:x", "product:a b"] {
        let status = introspect_for(&app, &secret, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            status.message().starts_with("resource:"),
            "{}",
            status.message()
        );
    }
    // A junk token with a resource is still simply inactive.
    assert!(
        !introspect_for(&app, "patd_junk", "product:PR-7")
            .await
            .unwrap()
            .active
    );

    // Envoy Check: the route's context extension or the gateway's header.
    for in_header in [false, true] {
        assert_eq!(
            check_for(&app, &secret, "product:PR-7", in_header).await.1,
            200
        );
        assert_eq!(
            check_for(&app, &open, "product:PR-8", in_header).await.1,
            200
        );
        let (code, http, body) = check_for(&app, &secret, "product:PR-8", in_header).await;
        assert_eq!((code, http), (Code::PermissionDenied as i32, 403), "{body}");
        assert!(body.contains("product:PR-8"), "{body}");
        // A malformed name fails closed.
        assert_eq!(
            check_for(&app, &open, "not a resource", in_header).await.1,
            500
        );
    }

    // RFC 7662 over HTTP: `resource` (RFC 8707's name) and `resources`.
    let (status, body) =
        http_introspect(&app, format!("token={secret}&resource=product%3APR-8")).await;
    assert_eq!(status, 200);
    assert_eq!(body["active"], true);
    assert_eq!(body["resource_denied"], true);
    assert_eq!(
        body["resources"],
        serde_json::json!(["license:LK-1", "product:PR-7"])
    );
    let (_, body) = http_introspect(&app, format!("token={secret}&resource=product:PR-7")).await;
    assert_eq!(body["resource_denied"], false);
    let (_, body) = http_introspect(&app, format!("token={open}")).await;
    assert!(
        body.get("resources").is_none() && body.get("resource_denied").is_none(),
        "{body}"
    );
    let (status, body) = http_introspect(&app, format!("token={secret}&resource=nope")).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &serde_json::json!("invalid_request"))
    );

    // Forward auth: the auth URI's query; the header only from trusted proxies.
    assert_eq!(
        forward_auth(&app, "?scope=tag:read&resource=product:PR-7", &secret, "").await,
        200
    );
    assert_eq!(
        forward_auth(&app, "?resource=product:PR-8", &secret, "").await,
        403
    );
    assert_eq!(
        forward_auth(&app, "?resource=product:PR-8", &open, "").await,
        200
    );
    assert_eq!(
        forward_auth(
            &app,
            "?resource=product:PR-7&resource=product:PR-8",
            &secret,
            ""
        )
        .await,
        400
    );
    let header = "\r\nX-Patd-Resource: product:PR-7";
    assert_eq!(
        forward_auth(&app, "", &secret, header).await,
        400,
        "not a trusted proxy"
    );

    // patd-client decides from the cached answer.
    let auth = crate::client::authenticator(&app).await;
    let principal = auth
        .verify_resource(&secret, &["tag:read"], None, "product:PR-7")
        .await
        .unwrap();
    assert!(
        principal.allows_resource("license:LK-1") && !principal.allows_resource("product:PR-8")
    );
    match auth
        .verify_resource(&secret, &["tag:read"], None, "product:PR-8")
        .await
    {
        Err(VerifyError::ResourceDenied { resource, .. }) => assert_eq!(resource, "product:PR-8"),
        other => panic!("{other:?}"),
    }
    assert!(
        auth.verify_resource(&open, &[], None, "product:PR-8")
            .await
            .is_ok()
    );

    let (scrape, _) = crate::metrics::scrape(&app).await;
    let denials = crate::metrics::value(
        &scrape,
        "patd_ext_authz_checks_total",
        &[("decision", "resource_denied")],
    );
    assert_eq!(denials, 3.0, "two Checks and one forward auth were denied");
}

async fn a_trusted_proxy_names_the_resource_in_a_header(app: TestApp) {
    let (secret, _) = app
        .mint(
            ("alice", "acme"),
            &["personalAccessToken:write", "tag:read"],
            None,
        )
        .await;
    let (_, pr7) = create(
        &app,
        &secret,
        restricted("pr7", &["tag:read"], &["product:PR-7"]),
    )
    .await
    .unwrap();
    let header = |resource: &str| format!("\r\nX-Patd-Resource: {resource}");
    assert_eq!(
        forward_auth(&app, "", &pr7, &header("product:PR-7")).await,
        200
    );
    assert_eq!(
        forward_auth(&app, "", &pr7, &header("product:PR-8")).await,
        403
    );
    assert_eq!(forward_auth(&app, "", &pr7, &header("junk")).await, 400);
}

async fn the_subset_rule_covers_resources(app: TestApp) {
    let alice = app.manager("alice", &["tag:read"]).await;
    // A manager restricted to products A and B.
    let (_, manager) = create(
        &app,
        &alice,
        restricted(
            "mgr",
            &["personalAccessToken:write", "tag:read"],
            &["product:A", "product:B"],
        ),
    )
    .await
    .unwrap();
    for resources in [&[][..], &["product:C"][..], &["product:A", "product:C"][..]] {
        let status = create(&app, &manager, restricted("x", &["tag:read"], resources))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{resources:?}");
        assert!(
            status
                .message()
                .contains("restricted to the resources product:A, product:B"),
            "{}",
            status.message()
        );
    }
    let (narrow_id, narrow) = create(
        &app,
        &manager,
        restricted("a", &["tag:read"], &["product:A"]),
    )
    .await
    .unwrap();
    assert_eq!(
        introspect_for(&app, &narrow, "").await.unwrap().resources,
        ["product:A"]
    );
    create(
        &app,
        &manager,
        restricted("ab", &["tag:read"], &["product:B", "product:A"]),
    )
    .await
    .unwrap();

    // Rotation hands the same restriction out again: allowed within, not beyond.
    let rotate = |id: &str| RotateTokenRequest {
        id: id.to_owned(),
        ..Default::default()
    };
    let rotated = app
        .tokens()
        .await
        .rotate_token(authed(&manager, rotate(&narrow_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.token.unwrap().resources, ["product:A"]);
    assert!(
        introspect_for(&app, &rotated.secret, "product:B")
            .await
            .unwrap()
            .resource_denied
    );
    let (open_id, _) = create(&app, &alice, restricted("open", &["tag:read"], &[]))
        .await
        .unwrap();
    let status = app
        .tokens()
        .await
        .rotate_token(authed(&manager, rotate(&open_id)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("restricted to the resources"),
        "{}",
        status.message()
    );
    // Rotating itself keeps its own restriction.
    let myself = app
        .tokens()
        .await
        .rotate_self(authed(&manager, RotateSelfRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(myself.token.unwrap().resources, ["product:A", "product:B"]);
    let manager = myself.secret;

    // Resuming an unrestricted token would hand back more than the manager holds.
    let suspend = SuspendTokenRequest {
        id: open_id.clone(),
    };
    app.tokens()
        .await
        .suspend_token(authed(&alice, suspend))
        .await
        .unwrap();
    let status = app
        .tokens()
        .await
        .resume_token(authed(
            &manager,
            ResumeTokenRequest {
                id: open_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    app.tokens()
        .await
        .resume_token(authed(&alice, ResumeTokenRequest { id: open_id }))
        .await
        .unwrap();

    // Bounded and validated.
    let many: Vec<String> = (0..33).map(|n| format!("product:{n}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let long = format!("product:{}", "x".repeat(129));
    for (resources, why) in [
        (&many[..], "at most 32"),
        (&[long.as_str()][..], "1 to 128"),
        (&["9x:1"][..], "a letter"),
        (&["product:a\u{202e}b"][..], "without spaces"),
    ] {
        let status = create(&app, &alice, restricted("x", &["tag:read"], resources))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{why}");
        assert!(status.message().contains(why), "{}", status.message());
    }
}

backend_tests!(
    restricted_tokens_are_refused_on_other_resources_everywhere,
    a_trusted_proxy_names_the_resource_in_a_header with behind_trusted_proxy,
    the_subset_rule_covers_resources,
);
