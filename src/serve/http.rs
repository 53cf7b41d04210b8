//! The HTTP listener (`http_listen`): RFC 7662 introspection at
//! `POST /oauth2/introspect`, forward auth at `/auth` (nginx, Caddy, Traefik)
//! and `GET /healthz`, over HTTP/1.1 or HTTP/2 (h2c, or `h2` over TLS), beside
//! the gRPC port and under the same in-flight guard. Bounded against slow or
//! greedy clients: header size (431), body size (413), the time to send
//! headers and body (408), a peer that stops reading, connection age, and the
//! number of connections; drained like gRPC at shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::server::HealthService;

use crate::api::forward_auth::{ForwardAuth, is_forward_auth};
use crate::api::oauth::{HttpAnswer, HttpIntrospection};
use crate::api::peer::{PeerInfo, canonical};
use crate::serve::overload::ShedLayer;
use crate::serve::tls::TlsReloader;
use crate::serve::write_deadline::WriteDeadline;

/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 1024;
/// Largest request head (request line and headers): beyond it, 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest body: beyond it, 413. A token form is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time a client has to send a request's headers (also while a kept-alive
/// connection sits idle), and then its body.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub const INTROSPECT_PATH: &str = "/oauth2/introspect";
pub const HEALTH_PATH: &str = "/healthz";

/// What every request needs.
pub struct HttpState {
    pub introspection: HttpIntrospection,
    pub forward_auth: ForwardAuth,
    pub health: HealthService,
    pub shed: ShedLayer,
}

/// Time a TLS client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a write may wait on a peer that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections are closed (gracefully) after this, so that clients behind a
/// Service rebalance across replicas and no connection lives for ever; then
/// the requests in flight have the grace to finish.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);
/// HTTP/2 (h2c or ALPN `h2`): streams per connection, pings for dead peers.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

type Builder = hyper_util::server::conn::auto::Builder<TokioExecutor>;

/// HTTP/1.1, or HTTP/2 when the client starts with its preface (h2c prior
/// knowledge, or `h2` negotiated by ALPN).
fn builder() -> Builder {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
    builder
}

/// Serves `listener` (with TLS from `tls` when set: the gRPC port's
/// certificate, client CA and reloads) until `stopping` turns true; then stops
/// accepting, lets every connection finish the requests it has begun (idle
/// ones close at once) and returns once all are closed. Dropping the task
/// closes every connection at once.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    state: Arc<HttpState>,
    mut stopping: watch::Receiver<bool>,
) {
    let builder = builder();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accept = async {
            // Held from accept to close, handshake included.
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            (slot, listener.accept().await)
        };
        let (slot, accepted) = tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => break,
            accepted = accept => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, say: back off rather than spin.
                tracing::warn!(error = %err, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (state, tls, builder) = (state.clone(), tls.clone(), builder.clone());
        let stopping = stopping.clone();
        connections.spawn(async move {
            let _slot = slot;
            let Some(tls) = tls else {
                let peer = PeerInfo::new(Some(canonical(remote)), None);
                return serve_connection(&builder, stream, state, peer, stopping).await;
            };
            // The gRPC port's settings, speaking HTTP here.
            let mut config = (*tls.config()).clone();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, %remote, "http: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let certs = stream.get_ref().1.peer_certificates().map(|chain| {
                Arc::new(chain.iter().map(|cert| cert.clone().into_owned()).collect())
            });
            let peer = PeerInfo::new(Some(canonical(remote)), certs);
            serve_connection(&builder, stream, state, peer, stopping).await;
        });
    }
    // Draining: no new connections; the open ones finish what they began.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<Io>(
    builder: &Builder,
    io: Io,
    state: Arc<HttpState>,
    peer: PeerInfo,
    mut stopping: watch::Receiver<bool>,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let remote = peer.remote_addr;
    let service = hyper::service::service_fn(move |request| {
        let (state, peer) = (state.clone(), peer.clone());
        async move { Ok::<_, Infallible>(respond(&state, &peer, request).await) }
    });
    let io = TokioIo::new(WriteDeadline::new(io, WRITE_TIMEOUT));
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => Some(ended),
        _ = stopping.wait_for(|stop| *stop) => None,
        () = tokio::time::sleep(MAX_CONNECTION_AGE) => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            // HTTP/1.1: `Connection: close` on the answer in progress, idle
            // connections at once; HTTP/2: GOAWAY, then the open streams finish.
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(MAX_CONNECTION_AGE_GRACE, connection).await {
                Ok(ended) => ended,
                Err(_) => return,
            }
        }
    };
    if let Err(err) = ended {
        tracing::debug!(error = %err, ?remote, "http: connection ended");
    }
}

fn plain(status: http::StatusCode, body: &str) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{body}\n"))))
        .expect("static response parts are valid")
}

fn into_response(answer: HttpAnswer) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = answer.status;
    for (name, value) in answer.headers {
        response.headers_mut().append(name, value);
    }
    response
}

async fn respond(
    state: &HttpState,
    peer: &PeerInfo,
    request: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let path = request.uri().path();
    if path == HEALTH_PATH {
        return health(state, request.method()).await;
    }
    if path != INTROSPECT_PATH && !is_forward_auth(path) {
        return plain(
            http::StatusCode::NOT_FOUND,
            "patd serves POST /oauth2/introspect, /auth and GET /healthz here",
        );
    }
    let overloaded = || {
        let mut response = plain(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "server overloaded: too many calls in flight; retry with backoff",
        );
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        response
    };
    if is_forward_auth(path) {
        let Some(_permit) = state.shed.try_admit() else {
            return overloaded();
        };
        // The body, if any, is the original request's: not patd's to read.
        let answer = state
            .forward_auth
            .answer(
                request.uri().query(),
                request.headers(),
                peer.remote_addr.map(|addr| addr.ip()),
            )
            .await;
        return into_response(answer);
    }
    let (parts, body) = request.into_parts();
    // The body first (bounded in size and time), the in-flight permit after:
    // a client that sends its body slowly holds an HTTP connection, never a
    // permit gRPC calls need.
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Some(_permit) = state.shed.try_admit() else {
        return overloaded();
    };
    let answer = state
        .introspection
        .answer(&parts.method, &parts.headers, Some(peer), &body)
        .await;
    into_response(answer)
}

/// The whole body, bounded in size and time.
async fn read_body(body: Incoming) -> Result<Bytes, http::Response<Full<Bytes>>> {
    let collect = Limited::new(body, MAX_BODY_BYTES).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(plain(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body exceeds {MAX_BODY_BYTES} bytes"),
        )),
        Ok(Err(_)) => Err(plain(
            http::StatusCode::BAD_REQUEST,
            "the body could not be read",
        )),
        Err(_) => Err(plain(
            http::StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        )),
    }
}

/// 200 only while the server reports SERVING (what gRPC health says of "").
async fn health(state: &HttpState, method: &http::Method) -> http::Response<Full<Bytes>> {
    if method != http::Method::GET && method != http::Method::HEAD {
        let mut response = plain(http::StatusCode::METHOD_NOT_ALLOWED, "use GET");
        response.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    let request = tonic::Request::new(HealthCheckRequest::default());
    let serving = state
        .health
        .check(request)
        .await
        .is_ok_and(|answer| answer.into_inner().status() == ServingStatus::Serving);
    if serving {
        plain(http::StatusCode::OK, "SERVING")
    } else {
        plain(http::StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING")
    }
}

/// For the log line at start.
pub fn describe(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}{INTROSPECT_PATH}")
}
