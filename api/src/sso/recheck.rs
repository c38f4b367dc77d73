//! Upstream changes reach every node: the leader asks each provider again,
//! every `[sso] recheck_secs`, about every person it vouched for who is
//! still active here (a session or not: API keys count too), with their
//! sealed refresh token, opened here.
//!
//! - A refused refresh (`invalid_grant`: disabled, removed or signed out
//!   upstream) ends the person's sessions on every node (`UpstreamEnd`) and,
//!   with `offboard = "disable"`, disables the user (its keys stop too).
//! - Claims the rules no longer let in, or a refreshed ID token that fails
//!   its checks, end the sessions (never a disable: a provider sending
//!   fewer claims on a refresh is no offboarding).
//! - Otherwise the mapping is applied again (only when claims came back)
//!   and a rotated refresh token is kept (`UpstreamChecked`), written with
//!   retries: a rotation lost to a failed write would make the next check
//!   look like an offboarding, so that one only ends sessions.
//! - A provider that cannot be reached, or that errs in any other way
//!   (`invalid_client`, 5xx), changes nothing: the person is asked again
//!   after an interval (backoff), and others are not held up.
//!
//! Each refresh is made only while this node leads and is fresh, so two
//! leaders never spend the same refresh token.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gatehouse_cluster::clock::now_ms;
use gatehouse_cluster::periodic::{Periodic, Shutdown};
use gatehouse_domain::upstream::identity_key;
use gatehouse_domain::Payload;
use gatehouse_proto::events::{UpstreamChecked, UpstreamEnd};
use gatehouse_proto::state::UpstreamIdentityRecord;
use tokio::task::JoinHandle;

use super::provider::{ProviderError, Refreshed};
use super::{seal_context, Offboard, Sso};
use crate::audit::{self, Actor};
use crate::http::front::Front;
use crate::seal::SealError;

/// People asked about per round; the rest wait for the next one.
const PER_ROUND: usize = 256;
/// Refreshes under way at once.
const AT_ONCE: usize = 8;
/// Tries of a write that keeps a rotated refresh token.
const WRITE_TRIES: usize = 3;

/// What the loop remembers between rounds, on this node.
#[derive(Debug, Default)]
pub struct Memory {
    /// Identity → when to ask again after the provider could not answer.
    backoff: HashMap<String, Instant>,
    /// Identities whose rotated refresh token may not have been written.
    unsure: HashSet<String>,
}

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

fn leads(front: &Front) -> bool {
    front.node.leader().map(|(id, _)| id) == Some(front.node.id())
}

/// Asks about everyone due, if this node leads; how many were asked.
pub async fn round(front: &Front) -> usize {
    let Some(sso) = front.sso.as_deref() else { return 0 };
    if !leads(front) {
        return 0;
    }
    let interval = sso.config.recheck.as_millis() as u64;
    let now = Instant::now();
    let due: Vec<UpstreamIdentityRecord> = {
        let mut memory = sso.rechecks.lock().unwrap_or_else(|p| p.into_inner());
        memory.backoff.retain(|_, until| *until > now);
        gatehouse_domain::upstream::due(&front.node.view().read(), now_ms(), interval)
            .into_iter()
            .filter(|i| !memory.backoff.contains_key(&identity_key(&i.issuer, &i.subject)))
            .take(PER_ROUND)
            .collect()
    };
    let n = due.len();
    futures::stream::iter(due).for_each_concurrent(AT_ONCE, |identity| one(front, sso, identity)).await;
    n
}

