//! `EventService`: `Watch(from_index)` streams committed commands in log
//! order, then follows the log as it grows. Hashes of secrets are removed
//! ([`gatehouse_domain::redact`]). Only applied entries are sent, so every
//! event is committed.

use gatehouse_cluster::periodic::Shutdown;
use std::time::Duration;

use gatehouse_domain::redact::redacted;
use gatehouse_domain::roles::Permission;
use gatehouse_proto::admin::event_service_server::{EventService, EventServiceServer};
use gatehouse_proto::admin::{watch_event, WatchEvent, WatchRequest};
use gatehouse_storage::types::Entry;
use gatehouse_storage::LogReader;
use openraft::EntryPayload;
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::streams::{self, BoxStream, Streams};
use crate::{ApiError, Node};

/// Entries read from disk per step: at most this many, and after the
/// first at most `CHUNK_BYTES` (the stream's own buffer is bounded too).
const CHUNK: usize = 256;
const CHUNK_BYTES: usize = 1 << 20;
/// How often a stream re-checks that its caller is still allowed: a
/// revoked key stops receiving within this (plus one chunk of events).
pub(super) const RECHECK: Duration = Duration::from_secs(2);

pub struct Events {
    node: Node,
    log: LogReader,
    stopping: Shutdown,
    streams: Streams,
}

/// `stopping` fires when the node shuts down: open streams end then
/// (with `UNAVAILABLE`), so they cannot hold a graceful shutdown forever.
/// `streams` counts open streams per caller (shared with audit exports).
pub fn server(node: Node, log: LogReader, stopping: Shutdown, streams: Streams) -> EventServiceServer<Events> {
    EventServiceServer::new(Events { node, log, stopping, streams })
}

fn compacted(from: u64, first: u64) -> ApiError {
    ApiError::FailedPrecondition(format!(
        "index {from} was compacted into a snapshot; the oldest index still in the log is {first}"
    ))
}

/// The events of one log entry.
fn events_of(entry: Entry) -> Vec<WatchEvent> {
    let (index, term) = (entry.log_id.index, entry.log_id.leader_id.term);
    let event = |position: u32, kind| WatchEvent { index, term, position, kind: Some(kind) };
    match entry.payload {
        EntryPayload::Blank => Vec::new(),
        EntryPayload::Normal(batch) => batch
            .commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| event(i as u32, watch_event::Kind::Command(redacted(c))))
            .collect(),
        EntryPayload::Membership(m) => {
            vec![event(0, watch_event::Kind::Membership(super::cluster::membership_response(index, &m)))]
        }
    }
}

/// Counts an open stream in the metrics until it ends.
struct OpenStream(Node);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.metrics().watch_streams.dec();
    }
}

type WatchStream = BoxStream<WatchEvent>;

#[tonic::async_trait]
impl EventService for Events {
    type WatchStream = WatchStream;

    #[tracing::instrument(level = "info", name = "admin.events.watch", skip_all, fields(from_index = req.get_ref().from_index))]
    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::EventsRead).await?;
        let meta = req.metadata().clone();
        let first = self.log.first_index().map_err(|e| {
            tracing::error!(error = %e, "reading the log failed");
            ApiError::Internal
        })?;
        let from = req.get_ref().from_index;
        let mut next = if from == 0 { first } else { from };
        if next < first {
            return Err(compacted(next, first).into());
        }
        let slot = self.streams.open(&actor.user_id)?;
        tracing::info!(actor = %actor.username, from = next, "watch started");
        let (tx, rx) = streams::channel(slot, "index");
        let (node, log, mut stopping) = (self.node.clone(), self.log.clone(), self.stopping.clone());
        tokio::spawn(async move {
            node.metrics().watch_streams.inc();
            let _open = OpenStream(node.clone());
            let mut applied = node.view().subscribe();
            let mut checked = tokio::time::Instant::now();
            loop {
                // Re-authorized every RECHECK, backlog or not: a revoked key,
                // a removed permission or a node that cannot prove it is up
                // to date ends the stream (the client resumes from its last
                // index elsewhere).
                if checked.elapsed() >= RECHECK {
                    if let Err(e) = authorize(&node, &meta, Permission::EventsRead).await {
                        tx.fail(e.into());
                        return;
                    }
                    checked = tokio::time::Instant::now();
                }
                let upto = *applied.borrow_and_update();
                if next <= upto {
                    let entries = match log.entries(next, upto, CHUNK, CHUNK_BYTES) {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::error!(error = %e, "reading the log failed");
                            tx.fail(ApiError::Internal.into());
                            return;
                        }
                    };
                    // A purge overtook this reader: say so rather than skip.
                    match entries.first() {
                        Some(e) if e.log_id.index == next => {}
                        _ => {
                            let first = log.first_index().unwrap_or(next + 1);
                            tx.fail(compacted(next, first).into());
                            return;
                        }
                    }
                    for entry in entries {
                        let index = entry.log_id.index;
                        for event in events_of(entry) {
                            // Cut off (or gone): it resumes from the entry it
                            // did not get whole.
                            if tx.send(event, index).await.is_err() {
                                return;
                            }
                        }
                        next = index + 1;
                    }
                    continue;
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = stopping.wait() => {
                        tx.fail(Status::unavailable("the node is shutting down"));
                        return;
                    }
                    _ = tokio::time::sleep_until(checked + RECHECK) => {}
                }
            }
        });
        Ok(Response::new(rx))
    }
}
