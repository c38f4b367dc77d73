//! The voter's side of stateless fronts (`FollowService`, in `front.proto`):
//! a copy of the view, the committed log as it grows, read indexes, and the
//! writes a front makes for itself. Admitted with a front's own secret
//! ([`crate::fronts`]), never with the cluster secret.
//!
//! What a front gets is [`gatehouse_domain::front`]'s: no password hash, no
//! audit record. Only applied entries are sent, so all of it is committed.
//! A front may propose only what a front has reason to: last-use times,
//! rate-limit hits and counts, audit batches, each stamped with its own id.
//! It cannot create a user, a key or a session, or change a role.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_domain::{front, Payload};
use gatehouse_proto::control::{ProposeRequest, ProposeResponse};
use gatehouse_proto::front as pb;
use gatehouse_proto::front::follow_service_server::{FollowService, FollowServiceServer};
use gatehouse_storage::{LogReader, NodeId, Storage};
use openraft::EntryPayload;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::fronts::{FrontId, Fronts};
use crate::periodic::Shutdown;
use crate::raft::service::bad;
use crate::{Cluster, ClusterError};

/// Bytes of records per snapshot chunk, and of log per follow step.
const CHUNK_BYTES: usize = 1 << 20;
/// Entries read from the log per follow step (after the first, at most `CHUNK_BYTES`).
const CHUNK_ENTRIES: usize = 512;
/// Messages buffered per stream: a front that stops reading holds this much.
const BUFFERED: usize = 4;
/// A front whose stream takes nothing for this long is cut off (it resumes
/// from its applied index).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams one front may hold open at once (a follow and a snapshot, and
/// room for one of each being replaced).
const STREAMS_PER_FRONT: usize = 4;
/// How often an open stream checks that its front is still listed.
const RECHECK: Duration = Duration::from_secs(2);
/// Largest proposal a front may send (audit batches are the largest).
const MAX_FRONT_PROPOSAL: usize = 4 << 20;
/// Read indexes one front may ask for per second (it probes 8 times per
/// `max_staleness` and catches up once per round trip at most), and
/// proposals it may send per second (flushes and limit syncs): each with a
/// burst of one second's worth. Past them, `RESOURCE_EXHAUSTED`.
const READ_INDEXES_PER_SEC: f64 = 500.0;
const PROPOSALS_PER_SEC: f64 = 200.0;

/// What the transports say a front may write, beyond the kind of command
/// (rate-limit policies as configured, no future use times, audit events
/// stamped as the front's): checks and may amend each command, or refuses it.
pub type FrontGate = Arc<dyn Fn(NodeId, &mut gatehouse_domain::Command) -> Result<(), String> + Send + Sync>;

/// Tokens left, and when they were counted.
type Bucket = (f64, std::time::Instant);

/// A token bucket per front and kind of call.
#[derive(Default)]
struct Budgets(Mutex<HashMap<(NodeId, &'static str), Bucket>>);

impl Budgets {
    /// Takes one call of `kind` from `front`'s budget of `per_sec`.
    fn take(&self, front: NodeId, kind: &'static str, per_sec: f64) -> bool {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let (tokens, at) = all.entry((front, kind)).or_insert((per_sec, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(per_sec);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The fronts this voter serves, as it last heard from each (for `cluster
/// status`): shared by the service and [`Cluster`]'s status.
#[derive(Debug, Default, Clone)]
pub struct FrontsSeen(Arc<Mutex<HashMap<NodeId, Seen>>>);

#[derive(Debug, Clone)]
struct Seen {
    addr: String,
    applied_index: u64,
    asked_at: Option<std::time::Instant>,
    following: usize,
    /// The command version its last call said it understands.
    command_version: u32,
}

/// A front not heard from for this long leaves the status.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

impl FrontsSeen {
    fn with(&self, front: NodeId, addr: Option<std::net::SocketAddr>, f: impl FnOnce(&mut Seen)) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(front).or_insert_with(|| Seen {
            addr: String::new(),
            applied_index: 0,
            asked_at: None,
            following: 0,
            command_version: 0,
        });
        if let Some(a) = addr {
            entry.addr = a.to_string();
        }
        f(entry);
    }

    /// Every front heard from within the last hour.
    pub fn report(&self) -> Vec<gatehouse_proto::control::FrontSeen> {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, s| s.following > 0 || s.asked_at.is_some_and(|t| t.elapsed() < FORGET_AFTER));
        let mut out: Vec<_> = seen
            .iter()
            .map(|(id, s)| gatehouse_proto::control::FrontSeen {
                front_id: *id,
                addr: s.addr.clone(),
                applied_index: s.applied_index,
                asked_ms_ago: s.asked_at.map_or(u64::MAX, |t| t.elapsed().as_millis() as u64),
                following: s.following > 0,
                command_version: s.command_version,
            })
            .collect();
        out.sort_by_key(|f| f.front_id);
        out
    }

    /// The number of open follow streams (a gauge in `/metrics`).
    pub fn following(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).values().map(|s| s.following).sum()
    }
}

/// A follow stream counted as open in [`FrontsSeen`] until it ends.
struct Following(FrontsSeen, NodeId);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.with(self.1, None, |s| s.following = s.following.saturating_sub(1));
    }
}

