//! How results print: times, pages, revocation reports.

use gatehouse_proto::admin::*;
use serde_json::json;
use std::io::Write;

use super::args::*;
use super::client::*;

pub(super) fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// Fetches one page, or every page with `--all`; returns the items and the
/// token of the next page (empty at the end).
pub(super) async fn pages<T, Fut>(
    paging: &Paging,
    mut fetch: impl FnMut(String) -> Fut,
) -> anyhow::Result<(Vec<T>, String)>
where
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut all = Vec::new();
    let mut token = paging.page_token.clone();
    loop {
        let (items, next) = fetch(token).await.map_err(rpc_error)?;
        all.extend(items);
        if !paging.all || next.is_empty() {
            return Ok((all, next));
        }
        token = next;
    }
}

pub(super) fn print_next(next: &str, out: &mut impl Write) -> anyhow::Result<()> {
    if !next.is_empty() {
        writeln!(out, "(more: --page-token {next}, or --all)")?;
    }
    Ok(())
}

pub(super) fn print_revoked(r: &Revoked, what: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        writeln!(
            out,
            "{}",
            json!({ "revoked": r.count, "log_index": r.log_index, "applied_on": r.applied_on, "unreachable": r.unreachable })
        )?;
    } else {
        writeln!(out, "revoked {} {what} (log index {})", r.count, r.log_index)?;
        if !r.applied_on.is_empty() || !r.unreachable.is_empty() {
            writeln!(out, "applied on nodes {:?}; unreachable {:?}", r.applied_on, r.unreachable)?;
        }
    }
    Ok(())
}
