//! Tower middleware: `authorization: Bearer …` verified by an [`Authenticator`]
//! before the inner service sees the request, which then carries the
//! [`Principal`] in its extensions.
//!
//! One layer serves gRPC and HTTP: a gRPC request (`content-type:
//! application/grpc…`) is refused with `UNAUTHENTICATED` or
//! `PERMISSION_DENIED`, an HTTP request with 401 or 403 and a `WWW-Authenticate`
//! challenge (RFC 6750); patd unreachable is `UNAVAILABLE` / 503 (fail closed).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode, header};
use tonic::Status;

use crate::authenticator::{Authenticator, VerifyError};

/// Where a request's client address comes from (allowlisted tokens need it).
pub type ClientIp = fn(&http::request::Parts) -> Option<IpAddr>;

/// The client address in a request's extensions: tonic's `TcpConnectInfo`, or a
/// `SocketAddr` (axum: see [`AuthLayer::client_ip`] for `ConnectInfo`).
fn connection_address(parts: &http::request::Parts) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    if let Some(info) = parts.extensions.get::<TcpConnectInfo>() {
        return info.remote_addr().map(|addr| addr.ip());
    }
    if let Some(info) = parts.extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
        return info.get_ref().remote_addr().map(|addr| addr.ip());
    }
    if let Some(addr) = parts.extensions.get::<SocketAddr>() {
        return Some(addr.ip());
    }
    None
}

/// Requires a valid bearer token with `required_scopes` (per route or service).
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Authenticator,
    required: Arc<[String]>,
    client_ip: ClientIp,
}

impl AuthLayer {
    pub fn new<I, S>(authenticator: Authenticator, required_scopes: I) -> AuthLayer
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AuthLayer {
            authenticator,
            required: required_scopes.into_iter().map(Into::into).collect(),
            client_ip: connection_address,
        }
    }

    /// Takes the client's address from elsewhere, e.g. a header a trusted proxy
    /// sets (by default: the connection's peer address).
    pub fn client_ip(mut self, client_ip: ClientIp) -> AuthLayer {
        self.client_ip = client_ip;
        self
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project_lite::pin_project! {
    /// What [`AuthService`] returns: the inner service's own future when the
    /// answer was cached (no allocation, no clone of the inner service), a
    /// ready refusal, or a boxed future that asks patd first.
    #[project = AuthFutureProj]
    pub enum AuthFuture<F, R, E> {
        Passed { #[pin] future: F },
        Refused { response: Option<R> },
        Asking { future: BoxFuture<Result<R, E>> },
    }
}

impl<F, R, E> Future for AuthFuture<F, R, E>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthFutureProj::Passed { future } => future.poll(cx),
            AuthFutureProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            AuthFutureProj::Asking { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let grpc = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/grpc"));
        let bearer = match bearer_of(&parts.headers) {
            Ok(bearer) => bearer.to_owned(),
            Err(reason) => return refused(grpc, &Refusal::Unauthenticated(reason)),
        };
        let client_ip = (self.layer.client_ip)(&parts);
        let required: Vec<&str> = self.layer.required.iter().map(String::as_str).collect();
        let authenticator = &self.layer.authenticator;
        // The hot path, synchronously: a cached answer calls the inner service
        // that was polled ready, as it is.
        if let Some(answer) = authenticator.verify_cached(&bearer, &required, client_ip) {
            return match answer {
                Ok(principal) => {
                    parts.extensions.insert(principal);
                    AuthFuture::Passed {
                        future: self.inner.call(Request::from_parts(parts, body)),
                    }
                }
                Err(err) => refused(grpc, &self.layer.refusal(err)),
            };
        }
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        AuthFuture::Asking {
            future: Box::pin(async move {
                let required: Vec<&str> = layer.required.iter().map(String::as_str).collect();
                match layer
                    .authenticator
                    .verify(&bearer, &required, client_ip)
                    .await
                {
                    Ok(principal) => {
                        parts.extensions.insert(principal);
                        inner.call(Request::from_parts(parts, body)).await
                    }
                    Err(err) => Ok(refuse(grpc, &layer.refusal(err))),
                }
            }),
        }
    }
}

impl AuthLayer {
    fn refusal(&self, err: VerifyError) -> Refusal<'_> {
        match err {
            VerifyError::Inactive => Refusal::Unauthenticated("the bearer token is not active"),
            VerifyError::MissingScopes { missing, .. } => {
                Refusal::Forbidden(&self.required, missing)
            }
            // The layer checks no resource; a handler that does refuses alike.
            VerifyError::ResourceDenied { .. } => Refusal::Forbidden(&self.required, Vec::new()),
            VerifyError::Unavailable(_) => Refusal::Unavailable,
        }
    }
}

fn refused<F, B: Default, E>(grpc: bool, refusal: &Refusal<'_>) -> AuthFuture<F, Response<B>, E> {
    AuthFuture::Refused {
        response: Some(refuse(grpc, refusal)),
    }
}

/// The token of the one `authorization: Bearer …` header.
fn bearer_of(headers: &http::HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or("missing bearer token")?;
    if values.next().is_some() {
        return Err("more than one authorization header");
    }
    let value = value
        .to_str()
        .map_err(|_| "authorization is not printable ASCII")?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err("authorization must be `Bearer <token>`");
    }
    Ok(token.trim())
}

enum Refusal<'a> {
    Unauthenticated(&'static str),
    Forbidden(&'a [String], Vec<String>),
    Unavailable,
}

fn refuse<B: Default>(grpc: bool, refusal: &Refusal<'_>) -> Response<B> {
    if grpc {
        let status = match refusal {
            Refusal::Unauthenticated(reason) => Status::unauthenticated(*reason),
            Refusal::Forbidden(_, missing) => {
                Status::permission_denied(format!("the bearer token lacks {}", missing.join(", ")))
            }
            Refusal::Unavailable => {
                Status::unavailable("tokens cannot be checked now; retry later")
            }
        };
        return status.into_http();
    }
    let (code, challenge) = match refusal {
        // RFC 6750 §3: no error code when no token was sent at all.
        Refusal::Unauthenticated("missing bearer token") => (
            StatusCode::UNAUTHORIZED,
            r#"Bearer realm="patd""#.to_owned(),
        ),
        Refusal::Unauthenticated(_) => (
            StatusCode::UNAUTHORIZED,
            r#"Bearer realm="patd", error="invalid_token""#.to_owned(),
        ),
        Refusal::Forbidden(required, _) => (
            StatusCode::FORBIDDEN,
            format!(
                r#"Bearer realm="patd", error="insufficient_scope", scope="{}""#,
                required.join(" ")
            ),
        ),
        Refusal::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
    };
    let mut response = Response::new(B::default());
    *response.status_mut() = code;
    if !challenge.is_empty()
        && let Ok(value) = HeaderValue::from_str(&challenge)
    {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    if code == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
