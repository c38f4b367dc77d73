//! `AuditService`: query, export and verify the audit log (`audit.read`).
//!
//! Everything reads this node's own records (RocksDB, one point-in-time
//! view per call) on the blocking pool, so a long scan never holds a
//! runtime thread.

use base64::Engine as _;
use gatehouse_domain::roles::Permission;
use gatehouse_proto::admin::audit_service_server::{AuditService, AuditServiceServer};
use gatehouse_proto::admin::{
    AuditExportRequest, AuditFilter, AuditQueryRequest, AuditQueryResponse, AuditRecord, AuditVerifyRequest,
    AuditVerifyResponse,
};
use gatehouse_proto::state::AuditRecord as Stored;
use gatehouse_storage::AuditLog;
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::streams::{self, BoxStream, Streams};
use crate::{ApiError, Node};

/// Records looked at for one query page before it returns what it found.
const SCAN_BUDGET: usize = 100_000;
const DEFAULT_PAGE: usize = 100;
/// A page stops once its records pass this many bytes (1,000 records of up
/// to 16 KiB would be over a client's 4 MiB message limit); the rest
/// follows with the page token.
const PAGE_BYTES: usize = 2 << 20;
const MAX_PAGE: usize = 1000;
/// Records read per step of an export (and at most 1 MiB of them).
const EXPORT_CHUNK: usize = 1000;

pub struct Audit {
    node: Node,
    log: AuditLog,
    streams: Streams,
}

/// `streams` counts open exports per caller (shared with `Watch`).
pub fn server(node: Node, log: AuditLog, streams: Streams) -> AuditServiceServer<Audit> {
    AuditServiceServer::new(Audit { node, log, streams })
}

/// A validated filter.
#[derive(Debug, Clone, Default)]
struct Filter {
    from: u64,
    to: u64,
    /// Ids the actor filter stands for (a username resolves to its user id).
    actors: Vec<String>,
    action: Option<Pattern>,
    resource: Option<Pattern>,
    outcome: String,
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str, what: &str) -> Result<Option<Pattern>, ApiError> {
        if s.is_empty() {
            return Ok(None);
        }
        if s.len() > 200 || s.chars().any(char::is_control) {
            return Err(ApiError::InvalidArgument(format!("{what} filter must be at most 200 printable characters")));
        }
        Ok(Some(match s.strip_suffix('*') {
            Some(p) => Pattern::Prefix(p.into()),
            None if s.ends_with('.') || s.ends_with(':') => Pattern::Prefix(s.into()),
            None => Pattern::Exact(s.into()),
        }))
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Exact(e) => v == e,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
        }
    }
}

impl Filter {
    fn new(node: &Node, f: Option<AuditFilter>) -> Result<Filter, ApiError> {
        let f = f.unwrap_or_default();
        if f.to_ms != 0 && f.from_ms > f.to_ms {
            return Err(ApiError::InvalidArgument("from must not be after to".into()));
        }
        if !matches!(f.outcome.as_str(), "" | "ok" | "denied" | "failed" | "limited") {
            return Err(ApiError::InvalidArgument("outcome must be ok, denied, failed or limited".into()));
        }
        let mut actors = Vec::new();
        if !f.actor.is_empty() {
            if f.actor.len() > 64 {
                return Err(ApiError::InvalidArgument("actor must be a username, user id or key id".into()));
            }
            actors.push(f.actor.clone());
            if let Some(u) = node.view().read().user_by_name(&f.actor.to_ascii_lowercase()) {
                actors.push(u.user_id.clone());
            }
        }
        Ok(Filter {
            from: f.from_ms,
            to: f.to_ms,
            actors,
            action: Pattern::parse(&f.action, "action")?,
            resource: Pattern::parse(&f.resource, "resource")?,
            outcome: f.outcome,
        })
    }

    fn matches(&self, r: &Stored) -> bool {
        let Some(e) = &r.event else { return false };
        (self.from == 0 || e.at >= self.from)
            && (self.to == 0 || e.at <= self.to)
            && (self.actors.is_empty() || self.actors.iter().any(|a| *a == e.actor_user_id || *a == e.actor_key_id))
            && self.action.as_ref().is_none_or(|p| p.matches(&e.action))
            && self.resource.as_ref().is_none_or(|p| p.matches(&e.resource))
            && (self.outcome.is_empty() || self.outcome == e.outcome)
    }
}

fn to_pb(r: Stored) -> AuditRecord {
    AuditRecord { seq: r.seq, event: r.event, hash: hex::encode(r.hash) }
}

fn read_failed(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "reading the audit log failed");
    ApiError::Internal
}

type ExportStream = BoxStream<AuditRecord>;

