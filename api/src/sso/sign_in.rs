//! A sign-in through a provider, on a voter: [`start`] makes the flow and
//! the provider's URL; [`finish`] takes the callback, trades the code for
//! tokens, checks them and the rules, and writes `UpstreamSignIn` (the flow
//! spent, the user found or made, its roles mapped, the session opened,
//! the refresh token sealed) as one command. Every refusal is audited with
//! the provider, the subject when known, and why.

use std::net::IpAddr;
use std::time::Duration;

use gatehouse_domain::upstream::{EMAIL_TAKEN, FLOW_USED, NOT_LINKED, USERNAME_TAKEN};
use gatehouse_domain::Payload;
use gatehouse_proto::events::{CreateSession, UpstreamSignIn, UserStatus};
use gatehouse_proto::state::UserRecord;

use super::flow::{Flow, Mismatch};
use super::provider::ProviderError;
use super::rules::Refusal;
use super::{seal_context, Sso};
use crate::audit::{self, Actor};
use crate::http::front::Front;
use crate::sign_in::check::{self, Opened};
use crate::ApiError;
use gatehouse_cluster::clock::now_ms;

/// A started sign-in: where the browser goes, and the flow cookie's value.
pub struct Started {
    pub url: String,
    pub cookie: String,
}

/// The provider's callback, with this browser's flow cookie.
pub struct Callback {
    pub provider: String,
    pub code: String,
    pub state: String,
    /// The flow cookie's value (empty: none).
    pub flow: String,
    pub client_ip: IpAddr,
    pub user_agent: String,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback").field("provider", &self.provider).field("client_ip", &self.client_ip).finish()
    }
}

/// Why a sign-in through a provider opened no session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The callback is not this browser's flow (or it is too old).
    Flow(Mismatch),
    /// The flow was completed already (a replayed callback).
    FlowUsed,
    /// The provider refused the code (used, expired) or answered with an error.
    Provider,
    /// The provider's ID token failed a check.
    Token,
    /// The rules refuse this person.
    Rules(Refusal),
    /// No user is linked and this provider makes none.
    NotLinked,
    /// A first sign-in whose username is taken.
    UsernameTaken,
    /// A first sign-in whose address another user holds.
    EmailTaken,
    /// The user is disabled here.
    Disabled,
}

impl Why {
    /// The refusal as one fixed word (how a voter tells a front).
    pub fn word(&self) -> &'static str {
        match self {
            Why::Flow(_) => "flow",
            Why::FlowUsed => "flow_used",
            Why::Provider => "provider",
            Why::Token => "token",
            Why::Rules(Refusal::NoEmail) => "no_email",
            Why::Rules(Refusal::EmailUnverified) => "email_unverified",
            Why::Rules(Refusal::Domain) => "domain",
            Why::Rules(Refusal::HostedDomain) => "hosted_domain",
            Why::Rules(Refusal::Group) => "group",
            Why::Rules(Refusal::NoUsername) => "no_username",
            Why::NotLinked => "not_linked",
            Why::UsernameTaken => "username_taken",
            Why::EmailTaken => "email_taken",
            Why::Disabled => "disabled",
        }
    }

    /// The refusal a word stands for (a flow mismatch comes back as `State`).
    pub fn from_word(word: &str) -> Option<Why> {
        Some(match word {
            "flow" => Why::Flow(Mismatch::State),
            "flow_used" => Why::FlowUsed,
            "provider" => Why::Provider,
            "token" => Why::Token,
            "no_email" => Why::Rules(Refusal::NoEmail),
            "email_unverified" => Why::Rules(Refusal::EmailUnverified),
            "domain" => Why::Rules(Refusal::Domain),
            "hosted_domain" => Why::Rules(Refusal::HostedDomain),
            "group" => Why::Rules(Refusal::Group),
            "no_username" => Why::Rules(Refusal::NoUsername),
            "not_linked" => Why::NotLinked,
            "username_taken" => Why::UsernameTaken,
            "email_taken" => Why::EmailTaken,
            "disabled" => Why::Disabled,
            _ => return None,
        })
    }
}

/// A failed sign-in: refused (audited), or a node or provider that could not answer.
#[derive(Debug)]
pub enum SsoError {
    Refused(Why),
    /// The provider is unreachable.
    Unavailable,
    Api(ApiError),
}

impl From<ApiError> for SsoError {
    fn from(e: ApiError) -> SsoError {
        SsoError::Api(e)
    }
}

fn sso(front: &Front) -> Result<&Sso, ApiError> {
    front.sso.as_deref().ok_or_else(|| ApiError::NotFound("no such endpoint".into()))
}

