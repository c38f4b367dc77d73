//! `gatehouse admin watch`: the committed log as it grows.

use gatehouse_proto::admin::event_service_client::EventServiceClient;
use gatehouse_proto::admin::*;
use serde_json::json;
use std::io::Write;

use super::client::*;

/// The snake_case name of a command's payload, e.g. `create_api_key`.
pub(super) fn payload_name(cmd: &gatehouse_proto::events::Command) -> String {
    serde_json::to_value(&cmd.payload)
        .ok()
        .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()))
        .unwrap_or_else(|| "none".into())
}

pub(super) async fn watch(
    mut client: EventServiceClient<Authed>,
    from: u64,
    limit: Option<u64>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut stream = client.watch(WatchRequest { from_index: from }).await.map_err(rpc_error)?.into_inner();
    if !json {
        writeln!(out, "{:<10} {:<6} {:<24} {:<6} DETAIL", "INDEX", "TERM", "WHAT", "NODE")?;
    }
    let mut seen = 0;
    while limit.is_none_or(|l| seen < l) {
        let Some(event) = stream.message().await.map_err(rpc_error)? else { break };
        seen += 1;
        match &event.kind {
            Some(watch_event::Kind::Command(c)) if json => {
                let body = serde_json::to_value(&c.payload)?;
                writeln!(
                    out,
                    "{}",
                    json!({ "index": event.index, "term": event.term, "position": event.position,
                            "proposed_at": c.proposed_at, "origin_node": c.origin_node, "request_id": c.request_id,
                            "command": body })
                )?;
            }
            Some(watch_event::Kind::Command(c)) => {
                let detail = serde_json::to_value(&c.payload)?
                    .as_object()
                    .and_then(|o| o.values().next().cloned())
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{:<10} {:<6} {:<24} {:<6} {detail}",
                    event.index,
                    event.term,
                    payload_name(c),
                    c.origin_node
                )?;
            }
            Some(watch_event::Kind::Membership(m)) if json => {
                writeln!(
                    out,
                    "{}",
                    json!({ "index": event.index, "term": event.term, "position": event.position,
                            "membership": { "voters": m.voters, "learners": m.learners } })
                )?;
            }
            Some(watch_event::Kind::Membership(m)) => {
                let detail = format!("voters {:?} learners {:?}", m.voters, m.learners);
                writeln!(out, "{:<10} {:<6} {:<24} {:<6} {detail}", event.index, event.term, "membership", "-")?;
            }
            None => {}
        }
        out.flush()?;
    }
    Ok(())
}
