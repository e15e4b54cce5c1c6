//! A gRPC service that answers UNAVAILABLE until the store is open and
//! the real service is put in ([`Gate::open`]); clients retry that.
//! Health (`grpc.health.v1`) is served from the start, beside the gates.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

/// A service that answers UNAVAILABLE until it is opened with the real
/// one (once the store is open).
pub(crate) struct Gate<S> {
    inner: Arc<OnceLock<S>>,
}

impl<S> Clone for Gate<S> {
    fn clone(&self) -> Self {
        Gate {
            inner: self.inner.clone(),
        }
    }
}

impl<S> Gate<S> {
    pub(crate) fn new() -> Self {
        Gate {
            inner: Arc::new(OnceLock::new()),
        }
    }

    /// From now on, requests go to `s`.
    pub(crate) fn open(&self, s: S) {
        let _ = self.inner.set(s);
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Gate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.inner.get() {
            Some(s) => Box::pin(tower::ServiceExt::oneshot(s.clone(), req)),
            None => Box::pin(async {
                Ok(tonic::Status::unavailable(
                    "the node is starting: its store is not open yet (try again shortly)",
                )
                .into_http())
            }),
        }
    }
}
