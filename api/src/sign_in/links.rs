//! Sign-in links, on a voter: asking for one (the user found by address,
//! the link written through the log, the mail queued) and spending one
//! (the link and a new session in one command). A front sends both on
//! ([`super::forward`]), so the link's token is made where a stolen front
//! never sees it, and only the voters' mailer sends it.
//!
//! What the asker learns is the same in every case: nothing. Whether the
//! address has an account, is outside the allowed domains, is shared by two
//! accounts, or has too many links out, the page says "if this address
//! has an account, a link is on its way", and the work (the lookup, the
//! write, the mail) happens after the answer. Each case is audited.

use std::net::IpAddr;
use std::time::Duration;

use gatehouse_domain::links::{self, EXPIRED, OTHER_BROWSER, TOO_MANY, UNKNOWN};
use gatehouse_domain::Payload;
use gatehouse_proto::events::{CreateSession, CreateSignInLink, SpendSignInLink, UserStatus};

use super::check::{self, Opened};
use crate::audit::{self, Actor};
use crate::http::front::Front;
use crate::mail::{domain_of, Outgoing};
use crate::ApiError;
use gatehouse_cluster::clock::now_ms;

/// The sign-in link settings (`[pages]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSettings {
    /// How long a link may be used.
    pub ttl: Duration,
    /// Unspent links a user may hold at once (mails per address per `ttl`).
    pub per_address: u32,
    /// Addresses in these domains (exactly, lowercase) may ask; empty: any.
    pub allowed_domains: Vec<String>,
}

impl Default for LinkSettings {
    fn default() -> LinkSettings {
        LinkSettings { ttl: Duration::from_secs(15 * 60), per_address: 3, allowed_domains: Vec::new() }
    }
}

impl LinkSettings {
    /// Whether `email`'s domain may ask for a link.
    pub fn allows(&self, email: &str) -> bool {
        let domain = email.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        self.allowed_domains.is_empty() || domain.is_some_and(|d| self.allowed_domains.contains(&d))
    }
}

/// The longest address a form may carry.
pub const MAX_EMAIL: usize = 254;

/// A person asks for a link.
#[derive(Clone)]
pub struct LinkRequest {
    pub email: String,
    /// SHA-256 of the secret in the asking browser's link cookie.
    pub browser_sha256: [u8; 32],
    pub client_ip: IpAddr,
    /// Where the browser goes once signed in (already checked).
    pub return_to: String,
}

impl std::fmt::Debug for LinkRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkRequest").field("client_ip", &self.client_ip).finish_non_exhaustive()
    }
}

/// A browser spends a link.
pub struct LinkSpend {
    pub token: String,
    pub browser_sha256: [u8; 32],
    pub client_ip: IpAddr,
    pub user_agent: String,
}

impl std::fmt::Debug for LinkSpend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSpend").field("client_ip", &self.client_ip).finish_non_exhaustive()
    }
}

/// Why a spend opened no session, as the page tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Used already, or never a link.
    Unknown,
    Expired,
    /// Asked for in another browser (a forwarded mail).
    OtherBrowser,
    /// The account cannot sign in (disabled since).
    Disabled,
}

/// What apply says of a session for a user who cannot sign in
/// (`gatehouse_domain::sessions::create`).
const USER_DISABLED: &str = "user is disabled";
const NO_SUCH_USER: &str = "no such user";

impl Refused {
    /// The refusal an error of [`spend`] stands for, if it is one (anything
    /// else, say a cluster still being upgraded, is no verdict on the link).
    pub fn of(e: &ApiError) -> Option<Refused> {
        match e {
            ApiError::NotFound(m) if m == UNKNOWN => Some(Refused::Unknown),
            ApiError::FailedPrecondition(m) if m == EXPIRED => Some(Refused::Expired),
            ApiError::FailedPrecondition(m) if m == OTHER_BROWSER => Some(Refused::OtherBrowser),
            ApiError::FailedPrecondition(m) if m == USER_DISABLED => Some(Refused::Disabled),
            ApiError::NotFound(m) if m == NO_SUCH_USER => Some(Refused::Disabled),
            _ => None,
        }
    }
}