pub struct Follow {
    cluster: Cluster,
    storage: Storage,
    log: LogReader,
    fronts: Fronts,
    stopping: Shutdown,
    open: Arc<Mutex<HashMap<NodeId, usize>>>,
    gate: FrontGate,
    budgets: Budgets,
}

/// The service, behind the front check.
pub fn server(
    cluster: Cluster,
    storage: Storage,
    log: LogReader,
    fronts: Fronts,
    stopping: Shutdown,
    gate: FrontGate,
) -> tonic::service::interceptor::InterceptedService<
    FollowServiceServer<Follow>,
    impl tonic::service::Interceptor + Clone,
> {
    // A global rate limit's shares count the fronts listed here too.
    let _ = cluster.inner.fronts_listed.set(fronts.clone());
    let (admission, members) = (fronts.clone(), cluster.clone());
    let trust = cluster.peers().tls().map(|t| t.trust().clone());
    let follow =
        Follow { cluster, storage, log, fronts, stopping, open: Arc::default(), gate, budgets: Budgets::default() };
    let svc = FollowServiceServer::new(follow)
        .max_decoding_message_size(MAX_FRONT_PROPOSAL)
        .max_encoding_message_size(crate::peers::MAX_RAFT_MESSAGE);
    tonic::service::interceptor::InterceptedService::new(svc, move |req| {
        let req = admission.admit(|id| members.is_member(id), trust.as_ref(), req)?;
        // A front that follows another cluster or epoch is refused (one
        // that has not heard of one yet is not).
        if let Some(lineage) = members.peers().lineage() {
            lineage.check_front(&req)?;
        }
        // A front of a build older than the cluster's version is refused.
        let version = crate::version::of_front(&req);
        crate::version::check_front(members.cluster_version(), version)?;
        if let Some(front) = req.extensions().get::<FrontId>() {
            members.fronts_seen().with(front.0, None, |s| s.command_version = version);
        }
        Ok(req)
    })
}

/// One open stream of a front, counted until it ends, and the secret it was opened with.
struct Slot {
    open: Arc<Mutex<HashMap<NodeId, usize>>>,
    front: NodeId,
    admitted: crate::fronts::Admitted,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.front) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.front);
            }
        }
    }
}

impl Follow {
    #[allow(clippy::result_large_err)]
    fn slot<T>(&self, req: &Request<T>) -> Result<Slot, Status> {
        let front = front_of(req)?;
        let admitted = *req
            .extensions()
            .get::<crate::fronts::Admitted>()
            .ok_or_else(|| Status::unauthenticated("a front's id and secret are required"))?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(front).or_insert(0);
        if *n >= STREAMS_PER_FRONT {
            return Err(Status::resource_exhausted("too many open streams for this front"));
        }
        *n += 1;
        Ok(Slot { open: self.open.clone(), front, admitted })
    }
}

