//! The Raft state machine: applies committed entries to the domain [`State`]
//! and its projections (and the in-memory [`StateView`]), builds and installs snapshots.

use std::sync::Arc;

use gatehouse_domain::{codec, State, Table};
use gatehouse_proto::events::CommandResult;
use gatehouse_proto::raft as pb;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use rocksdb::IteratorMode;

use crate::background::{self, Background};
use crate::convert::{log_id_from_pb, log_id_to_pb, stored_membership_from_pb, stored_membership_to_pb};
use crate::db::{meta, Storage, CF_META};
use crate::snapshot;
use crate::types::{Entry, LogId, RaftStorageError, SnapshotFile, SnapshotMeta, StoredMembership, TypeConfig};
use crate::view::StateView;
use crate::StorageError;

/// The state machine handed to openraft.
#[derive(Debug)]
pub struct StateMachine {
    storage: Storage,
    view: StateView,
    /// Where heavy applies run (see [`crate::background`]).
    background: Arc<Background>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

impl StateMachine {
    /// Loads the projections into a fresh view: the node resumes from
    /// `last_applied` without replaying the log.
    pub(crate) fn open(storage: Storage, background: Arc<Background>) -> Result<Self, StorageError> {
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
        let (cluster, known) = (state.cluster_version(), gatehouse_domain::version::COMMAND_VERSION);
        if cluster > known {
            return Err(gatehouse_domain::version::Unsupported { cluster, known }.into());
        }
        let corrupt = |e: &dyn std::fmt::Display| StorageError::Corrupt { table: CF_META, reason: e.to_string() };
        let last_applied = storage.get_meta::<pb::LogId>(meta::LAST_APPLIED)?.as_ref().map(log_id_from_pb);
        let last_membership = match storage.get_meta::<pb::StoredMembership>(meta::LAST_MEMBERSHIP)? {
            Some(m) => stored_membership_from_pb(&m).map_err(|e| corrupt(&e))?,
            None => StoredMembership::default(),
        };
        let view = StateView::new(state, last_applied.map_or(0, |l| l.index));
        Ok(StateMachine { storage, view, background, last_applied, last_membership })
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

/// What applying a run of entries produced.
struct Applied {
    replies: Vec<Vec<CommandResult>>,
    /// The last entry applied, if there was any.
    last: Option<LogId>,
    /// The membership the run applied last, if it carried one.
    membership: Option<StoredMembership>,
}

/// Applies `entries` to the view and writes their projections with
/// `last_applied` in one batch. Heavy runs go to the storage threads.
fn apply_entries(storage: &Storage, view: &StateView, mut entries: Vec<Entry>) -> Result<Applied, RaftStorageError> {
    // A cluster version beyond this build: the entries before it are
    // applied and stored, then apply stops there (Raft stops with the
    // error) rather than apply what the other nodes understand and this
    // one does not. Found before anything is applied: the view never holds
    // what storage does not.
    let beyond = entries.iter().enumerate().find_map(|(i, e)| match &e.payload {
        EntryPayload::Normal(batch) => batch
            .commands
            .iter()
            .find_map(|c| gatehouse_domain::version::understood(c).err())
            .map(|err| (i, e.log_id, err)),
        _ => None,
    });
    if let Some((i, log_id, err)) = beyond {
        entries.truncate(i);
        apply_entries(storage, view, entries)?;
        tracing::error!(index = log_id.index, error = %err, "cannot apply this entry");
        return Err(StorageIOError::apply(log_id, &err).into());
    }
    let mut replies = Vec::new();
    let mut mutations = Vec::new();
    let mut last = None;
    let mut membership = None;
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
                let mut prepared = view.read().prepare(&batch.commands).into_iter();
                let mut state = view.write();
                let applied = batch
                    .commands
                    .iter()
                    .map(|c| state.apply_prepared(index, c, prepared.next().unwrap_or_default(), &mut mutations));
                replies.push(applied.collect());
            }
            EntryPayload::Membership(m) => {
                tracing::info!(index, membership = ?m, "membership applied");
                membership = Some(StoredMembership::new(Some(entry.log_id), m));
                replies.push(Vec::new());
            }
        }
    }
    let Some(last_id) = last else { return Ok(Applied { replies, last, membership }) };
    let mut batch = storage.batch_of(mutations);
    let meta_cf = storage.cf(CF_META);
    batch.put_cf(meta_cf, meta::LAST_APPLIED, codec::encode(&log_id_to_pb(&last_id)));
    if let Some(m) = &membership {
        batch.put_cf(meta_cf, meta::LAST_MEMBERSHIP, codec::encode(&stored_membership_to_pb(m)));
    }
    // Projections and last_applied in one batch: after a crash the node
    // resumes exactly where this batch left it. Not synced here: the
    // durable log can rebuild it, and `purge` syncs the WAL before it
    // deletes entries.
    storage.db.write(batch).map_err(|e| StorageIOError::apply(last_id, &e))?;
    view.applied(last_id.index);
    Ok(Applied { replies, last, membership })
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let (storage, view) = (self.storage.clone(), self.view.clone());
        let heavy = background::weight(&entries) >= background::HEAVY_WEIGHT;
        let applied = self.background.run_if(heavy, move || apply_entries(&storage, &view, entries)).await?;
        if let Some(last) = applied.last {
            self.last_applied = Some(last);
        }
        if let Some(m) = applied.membership {
            self.last_membership = m;
        }
        Ok(applied.replies)
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
        self.view.replace(state, meta.last_log_id.map_or(0, |l| l.index));
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.view.snapshot_stats().installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let cur = snapshot::current(&self.storage).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(cur.map(|(meta, file)| Snapshot { meta, snapshot: Box::new(file) }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use crate::background::{weight, HEAVY_WEIGHT};
    use gatehouse_proto::events::{command::Payload, AppendAudit, AuditEvent, Command, CommandBatch, CreateUser};
    use openraft::{CommittedLeaderId, RaftLogReader};

    /// A normal entry of term 1 at `index` (other modules' tests use it too).
    pub(crate) fn entry(index: u64, commands: Vec<Command>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(CommandBatch { commands }),
        }
    }

    fn audit(events: u64) -> Command {
        // Shaped like real records: ids, address, resource.
        let events = (0..events).map(|i| AuditEvent {
            at: i,
            action: "rbac.denied".into(),
            actor_user_id: format!("{i:032x}"),
            request_id: format!("{:032x}", i + 1),
            trace_id: format!("{:032x}", i + 2),
            client_ip: "10.0.0.1".into(),
            resource: "rpc:UserService/Get".into(),
            ..Default::default()
        });
        Command {
            proposed_at: 1,
            request_id: "audit-1".into(),
            payload: Some(Payload::AppendAudit(AppendAudit { events: events.collect(), dropped: 0, batch: 0 })),
            ..Default::default()
        }
    }

    fn user(n: u64) -> Command {
        Command {
            proposed_at: 1,
            request_id: format!("user-{n}"),
            payload: Some(Payload::CreateUser(CreateUser {
                user_id: format!("{n:032x}"),
                username: format!("user-{n}"),
                email: format!("user-{n}@example.com"),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn heavy_and_light_entries_apply_alike_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let heavy = entry(1, vec![audit(600)]);
        let light = entry(2, (0..3).map(user).collect());
        assert!(weight(std::slice::from_ref(&heavy)) >= HEAVY_WEIGHT, "an audit flush goes to the pool");
        assert!(weight(std::slice::from_ref(&light)) < HEAVY_WEIGHT, "a few commands stay inline");
        {
            let (_log, mut sm) = crate::open(dir.path()).unwrap();
            let replies = sm.apply([heavy]).await.unwrap();
            assert_eq!(replies.len(), 1);
            assert_eq!(replies[0][0].code, 0, "{:?}", replies[0][0]);
            let replies = sm.apply([light]).await.unwrap();
            assert!(replies[0].iter().all(|r| r.code == 0), "{replies:?}");
            assert_eq!(sm.view().applied_index(), 2);
            assert_eq!(sm.view().read().users().count(), 3);
        }
        let (log, mut sm) = crate::open(dir.path()).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2));
        assert_eq!(sm.view().read().users().count(), 3);
        let report = AuditLog::new(log.storage()).verify().unwrap();
        assert_eq!((report.checked, report.broken), (600, None));
    }

    fn raise(to: u32) -> Command {
        Command {
            proposed_at: 1,
            payload: Some(Payload::SetClusterVersion(gatehouse_proto::events::SetClusterVersion { version: to })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_cluster_version_beyond_this_build_stops_apply_and_the_next_open() {
        use gatehouse_domain::version::COMMAND_VERSION;
        let dir = tempfile::tempdir().unwrap();
        {
            let (_log, mut sm) = crate::open(dir.path()).unwrap();
            let replies = sm.apply([entry(1, vec![raise(COMMAND_VERSION)])]).await.unwrap();
            assert_eq!(replies[0][0].code, 0, "{:?}", replies[0][0]);
            // An entry raising past this build is not applied, nor anything
            // with it or after it; what came before it is.
            let before = entry(2, vec![user(2)]);
            let beyond = entry(3, vec![user(1), raise(COMMAND_VERSION + 1)]);
            let e = sm.apply([before, beyond, entry(4, vec![user(3)])]).await.unwrap_err().to_string();
            assert!(e.contains("run a newer Gatehouse"), "{e}");
            assert_eq!(sm.view().applied_index(), 2);
            let names: Vec<String> = sm.view().read().users().map(|u| u.username.clone()).collect();
            assert_eq!(names, ["user-2"]);
        }
        {
            let (_log, mut sm) = crate::open(dir.path()).unwrap();
            assert_eq!(sm.applied_state().await.unwrap().0.map(|l| l.index), Some(2), "what was applied was stored");
        }
        {
            let (_log, sm) = crate::open(dir.path()).unwrap();
            assert_eq!(sm.view().read().cluster_version(), COMMAND_VERSION, "the raise this build knows was kept");
        }

        // A store a newer build raised further is refused at open, untouched.
        let storage = crate::db::open_db(dir.path()).unwrap();
        let record = gatehouse_proto::state::ClusterVersionRecord { version: COMMAND_VERSION + 1 };
        let put = gatehouse_domain::Mutation::Put {
            table: Table::Cluster,
            key: gatehouse_domain::version::VERSION_KEY.to_vec(),
            value: codec::encode(&record),
        };
        storage.db.write(storage.batch_of(vec![put])).unwrap();
        drop(storage);
        let e = crate::open(dir.path()).map(|_| ()).unwrap_err();
        assert!(matches!(e, StorageError::NewerCommands(_)), "{e}");
        assert!(e.to_string().contains("left untouched"), "{e}");
    }

    #[tokio::test]
    async fn a_snapshot_a_newer_build_raised_is_not_installed() {
        use gatehouse_domain::version::COMMAND_VERSION;
        let (from, into) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = crate::db::open_db(from.path()).unwrap();
        let record = gatehouse_proto::state::ClusterVersionRecord { version: COMMAND_VERSION + 1 };
        let put = gatehouse_domain::Mutation::Put {
            table: Table::Cluster,
            key: gatehouse_domain::version::VERSION_KEY.to_vec(),
            value: codec::encode(&record),
        };
        source.db.write(source.batch_of(vec![put])).unwrap();
        let (meta, file) = snapshot::build(&source).unwrap();
        let (_log, mut sm) = crate::open(into.path()).unwrap();
        sm.apply([entry(1, vec![user(1)])]).await.unwrap();
        let e = snapshot::install(&sm.storage, &meta, &file).map(|_| ()).unwrap_err();
        assert!(matches!(e, StorageError::NewerCommands(_)), "{e}");
        // Nothing changed: the user is there, no cluster record.
        let (users, cluster) = (sm.storage.table(Table::Users), sm.storage.table(Table::Cluster));
        assert_eq!(sm.storage.db.iterator_cf(users, IteratorMode::Start).count(), 1);
        assert_eq!(sm.storage.db.iterator_cf(cluster, IteratorMode::Start).count(), 0);
    }

    #[tokio::test]
    async fn heavy_log_entries_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = crate::open(dir.path()).unwrap();
        let written = vec![entry(1, vec![audit(1000)]), entry(2, vec![user(1)])];
        crate::log_store::write_entries(&log.storage(), written.clone()).unwrap();
        let bytes: usize = crate::log_store::read_raw(&log.storage(), 1..=1, 1, usize::MAX).unwrap()[0].len();
        assert!(bytes >= crate::background::HEAVY_BYTES, "the audit entry is decoded on the pool ({bytes} bytes)");
        let read = log.try_get_log_entries(1..3).await.unwrap();
        assert_eq!(read, written);
        assert_eq!(log.try_get_log_entries(2..3).await.unwrap(), written[1..]);
    }

    #[tokio::test]
    async fn reads_of_the_log_stop_at_their_byte_budget_but_return_at_least_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = crate::open(dir.path()).unwrap();
        let written: Vec<_> = (1..=6).map(|i| entry(i, vec![audit(200)])).collect();
        crate::log_store::write_entries(&log.storage(), written.clone()).unwrap();
        let one = crate::log_store::read_raw(&log.storage(), 1..=1, 1, usize::MAX).unwrap()[0].len();
        let read = |budget| crate::log_store::read_raw(&log.storage(), 1..=6, usize::MAX, budget).unwrap().len();
        assert_eq!(read(usize::MAX), 6);
        assert_eq!(read(one * 2 + one / 2), 2);
        assert_eq!(read(0), 1, "never empty for a non-empty range");
        // What replication asks for: whole range here (far under its budget).
        assert_eq!(log.limited_get_log_entries(1, 7).await.unwrap(), written);
    }
}
