//! Forward auth over HTTP (`/auth`, any method, any sub-path), for nginx
//! `auth_request`, Caddy `forward_auth` and Traefik `ForwardAuth`: the proxy
//! asks with the original request's headers; 200 lets it through, with the
//! caller's identity in `X-Patd-*` headers for the proxy to copy upstream.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::api::gate::{self, Gate};
use crate::api::oauth::{HttpAnswer, parse_form};
use crate::domain::cidr::CidrList;
use crate::verify::Verifier;

pub const PATH: &str = "/auth";
/// Scopes a route needs, as a trusted proxy may also name them (space or comma
/// separated); joined to the `scope` query parameter's.
pub const REQUIRED_SCOPES_HEADER: &str = "x-patd-required-scopes";
/// The resource (`type:id`) the request acts on, as a trusted proxy may name it
/// (else the `resource` query parameter).
pub const RESOURCE_HEADER: &str = "x-patd-resource";
pub const SUBJECT_HEADER: &str = "x-patd-subject";
pub const ACCOUNT_HEADER: &str = "x-patd-account";
pub const TOKEN_ID_HEADER: &str = "x-patd-token-id";
pub const SCOPES_HEADER: &str = "x-patd-scopes";

/// Whether `path` is forward auth's: `/auth` or below it.
pub fn is_forward_auth(path: &str) -> bool {
    path == PATH || path.starts_with("/auth/")
}

pub struct ForwardAuth {
    verifier: Verifier,
    /// Peers whose `X-Forwarded-For`, `X-Real-IP` and required-scopes header
    /// are believed; nobody's by default.
    trusted_proxies: CidrList,
}

fn names(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split([' ', ','])
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
}

impl ForwardAuth {
    pub fn new(verifier: Verifier, trusted_proxies: CidrList) -> ForwardAuth {
        ForwardAuth {
            verifier,
            trusted_proxies,
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.allows(ip)
    }

    /// The client's address: from a trusted proxy, the rightmost
    /// `X-Forwarded-For` entry that is not itself a trusted proxy (or
    /// `X-Real-IP`); otherwise the peer itself.
    fn client(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|entry| entry.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()))
            .collect::<Result<_, _>>()
            .ok()?;
        if let Some(client) = forwarded.iter().rev().find(|ip| !self.trusts(**ip)) {
            return Some(*client);
        }
        if let Some(real) = headers
            .get("x-real-ip")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<IpAddr>().ok())
        {
            return Some(real.to_canonical());
        }
        // Only trusted proxies on the way: the first of them saw the client.
        forwarded.first().copied().or(Some(peer))
    }

    /// Decides one request (its query, the original request's headers, the
    /// immediate peer).
    pub async fn answer(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> HttpAnswer {
        // The required scopes are the proxy's configuration, never the
        // client's: the query of the auth URI, and the header only from a
        // trusted proxy (which sets it; a client's copy is ignored otherwise).
        let fields = match parse_form(query.unwrap_or("").as_bytes()) {
            Ok(fields) => fields,
            Err(why) => return misconfigured(&format!("the auth URI's query: {why}")),
        };
        let mut required: Vec<String> = fields
            .iter()
            .filter(|(name, _)| name == "scope")
            .flat_map(|(_, list)| names(list).collect::<Vec<_>>())
            .collect();
        let mut resources: Vec<String> = fields
            .into_iter()
            .filter(|(name, _)| name == "resource")
            .map(|(_, resource)| resource)
            .collect();
        let from_trusted = peer.is_some_and(|peer| self.trusts(peer));
        for name in [REQUIRED_SCOPES_HEADER, RESOURCE_HEADER] {
            if !from_trusted && headers.contains_key(name) {
                // A proxy that names scopes or the resource in a header but is
                // not trusted would otherwise protect its routes with less
                // than it asks: fail closed. (A client sending one itself
                // only denies itself.)
                return misconfigured(&format!("{name} came from a peer not in trusted_proxies"));
            }
        }
        if from_trusted && resources.is_empty() {
            for value in headers.get_all(RESOURCE_HEADER) {
                let Ok(resource) = value.to_str() else {
                    return misconfigured("X-Patd-Resource is not ASCII");
                };
                resources.push(resource.trim().to_owned());
            }
        }
        if from_trusted {
            for value in headers.get_all(REQUIRED_SCOPES_HEADER) {
                let Ok(list) = value.to_str() else {
                    return misconfigured("X-Patd-Required-Scopes is not ASCII");
                };
                required.extend(names(list));
            }
        }
        let values: Vec<&str> = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .map(|value| value.to_str().unwrap_or("\u{fffd}"))
            .collect();
        let client = self.client(headers, peer);
        let needs = gate::Needs {
            scopes: &required,
            resources: &resources,
        };
        let gate = gate::decide(&self.verifier, &values, needs, client).await;
        self.verifier.metrics().record_check(gate.check());
        let challenge = match gate {
            // No credential at all is `invalid_request` here, as the proxies'
            // users expect (Envoy's Check sends RFC 6750's bare challenge).
            Gate::NoCredential => Some(format!("{}, error=\"invalid_request\"", gate::REALM)),
            _ => gate.challenge(),
        };
        let mut answer = match gate {
            Gate::Allowed(token) => {
                let mut answer = plain(StatusCode::OK, "");
                for (name, value) in [
                    (SUBJECT_HEADER, token.subject().to_owned()),
                    (ACCOUNT_HEADER, token.account().to_owned()),
                    (TOKEN_ID_HEADER, token.id().to_owned()),
                    (SCOPES_HEADER, token.scopes.to_names().join(" ")),
                ] {
                    // Subjects and accounts are checked text: always valid here.
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        answer
                            .headers
                            .push((header::HeaderName::from_static(name), value));
                    }
                }
                answer
            }
            // One body for every 401: the challenge says what kind.
            Gate::NoCredential | Gate::BadCredential(_) | Gate::Inactive(_) => plain(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required\n",
            ),
            Gate::MissingScopes(_, missing) => plain(
                StatusCode::FORBIDDEN,
                &format!(
                    "the token lacks the required scopes: {}\n",
                    missing.to_names().join(", ")
                ),
            ),
            Gate::ResourceDenied(_, resource) => plain(
                StatusCode::FORBIDDEN,
                &format!("the token is not allowed on the resource {resource}\n"),
            ),
            Gate::Misconfigured(why) => return misconfigured(&why),
            Gate::Unavailable(err) => {
                tracing::warn!(error = %err, "forward auth: storage unavailable");
                let mut answer = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tokens cannot be checked now; retry later\n",
                );
                answer
                    .headers
                    .push((header::RETRY_AFTER, HeaderValue::from_static("1")));
                answer
            }
        };
        if let Some(value) = challenge.and_then(|challenge| HeaderValue::from_str(&challenge).ok())
        {
            answer.headers.push((header::WWW_AUTHENTICATE, value));
        }
        answer
    }
}

fn plain(status: StatusCode, body: &str) -> HttpAnswer {
    HttpAnswer {
        status,
        headers: vec![
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body: body.to_owned(),
    }
}

/// The asking proxy's configuration names something patd does not know: fail
/// closed, loudly (400 to the proxy, which denies; logged), rather than guess.
fn misconfigured(why: &str) -> HttpAnswer {
    tracing::error!(why, "forward auth: misconfigured");
    plain(
        StatusCode::BAD_REQUEST,
        &format!("forward auth is misconfigured: {why}\n"),
    )
}
