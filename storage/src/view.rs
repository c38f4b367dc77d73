//! The in-memory view of the replicated state: what every reader
//! (verification, admin reads) uses, and the log index it reflects.
//!
//! A voter's view is kept by its state machine, beside RocksDB. A stateless
//! front keeps one with no storage at all ([`StateView::detached`]),
//! applying the commands it follows with the same domain apply
//! ([`StateView::apply_followed`]).

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use gatehouse_domain::State;
use gatehouse_proto::events::Command;
use tokio::sync::watch;

/// The in-memory view every reader (verification, admin reads) uses, and the
/// index it reflects. Reads touch neither disk nor network.
#[derive(Clone)]
pub struct StateView {
    inner: Arc<ViewInner>,
}

struct ViewInner {
    state: RwLock<State>,
    applied: watch::Sender<u64>,
    snapshots: SnapshotStats,
}

/// What this node did with snapshots since it started (for metrics).
#[derive(Debug, Default)]
pub struct SnapshotStats {
    pub built: std::sync::atomic::AtomicU64,
    /// Total build time, in microseconds.
    pub build_micros: std::sync::atomic::AtomicU64,
    pub installed: std::sync::atomic::AtomicU64,
}

impl StateView {
    pub(crate) fn new(state: State, applied: u64) -> Self {
        StateView {
            inner: Arc::new(ViewInner {
                state: RwLock::new(state),
                applied: watch::Sender::new(applied),
                snapshots: SnapshotStats::default(),
            }),
        }
    }

    /// Read access to the state. Hold it briefly: apply waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The log index the view reflects.
    pub fn applied_index(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// Waits until the view reflects at least `index`; false on timeout.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&i| i >= index)).await.is_ok_and(|r| r.is_ok())
    }

    /// Snapshot counters since start.
    pub fn snapshot_stats(&self) -> &SnapshotStats {
        &self.inner.snapshots
    }

    /// A receiver that sees every change of the applied index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }
}

impl std::fmt::Debug for StateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateView").field("applied", &self.applied_index()).finish()
    }
}

impl StateView {
    /// A view kept in memory only (a front's), as `state` reflects `applied`.
    pub fn detached(state: State, applied: u64) -> StateView {
        StateView::new(state, applied)
    }

    /// Replaces the whole state (a snapshot installed), then says it
    /// reflects `applied`.
    pub fn replace(&self, state: State, applied: u64) {
        *self.write() = state;
        self.applied(applied);
    }

    /// Applies the commands of the entry at `index` to a detached view and
    /// says it reflects `index`; the projections' mutations are dropped
    /// (nothing is stored). Entries with nothing to apply just move the index.
    pub fn apply_followed(&self, index: u64, commands: &[Command]) {
        if !commands.is_empty() {
            let mut state = self.write();
            let mut dropped = Vec::new();
            for c in commands {
                state.apply(index, c, &mut dropped);
                dropped.clear();
            }
        }
        self.applied(index);
    }

    /// Says the view reflects `index` (after the state was changed).
    pub(crate) fn applied(&self, index: u64) {
        self.inner.applied.send_replace(index);
    }
}
