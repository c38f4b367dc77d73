//! Upstream changes reach every node: the leader asks each provider again,
//! every `[sso] recheck_secs`, about every person with a session opened
//! through it (their sealed refresh token, opened here). A refused refresh
//! (`invalid_grant`: disabled, removed or signed out upstream) or a person
//! the rules no longer let in ends their sessions on every node
//! (`UpstreamEnd`, and the user is disabled with `offboard = "disable"`);
//! otherwise the mapping is applied again and the rotated refresh token
//! kept (`UpstreamChecked`). A provider that cannot be reached changes
//! nothing: the person keeps the session until the provider answers or the
//! session ends (docs/sso.md states the bound).

use std::time::Duration;

use gatehouse_cluster::clock::now_ms;
use gatehouse_cluster::periodic::{Periodic, Shutdown};
use gatehouse_domain::Payload;
use gatehouse_proto::events::{UpstreamChecked, UpstreamEnd};
use gatehouse_proto::state::UpstreamIdentityRecord;
use tokio::task::JoinHandle;

use super::provider::{ProviderError, Refreshed};
use super::{seal_context, Offboard, Sso};
use crate::audit::{self, Actor};
use crate::http::front::Front;

/// People asked about per round; the rest wait for the next one.
const PER_ROUND: usize = 64;

/// The re-check loop of a voter with providers and a sealing key.
pub fn start(front: Front, shutdown: Shutdown) -> Option<JoinHandle<()>> {
    let sso = front.sso.clone()?;
    if sso.providers().is_empty() || sso.sealer().is_none() {
        return None;
    }
    let every = (sso.config.recheck / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    Some(Periodic::every("sso.recheck", every, shutdown).run(move || {
        let front = front.clone();
        async move {
            round(&front).await;
            true
        }
    }))
}

/// Asks about everyone due, if this node leads; how many were asked.
pub async fn round(front: &Front) -> usize {
    let node = &front.node;
    let Some(sso) = front.sso.as_deref() else { return 0 };
    if node.leader().map(|(id, _)| id) != Some(node.id()) {
        return 0;
    }
    let interval = sso.config.recheck.as_millis() as u64;
    let due = gatehouse_domain::upstream::due(&node.view().read(), now_ms(), interval);
    let n = due.len().min(PER_ROUND);
    for identity in due.into_iter().take(PER_ROUND) {
        one(front, sso, identity).await;
    }
    n
}

async fn one(front: &Front, sso: &Sso, identity: UpstreamIdentityRecord) {
    let node = &front.node;
    let who = Actor { user_id: identity.user_id.clone(), ..Default::default() };
    let detail = |why: &str| {
        format!("provider {}; subject {}; {why}", identity.provider, gatehouse_domain::quote::quote(&identity.subject))
    };
    let end = |why: String, disable: bool| {
        let cmd = node.command(Payload::UpstreamEnd(UpstreamEnd {
            issuer: identity.issuer.clone(),
            subject: identity.subject.clone(),
            disable_user: disable,
            ..Default::default()
        }));
        let mut e = audit::event("sso.ended", "ok", &who, format!("user:{}", identity.user_id));
        e.detail = detail(&why);
        (cmd, e)
    };
    let Some(p) = sso.provider(&identity.provider) else {
        // The provider is no longer configured: nobody can vouch for the person.
        let (cmd, e) = end("the provider is no longer configured".into(), false);
        propose(front, cmd, e).await;
        return;
    };
    let disable = p.config.offboard == Offboard::Disable;
    let context = seal_context(&identity.issuer, &identity.subject);
    let opened = identity.refresh_token.as_ref().map(|s| sso.sealer().map(|k| k.open(s, &context)));
    let token = match opened {
        Some(Some(Ok(t))) => String::from_utf8_lossy(&t).into_owned(),
        other => {
            tracing::warn!(provider = %p.config.id, "a refresh token could not be opened (key missing or altered)");
            let why = if matches!(other, Some(Some(Err(_)))) {
                "the refresh token did not open"
            } else {
                "no key opens the refresh token"
            };
            let (cmd, e) = end(why.into(), false);
            propose(front, cmd, e).await;
            return;
        }
    };
    let verdict = p.refresh(&token, &identity.subject).await;
    let (claims, new_token) = match verdict {
        Ok(Refreshed::Alive { claims, refresh_token }) => (claims, refresh_token),
        Ok(Refreshed::Gone(why)) => {
            let (cmd, e) = end(format!("the provider refused the refresh token ({why})"), disable);
            propose(front, cmd, e).await;
            return;
        }
        Err(ProviderError::Invalid(why)) => {
            let (cmd, e) = end(format!("the provider's refreshed ID token was refused: {why}"), false);
            propose(front, cmd, e).await;
            return;
        }
        Err(e) => {
            tracing::warn!(provider = %p.config.id, error = %e, "a re-check could not reach the provider");
            return;
        }
    };
    let rules = &p.config.rules;
    let mapped = match &claims {
        Some(c) => {
            if let Err(r) = rules.admit(c) {
                let (cmd, e) = end(format!("the rules no longer let the person in: {}", r.reason()), disable);
                propose(front, cmd, e).await;
                return;
            }
            let view = node.view().read();
            rules.roles(c).into_iter().filter(|r| gatehouse_domain::roles::exists(&view, r)).collect()
        }
        // No claims came back: the roles stay as they are.
        None => identity.granted_roles.clone(),
    };
    let before = node.view().read().user(&identity.user_id).map(|u| u.roles.clone()).unwrap_or_default();
    let sealed = new_token.map(|t| sso.sealer().expect("checked at start").seal(t.as_bytes(), &context));
    let cmd = node.command(Payload::UpstreamChecked(UpstreamChecked {
        issuer: identity.issuer.clone(),
        subject: identity.subject.clone(),
        mapped_roles: mapped,
        refresh_token: sealed,
    }));
    match node.propose_one(cmd).await {
        Ok(r) if r.code == 0 => {}
        Ok(r) => {
            tracing::info!(message = %r.message, "a re-check was not applied");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "a re-check could not be written");
            return;
        }
    }
    let after = node.view().read().user(&identity.user_id).map(|u| u.roles.clone()).unwrap_or_default();
    if after != before {
        let mut e = audit::event("sso.roles_changed", "ok", &who, format!("user:{}", identity.user_id));
        e.before = serde_json::json!({ "roles": before }).to_string();
        e.after = serde_json::json!({ "roles": after }).to_string();
        e.detail = detail("the provider's groups changed");
        node.audit(e);
    }
}

async fn propose(front: &Front, cmd: gatehouse_domain::Command, event: gatehouse_proto::events::AuditEvent) {
    match front.node.propose_one(cmd).await {
        Ok(r) if r.code == 0 => front.node.audit(event),
        Ok(r) => tracing::info!(message = %r.message, "ending an upstream identity's sessions was not applied"),
        Err(e) => tracing::warn!(error = %e, "ending an upstream identity's sessions could not be written"),
    }
}
