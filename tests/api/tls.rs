//! TLS on the gRPC port, certificate reload without restart, client certificates
//! (mTLS), trusted internal callers, and introspection limited to trusted callers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use patd::api::auth::{
    Callers, IntrospectionCallers, TrustedCallerConfig, generate_service_credential,
    service_credential_hash,
};
use patd::proto::introspection_service_client::IntrospectionServiceClient;
use patd::proto::token_service_client::TokenServiceClient;
use patd::proto::{IntrospectRequest, ListScopesRequest, ListTokensRequest};
use patd::serve::ServerSettings;
use patd::serve::tls::{ClientAuth, TlsReloader, TlsSettings};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};

use crate::backend_tests;
use crate::helpers::{TestApp, authed, create, health_of};
use tonic_health::pb::health_check_response::ServingStatus;

/// A certificate authority for tests.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `dns_name` and its key, in PEM.
    fn issue(&self, dns_name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![dns_name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The server's certificate files in a directory of their own.
struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn new(server_ca: &Ca, client_ca: Option<&Ca>) -> TlsFiles {
        let files = TlsFiles {
            dir: tempfile::tempdir().unwrap(),
        };
        files.write_server(server_ca.issue("localhost"));
        if let Some(ca) = client_ca {
            std::fs::write(files.path("client-ca.pem"), ca.pem()).unwrap();
        }
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_server(&self, (cert, key): (String, String)) {
        std::fs::write(self.path("tls.crt"), cert).unwrap();
        std::fs::write(self.path("tls.key"), key).unwrap();
    }

    fn settings(&self, client_auth: Option<ClientAuth>) -> TlsSettings {
        TlsSettings {
            cert_file: self.path("tls.crt"),
            key_file: self.path("tls.key"),
            client_ca_file: client_auth.map(|_| self.path("client-ca.pem")),
            client_auth: client_auth.unwrap_or_default(),
            reload_interval: Duration::from_millis(100),
        }
    }
}

/// A TLS channel to `app` trusting `ca`, presenting `identity` if given.
async fn tls_channel(
    app: &TestApp,
    ca: &Ca,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
}

/// Whether a call over a fresh TLS connection trusting `ca` succeeds.
async fn answers(app: &TestApp, ca: &Ca, identity: Option<(String, String)>) -> bool {
    match tls_channel(app, ca, identity).await {
        Ok(channel) => TokenServiceClient::new(channel)
            .list_scopes(ListScopesRequest {})
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn tls_serves_and_reloads_the_certificate_without_a_restart() {
    let first = Ca::new("first CA");
    let files = TlsFiles::new(&first, None);
    let tls = TlsReloader::load(files.settings(None)).unwrap();
    let app = TestApp::spawn_with_tls(TestApp::settings(), tls).await;

    assert!(
        answers(&app, &first, None).await,
        "TLS with the configured certificate"
    );
    let plaintext = TokenServiceClient::new(app.channel().await)
        .list_scopes(ListScopesRequest {})
        .await;
    assert!(plaintext.is_err(), "no plaintext on a TLS port");
    // Probes use the plaintext health port, which serves health and nothing else.
    let health_addr = app.health_addr.unwrap();
    let health = Channel::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health_of(&health, "").await, ServingStatus::Serving);
    let probe = crate::helpers::patd_health(&health_addr.to_string(), "liveness").await;
    assert!(probe.status.success());
    let other = TokenServiceClient::new(health)
        .list_scopes(ListScopesRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        other.code(),
        Code::Unimplemented,
        "only health on that port"
    );

    // An invalid new file is refused: the loaded certificate keeps serving.
    std::fs::write(files.path("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        answers(&app, &first, None).await,
        "a bad file does not break TLS"
    );

    // A renewed certificate from another CA is picked up within the interval.
    let second = Ca::new("second CA");
    let held = tls_channel(&app, &first, None).await.unwrap();
    files.write_server(second.issue("localhost"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !answers(&app, &second, None).await {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !answers(&app, &first, None).await,
        "new connections get the new certificate"
    );
    let mut open = TokenServiceClient::new(held);
    assert!(
        open.list_scopes(ListScopesRequest {}).await.is_ok(),
        "connections made before the reload keep working"
    );
}

#[tokio::test]
async fn required_client_certificates_must_chain_to_the_client_ca() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let stranger = Ca::new("stranger CA");
    let files = TlsFiles::new(&server_ca, Some(&client_ca));
    let tls = TlsReloader::load(files.settings(Some(ClientAuth::Required))).unwrap();
    let app = TestApp::spawn_with_tls(TestApp::settings(), tls).await;

    assert!(answers(&app, &server_ca, Some(client_ca.issue("billing.internal"))).await);
    assert!(
        !answers(&app, &server_ca, None).await,
        "no client certificate"
    );
    assert!(
        !answers(&app, &server_ca, Some(stranger.issue("billing.internal"))).await,
        "a certificate from another CA"
    );
}

#[tokio::test]
async fn bad_tls_files_fail_at_start_with_the_reason() {
    let ca = Ca::new("CA");
    let files = TlsFiles::new(&ca, None);
    std::fs::write(files.path("tls.key"), "").unwrap();
    let err = TlsReloader::load(files.settings(None)).err().unwrap();
    assert!(
        err.contains("tls.key") && err.contains("no private key"),
        "{err}"
    );
    let missing = TlsSettings {
        cert_file: files.path("absent.crt"),
        ..files.settings(None)
    };
    let err = TlsReloader::load(missing).err().unwrap();
    assert!(
        err.contains("cannot read") && err.contains("absent.crt"),
        "{err}"
    );
}

/// `request` from a trusted caller acting for `subject` in account acme.
pub fn acting_for<T>(mut request: Request<T>, subject: &str) -> Request<T> {
    let metadata = request.metadata_mut();
    metadata.insert("x-patd-act-as-subject", subject.parse().unwrap());
    metadata.insert("x-patd-act-as-account", "acme".parse().unwrap());
    request
}

#[tokio::test]
async fn a_trusted_client_certificate_acts_for_any_owner_and_others_do_not() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = TlsFiles::new(&server_ca, Some(&client_ca));
    let tls = TlsReloader::load(files.settings(Some(ClientAuth::Optional))).unwrap();
    let settings = trusted_by_certificate(IntrospectionCallers::Any);
    let app = TestApp::spawn_with_tls(settings, tls).await;
    let portal = tls_channel(&app, &server_ca, Some(client_ca.issue("portal.internal")))
        .await
        .unwrap();
    let created = TokenServiceClient::new(portal.clone())
        .create_token(acting_for(
            Request::new(create("from portal", &["license:write", "tag:read"])),
            "bob",
        ))
        .await
        .unwrap()
        .into_inner();
    let token = created.token.unwrap();
    assert_eq!(
        (token.subject.as_str(), token.account.as_str()),
        ("bob", "acme")
    );
    assert_eq!(
        token.scopes,
        ["license:write", "tag:read"],
        "any scope, none held by the portal"
    );

    let listed = TokenServiceClient::new(portal.clone())
        .list_tokens(acting_for(
            Request::new(ListTokensRequest::default()),
            "bob",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);

    let unnamed = TokenServiceClient::new(portal)
        .list_tokens(Request::new(ListTokensRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    assert!(
        unnamed.message().contains("x-patd-act-as-subject"),
        "{}",
        unnamed.message()
    );

    // A verified certificate with another name is no trusted caller, nor is a
    // wildcard that would cover the name: trusted callers are identities, not
    // host names.
    for name in ["billing.internal", "*.internal"] {
        let other = tls_channel(&app, &server_ca, Some(client_ca.issue(name)))
            .await
            .unwrap();
        let refused = TokenServiceClient::new(other)
            .list_tokens(acting_for(
                Request::new(ListTokensRequest::default()),
                "bob",
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{name}");
    }

    // A user's token can never act for someone else.
    let alice = app.manager("alice", &["tag:read"]).await;
    let channel = tls_channel(&app, &server_ca, None).await.unwrap();
    let request = acting_for(authed(&alice, ListTokensRequest::default()), "bob");
    let denied = TokenServiceClient::new(channel)
        .list_tokens(request)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("only trusted internal callers"));
}

/// Settings with the test portal as a trusted caller, by its client
/// certificate's DNS name `portal.internal`.
fn trusted_by_certificate(introspection: IntrospectionCallers) -> ServerSettings {
    let callers = Callers::new(
        vec![TrustedCallerConfig {
            name: "portal".to_owned(),
            credential_hash: None,
            client_cert_dns_name: Some("portal.internal".to_owned()),
        }],
        introspection,
    )
    .unwrap();
    ServerSettings {
        callers,
        ..TestApp::settings()
    }
}

fn trusted_by_credential(credential: &str, introspection: IntrospectionCallers) -> ServerSettings {
    let callers = Callers::new(
        vec![TrustedCallerConfig {
            name: "portal".to_owned(),
            credential_hash: Some(service_credential_hash(credential).to_hex().to_string()),
            client_cert_dns_name: None,
        }],
        introspection,
    )
    .unwrap();
    ServerSettings {
        callers,
        ..TestApp::settings()
    }
}

/// One credential for the whole test binary: settings functions take no input.
pub fn portal_credential() -> &'static str {
    static CREDENTIAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CREDENTIAL.get_or_init(generate_service_credential)
}

/// Settings with the test portal as a trusted caller (by service credential).
pub fn portal_trusted_settings() -> ServerSettings {
    trusted_by_credential(portal_credential(), IntrospectionCallers::Any)
}

pub fn introspection_for_trusted_only() -> ServerSettings {
    trusted_by_credential(portal_credential(), IntrospectionCallers::Trusted)
}

async fn a_service_credential_acts_for_the_owner_it_names(app: TestApp) {
    let portal = portal_credential();
    let mut tokens = app.tokens().await;
    let request = acting_for(
        authed(portal, create("for carol", &["license:read"])),
        "carol",
    );
    let created = tokens.create_token(request).await.unwrap().into_inner();
    assert_eq!(created.token.unwrap().subject, "carol");
    assert!(app.is_active(&created.secret).await);

    let last = if portal.ends_with('x') { 'y' } else { 'x' };
    let forged = format!("{}{last}", &portal[..portal.len() - 1]);
    for (credential, message) in [
        (forged.as_str(), "service credential is not recognised"),
        ("patdsvc_nonsense", "service credential is not recognised"),
    ] {
        let request = acting_for(authed(credential, ListTokensRequest::default()), "carol");
        let err = tokens.list_tokens(request).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(err.message(), message);
        assert!(!err.message().contains(credential));
    }
    let log = crate::helpers::logs();
    for secret in [portal, forged.as_str(), created.secret.as_str()] {
        assert!(
            !log.contains(&secret[8..40]),
            "a credential reached the log"
        );
    }
}

async fn introspection_can_be_limited_to_trusted_callers(app: TestApp) {
    let (secret, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let ask = || IntrospectRequest {
        token: secret.clone(),
        required_scopes: vec![],
        client_ip: String::new(),
        ..Default::default()
    };
    let mut client = IntrospectionServiceClient::new(app.channel().await);
    let anonymous = client.introspect(ask()).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert!(
        anonymous.message().contains("trusted callers"),
        "{}",
        anonymous.message()
    );
    // A user's token is no service credential.
    let user = client.introspect(authed(&secret, ask())).await.unwrap_err();
    assert_eq!(user.code(), Code::Unauthenticated);
    let trusted = client
        .introspect(authed(portal_credential(), ask()))
        .await
        .unwrap()
        .into_inner();
    assert!(trusted.active);

    // Envoy's Check likewise: Envoy presents the credential in its initial_metadata.
    let envoy_asks = || crate::ext_authz::check_request(Some(&format!("Bearer {secret}")), None);
    let mut authz = AuthorizationClient::new(app.channel().await);
    let anonymous = authz.check(envoy_asks()).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let allowed = authz
        .check(authed(portal_credential(), envoy_asks()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.status.unwrap().code, 0);
}

backend_tests!(
    a_service_credential_acts_for_the_owner_it_names with portal_trusted_settings,
    introspection_can_be_limited_to_trusted_callers with introspection_for_trusted_only,
);

#[test]
fn trusted_caller_configuration_is_checked() {
    let entry = |name: &str, hash: Option<&str>, dns: Option<&str>| TrustedCallerConfig {
        name: name.to_owned(),
        credential_hash: hash.map(str::to_owned),
        client_cert_dns_name: dns.map(str::to_owned),
    };
    let cases = [
        (vec![entry("portal", None, None)], "set credential_hash"),
        (vec![entry("portal", Some("abc"), None)], "64 hex digits"),
        (
            vec![entry("portal", None, Some("not a name!"))],
            "not a DNS name",
        ),
        (
            vec![
                entry("a", None, Some("a.internal")),
                entry("a", None, Some("b.internal")),
            ],
            "unique",
        ),
    ];
    for (configs, expected) in cases {
        let err = Callers::new(configs, IntrospectionCallers::Any).unwrap_err();
        assert!(err.contains(expected), "{err}");
    }
    let err = Callers::new(vec![], IntrospectionCallers::Trusted).unwrap_err();
    assert!(err.contains("at least one trusted caller"), "{err}");
}

/// The HTTP port serves TLS with the gRPC port's settings, and a trusted
/// caller's client certificate admits it to RFC 7662 introspection (curl, as
/// a resource server would call it).
#[tokio::test]
async fn http_introspection_over_tls_admits_a_trusted_client_certificate() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = TlsFiles::new(&server_ca, Some(&client_ca));
    let tls = TlsReloader::load(files.settings(Some(ClientAuth::Optional))).unwrap();
    let settings = trusted_by_certificate(IntrospectionCallers::Trusted);
    let app = TestApp::spawn_with_tls(settings, tls).await;
    let (secret, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    std::fs::write(files.path("ca.pem"), server_ca.pem()).unwrap();
    let (cert, key) = client_ca.issue("portal.internal");
    std::fs::write(files.path("portal.crt"), cert).unwrap();
    std::fs::write(files.path("portal.key"), key).unwrap();
    let (stranger_cert, stranger_key) = client_ca.issue("stranger.internal");
    std::fs::write(files.path("stranger.crt"), stranger_cert).unwrap();
    std::fs::write(files.path("stranger.key"), stranger_key).unwrap();
    let port = app.http_addr.port();
    let dir = files.path("");
    // Blocking: off the runtime the in-process server runs on.
    let curl = |identity: Option<&'static str>| {
        let (dir, secret) = (dir.clone(), secret.clone());
        tokio::task::spawn_blocking(move || curl_introspect(&dir, port, identity, &secret))
    };
    let admitted = curl(Some("portal")).await.unwrap();
    assert!(admitted.ends_with("\n200"), "{admitted}");
    assert!(admitted.contains(r#""active":true"#), "{admitted}");
    for refused in [
        curl(None).await.unwrap(),
        curl(Some("stranger")).await.unwrap(),
    ] {
        assert!(refused.ends_with("\n401"), "{refused}");
    }
}

/// `curl` POSTing `secret` to the HTTPS introspection endpoint on `port`,
/// trusting `dir/ca.pem`, presenting `dir/<identity>.crt` if given: the body,
/// a newline, the status.
fn curl_introspect(
    dir: &std::path::Path,
    port: u16,
    identity: Option<&str>,
    secret: &str,
) -> String {
    {
        let files = dir;
        let mut command = std::process::Command::new("curl");
        command
            .args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(files.join("ca.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")]);
        if let Some(name) = identity {
            command
                .arg("--cert")
                .arg(files.join(format!("{name}.crt")))
                .arg("--key")
                .arg(files.join(format!("{name}.key")));
        }
        let output = command
            .args(["--max-time", "10"])
            .arg(format!("https://localhost:{port}/oauth2/introspect"))
            .args(["-d", &format!("token={secret}")])
            .output()
            .expect("curl runs (apt-get install curl)");
        String::from_utf8(output.stdout).unwrap()
    }
}
