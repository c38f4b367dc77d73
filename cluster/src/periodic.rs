//! One way to run a node's periodic work, and the node's one shutdown
//! signal: the consensus loops (election pacing, freshness probes), the
//! last-use flush, the audit flush and retention, the rate-limit sync.
//!
//! A [`Periodic`] runs its step every period (and at once when woken),
//! stops when the node shuts down or the step says so, and may run a last
//! step on the way out, bounded by a grace period. A late tick is not made
//! up with a burst.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// The node's shutdown signal, as every task sees it (after mini-redis's
/// `Shutdown`): cheap to clone, and once sent it stays sent.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// What starts a shutdown; dropping it starts one too.
#[derive(Debug)]
pub struct ShutdownSender(watch::Sender<bool>);

impl ShutdownSender {
    pub fn new() -> ShutdownSender {
        ShutdownSender(watch::channel(false).0)
    }

    /// A signal for one more task.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }

    /// Tells every task to stop.
    pub fn send(&self) {
        self.0.send_replace(true);
    }
}

impl Default for ShutdownSender {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the node shuts down (or whoever could tell it to is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}

/// A task that runs a step every period until the node shuts down.
pub struct Periodic {
    name: &'static str,
    period: Duration,
    first_at_once: bool,
    wake: Option<Arc<Notify>>,
    shutdown: Shutdown,
}

impl Periodic {
    /// Every `period`, starting one period from now.
    pub fn every(name: &'static str, period: Duration, shutdown: Shutdown) -> Periodic {
        Periodic { name, period, first_at_once: false, wake: None, shutdown }
    }

    /// The first step runs at once rather than one period from now.
    pub fn starting_now(mut self) -> Periodic {
        self.first_at_once = true;
        self
    }

    /// Also runs a step as soon as `wake` is notified (a full buffer).
    pub fn woken_by(mut self, wake: Arc<Notify>) -> Periodic {
        self.wake = Some(wake);
        self
    }

    /// Runs `step` until shutdown, or until a step returns false.
    pub fn run<F, Fut>(self, step: F) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        self.run_then(step, Duration::ZERO, || async {})
    }

    /// [`Periodic::run`], then `last` once the node shuts down, for at most
    /// `grace` (a final flush; not run when a step ended the task).
    pub fn run_then<F, Fut, L, LFut>(mut self, mut step: F, grace: Duration, last: L) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
        L: FnOnce() -> LFut + Send + 'static,
        LFut: Future<Output = ()> + Send,
    {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            if !self.first_at_once {
                tick.tick().await;
            }
            let wake = self.wake.clone();
            let woken = || async {
                match &wake {
                    Some(w) => w.notified().await,
                    None => std::future::pending().await,
                }
            };
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = woken() => {}
                    _ = self.shutdown.wait() => break,
                }
                if self.shutdown.is_shutdown() {
                    break;
                }
                if !step().await {
                    tracing::debug!(task = self.name, "periodic task ended");
                    return;
                }
            }
            if !grace.is_zero() && tokio::time::timeout(grace, last()).await.is_err() {
                tracing::warn!(task = self.name, ?grace, "last step on shutdown did not finish in time");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Waits (up to 10 s) until `count` reaches `n`.
    async fn reaches(count: &AtomicU32, n: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while count.load(Ordering::SeqCst) < n {
            assert!(tokio::time::Instant::now() < deadline, "never reached {n}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn runs_every_period_and_once_more_on_the_way_out() {
        let stop = ShutdownSender::new();
        let (steps, lasts) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (s, l) = (steps.clone(), lasts.clone());
        let task = Periodic::every("test", Duration::from_millis(10), stop.subscribe()).run_then(
            move || {
                s.fetch_add(1, Ordering::SeqCst);
                async { true }
            },
            Duration::from_secs(1),
            move || async move {
                l.fetch_add(1, Ordering::SeqCst);
            },
        );
        reaches(&steps, 3).await;
        stop.send();
        let at_signal = steps.load(Ordering::SeqCst);
        task.await.unwrap();
        assert_eq!(lasts.load(Ordering::SeqCst), 1, "the last step ran once");
        assert_eq!(steps.load(Ordering::SeqCst), at_signal, "no step after the signal");
    }

    #[tokio::test]
    async fn a_wake_runs_a_step_at_once_and_a_false_step_ends_the_task() {
        let stop = ShutdownSender::new();
        let wake = Arc::new(Notify::new());
        let steps = Arc::new(AtomicU32::new(0));
        let s = steps.clone();
        let task = Periodic::every("test", Duration::from_secs(3600), stop.subscribe()).woken_by(wake.clone()).run(
            move || {
                let n = s.fetch_add(1, Ordering::SeqCst) + 1;
                async move { n < 2 }
            },
        );
        wake.notify_one();
        reaches(&steps, 1).await;
        wake.notify_one();
        // Ended by its own step, an hour before its first period.
        task.await.unwrap();
        assert_eq!(steps.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_dropped_sender_stops_every_task() {
        let stop = ShutdownSender::new();
        let task = Periodic::every("test", Duration::from_secs(3600), stop.subscribe()).run(|| async { true });
        drop(stop);
        task.await.unwrap();
    }
}
