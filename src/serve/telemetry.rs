//! Logging: the subscriber is built apart from being installed (tests install their
//! own), and a tower layer writes one line per call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::uri::PathAndQuery;
use pin_project_lite::pin_project;
use serde::Deserialize;
use tracing::Subscriber;

use crate::metrics::Metrics;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A subscriber writing to `writer` in `format`, filtered by `filter` (the
/// `RUST_LOG` syntax, e.g. `info` or `patd=debug,sqlx=warn`); colours only when
/// `ansi` (a terminal).
pub fn subscriber<W>(
    filter: &str,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Result<Box<dyn Subscriber + Send + Sync>, String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).map_err(|err| format!("invalid log filter: {err}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // If the log sink goes away (a closed pipe), keep serving: reporting the
        // failure on stderr would panic on that same closed pipe.
        .log_internal_errors(false)
        .with_writer(writer);
    Ok(match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    })
}

/// Logs one line per gRPC call (method, status code and latency) and counts it in
/// the metrics. Health checks, which probes send every few seconds, log at debug
/// level.
#[derive(Clone, Debug)]
pub struct CallLogLayer {
    metrics: Arc<Metrics>,
}

impl CallLogLayer {
    pub fn new(metrics: Arc<Metrics>) -> CallLogLayer {
        CallLogLayer { metrics }
    }
}

impl<S> tower::Layer<S> for CallLogLayer {
    type Service = CallLog<S>;

    fn layer(&self, inner: S) -> CallLog<S> {
        CallLog {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CallLog<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for CallLog<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = CallLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        CallLogFuture {
            method: request.uri().path_and_query().cloned(),
            started: Instant::now(),
            inner: self.inner.call(request),
            metrics: self.metrics.clone(),
            recorded: false,
        }
    }
}

pin_project! {
    pub struct CallLogFuture<F> {
        #[pin]
        inner: F,
        method: Option<PathAndQuery>,
        started: Instant,
        metrics: Arc<Metrics>,
        // Set once the call has been recorded.
        recorded: bool,
    }

    impl<F> PinnedDrop for CallLogFuture<F> {
        // A call dropped before it finished was cut off: by the call timeout, the
        // client's deadline, or a reset stream. Those matter most; record them.
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.recorded {
                let method = this.method.as_ref().map_or("", PathAndQuery::path);
                record(this.metrics, method, tonic::Code::Cancelled, this.started.elapsed());
            }
        }
    }
}

/// Counts and logs one finished call.
fn record(metrics: &Metrics, method: &str, code: tonic::Code, latency: std::time::Duration) {
    metrics.record_call(method, code, latency);
    let latency_us = latency.as_micros() as u64;
    if method.starts_with("/grpc.health.") {
        tracing::debug!(method, code = ?code, latency_us, "call");
    } else {
        tracing::info!(method, code = ?code, latency_us, "call");
    }
}

impl<F, ResBody, E> Future for CallLogFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let method = this.method.as_ref().map_or("", PathAndQuery::path);
        // Errors travel as a trailers-only response (grpc-status in the headers);
        // a unary call whose headers carry no status succeeded. (For streams this
        // is the status when the stream starts.)
        let code = match &result {
            Ok(response) => response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok()?.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32),
            Err(_) => tonic::Code::Unknown,
        };
        *this.recorded = true;
        record(this.metrics, method, code, this.started.elapsed());
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{Ready, ready};
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    use tower::{Layer, Service};

    use super::*;
    use crate::serve::overload::tests::Hang;

    /// Answers every request with the given `grpc-status` header, if any.
    struct Respond(Option<&'static str>);

    impl Service<http::Request<()>> for Respond {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = Ready<Result<http::Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut response = http::Response::new(());
            if let Some(code) = self.0 {
                response
                    .headers_mut()
                    .insert("grpc-status", code.parse().unwrap());
            }
            ready(Ok(response))
        }
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The log lines written while calling `path` on a service answering `status`.
    fn log_of_call(format: LogFormat, path: &str, status: Option<&'static str>) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber("info", format, false, move || writer.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let mut service = CallLogLayer::new(Arc::default()).layer(Respond(status));
            let request = http::Request::builder().uri(path).body(()).unwrap();
            let mut call = std::pin::pin!(service.call(request));
            let polled = call.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            assert!(polled.is_ready());
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn one_text_line_per_call_with_method_code_and_latency() {
        let log = log_of_call(LogFormat::Text, "/pat.v1.TokenService/GetToken", Some("5"));
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(
            log.contains("method=\"/pat.v1.TokenService/GetToken\""),
            "{log}"
        );
        assert!(
            log.contains("code=NotFound") && log.contains("latency_us="),
            "{log}"
        );
    }

    #[test]
    fn a_response_without_status_header_is_ok() {
        let log = log_of_call(
            LogFormat::Text,
            "/pat.v1.IntrospectionService/Introspect",
            None,
        );
        assert!(log.contains("code=Ok"), "{log}");
    }

    #[test]
    fn json_format_writes_one_object_per_line() {
        let log = log_of_call(
            LogFormat::Json,
            "/pat.v1.TokenService/ListTokens",
            Some("16"),
        );
        let line = log.lines().next().unwrap();
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        assert!(
            line.contains("\"method\":\"/pat.v1.TokenService/ListTokens\""),
            "{line}"
        );
        assert!(line.contains("\"code\":\"Unauthenticated\""), "{line}");
    }

    #[test]
    fn a_call_cut_off_before_it_finished_is_logged_and_counted_as_cancelled() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber =
            subscriber("info", LogFormat::Text, false, move || writer.clone()).unwrap();
        let metrics = Arc::new(Metrics::default());
        tracing::subscriber::with_default(subscriber, || {
            let mut service = CallLogLayer::new(metrics.clone()).layer(Hang);
            let request = http::Request::builder()
                .uri("/pat.v1.IntrospectionService/Introspect")
                .body(())
                .unwrap();
            let mut call = Box::pin(service.call(request));
            let polled = call.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            assert!(polled.is_pending());
            drop(call);
        });
        let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains("code=Cancelled"), "{log}");
        assert!(
            metrics.handled(
                "/pat.v1.IntrospectionService/Introspect",
                tonic::Code::Cancelled
            ) == 1
        );
    }

    #[test]
    fn health_checks_log_below_info() {
        assert_eq!(
            log_of_call(LogFormat::Text, "/grpc.health.v1.Health/Check", None),
            ""
        );
    }

    #[test]
    fn invalid_filter_is_refused() {
        assert!(subscriber("=[", LogFormat::Text, false, std::io::sink).is_err());
    }
}