async fn one(front: &Front, sso: &Sso, identity: UpstreamIdentityRecord) {
    let node = &front.node;
    let key = identity_key(&identity.issuer, &identity.subject);
    let remember = |f: &dyn Fn(&mut Memory)| f(&mut sso.rechecks.lock().unwrap_or_else(|p| p.into_inner()));
    // Only a fresh leader spends a refresh token.
    if !leads(front) || !node.ensure_fresh().await {
        return;
    }
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
    let Some(sealer) = sso.sealer() else { return };
    let context = seal_context(&identity.issuer, &identity.subject);
    let Some(sealed) = identity.refresh_token.as_ref() else { return };
    let token = match sealer.open(sealed, &context) {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(SealError::UnknownKey(id)) => {
            // A key missing from this node's [secrets]: its operator's to
            // fix; nobody is signed out for it.
            tracing::error!(key_id = %id, provider = %p.config.id, "a refresh token is sealed under a key this node does not have ([secrets])");
            remember(&|m| {
                m.backoff.insert(key.clone(), Instant::now() + sso.config.recheck);
            });
            return;
        }
        Err(SealError::Corrupt) => {
            let (cmd, e) = end("the refresh token did not open (altered)".into(), false);
            propose(front, cmd, e).await;
            return;
        }
    };
    let unsure = sso.rechecks.lock().unwrap_or_else(|p| p.into_inner()).unsure.contains(&key);
    let (claims, new_token) = match p.refresh(&token, &identity.subject).await {
        Ok(Refreshed::Alive { claims, refresh_token }) => (claims, refresh_token),
        Ok(Refreshed::Gone(why)) => {
            // After a rotation that may not have been written, a refused
            // token may be our own old one: sessions end, nobody is disabled.
            let disable = p.config.offboard == Offboard::Disable && !unsure;
            let (cmd, e) = end(format!("the provider refused the refresh token ({why})"), disable);
            propose(front, cmd, e).await;
            remember(&|m| {
                m.unsure.remove(&key);
            });
            return;
        }
        Err(ProviderError::Invalid(why)) => {
            let (cmd, e) = end(format!("the provider's refreshed ID token was refused: {why}"), false);
            propose(front, cmd, e).await;
            return;
        }
        Err(e) => {
            tracing::warn!(provider = %p.config.id, error = %e, "a re-check could not reach the provider");
            remember(&|m| {
                m.backoff.insert(key.clone(), Instant::now() + sso.config.recheck);
            });
            return;
        }
    };
    let rules = &p.config.rules;
    // Claims without the address or the groups say nothing of them: the
    // rules and the mapping are applied again only to what came back.
    let claims = claims
        .filter(|c| c.email.is_some() && (c.groups_sent || rules.roles.is_empty() && rules.allowed_groups.is_empty()));
    let mapped = match &claims {
        Some(c) => {
            if let Err(r) = rules.admit(c) {
                let (cmd, e) = end(format!("the rules no longer let the person in: {}", r.reason()), false);
                propose(front, cmd, e).await;
                return;
            }
            let view = node.view().read();
            Some(rules.roles(c).into_iter().filter(|r| gatehouse_domain::roles::exists(&view, r)).collect())
        }
        None => None,
    };
    let before = node.view().read().user(&identity.user_id).map(|u| u.roles.clone()).unwrap_or_default();
    // A rotated token is kept; one under an older key is sealed again under the current one.
    let reseal = match new_token {
        Some(t) => Some(t),
        None if sealed.key_id != sealer.current() => Some(token),
        None => None,
    };
    let rotated = reseal.is_some();
    let cmd = node.command(Payload::UpstreamChecked(UpstreamChecked {
        issuer: identity.issuer.clone(),
        subject: identity.subject.clone(),
        keep_roles: mapped.is_none(),
        mapped_roles: mapped.unwrap_or_default(),
        refresh_token: reseal.map(|t| sealer.seal(t.as_bytes(), &context)),
    }));
    // The same command (its request id) on every try: applied once.
    let mut written = false;
    for _ in 0..WRITE_TRIES {
        match node.propose_one(cmd.clone()).await {
            Ok(r) if r.code == 0 => {
                written = true;
                break;
            }
            Ok(r) => {
                tracing::info!(message = %r.message, "a re-check was not applied");
                break;
            }
            Err(e) => tracing::warn!(error = %e, "a re-check could not be written; trying again"),
        }
    }
    remember(&|m| {
        if written || !rotated {
            m.unsure.remove(&key);
        } else {
            m.unsure.insert(key.clone());
        }
    });
    if !written {
        return;
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
