//! How a front keeps its view: copy it from a voter once, then follow the
//! committed log from the index the copy reflects; probe for freshness
//! every `max_staleness / 8`. A voter that fails the front (its stream
//! ends or errs, two probes in a row fail) is left for the next one, and
//! the front resumes from its applied index there.

use std::sync::atomic::Ordering;
use std::time::Duration;

use gatehouse_domain::{State, Table};
use gatehouse_proto::front::{FollowRequest, SnapshotRequest};
use tokio_stream::StreamExt;

use super::Front;
use crate::periodic::Shutdown;

/// The first and the longest pause before trying the next voter.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LAST_PAUSE: Duration = Duration::from_secs(1);
/// Probes in a row that may fail before the front moves to another voter.
const FAILED_PROBES: u32 = 2;

/// Why following a voter stopped.
#[derive(Debug)]
enum Stopped {
    /// The index the front needs was compacted: copy the view again.
    Compacted,
    /// The voter failed, or the front was asked to move on.
    Voter(String),
    /// The node is shutting down.
    Shutdown,
}

/// Copies the view, then follows the log, until `stop`.
pub async fn run(front: Front, mut stop: Shutdown) {
    let inner = &front.inner;
    // Nothing is stored: a start always copies.
    let mut copy = true;
    let mut pause = FIRST_PAUSE;
    loop {
        let (i, addr) = inner.voters.current();
        let addr = addr.to_string();
        let mut stopping = stop.clone();
        let mut copied = false;
        let outcome = async {
            if copy {
                if let Err(stopped) = copy_view(&front, i).await {
                    return stopped;
                }
                copied = true;
            }
            follow(&front, i, &mut stopping).await
        };
        let stopped = tokio::select! {
            s = outcome => s,
            _ = stop.wait() => Stopped::Shutdown,
        };
        if copied {
            copy = false;
            pause = FIRST_PAUSE;
        }
        match stopped {
            Stopped::Shutdown => return,
            Stopped::Compacted => {
                tracing::info!(voter = %addr, "the front's place in the log was compacted; copying the view again");
                copy = true;
                // At once, unless the copy just taken was compacted past
                // already (then after the pause below).
                if !copied {
                    continue;
                }
            }
            Stopped::Voter(why) => {
                inner.metrics.reconnects.inc();
                tracing::info!(voter = %addr, why = %why, "moving on to another voter");
                inner.voters.move_on(i);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait() => return,
        }
        pause = (pause * 2).min(LAST_PAUSE);
    }
}

/// Copies the view from voter `i` into the front's view.
async fn copy_view(front: &Front, i: usize) -> Result<(), Stopped> {
    let inner = &front.inner;
    let voter_failed = |s: tonic::Status| Stopped::Voter(format!("copying the view: {}", s.message()));
    let mut chunks = inner.voters.client(i).snapshot(SnapshotRequest {}).await.map_err(voter_failed)?.into_inner();
    let mut state = State::default();
    let mut index = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(voter_failed)?;
        if *index.get_or_insert(chunk.index) != chunk.index {
            return Err(Stopped::Voter("the copy's chunks reflect different indexes".into()));
        }
        for r in &chunk.records {
            let table =
                Table::from_name(&r.table).ok_or_else(|| Stopped::Voter("a copy named an unknown table".into()))?;
            state.load(table, &r.value).map_err(|e| Stopped::Voter(format!("a copied record: {e}")))?;
        }
        if chunk.last {
            state.finish_load();
            let (cluster, known) = (state.cluster_version(), gatehouse_domain::version::COMMAND_VERSION);
            if cluster > known {
                let e = gatehouse_domain::version::Unsupported { cluster, known };
                tracing::error!(error = %e, "cannot serve this cluster");
                return Err(Stopped::Voter(e.to_string()));
            }
            let index = chunk.index;
            // Never back: a proof already given covers what was applied.
            if index < inner.view.applied_index() {
                return Err(Stopped::Voter(format!(
                    "the voter's copy reflects index {index}, behind this front's {}",
                    inner.view.applied_index()
                )));
            }
            inner.view.replace(state, index);
            inner.metrics.copies.inc();
            tracing::info!(index, "copied the view from a voter");
            return Ok(());
        }
    }
    Err(Stopped::Voter("the copy ended before its last chunk".into()))
}

/// Follows the committed log on voter `i` from the front's applied index.
async fn follow(front: &Front, i: usize, stop: &mut Shutdown) -> Stopped {
    let inner = &front.inner;
    // Requests to move on made from now.
    let mut move_on = inner.move_on.subscribe();
    move_on.borrow_and_update();
    let after = inner.view.applied_index();
    let stream = inner.voters.client(i).follow(FollowRequest { after_index: after }).await;
    let mut stream = match stream {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => return Stopped::Compacted,
        Err(s) => return Stopped::Voter(format!("following: {}", s.message())),
    };
    loop {
        let batch = tokio::select! {
            b = stream.next() => b,
            _ = move_on.changed() => return Stopped::Voter("its probes failed".into()),
            _ = stop.wait() => return Stopped::Shutdown,
        };
        let batch = match batch {
            Some(Ok(b)) => b,
            Some(Err(s)) if s.code() == tonic::Code::FailedPrecondition => return Stopped::Compacted,
            Some(Err(s)) => return Stopped::Voter(format!("following: {}", s.message())),
            None => return Stopped::Voter("the stream ended".into()),
        };
        // Entries come once each, in order, after what is applied and
        // within the batch: anything else is a voter (or a link) to leave,
        // never a reason to move the applied index.
        let mut applied = inner.view.applied_index();
        let in_order = batch.through_index >= applied
            && batch.entries.iter().all(|e| {
                let next = e.index > applied && e.index <= batch.through_index;
                applied = e.index;
                next
            });
        if !in_order {
            return Stopped::Voter("entries out of order".into());
        }
        for entry in &batch.entries {
            // A cluster version beyond this build: never applied here.
            if let Some(e) = entry.commands.iter().find_map(|c| gatehouse_domain::version::understood(c).err()) {
                tracing::error!(index = entry.index, error = %e, "cannot apply this entry");
                return Stopped::Voter(e.to_string());
            }
            inner.view.apply_followed(entry.index, &entry.commands);
        }
        if batch.through_index > inner.view.applied_index() {
            inner.view.apply_followed(batch.through_index, &[]);
        }
        inner.known_commit.fetch_max(batch.through_index, Ordering::Relaxed);
    }
}

/// Probes for freshness every `max_staleness / 8`, until `stop`.
pub async fn probe(front: Front, mut stop: Shutdown) {
    let mut tick = tokio::time::interval(front.probe_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait() => return,
        }
        // Each probe on its own: one stuck on a voter that died must not
        // hold back the next, which may reach another.
        let (front, failed) = (front.clone(), failed.clone());
        tokio::spawn(async move {
            if probe_once(&front).await {
                failed.store(0, Ordering::Relaxed);
            } else if failed.fetch_add(1, Ordering::Relaxed) + 1 >= FAILED_PROBES {
                failed.store(0, Ordering::Relaxed);
                front.inner.move_on.send_modify(|g| *g += 1);
            }
        });
    }
}

/// One probe: a read index from the voter followed, recorded as a proof
/// once applied. Returns whether the voter answered and this front caught
/// up to the answer in time (a voter whose stream lags fails it).
pub(crate) async fn probe_once(front: &Front) -> bool {
    let inner = &front.inner;
    let ask = async { front.read_index().await.ok() };
    inner.reads.probe(&inner.freshness, &inner.view, inner.max_staleness, ask).await
}