#[allow(clippy::result_large_err)]
fn front_of<T>(req: &Request<T>) -> Result<NodeId, Status> {
    req.extensions()
        .get::<FrontId>()
        .map(|f| f.0)
        .ok_or_else(|| Status::unauthenticated("a front's id and secret are required"))
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "serving a front failed");
    Status::internal("internal error")
}

fn compacted(after: u64, first: u64) -> Status {
    Status::failed_precondition(format!(
        "index {} was compacted into a snapshot; the oldest index still in the log is {first}",
        after + 1
    ))
}

/// Whether a front may propose `payload`: what it makes for itself.
fn front_may_propose(payload: &Option<Payload>) -> bool {
    matches!(
        payload,
        Some(Payload::RecordUse(_) | Payload::RateHit(_) | Payload::RateDeltas(_) | Payload::AppendAudit(_))
    )
}

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl FollowService for Follow {
    type SnapshotStream = Stream<pb::SnapshotChunk>;
    type FollowStream = Stream<pb::FollowBatch>;

    #[tracing::instrument(level = "info", name = "front.snapshot", skip_all)]
    async fn snapshot(&self, req: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let slot = self.slot(&req)?;
        let (tx, rx) = mpsc::channel(BUFFERED);
        let (storage, fronts, stopping) = (self.storage.clone(), self.fronts.clone(), self.stopping.clone());
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // Each chunk waits at most SEND_TIMEOUT for the front to take
            // it, and the copy ends with the front's admission or the node:
            // a front that stops reading holds no thread or RocksDB
            // snapshot for long.
            let sent = storage.front_snapshot(CHUNK_BYTES, |index, records, last| {
                if !fronts.still(slot.front, slot.admitted) || stopping.is_shutdown() {
                    return false;
                }
                let chunk = pb::SnapshotChunk { index, records, last };
                rt.block_on(tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(chunk)))).is_ok_and(|r| r.is_ok())
            });
            match sent {
                Ok(index) => tracing::info!(index, "a front copied the view"),
                Err(e) => {
                    let _ = tx.blocking_send(Err(internal(e)));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(level = "info", name = "front.follow", skip_all, fields(after = req.get_ref().after_index))]
    async fn follow(&self, req: Request<pb::FollowRequest>) -> Result<Response<Self::FollowStream>, Status> {
        let slot = self.slot(&req)?;
        let after = req.get_ref().after_index;
        let understands = crate::version::of_front(&req);
        // The last index there is has no next one to follow from.
        let next = after.checked_add(1).ok_or_else(|| bad("after_index"))?;
        let first = self.log.first_index().map_err(internal)?;
        if next < first {
            return Err(compacted(after, first));
        }
        let (tx, rx) = mpsc::channel(BUFFERED);
        let (view, log, fronts, mut stopping) =
            (self.cluster.view().clone(), self.log.clone(), self.fronts.clone(), self.stopping.clone());
        let seen = self.cluster.fronts_seen().clone();
        seen.with(slot.front, req.remote_addr(), |s| s.following += 1);
        let following = Following(seen, slot.front);
        tokio::spawn(async move {
            let slot = slot;
            let front = slot.front;
            let (_following, admitted) = (following, slot.admitted);
            let mut applied = view.subscribe();
            let mut next = next;
            loop {
                if !fronts.still(front, admitted) {
                    let _ = tx.send(Err(Status::unauthenticated("this front is no longer accepted"))).await;
                    return;
                }
                let upto = *applied.borrow_and_update();
                // The version read after `upto` covers every entry up to it:
                // a front never gets the entry that raises the version past
                // its build, nor any after it.
                let runs = view.read().cluster_version();
                if let Err(refused) = crate::version::check_front(runs, understands) {
                    let _ = tx.send(Err(refused)).await;
                    return;
                }
                if next <= upto {
                    let batch = match read_batch(&log, next, upto) {
                        Ok(b) => b,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    };
                    next = batch.through_index + 1;
                    match tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(batch))).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => return,
                        Err(_) => {
                            tracing::warn!(front, "a front stopped reading its stream; cut off");
                            return;
                        }
                    }
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = stopping.wait() => {
                        let _ = tx.send(Err(Status::unavailable("the node is shutting down"))).await;
                        return;
                    }
                    _ = tokio::time::sleep(RECHECK) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn read_index(
        &self,
        req: Request<pb::FrontReadIndexRequest>,
    ) -> Result<Response<pb::FrontReadIndexResponse>, Status> {
        let front = front_of(&req)?;
        if !self.budgets.take(front, "read_index", READ_INDEXES_PER_SEC) {
            return Err(Status::resource_exhausted("too many read indexes from this front"));
        }
        let applied = req.get_ref().applied_index;
        self.cluster.fronts_seen().with(front, req.remote_addr(), |s| {
            s.applied_index = applied;
            s.asked_at = Some(std::time::Instant::now());
        });
        let index = self.cluster.read_index().await?;
        let shares = u32::try_from(crate::Replica::members(&self.cluster)).unwrap_or(u32::MAX);
        let lineage = self.cluster.peers().lineage().and_then(|l| l.get()).map(|l| crate::lineage::text(&l));
        Ok(Response::new(pb::FrontReadIndexResponse { index, shares, lineage: lineage.unwrap_or_default() }))
    }

    #[tracing::instrument(level = "debug", name = "front.propose", skip_all)]
    async fn propose(&self, req: Request<ProposeRequest>) -> Result<Response<ProposeResponse>, Status> {
        let front = front_of(&req)?;
        if !self.budgets.take(front, "propose", PROPOSALS_PER_SEC) {
            return Err(Status::resource_exhausted("too many writes from this front"));
        }
        let mut commands = req.into_inner().batch.ok_or_else(|| bad("batch"))?.commands;
        if commands.is_empty() {
            return Err(bad("batch"));
        }
        for c in &mut commands {
            if !front_may_propose(&c.payload) {
                tracing::warn!(front, "a front proposed a command only a voter may make");
                return Err(Status::permission_denied("a front may not propose that"));
            }
            // Its own, whatever it says.
            c.origin_node = front;
            c.request_digest.clear();
            if let Err(why) = (self.gate)(front, c) {
                tracing::warn!(front, why = %why, "a front's write refused");
                return Err(Status::permission_denied(format!("a front may not propose that: {why}")));
            }
        }
        crate::propose::bounded(&commands)?;
        let applied = self.cluster.propose(commands).await.map_err(|e: ClusterError| Status::from(e))?;
        Ok(Response::new(ProposeResponse { results: applied.results, log_index: applied.log_index }))
    }
}

/// The next step of a follow stream: the entries from `next` through at
/// most `upto` (bounded in count and bytes), as a front sees them.
#[allow(clippy::result_large_err)]
fn read_batch(log: &LogReader, next: u64, upto: u64) -> Result<pb::FollowBatch, Status> {
    let entries = log.entries(next, upto, CHUNK_ENTRIES, CHUNK_BYTES).map_err(internal)?;
    match entries.first() {
        Some(e) if e.log_id.index == next => {}
        // A purge overtook this reader: the front copies the view again.
        _ => return Err(compacted(next - 1, log.first_index().unwrap_or(next + 1))),
    }
    let through_index = entries.last().map_or(next, |e| e.log_id.index);
    let entries = entries
        .into_iter()
        .filter_map(|e| match e.payload {
            EntryPayload::Normal(batch) => {
                let commands: Vec<_> = batch.commands.into_iter().filter_map(front::command).collect();
                (!commands.is_empty()).then_some(pb::FollowedEntry { index: e.log_id.index, commands })
            }
            EntryPayload::Blank | EntryPayload::Membership(_) => None,
        })
        .collect();
    Ok(pb::FollowBatch { entries, through_index })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_proto::events::{CreateSession, RateDeltas, RecordUse};

    #[test]
    fn a_front_proposes_only_what_it_makes_for_itself() {
        assert!(front_may_propose(&Some(Payload::RecordUse(RecordUse::default()))));
        assert!(front_may_propose(&Some(Payload::RateDeltas(RateDeltas::default()))));
        assert!(!front_may_propose(&Some(Payload::CreateSession(CreateSession::default()))));
        assert!(!front_may_propose(&None));
    }
}
