//! Load shedding for the gRPC server: at most N Machine/Identity RPCs run at once across
//! all connections; beyond that a call is answered `Unavailable` at once instead of queueing
//! without bound. (`Unavailable` because MCM-style clients retry it after seconds;
//! tonic's built-in shedding answers `ResourceExhausted`, which they treat as an out-of-quota
//! cloud and retry only after ten minutes.) Health checks are never shed.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
}

impl ShedLayer {
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B, RB> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with("/grpc.health.") {
            return Box::pin(self.inner.call(request));
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = self.inner.call(request);
                Box::pin(async move {
                    let response = fut.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                tracing::warn!(path = request.uri().path(), "overloaded: shedding RPC");
                let status =
                    tonic::Status::unavailable("metal-driver is overloaded; retry shortly");
                let response = status.into_http::<RB>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
