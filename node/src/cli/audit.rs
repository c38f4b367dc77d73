//! `gatehouse admin audit query|export|verify`.

use super::args::Paging;
use super::client::{rpc_error, Authed};
use clap::{Args, Subcommand, ValueEnum};
use gatehouse_proto::admin::audit_service_client::AuditServiceClient;
use gatehouse_proto::admin::{AuditExportRequest, AuditFilter, AuditQueryRequest, AuditRecord, AuditVerifyRequest};
use serde_json::json;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Records matching a filter, newest first.
    Query {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        paging: Paging,
        /// Output format (`--json` is the same as `--format json`).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Every record matching a filter, oldest first, streamed (JSON lines or CSV).
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
        format: ExportFormat,
    },
    /// Recompute the hash chain on the node answering; exit 0 if intact,
    /// otherwise name the first bad sequence number and exit 1.
    Verify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON document per line.
    Json,
    Csv,
}

/// What to select. Times are RFC 3339 (`2026-11-24T10:00:00Z`) or an age (`24h`, `7d`).
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Records at or after this time.
    #[arg(long, value_parser = parse_time)]
    pub from: Option<u64>,
    /// Records at or before this time.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<u64>,
    /// A username, user id or API key id.
    #[arg(long)]
    pub actor: Option<String>,
    /// An action (`key.revoke`), or a prefix ending in `.` or `*` (`user.`).
    #[arg(long)]
    pub action: Option<String>,
    /// A resource (`user:5f…`), or a prefix ending in `:` or `*` (`key:`).
    #[arg(long)]
    pub resource: Option<String>,
    /// ok, denied, failed or limited.
    #[arg(long)]
    pub outcome: Option<String>,
}

impl FilterArgs {
    fn to_pb(&self) -> AuditFilter {
        AuditFilter {
            from_ms: self.from.unwrap_or(0),
            to_ms: self.to.unwrap_or(0),
            actor: self.actor.clone().unwrap_or_default(),
            action: self.action.clone().unwrap_or_default(),
            resource: self.resource.clone().unwrap_or_default(),
            outcome: self.outcome.clone().unwrap_or_default(),
        }
    }
}

/// Unix ms from an RFC 3339 time or an age before now.
pub(super) fn parse_time(s: &str) -> Result<u64, String> {
    let at = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let age: Duration = humantime::parse_duration(s)
                .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor an age like 24h"))?;
            SystemTime::now().checked_sub(age).ok_or("age too large")?
        }
    };
    Ok(at.duration_since(UNIX_EPOCH).map_err(|_| "time before 1970")?.as_millis() as u64)
}

pub(super) fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub(super) fn record_json(r: &AuditRecord) -> serde_json::Value {
    let e = r.event.clone().unwrap_or_default();
    json!({
        "seq": r.seq, "time": time(e.at), "at": e.at, "action": e.action, "outcome": e.outcome,
        "actor_user_id": e.actor_user_id, "actor_key_id": e.actor_key_id, "actor_session_id": e.actor_session_id,
        "client_ip": e.client_ip, "node_id": e.node_id, "resource": e.resource, "request_id": e.request_id,
        "trace_id": e.trace_id, "detail": e.detail, "before": e.before, "after": e.after, "hash": r.hash,
    })
}

pub(super) const CSV_HEADER: [&str; 17] = [
    "seq",
    "time",
    "at",
    "action",
    "outcome",
    "actor_user_id",
    "actor_key_id",
    "actor_session_id",
    "client_ip",
    "node_id",
    "resource",
    "request_id",
    "trace_id",
    "detail",
    "before",
    "after",
    "hash",
];

pub(super) fn csv_row(r: &AuditRecord) -> [String; 17] {
    let e = r.event.clone().unwrap_or_default();
    [
        r.seq.to_string(),
        time(e.at),
        e.at.to_string(),
        e.action,
        e.outcome,
        e.actor_user_id,
        e.actor_key_id,
        e.actor_session_id,
        e.client_ip,
        e.node_id.to_string(),
        e.resource,
        e.request_id,
        e.trace_id,
        e.detail,
        e.before,
        e.after,
        r.hash.clone(),
    ]
}

