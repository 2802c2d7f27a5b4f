//! Racing a busy future against a rarely-ready one, without polling the
//! rare one on every wake-up of the busy one.
//!
//! A connection's task is woken for every request; its watchers (the stop,
//! the header-read deadline) almost never have anything to say. In
//! `tokio::select!` they share the task's waker, so each wake-up polls them
//! all again: about 570 instructions of a `/health` request's 16,000 under
//! callgrind (bench/run.sh). [`select_lazily`] gives the watcher a waker of
//! its own and polls it only after that waker fired, so a wake-up that is
//! not the watcher's costs one atomic load.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Which side of [`select_lazily`] finished first.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Either<A, B> {
    /// The busy future.
    Busy(A),
    /// The watcher.
    Watcher(B),
}

/// Completes with whichever of `busy` and `watcher` completes first (`busy`
/// when both are ready). `busy` is polled on every wake-up; `watcher` on the
/// first poll and then only when it was woken itself.
pub(crate) async fn select_lazily<A: Future, B: Future>(
    busy: A,
    watcher: B,
) -> Either<A::Output, B::Output> {
    let mut busy = pin!(busy);
    let mut watcher = pin!(watcher);
    let watcher_wake = Arc::new(WatcherWake {
        // Set, so that the first poll registers the watcher.
        fired: AtomicBool::new(true),
        task: Mutex::new(None),
    });
    let watcher_waker = Waker::from(Arc::clone(&watcher_wake));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = busy.as_mut().poll(cx) {
            return Poll::Ready(Either::Busy(output));
        }
        if watcher_wake.take(cx.waker()) {
            let mut watcher_cx = Context::from_waker(&watcher_waker);
            if let Poll::Ready(output) = watcher.as_mut().poll(&mut watcher_cx) {
                return Poll::Ready(Either::Watcher(output));
            }
        }
        Poll::Pending
    })
    .await
}

/// The watcher's own waker: it records that the watcher has something to
/// say, then wakes the task.
#[derive(Debug)]
struct WatcherWake {
    fired: AtomicBool,
    /// The task to wake; set on the first poll, replaced only if the task's
    /// waker changes.
    task: Mutex<Option<Waker>>,
}

impl Wake for WatcherWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl WatcherWake {
    /// Whether the watcher was woken since the last call; if so, clears that
    /// and makes sure its next wake-up reaches the task polling us now.
    fn take(&self, task: &Waker) -> bool {
        if !self.fired.load(Ordering::Acquire) {
            return false;
        }
        {
            let mut stored = self.task.lock().unwrap_or_else(PoisonError::into_inner);
            if !stored.as_ref().is_some_and(|known| known.will_wake(task)) {
                *stored = Some(task.clone());
            }
        }
        // Cleared before the watcher is polled: a wake-up during that poll
        // sets it again, and is not lost.
        self.fired.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::sync::{mpsc, oneshot};

    /// A watcher that counts its polls and completes when `done` fires.
    async fn counted_watcher(polls: &AtomicUsize, done: oneshot::Receiver<()>) -> &'static str {
        let mut done = pin!(done);
        std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            done.as_mut().poll(cx).map(|_| "watcher")
        })
        .await
    }

    /// Completes after receiving `count` messages, each a separate wake-up.
    async fn busy_reader(mut messages: mpsc::Receiver<()>, count: usize) -> &'static str {
        for _ in 0..count {
            messages.recv().await;
        }
        "busy"
    }

    #[tokio::test]
    async fn the_watcher_is_not_polled_for_the_busy_futures_wake_ups() {
        let (send, receive) = mpsc::channel(1);
        let polls = AtomicUsize::new(0);
        let (_keep_watcher_pending, done) = oneshot::channel();
        let sender = tokio::spawn(async move {
            for _ in 0..100 {
                send.send(()).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            select_lazily(busy_reader(receive, 100), counted_watcher(&polls, done)),
        )
        .await
        .expect("the busy future finishes");
        sender.await.unwrap();
        assert_eq!(outcome, Either::Busy("busy"));
        // Only the first poll, which registers it; tokio::select! would have
        // polled it on each of the 100 wake-ups.
        assert_eq!(polls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_wake_up_of_the_watcher_is_seen_while_the_busy_future_waits() {
        let polls = AtomicUsize::new(0);
        let (fire, done) = oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = fire.send(());
        });
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            select_lazily(
                std::future::pending::<&str>(),
                counted_watcher(&polls, done),
            ),
        )
        .await
        .expect("the watcher's wake-up reaches the task");
        assert_eq!(outcome, Either::Watcher("watcher"));
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_in_the_watcher_fires_on_time() {
        let started = tokio::time::Instant::now();
        let outcome = select_lazily(
            std::future::pending::<()>(),
            tokio::time::sleep(Duration::from_secs(10)),
        )
        .await;
        assert_eq!(outcome, Either::Watcher(()));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn the_busy_future_wins_a_tie() {
        let outcome = select_lazily(async { 1 }, async { 2 }).await;
        assert_eq!(outcome, Either::Busy(1));
    }
}