/// Link requests one node works on at once; past this, a request gets the
/// same answer and is dropped (logged): a flood cannot pile up work.
const REQUESTS_AT_ONCE: usize = 32;

static UNDER_WAY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(REQUESTS_AT_ONCE);

/// A place for one link request's work, if there is one.
pub(super) fn place() -> Option<tokio::sync::SemaphorePermit<'static>> {
    let permit = UNDER_WAY.try_acquire().ok();
    if permit.is_none() {
        tracing::warn!("too many sign-in link requests under way: one was dropped");
    }
    permit
}

/// The settings and mailer a voter needs to send links, or why it cannot.
pub(super) fn sending(
    front: &Front,
) -> Result<(&crate::pages::PagesConfig, &LinkSettings, &crate::mail::Mailer), ApiError> {
    let off = || ApiError::FailedPrecondition("sign-in links are off on this node".into());
    let pages = front.config.pages.as_deref().ok_or_else(off)?;
    let settings = pages.links.as_ref().ok_or_else(off)?;
    let mailer = front.mailer.as_ref().ok_or_else(off)?;
    Ok((pages, settings, mailer))
}

/// Handles a request for a link (see the module docs). `Ok` whatever the
/// address; an error only when this node cannot send links at all.
#[tracing::instrument(level = "info", name = "sign_in.link_request", skip_all, fields(outcome))]
pub async fn request(front: &Front, req: LinkRequest) -> Result<(), ApiError> {
    let (pages, settings, mailer) = sending(front)?;
    let node = &front.node;
    let anonymous = Actor { client_ip: req.client_ip.to_string(), ..Default::default() };
    let outcome = |what: &'static str| {
        tracing::Span::current().record("outcome", what);
    };
    let refuse = |why: &str| {
        let mut e = audit::event("sign_in.link_refused", "denied", &anonymous, "user:unknown".into());
        e.detail = format!("{why}; address domain {}", gatehouse_domain::quote::quote(domain_of(&req.email)));
        node.audit(e);
    };
    let email = req.email.trim();
    if gatehouse_domain::users::validate_email(email).is_err() {
        outcome("malformed");
        refuse("not an address");
        return Ok(());
    }
    if !settings.allows(email) {
        outcome("domain");
        refuse("domain not allowed");
        return Ok(());
    }
    // Read your writes: the user may have been made a moment ago elsewhere.
    node.catch_up(Duration::from_millis(500)).await;
    let found: Vec<_> = node
        .view()
        .read()
        .users()
        .filter(|u| u.status == UserStatus::Active as i32 && u.email.eq_ignore_ascii_case(email))
        .take(2)
        .cloned()
        .collect();
    let user = match found.as_slice() {
        [one] => one,
        [] => {
            outcome("unknown");
            refuse("no active account has this address");
            return Ok(());
        }
        _ => {
            // Which account the person meant cannot be told: none is opened.
            outcome("ambiguous");
            refuse("more than one account has this address");
            return Ok(());
        }
    };
    let who = Actor { user_id: user.user_id.clone(), ..anonymous.clone() };
    let max_live = settings.per_address.clamp(1, links::MAX_LIVE);
    let limited = |detail: String| {
        tracing::Span::current().record("outcome", "limited");
        let mut ev = audit::event("sign_in.link_refused", "limited", &who, format!("user:{}", user.user_id));
        ev.detail = detail;
        node.audit(ev);
    };
    // Over the address's limit: refused here, without a log write (apply
    // refuses a race past it all the same).
    if !links::may_ask(&node.view().read(), &user.user_id, max_live, now_ms()) {
        limited(TOO_MANY.into());
        return Ok(());
    }
    let minted = crate::mint::new_link_token();
    let link_id = gatehouse_cluster::ids::new_id();
    let cmd = node.command(Payload::CreateSignInLink(CreateSignInLink {
        link_id: link_id.clone(),
        user_id: user.user_id.clone(),
        token_sha256: minted.token_sha256.to_vec(),
        browser_sha256: req.browser_sha256.to_vec(),
        expires_at: now_ms() + settings.ttl.as_millis() as u64,
        max_live,
    }));
    let result = node.propose_one(cmd).await?;
    match ApiError::check(&result) {
        Ok(()) => {}
        Err(ApiError::FailedPrecondition(m)) if m == TOO_MANY => {
            limited(m);
            return Ok(());
        }
        Err(e) => {
            outcome("refused");
            let mut ev = audit::event("sign_in.link_refused", "failed", &who, format!("user:{}", user.user_id));
            ev.detail = e.to_string();
            node.audit(ev);
            return Err(e);
        }
    }
    let url = link_url(pages, &minted.token, &req.return_to);
    let minutes = settings.ttl.as_secs().div_ceil(60);
    let product = &pages.brand.product_name;
    let text = format!(
        "Hello {name},\n\nsomeone (hopefully you) asked to sign in to {product} with this address.\n\
         Open this link in the same browser to sign in; it works once, for {minutes} minutes:\n\n{url}\n\n\
         If you did not ask, ignore this mail: nobody can use the link from another browser.\n",
        name = user.username,
    );
    let sent = mailer.send(Outgoing { to: user.email.clone(), subject: format!("Sign in to {product}"), text });
    outcome(if sent { "ok" } else { "dropped" });
    let mut ev =
        audit::event("sign_in.link_requested", if sent { "ok" } else { "failed" }, &who, format!("link:{link_id}"));
    if !sent {
        ev.detail = "the mail queue was full".into();
    }
    node.audit(ev);
    Ok(())
}

