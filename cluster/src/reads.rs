//! Read indexes asked of someone else, and the proofs they give: a
//! follower asks its leader, a stateless front asks a voter. The rules are
//! the same either way (see [`crate::freshness`]): a read index asked at `t`
//! and applied here proves this node fresh as of `t`; read-your-writes waits
//! for an index asked after the request arrived; one ask is in flight at a
//! time and serves every caller that arrived before it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gatehouse_storage::StateView;
use tokio::sync::watch;

use crate::freshness::Freshness;

#[derive(Debug)]
pub(crate) struct Reads {
    /// One read-index request at a time; `last` (when it was asked, the
    /// index) serves every caller that arrived before it was asked.
    gate: tokio::sync::Mutex<()>,
    last: Mutex<Option<(Instant, u64)>>,
    /// Bumped whenever a proof of freshness is recorded.
    proofs: watch::Sender<u64>,
    /// Whether a probe started by a kick is running.
    kicked: AtomicBool,
}

impl Default for Reads {
    fn default() -> Self {
        Reads {
            gate: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            proofs: watch::channel(0).0,
            kicked: AtomicBool::new(false),
        }
    }
}

impl Reads {
    /// Records a read index asked for at `asked` as a freshness proof and
    /// wakes [`Reads::ensure_fresh`] waiters.
    pub(crate) fn proved(&self, freshness: &Freshness, view: &StateView, asked: Instant, index: u64) {
        freshness.record_read(asked, index, view.applied_index());
        self.proofs.send_modify(|n| *n += 1);
    }

    /// Brings `view` up to what the leader had committed when the call
    /// arrived (read your writes); false if that cannot be shown within
    /// `wait`. `ask` asks for a read index.
    pub(crate) async fn catch_up<F>(
        &self,
        freshness: &Freshness,
        view: &StateView,
        wait: Duration,
        ask: impl FnOnce() -> F,
    ) -> bool
    where
        F: Future<Output = Option<u64>>,
    {
        let arrived = Instant::now();
        // The wait covers the queue for the gate too: callers behind a
        // slow ask give up with it instead of asking again in turn.
        let asked = tokio::time::timeout(wait, async {
            let _one_at_a_time = self.gate.lock().await;
            let reuse = *self.last.lock().unwrap_or_else(|p| p.into_inner());
            match reuse {
                Some((asked, index)) if asked >= arrived => Some(index),
                _ => {
                    let asked = Instant::now();
                    let index = ask().await?;
                    *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((asked, index));
                    self.proved(freshness, view, asked, index);
                    Some(index)
                }
            }
        })
        .await;
        let Ok(Some(index)) = asked else { return false };
        view.wait_applied(index, wait.saturating_sub(arrived.elapsed())).await
    }

    /// Asks for a read index and records it as a proof (it counts once it
    /// is applied). Returns whether it was answered and applied here within
    /// `bound`: an answer this node cannot catch up to is no success.
    pub(crate) async fn probe<F>(&self, freshness: &Freshness, view: &StateView, bound: Duration, ask: F) -> bool
    where
        F: Future<Output = Option<u64>>,
    {
        let asked = Instant::now();
        // A probe that cannot finish within the bound proves nothing.
        let Ok(Some(index)) = tokio::time::timeout(bound, ask).await else { return false };
        let applied = view.wait_applied(index, bound.saturating_sub(asked.elapsed())).await;
        self.proved(freshness, view, asked, index);
        applied
    }

    /// Takes the one place of a kicked probe: false if one is running.
    pub(crate) fn take_kick(&self) -> bool {
        !self.kicked.swap(true, Ordering::AcqRel)
    }

    /// Gives the kicked probe's place back.
    pub(crate) fn kick_done(&self) {
        self.kicked.store(false, Ordering::Release);
    }

    /// `is_fresh()`, or, when the last proof has aged out, whether a new
    /// one arrives within `wait` after `kick` starts a probe. Waiters share
    /// one probe, so a node cut off answers every caller after that short
    /// wait instead of queueing them.
    pub(crate) async fn ensure_fresh(&self, is_fresh: impl Fn() -> bool, wait: Duration, kick: impl FnOnce()) -> bool {
        if is_fresh() {
            return true;
        }
        let mut proofs = self.proofs.subscribe();
        kick();
        let fresh = async {
            while proofs.changed().await.is_ok() {
                if is_fresh() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(wait, fresh).await;
        is_fresh()
    }
}