pub async fn run(
    mut client: AuditServiceClient<Authed>,
    cmd: AuditCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Query { filter, paging, format } => {
            let format = if json { Format::Json } else { format };
            let mut token = paging.page_token.clone();
            let mut records = Vec::new();
            let next = loop {
                let req =
                    AuditQueryRequest { filter: Some(filter.to_pb()), page_size: paging.page_size, page_token: token };
                let page = client.query(req).await.map_err(rpc_error)?.into_inner();
                records.extend(page.records);
                if !paging.all || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                token = page.next_page_token;
            };
            match format {
                Format::Json => {
                    let list: Vec<_> = records.iter().map(record_json).collect();
                    writeln!(out, "{}", json!({ "records": list, "next_page_token": next }))?;
                }
                Format::Csv => {
                    let mut w = csv::Writer::from_writer(&mut *out);
                    w.write_record(CSV_HEADER)?;
                    for r in &records {
                        w.write_record(csv_row(r))?;
                    }
                    w.flush()?;
                }
                Format::Table => {
                    writeln!(
                        out,
                        "{:<8} {:<24} {:<22} {:<8} {:<34} {:<16} RESOURCE",
                        "SEQ", "TIME", "ACTION", "OUTCOME", "ACTOR", "CLIENT"
                    )?;
                    for r in &records {
                        let e = r.event.clone().unwrap_or_default();
                        let actor = if e.actor_user_id.is_empty() { "-".to_string() } else { e.actor_user_id };
                        writeln!(
                            out,
                            "{:<8} {:<24} {:<22} {:<8} {:<34} {:<16} {}",
                            r.seq,
                            time(e.at),
                            e.action,
                            e.outcome,
                            actor,
                            e.client_ip,
                            e.resource
                        )?;
                    }
                    if !next.is_empty() {
                        writeln!(out, "more: --page-token {next}")?;
                    }
                }
            }
            Ok(())
        }
        AuditCommand::Export { filter, format } => {
            let mut stream = client
                .export(AuditExportRequest { filter: Some(filter.to_pb()) })
                .await
                .map_err(rpc_error)?
                .into_inner();
            // Written as records arrive: an export may not fit in memory.
            match format {
                ExportFormat::Csv => {
                    let mut w = csv::Writer::from_writer(&mut *out);
                    w.write_record(CSV_HEADER)?;
                    while let Some(r) = stream.message().await.map_err(rpc_error)? {
                        w.write_record(csv_row(&r))?;
                    }
                    w.flush()?;
                }
                ExportFormat::Json => {
                    while let Some(r) = stream.message().await.map_err(rpc_error)? {
                        writeln!(out, "{}", record_json(&r))?;
                    }
                }
            }
            out.flush()?;
            Ok(())
        }
        AuditCommand::Verify => {
            let v = client.verify(AuditVerifyRequest {}).await.map_err(rpc_error)?.into_inner();
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({ "intact": v.intact, "checked": v.checked, "first_bad_seq": v.first_bad_seq,
                            "problem": v.problem, "head_seq": v.head_seq, "head_hash": v.head_hash,
                            "anchor_seq": v.anchor_seq, "node_id": v.node_id })
                )?;
            } else if v.intact {
                writeln!(
                    out,
                    "audit chain intact on node {}: {} records checked (from {} to {}), head {}",
                    v.node_id,
                    v.checked,
                    v.anchor_seq + 1,
                    v.head_seq,
                    v.head_hash
                )?;
            }
            if !v.intact {
                anyhow::bail!("audit chain broken on node {} at record {}: {}", v.node_id, v.first_bad_seq, v.problem);
            }
            Ok(())
        }
    }
}