/// The link a mail carries: the pages' public address, the token, and the
/// return URL.
fn link_url(pages: &crate::pages::PagesConfig, token: &str, return_to: &str) -> String {
    let base = pages.public_url.as_deref().unwrap_or("").trim_end_matches('/');
    let mut url = format!("{base}/login/link?token={token}");
    if !return_to.is_empty() {
        url += "&rd=";
        url.extend(url::form_urlencoded::byte_serialize(return_to.as_bytes()));
    }
    url
}

/// Spends a link and opens its session (see the module docs).
#[tracing::instrument(level = "info", name = "sign_in.link_spend", skip_all, fields(outcome))]
pub async fn spend(front: &Front, s: LinkSpend) -> Result<Opened, ApiError> {
    let node = &front.node;
    let config = &front.config;
    let ip = s.client_ip.to_string();
    let anonymous = Actor { client_ip: ip.clone(), ..Default::default() };
    let token_sha256 = match links::parse_token(&s.token) {
        Some(t) => gatehouse_domain::sessions::token_hash(t),
        None => {
            let mut e = audit::event("sign_in.link_refused", "denied", &anonymous, "link:unknown".into());
            e.detail = "not a link token".into();
            node.audit(e);
            return Err(ApiError::NotFound(UNKNOWN.into()));
        }
    };
    let refused = |e: ApiError| {
        let (action, why) = match Refused::of(&e) {
            Some(Refused::Expired) => ("sign_in.link_expired", "expired"),
            Some(Refused::OtherBrowser) => ("sign_in.link_refused", "asked for in another browser"),
            Some(Refused::Unknown) => ("sign_in.link_refused", "used already or unknown"),
            Some(Refused::Disabled) => ("sign_in.link_refused", "the account cannot sign in"),
            None => return e,
        };
        tracing::Span::current().record("outcome", why);
        let mut ev = audit::event(action, "denied", &anonymous, "link:unknown".into());
        ev.detail = why.into();
        node.audit(ev);
        e
    };
    // Read your writes (the link was written a moment ago elsewhere), then
    // the checks apply makes, on this node's view: a forged, spent, late or
    // misdirected link costs no log write.
    node.catch_up(Duration::from_millis(500)).await;
    let user = {
        let view = node.view().read();
        let link = links::check_spend(&view, &token_sha256, &s.browser_sha256, now_ms());
        link.map(|l| view.user(&l.user_id).cloned())
    };
    let user = match user {
        Ok(Some(u)) => u,
        Ok(None) => return Err(refused(ApiError::NotFound(NO_SUCH_USER.into()))),
        Err(e) => return Err(refused(e.into())),
    };
    let (session, pending) = check::session_for(config, &user, &ip, &s.user_agent);
    let session_id = session.session_id.clone();
    let cmd = node.command(Payload::SpendSignInLink(SpendSignInLink {
        token_sha256: token_sha256.to_vec(),
        browser_sha256: s.browser_sha256.to_vec(),
        // The link's user, whatever this says: apply takes it from the link.
        session: Some(CreateSession { user_id: String::new(), ..session }),
    }));
    let request_id = cmd.request_id.clone();
    let applied = node.propose(vec![cmd]).await?;
    if let Some(e) = applied.results.iter().find_map(|r| ApiError::check(r).err()) {
        return Err(refused(e));
    }
    tracing::Span::current().record("outcome", "ok");
    let who =
        Actor { user_id: user.user_id.clone(), session_id: session_id.clone(), client_ip: ip, ..Default::default() };
    let mut ev = audit::event("sign_in.link_used", "ok", &who, format!("session:{session_id}"));
    ev.request_id = request_id;
    node.audit(ev);
    Ok(pending.opened(applied.log_index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_allow_list_is_exact() {
        let open = LinkSettings::default();
        assert!(open.allows("ann@anywhere.org"));
        let company = LinkSettings { allowed_domains: vec!["example.com".into()], ..Default::default() };
        assert!(company.allows("ann@example.com") && company.allows("ann@EXAMPLE.com"));
        for no in ["ann@evil.com", "ann@example.com.evil.com", "ann@sub.example.com", "ann@evilexample.com", "ann"] {
            assert!(!company.allows(no), "{no}");
        }
    }

    #[test]
    fn a_spend_error_says_why() {
        assert_eq!(Refused::of(&ApiError::NotFound(UNKNOWN.into())), Some(Refused::Unknown));
        assert_eq!(Refused::of(&ApiError::FailedPrecondition(EXPIRED.into())), Some(Refused::Expired));
        assert_eq!(Refused::of(&ApiError::FailedPrecondition(OTHER_BROWSER.into())), Some(Refused::OtherBrowser));
        assert_eq!(Refused::of(&ApiError::FailedPrecondition(USER_DISABLED.into())), Some(Refused::Disabled));
        assert_eq!(Refused::of(&ApiError::NotFound(NO_SUCH_USER.into())), Some(Refused::Disabled));
        assert_eq!(Refused::of(&ApiError::Stale), None);
        // A refusal that says nothing of the link (an upgrade under way).
        let gate = ApiError::FailedPrecondition("this request needs cluster version 3".into());
        assert_eq!(Refused::of(&gate), None);
        assert_eq!(Refused::of(&ApiError::NotFound("no such session".into())), None);
    }

    #[test]
    fn the_mailed_link_carries_the_token_and_the_return_url() {
        let pages =
            crate::pages::PagesConfig { public_url: Some("https://login.example.com".into()), ..Default::default() };
        assert_eq!(link_url(&pages, "gl_x", ""), "https://login.example.com/login/link?token=gl_x");
        assert_eq!(
            link_url(&pages, "gl_x", "https://app.example.com/a?b=1"),
            "https://login.example.com/login/link?token=gl_x&rd=https%3A%2F%2Fapp.example.com%2Fa%3Fb%3D1"
        );
    }
}
