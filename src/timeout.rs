//! `REQUEST_TIMEOUT`: a 503 when a request's response head takes too long.
//!
//! Our own rather than tower-http's `Timeout`, which polls its timer before
//! the service and so registers a timer with tokio (and cancels it) for every
//! request, including the many answered at their first poll. Here the timer
//! is created only once the service has had to wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Response, StatusCode};

/// Answers 503 Service Unavailable when the inner service's response takes
/// longer than the limit (to its head: a streamed body may take longer).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeoutLayer(pub(crate) Duration);

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            limit: self.0,
        }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Timeout<S> {
    inner: S,
    limit: Duration,
}

impl<S, Request, B> tower::Service<Request> for Timeout<S>
where
    S: tower::Service<Request, Response = Response<B>>,
    B: Default,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        TimeoutFuture {
            inner: self.inner.call(request),
            limit: self.limit,
            timer: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Timeout`].
    pub(crate) struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        limit: Duration,
        // Created at the first wait, so an answer ready at once costs no timer.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F, B, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(answer);
        }
        let limit = *this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        std::task::ready!(timer.as_mut().poll(cx));
        let mut late = Response::new(B::default());
        *late.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        Poll::Ready(Ok(late))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    fn taking(time: Duration) -> impl tower::Service<(), Response = Response<String>, Error = ()> {
        tower::service_fn(move |()| async move {
            tokio::time::sleep(time).await;
            Ok::<_, ()>(Response::new("done".to_owned()))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn late_answers_are_503_at_the_limit_and_timely_ones_pass() {
        let limit = Duration::from_secs(30);
        let started = tokio::time::Instant::now();
        let late = TimeoutLayer(limit)
            .layer(taking(limit * 2))
            .oneshot(())
            .await
            .unwrap();
        assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), limit);
        let timely = TimeoutLayer(limit)
            .layer(taking(limit - Duration::from_millis(1)))
            .oneshot(())
            .await
            .unwrap();
        assert_eq!(timely.into_body(), "done");
    }

    #[tokio::test]
    async fn an_answer_ready_at_once_creates_no_timer() {
        let instant = tower::service_fn(|()| async { Ok::<_, ()>(Response::new(String::new())) });
        let mut answer = Box::pin(
            TimeoutLayer(Duration::from_secs(30))
                .layer(instant)
                .call(()),
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(answer.as_mut().poll(&mut cx).is_ready());
        assert!(answer.timer.is_none(), "a timer for an immediate answer");

        let mut slow = Box::pin(
            TimeoutLayer(Duration::from_secs(30))
                .layer(taking(Duration::from_secs(1)))
                .call(()),
        );
        assert!(slow.as_mut().poll(&mut cx).is_pending());
        assert!(slow.timer.is_some(), "no timer for a request that waits");
    }
}
