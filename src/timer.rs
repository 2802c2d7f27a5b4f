//! The timer hyper uses for the header-read timeout, at a small cost per request.
//!
//! hyper asks its timer for a new sleep each time a connection starts waiting
//! for a request head, and drops it when the head arrives. With hyper-util's
//! `TokioTimer` that is an allocation, an insert into tokio's timer wheel and
//! a removal from it on every request: about a tenth of the instructions a
//! `/health` request costs (bench/run.sh, callgrind).
//!
//! The deadlines of one connection only move forward, so [`ConnectionTimer`]
//! keeps one tokio sleep per connection, the *alarm*, and moves it only when
//! it rings before the deadline now being waited for: at most once per
//! timeout period instead of once per request. Each sleep still completes at
//! its own deadline, never before, and the connection is woken then; the cost
//! is at most one early wake-up per period, which finds nothing to do.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A [`hyper::rt::Timer`] for one connection; create one per connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionTimer {
    alarm: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl ConnectionTimer {
    pub(crate) fn new() -> Self {
        Self::default()
    }
}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ConnectionSleep {
            deadline,
            alarm: Arc::clone(&self.alarm),
        })
    }
}

/// One sleep until `deadline`, woken by the connection's shared alarm.
struct ConnectionSleep {
    deadline: Instant,
    alarm: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Future for ConnectionSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        // Only the connection's own task polls its sleeps: the lock is never contended.
        let mut alarm = self.alarm.lock().unwrap_or_else(PoisonError::into_inner);
        let alarm = alarm.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if alarm.deadline() > deadline {
            // An earlier deadline than the alarm's (not expected on one
            // connection, but a sleep must never complete late).
            alarm.as_mut().reset(deadline);
        }
        loop {
            match alarm.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if alarm.deadline() >= deadline => return Poll::Ready(()),
                // The alarm rang for an earlier sleep: move it to this deadline.
                Poll::Ready(()) => alarm.as_mut().reset(deadline),
            }
        }
    }
}

impl hyper::rt::Sleep for ConnectionSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[tokio::test]
    async fn each_sleep_ends_at_its_own_deadline() {
        let timer = ConnectionTimer::new();
        let start = Instant::now();
        // The alarm is first armed for the short sleep and rings early for
        // the long one, which must keep waiting until its own deadline.
        timer.sleep(Duration::from_millis(20)).await;
        assert!(start.elapsed() >= Duration::from_millis(20));
        timer.sleep(Duration::from_millis(80)).await;
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn an_earlier_deadline_than_the_alarm_is_kept() {
        let timer = ConnectionTimer::new();
        let long = timer.sleep(Duration::from_secs(600));
        // Arms the alarm for ten minutes; the next sleep must not wait for it.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), long)
                .await
                .is_err()
        );
        let start = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(10),
            timer.sleep(Duration::from_millis(20)),
        )
        .await
        .expect("a 20 ms sleep ends long before the alarm's ten minutes");
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
