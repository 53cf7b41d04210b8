//! RFC 7662 token introspection over HTTP: `POST /oauth2/introspect`, for the
//! resource servers and libraries that speak OAuth 2.0 rather than gRPC
//! (Spring Security's opaque tokens, Kong, Go and Python OAuth libraries).
//! The same verifier, cache and fail-closed rules as `Introspect`; the HTTP
//! server around it is `serve::http`.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::api::auth::Callers;
use crate::api::peer::PeerInfo;
use crate::domain::resource::Resource;
use crate::metrics::IntrospectOutcome;
use crate::verify::{Lane, Verifier};

/// The form field a trusted caller names its client's address in.
pub const CLIENT_IP_FIELD: &str = "client_ip";
/// Most fields a form may have (RFC 7662 needs two).
const MAX_FIELDS: usize = 16;

/// An HTTP answer: status, headers, JSON body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: StatusCode,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    pub body: String,
}

impl HttpAnswer {
    fn json(status: StatusCode, body: &Value) -> HttpAnswer {
        HttpAnswer {
            status,
            headers: vec![
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                // RFC 7662 §2.2 answers are about credentials: never cached.
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (header::PRAGMA, HeaderValue::from_static("no-cache")),
            ],
            body: body.to_string(),
        }
    }

    fn with(mut self, name: header::HeaderName, value: &'static str) -> HttpAnswer {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// An RFC 6749 §5.2 style error.
    pub fn error(status: StatusCode, error: &str, description: &str) -> HttpAnswer {
        HttpAnswer::json(
            status,
            &json!({ "error": error, "error_description": description }),
        )
    }
}

/// `application/x-www-form-urlencoded` fields, decoded; every name at most once
/// (RFC 6749 §3.1: parameters must not repeat).
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let mut fields: Vec<(String, String)> = Vec::new();
    for pair in text.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (percent_decode(name)?, percent_decode(value)?);
        if fields.iter().any(|(seen, _)| *seen == name) {
            return Err(format!("{name:?} is given more than once"));
        }
        if fields.len() == MAX_FIELDS {
            return Err(format!("more than {MAX_FIELDS} fields"));
        }
        fields.push((name, value));
    }
    Ok(fields)
}

/// `+` is a space, `%XX` a byte; the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(at + 1..at + 3)
                    // Two hex digits exactly (from_str_radix would take "+F").
                    .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| "a % is not followed by two hex digits".to_owned())?;
                out.push(hex);
                at += 2;
            }
            byte => out.push(byte),
        }
        at += 1;
    }
    String::from_utf8(out).map_err(|_| "a field is not UTF-8 once decoded".to_owned())
}

/// The trusted caller presenting `Authorization` (Bearer service credential,
/// or Basic with the caller's name and credential) or a client certificate.
fn trusted_caller<'a>(
    callers: &'a Callers,
    headers: &HeaderMap,
    peer: Option<&PeerInfo>,
) -> Option<&'a str> {
    if let Some(caller) = peer.and_then(|peer| callers.by_certificate(peer)) {
        return Some(caller);
    }
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return callers.by_credential(rest);
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, credential) = decoded.split_once(':')?;
    // RFC 6749 §2.3.1: both parts are form-encoded.
    let (name, credential) = (percent_decode(name).ok()?, percent_decode(credential).ok()?);
    callers
        .by_credential(&credential)
        .filter(|caller| *caller == name)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// `POST /oauth2/introspect`.
pub struct HttpIntrospection {
    verifier: Verifier,
    callers: Callers,
}

impl HttpIntrospection {
    pub fn new(verifier: Verifier, callers: Callers) -> HttpIntrospection {
        HttpIntrospection { verifier, callers }
    }

