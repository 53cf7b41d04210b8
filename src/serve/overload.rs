//! Load shedding: at most `limit` calls in flight across all connections; a call
//! beyond that is answered `RESOURCE_EXHAUSTED` at once instead of queueing into
//! collapse. Health checks are exempt, so that an overloaded replica is not also
//! killed by its liveness probe.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Debug)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
}

impl ShedLayer {
    pub fn new(limit: usize) -> ShedLayer {
        ShedLayer {
            permits: Arc::new(Semaphore::new(limit.max(1))),
        }
    }
}

impl ShedLayer {
    /// A permit for one call outside the gRPC stack (the HTTP listener shares
    /// the guard), or `None`: shed it.
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Shed<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ShedFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let exempt = request.uri().path().starts_with("/grpc.health.");
        let permit = if exempt {
            None
        } else {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let status = tonic::Status::resource_exhausted(
                        "server overloaded: too many calls in flight; retry with backoff",
                    );
                    return ShedFuture::Shed {
                        response: Some(status.into_http()),
                    };
                }
            }
        };
        ShedFuture::Admitted {
            inner: self.inner.call(request),
            _permit: permit,
        }
    }
}

pin_project! {
    /// The inner call holding its permit, or the immediate refusal.
    #[project = ShedProjection]
    pub enum ShedFuture<F, B> {
        Admitted { #[pin] inner: F, _permit: Option<OwnedSemaphorePermit> },
        Shed { response: Option<http::Response<B>> },
    }
}

impl<F, B, E> Future for ShedFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ShedProjection::Admitted { inner, .. } => inner.poll(cx),
            ShedProjection::Shed { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::convert::Infallible;
    use std::task::Waker;

    use tower::{Layer, Service};

    use super::*;

    /// Never answers: every admitted call stays in flight.
    pub(crate) struct Hang;

    impl Service<http::Request<()>> for Hang {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = std::future::Pending<Result<http::Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::pending()
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn grpc_status<F: Future<Output = Result<http::Response<()>, Infallible>>>(
        call: F,
    ) -> Option<String> {
        let mut call = std::pin::pin!(call);
        match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(response)) => Some(
                response.headers()["grpc-status"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            ),
            _ => None,
        }
    }

    #[test]
    fn calls_beyond_the_limit_are_refused_at_once_and_health_is_exempt() {
        let mut service = ShedLayer::new(2).layer(Hang);
        let first = service.call(request("/pat.v1.IntrospectionService/Introspect"));
        let second = service.call(request("/pat.v1.TokenService/ListTokens"));
        let refused = service.call(request("/pat.v1.IntrospectionService/Introspect"));
        assert_eq!(
            grpc_status(refused),
            Some("8".to_owned()),
            "RESOURCE_EXHAUSTED"
        );
        let health = service.call(request("/grpc.health.v1.Health/Check"));
        assert_eq!(grpc_status(health), None, "admitted: still in flight");
        drop(first);
        let admitted = service.call(request("/pat.v1.IntrospectionService/Introspect"));
        assert_eq!(
            grpc_status(admitted),
            None,
            "a finished call frees its permit"
        );
        drop(second);
    }
}