#[tonic::async_trait]
impl AuditService for Audit {
    async fn query(&self, req: Request<AuditQueryRequest>) -> Result<Response<AuditQueryResponse>, Status> {
        authorize(&self.node, req.metadata(), Permission::AuditRead).await?;
        let r = req.into_inner();
        let filter = Filter::new(&self.node, r.filter)?;
        let size = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(ApiError::InvalidArgument(format!("page_size must be at most {MAX_PAGE}")).into())
            }
            n => n,
        };
        let below = if r.page_token.is_empty() {
            u64::MAX
        } else {
            (r.page_token.len() <= 32)
                .then(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&r.page_token).ok())
                .flatten()
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| ApiError::InvalidArgument("page_token is not one this API issued".into()))?
        };
        if below == 0 {
            return Ok(Response::new(AuditQueryResponse::default()));
        }
        let log = self.log.clone();
        let (records, next) = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let (mut looked, mut last, mut bytes) = (0usize, None, 0usize);
            log.scan(below - 1, true, |rec| {
                looked += 1;
                last = Some(rec.seq);
                if filter.matches(&rec) {
                    let rec = to_pb(rec);
                    bytes += prost::Message::encoded_len(&rec);
                    out.push(rec);
                }
                out.len() < size && looked < SCAN_BUDGET && bytes < PAGE_BYTES
            })
            .map(|()| {
                // More may follow unless the scan ran off the oldest record.
                let full = out.len() == size || looked == SCAN_BUDGET || bytes >= PAGE_BYTES;
                let more = full && last.is_some_and(|s| s > 1);
                (out, more.then(|| last.unwrap_or(0)))
            })
        })
        .await
        .map_err(read_failed)?
        .map_err(read_failed)?;
        let next_page_token =
            next.map(|s| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.to_be_bytes())).unwrap_or_default();
        Ok(Response::new(AuditQueryResponse { records, next_page_token }))
    }

    type ExportStream = ExportStream;

    async fn export(&self, req: Request<AuditExportRequest>) -> Result<Response<ExportStream>, Status> {
        let actor = authorize(&self.node, req.metadata(), Permission::AuditRead).await?;
        let meta = req.metadata().clone();
        let filter = Filter::new(&self.node, req.into_inner().filter)?;
        let (log, node) = (self.log.clone(), self.node.clone());
        let (tx, rx) = streams::channel(self.streams.open(&actor.user_id)?, "audit record");
        tokio::spawn(async move {
            let mut from = 0u64;
            let mut checked = tokio::time::Instant::now();
            loop {
                // Re-authorized while it streams, as `Watch` is: a key revoked
                // or a role taken away mid-export ends the export.
                if checked.elapsed() >= super::events::RECHECK {
                    if let Err(e) = authorize(&node, &meta, Permission::AuditRead).await {
                        tx.fail(e.into());
                        return;
                    }
                    checked = tokio::time::Instant::now();
                }
                // A client gone while nothing matched is noticed here.
                if tx.is_closed() {
                    return;
                }
                let (log, filter) = (log.clone(), filter.clone());
                let chunk = tokio::task::spawn_blocking(move || {
                    let (mut out, mut last, mut looked, mut bytes) = (Vec::new(), None, 0, 0);
                    log.scan(from, false, |rec| {
                        last = Some(rec.seq);
                        looked += 1;
                        if filter.matches(&rec) {
                            let rec = to_pb(rec);
                            bytes += prost::Message::encoded_len(&rec);
                            out.push(rec);
                        }
                        looked < EXPORT_CHUNK && bytes < PAGE_BYTES / 2
                    })
                    .map(|()| (out, last))
                })
                .await;
                let (records, last) = match chunk {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tx.fail(read_failed(e).into());
                        return;
                    }
                    Err(e) => {
                        tx.fail(read_failed(e).into());
                        return;
                    }
                };
                for r in records {
                    let seq = r.seq;
                    // Gone, or cut off for not reading: the client resumes
                    // with a query from this record.
                    if tx.send(r, seq).await.is_err() {
                        return;
                    }
                }
                match last {
                    Some(l) => from = l + 1,
                    None => return,
                }
            }
        });
        Ok(Response::new(rx))
    }

    async fn verify(&self, req: Request<AuditVerifyRequest>) -> Result<Response<AuditVerifyResponse>, Status> {
        authorize(&self.node, req.metadata(), Permission::AuditRead).await?;
        let log = self.log.clone();
        let report =
            tokio::task::spawn_blocking(move || log.verify()).await.map_err(read_failed)?.map_err(read_failed)?;
        let (first_bad_seq, problem) = match &report.broken {
            Some(b) => (b.seq(), b.to_string()),
            None => (0, String::new()),
        };
        if let Some(b) = &report.broken {
            tracing::error!(seq = b.seq(), problem = %b, "audit chain verification failed");
        }
        Ok(Response::new(AuditVerifyResponse {
            intact: report.broken.is_none(),
            checked: report.checked,
            first_bad_seq,
            problem,
            head_seq: report.chain.head_seq,
            head_hash: hex::encode(&report.chain.head_hash),
            anchor_seq: report.chain.anchor_seq,
            node_id: self.node.id(),
        }))
    }
}
