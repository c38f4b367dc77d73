//! The Raft state machine: applies committed entries to the domain [`State`]
//! and its projections, builds and installs snapshots.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use gatehouse_domain::{codec, Mutation, State, Table};
use gatehouse_proto::events::CommandResult;
use gatehouse_proto::raft as pb;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch};
use tokio::sync::watch;

use crate::convert::{log_id_from_pb, log_id_to_pb, stored_membership_from_pb, stored_membership_to_pb};
use crate::db::{meta, Storage, CF_META};
use crate::snapshot::{self, SnapshotFile};
use crate::types::{Entry, LogId, RaftStorageError, SnapshotMeta, StoredMembership, TypeConfig};
use crate::StorageError;

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
    fn new(state: State, applied: u64) -> Self {
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

    fn write(&self) -> RwLockWriteGuard<'_, State> {
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

/// The state machine handed to openraft.
#[derive(Debug)]
pub struct StateMachine {
    storage: Storage,
    view: StateView,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

impl StateMachine {
    /// Loads the projections into a fresh view: the node resumes from
    /// `last_applied` without replaying the log.
    pub(crate) fn open(storage: Storage) -> Result<Self, StorageError> {
        snapshot::clean_incoming(&storage);
        let mut state = State::default();
        for table in Table::ALL.into_iter().filter(|t| t.in_view()) {
            for item in storage.db.iterator_cf(storage.table(table), IteratorMode::Start) {
                let (_, value) = item?;
                state
                    .load(table, &value)
                    .map_err(|e| StorageError::Corrupt { table: table.name(), reason: e.to_string() })?;
            }
        }
        state.finish_load();
        let corrupt = |e: &dyn std::fmt::Display| StorageError::Corrupt { table: CF_META, reason: e.to_string() };
        let last_applied = storage.get_meta::<pb::LogId>(meta::LAST_APPLIED)?.as_ref().map(log_id_from_pb);
        let last_membership = match storage.get_meta::<pb::StoredMembership>(meta::LAST_MEMBERSHIP)? {
            Some(m) => stored_membership_from_pb(&m).map_err(|e| corrupt(&e))?,
            None => StoredMembership::default(),
        };
        let view = StateView::new(state, last_applied.map_or(0, |l| l.index));
        Ok(StateMachine { storage, view, last_applied, last_membership })
    }

    /// The shared view for readers.
    pub fn view(&self) -> StateView {
        self.view.clone()
    }
}

/// The span of one entry's apply. When commands carry their proposer's
/// trace context (only while traces are exported), the span is kept at info
/// and linked to each of those requests; otherwise it is a debug span.
fn apply_span(index: u64, batch: &gatehouse_domain::CommandBatch) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let traced: Vec<&str> =
        batch.commands.iter().map(|c| c.traceparent.as_str()).filter(|t| !t.is_empty() && t.len() <= 64).collect();
    if traced.is_empty() {
        return tracing::debug_span!("apply", index, commands = batch.commands.len());
    }
    let span = tracing::info_span!("apply", index, commands = batch.commands.len());
    for t in traced {
        let carrier = std::collections::HashMap::from([("traceparent".to_string(), t.to_string())]);
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
        let linked = cx.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
    span
}

/// Builds snapshots off the apply path, from a RocksDB point-in-time view.
pub struct SnapshotBuilder {
    storage: Storage,
    view: StateView,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    #[tracing::instrument(level = "info", name = "snapshot.build", skip(self))]
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let storage = self.storage.clone();
        let started = std::time::Instant::now();
        let (meta, file) = tokio::task::spawn_blocking(move || snapshot::build(&storage))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let stats = self.view.snapshot_stats();
        stats.built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.build_micros.fetch_add(started.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResult>>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let mut mutations = Vec::new();
        let mut last = self.last_applied;
        let mut membership_changed = false;
        for entry in entries {
            let index = entry.log_id.index;
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Vec::new()),
                EntryPayload::Normal(batch) => {
                    let _span = apply_span(index, &batch).entered();
                    // Audit chaining (a hash per record) runs beside the
                    // readers; the write lock is held only to install it.
                    // Only apply writes, so nothing changes in between.
                    let mut prepared = self.view.read().prepare(&batch.commands).into_iter();
                    let mut state = self.view.write();
                    let applied = batch
                        .commands
                        .iter()
                        .map(|c| state.apply_prepared(index, c, prepared.next().unwrap_or_default(), &mut mutations));
                    replies.push(applied.collect());
                }
                EntryPayload::Membership(m) => {
                    tracing::info!(index, membership = ?m, "membership applied");
                    self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    membership_changed = true;
                    replies.push(Vec::new());
                }
            }
        }
        let Some(last) = last else { return Ok(replies) };
        let mut batch = WriteBatch::default();
        for m in mutations {
            match m {
                Mutation::Put { table, key, value } => batch.put_cf(self.storage.table(table), key, value),
                Mutation::Delete { table, key } => batch.delete_cf(self.storage.table(table), key),
                Mutation::DeleteRange { table, from, to } => batch.delete_range_cf(self.storage.table(table), from, to),
            }
        }
        let meta_cf = self.storage.cf(CF_META);
        batch.put_cf(meta_cf, meta::LAST_APPLIED, codec::encode(&log_id_to_pb(&last)));
        if membership_changed {
            batch.put_cf(
                meta_cf,
                meta::LAST_MEMBERSHIP,
                codec::encode(&stored_membership_to_pb(&self.last_membership)),
            );
        }
        // Projections and last_applied in one batch: after a crash the node
        // resumes exactly where this batch left it. Not synced here: the
        // durable log can rebuild it, and `purge` syncs the WAL before it
        // deletes entries.
        self.storage.db.write(batch).map_err(|e| StorageIOError::apply(last, &e))?;
        self.last_applied = Some(last);
        self.view.inner.applied.send_replace(last.index);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { storage: self.storage.clone(), view: self.view.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, RaftStorageError> {
        let file = snapshot::incoming(&self.storage).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    #[tracing::instrument(level = "info", name = "snapshot.install", skip_all, fields(snapshot_id = %meta.snapshot_id))]
    async fn install_snapshot(&mut self, meta: &SnapshotMeta, file: Box<SnapshotFile>) -> Result<(), RaftStorageError> {
        let storage = self.storage.clone();
        let m = meta.clone();
        let f = (*file).clone();
        let state = tokio::task::spawn_blocking(move || snapshot::install(&storage, &m, &f))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        if file.path.extension().is_some_and(|x| x == "part") {
            let _ = std::fs::remove_file(&file.path);
        }
        *self.view.write() = state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.view.inner.applied.send_replace(meta.last_log_id.map_or(0, |l| l.index));
        self.view.snapshot_stats().installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let cur = snapshot::current(&self.storage).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(cur.map(|(meta, file)| Snapshot { meta, snapshot: Box::new(file) }))
    }
}