/// Starts a sign-in through `provider`; `return_to` is checked already.
pub async fn start(front: &Front, provider: &str, return_to: &str) -> Result<Started, SsoError> {
    let p = sso(front)?.provider(provider).ok_or_else(|| ApiError::NotFound("no such provider".into()))?;
    let flow = Flow::new(provider, now_ms(), return_to);
    let url = p.authorize_url(&flow.state(), &flow.nonce(), &flow.verifier()).await.map_err(|e| {
        tracing::warn!(provider, error = %e, "could not start a sign-in through the provider");
        SsoError::Unavailable
    })?;
    Ok(Started { url, cookie: flow.cookie_value() })
}

/// Finishes a sign-in (see the module docs): the session and where to go.
#[tracing::instrument(level = "info", name = "sso.finish", skip_all, fields(provider = %cb.provider, outcome))]
pub async fn finish(front: &Front, cb: Callback) -> Result<(Opened, String), SsoError> {
    let sso = sso(front)?;
    let node = &front.node;
    let ip = cb.client_ip.to_string();
    let anonymous = Actor { client_ip: ip.clone(), ..Default::default() };
    let refuse = |why: Why, subject: Option<&str>, detail: &str| {
        tracing::Span::current().record("outcome", format!("{why:?}"));
        let mut e = audit::event("sso.refused", "denied", &anonymous, format!("provider:{}", cb.provider));
        let subject = subject.map_or("unknown".into(), |s| gatehouse_domain::quote::quote(s).to_string());
        e.detail = format!("provider {}; subject {subject}; {detail}", cb.provider);
        node.audit(e);
        SsoError::Refused(why)
    };
    let Some(p) = sso.provider(&cb.provider) else { return Err(ApiError::NotFound("no such provider".into()).into()) };
    let flow = Flow::parse(&cb.flow).ok_or(Mismatch::NoFlow);
    let flow = match flow.and_then(|f| f.check(&cb.provider, &cb.state, now_ms()).map(|()| f)) {
        Ok(f) => f,
        Err(m) => return Err(refuse(Why::Flow(m), None, &format!("the callback is not this browser's flow ({m:?})"))),
    };
    // Read your writes, then a replay costs no call to the provider.
    node.catch_up(Duration::from_millis(500)).await;
    if gatehouse_domain::upstream::flow_spent(&node.view().read(), &flow.state_sha256()) {
        return Err(refuse(Why::FlowUsed, None, "the callback was used already"));
    }
    let verified = match p.exchange(&cb.code, &flow.verifier(), &flow.nonce()).await {
        Ok(v) => v,
        Err(ProviderError::Unavailable(e)) => {
            tracing::warn!(error = %e, "the provider could not be reached to finish a sign-in");
            return Err(SsoError::Unavailable);
        }
        Err(ProviderError::Refused(e)) => {
            return Err(refuse(Why::Provider, None, &format!("the provider refused the code: {e}")))
        }
        Err(ProviderError::Invalid(e)) => return Err(refuse(Why::Token, None, &format!("ID token refused: {e}"))),
    };
    let subject = verified.claims.subject.clone();
    // A subject the log cannot hold (OIDC Core: at most 255 ASCII
    // characters) is a token refused, not a node failing.
    let subject_ok = !subject.is_empty()
        && subject.len() <= gatehouse_domain::upstream::MAX_SUBJECT
        && !subject.chars().any(char::is_control);
    if !subject_ok {
        return Err(refuse(Why::Token, None, "ID token refused: the subject is empty, too long or not printable"));
    }
    let rules = &p.config.rules;
    let email = match rules.admit(&verified.claims) {
        Ok(e) => e,
        Err(r) => return Err(refuse(Why::Rules(r), Some(&subject), r.reason())),
    };
    let (linked, mapped) = {
        let view = node.view().read();
        let linked = view.upstream_identity(&verified.issuer, &subject).and_then(|i| view.user(&i.user_id)).cloned();
        // A role the mapping names that does not exist is left out (and said).
        let (known, unknown): (Vec<String>, Vec<String>) =
            rules.roles(&verified.claims).into_iter().partition(|r| gatehouse_domain::roles::exists(&view, r));
        if !unknown.is_empty() {
            tracing::warn!(provider = %cb.provider, roles = ?unknown, "the role mapping names roles that do not exist");
        }
        (linked, known)
    };
    let (user, new_user_id) = match linked {
        Some(u) => (u, String::new()),
        None if !p.config.create_users => {
            return Err(refuse(Why::NotLinked, Some(&subject), "no user is linked and this provider makes none"));
        }
        None => {
            let Some(username) = rules.username(&verified.claims, &email) else {
                return Err(refuse(Why::Rules(Refusal::NoUsername), Some(&subject), Refusal::NoUsername.reason()));
            };
            let id = gatehouse_cluster::ids::new_id();
            let u = UserRecord {
                user_id: id.clone(),
                username,
                email: email.clone(),
                roles: mapped.clone(),
                ..Default::default()
            };
            (u, id)
        }
    };
    if !new_user_id.is_empty() && node.view().read().user_by_name(&user.username).is_some() {
        return Err(refuse(Why::UsernameTaken, Some(&subject), USERNAME_TAKEN));
    }
    let (session, pending) = check::session_for(&front.config, &user, &ip, &cb.user_agent);
    // Without a refresh token the provider cannot be asked again: the
    // session lasts no longer than a re-check interval.
    let cap = now_ms() + sso.config.recheck.as_millis() as u64;
    let session = match &verified.refresh_token {
        Some(_) => session,
        None => CreateSession { expires_at: session.expires_at.min(cap), ..session },
    };
    let refresh_token = match (&verified.refresh_token, sso.sealer()) {
        (Some(t), Some(s)) => Some(s.seal(t.as_bytes(), &seal_context(&verified.issuer, &subject))),
        _ => None,
    };
    let session_id = session.session_id.clone();
    let cmd = node.command(Payload::UpstreamSignIn(UpstreamSignIn {
        provider: cb.provider.clone(),
        issuer: verified.issuer.clone(),
        subject: subject.clone(),
        flow_sha256: flow.state_sha256().to_vec(),
        flow_expires_at: flow.expires_at(),
        new_user_id: new_user_id.clone(),
        username: user.username.clone(),
        email,
        mapped_roles: mapped,
        session: Some(CreateSession { user_id: String::new(), ..session }),
        refresh_token,
        upstream_sid: verified.sid.clone().unwrap_or_default(),
    }));
    let request_id = cmd.request_id.clone();
    let applied = node.propose(vec![cmd]).await?;
    let result = applied.results.first().cloned().unwrap_or_default();
    if let Err(e) = ApiError::check(&result) {
        let why = match &e {
            ApiError::FailedPrecondition(m) if m == FLOW_USED => Why::FlowUsed,
            ApiError::NotFound(m) if m == NOT_LINKED => Why::NotLinked,
            ApiError::AlreadyExists(m) if m == USERNAME_TAKEN => Why::UsernameTaken,
            ApiError::AlreadyExists(m) if m == EMAIL_TAKEN => Why::EmailTaken,
            ApiError::FailedPrecondition(m) if m == "user is disabled" => Why::Disabled,
            _ => return Err(e.into()),
        };
        return Err(refuse(why, Some(&subject), &e.to_string()));
    }
    let user_id = result.id.clone();
    tracing::Span::current().record("outcome", "ok");
    let who = Actor { user_id: user_id.clone(), session_id: session_id.clone(), client_ip: ip, ..Default::default() };
    let detail = format!("provider {}; subject {}", cb.provider, gatehouse_domain::quote::quote(&subject));
    if user_id == new_user_id {
        let mut e = audit::event("sso.user_created", "ok", &who, format!("user:{user_id}"));
        e.detail = detail.clone();
        node.audit(e);
    }
    let mut e = audit::event("sso.signed_in", "ok", &who, format!("session:{session_id}"));
    e.detail = detail;
    e.request_id = request_id;
    node.audit(e);
    // The user as the log left it (roles mapped, the username of a linked user).
    let mut opened = pending.opened(applied.log_index);
    if let Some(u) = node.view().read().user(&user_id).filter(|u| u.status == UserStatus::Active as i32) {
        opened.user_id = u.user_id.clone();
        opened.username = u.username.clone();
        opened.roles = u.roles.clone();
    }
    Ok((opened, flow.return_to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_travels_as_its_word() {
        let all = [
            Why::Flow(Mismatch::State),
            Why::FlowUsed,
            Why::Provider,
            Why::Token,
            Why::Rules(Refusal::NoEmail),
            Why::Rules(Refusal::EmailUnverified),
            Why::Rules(Refusal::Domain),
            Why::Rules(Refusal::HostedDomain),
            Why::Rules(Refusal::Group),
            Why::Rules(Refusal::NoUsername),
            Why::NotLinked,
            Why::UsernameTaken,
            Why::EmailTaken,
            Why::Disabled,
        ];
        for why in all {
            assert_eq!(Why::from_word(why.word()), Some(why.clone()), "{why:?}");
        }
        assert_eq!(Why::from_word("something else"), None);
    }
}