    /// Answers one request, whose body has been read (bounded) already.
    pub async fn answer(
        &self,
        method: &Method,
        headers: &HeaderMap,
        peer: Option<&PeerInfo>,
        body: &[u8],
    ) -> HttpAnswer {
        if method != Method::POST {
            return HttpAnswer::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "use POST",
            )
            .with(header::ALLOW, "POST");
        }
        let trusted = trusted_caller(&self.callers, headers, peer).is_some();
        if self.callers.introspection_needs_trust() && !trusted {
            return HttpAnswer::error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "this server answers only trusted callers: authenticate with HTTP Basic \
                 (the caller's name and its service credential), `Authorization: Bearer \
                 patdsvc_…`, or a trusted client certificate",
            )
            .with(
                header::WWW_AUTHENTICATE,
                r#"Basic realm="patd", Bearer realm="patd""#,
            );
        }
        if !is_form(headers) {
            return HttpAnswer::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "send the token as application/x-www-form-urlencoded (RFC 7662 §2.1)",
            );
        }
        let fields = match parse_form(body) {
            Ok(fields) => fields,
            Err(why) => {
                return HttpAnswer::error(StatusCode::BAD_REQUEST, "invalid_request", &why);
            }
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(field, _)| field == name)
                .map(|(_, value)| value.as_str())
        };
        let Some(token) = field("token").filter(|token| !token.is_empty()) else {
            return HttpAnswer::error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the token field is required",
            );
        };
        // `token_type_hint` is accepted and ignored: patd has one kind of token.
        let client = match field(CLIENT_IP_FIELD) {
            None | Some("") => None,
            Some(_) if !trusted => {
                return HttpAnswer::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_ip is accepted only from trusted callers",
                );
            }
            Some(text) => match text.trim().parse::<IpAddr>() {
                Ok(ip) => Some(ip.to_canonical()),
                Err(_) => {
                    return HttpAnswer::error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "client_ip is not an IPv4 or IPv6 address",
                    );
                }
            },
        };
        // RFC 8707's parameter name: the resource the client acts on (at most
        // one: parse_form refuses repeated fields).
        let resource = match field("resource").map(str::trim) {
            None | Some("") => None,
            Some(name) => match Resource::parse("resource", name) {
                Ok(resource) => Some(resource),
                Err(invalid) => {
                    return HttpAnswer::error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        &invalid.0,
                    );
                }
            },
        };
        let metrics = self.verifier.metrics();
        let token = match self.verifier.verify(token, Lane::Introspect, client).await {
            Ok(Ok(token)) => token,
            Ok(Err(reason)) => {
                tracing::debug!(?reason, "http introspect: inactive");
                metrics.record_introspect(reason.into());
                return HttpAnswer::json(StatusCode::OK, &json!({ "active": false }));
            }
            Err(err) => {
                // Fail closed, and say it is temporary.
                tracing::warn!(error = %err, "http introspect: storage unavailable");
                metrics.record_introspect(IntrospectOutcome::StorageError);
                return HttpAnswer::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "tokens cannot be checked now; retry later",
                )
                .with(header::RETRY_AFTER, "1");
            }
        };
        metrics.record_introspect(IntrospectOutcome::Active);
        let seconds = |micros: i64| micros.div_euclid(1_000_000);
        let mut answer = Map::new();
        answer.insert("active".into(), true.into());
        answer.insert("scope".into(), token.scopes.to_names().join(" ").into());
        answer.insert("token_type".into(), "Bearer".into());
        answer.insert("iat".into(), seconds(token.created_at).into());
        if let Some(at) = token.expires_at() {
            answer.insert("exp".into(), seconds(at).into());
        }
        answer.insert("sub".into(), token.subject().into());
        answer.insert("jti".into(), token.id().into());
        answer.insert("account".into(), token.account().into());
        answer.insert("name".into(), token.name().into());
        if !token.resources().is_empty() {
            answer.insert("resources".into(), token.resources().to_strings().into());
        }
        if let Some(resource) = resource {
            answer.insert(
                "resource_denied".into(),
                (!token.resources().allows(&resource)).into(),
            );
        }
        HttpAnswer::json(StatusCode::OK, &Value::Object(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_refuse_repeats_and_bad_escapes() {
        let fields = parse_form(b"token=patd_a%2Bb+c&token_type_hint=access_token&").unwrap();
        assert_eq!(
            fields,
            [
                ("token".to_owned(), "patd_a+b c".to_owned()),
                ("token_type_hint".to_owned(), "access_token".to_owned())
            ]
        );
        assert!(
            parse_form(b"token=a&token=b")
                .unwrap_err()
                .contains("more than once")
        );
        assert!(parse_form(b"token=%zz").is_err());
        assert!(parse_form(b"token=%4").is_err());
        assert!(parse_form(b"token=%+F").is_err(), "two hex digits, no sign");
        assert!(parse_form(b"token=%ff%fe").is_err(), "not UTF-8");
        assert!(parse_form(&[b't', 0xff]).is_err());
        assert_eq!(parse_form(b"").unwrap(), []);
        let many: String = (0..=MAX_FIELDS).map(|i| format!("f{i}=x&")).collect();
        assert!(parse_form(many.as_bytes()).is_err());
    }

    #[test]
    fn only_form_bodies_are_forms() {
        let mut headers = HeaderMap::new();
        assert!(!is_form(&headers));
        for (value, form) in [
            ("application/x-www-form-urlencoded", true),
            ("application/x-www-form-urlencoded; charset=UTF-8", true),
            ("Application/X-WWW-Form-Urlencoded", true),
            ("application/json", false),
            ("multipart/form-data", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_form(&headers), form, "{value}");
        }
    }
}
