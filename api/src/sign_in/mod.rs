//! Signing in and out: checked where the password hashes are.
//!
//! A voter checks a login itself ([`check`]). A stateless front holds no
//! password hash: it sends the attempt on to a voter ([`forward`]), whose
//! `SignInService` ([`service`]) runs the same checks and opens the session;
//! logouts and revocations of one's own sessions carry the caller's own
//! credential, which the voter resolves again. A stolen front therefore
//! cannot mint a session or end one whose token it never saw.
//!
//! ```text
//!   http/session.rs ─► SignIn::Here ─► check.rs (argon2, lockouts, CreateSession)
//!                   └► SignIn::Voters ─► forward.rs ─► voter: service.rs ─► check.rs
//!   pages/links.rs ──► SignIn::Here ─► links.rs (CreateSignInLink + mail, SpendSignInLink)
//!                   └► SignIn::Voters ─► forward.rs ─► voter: service.rs ─► links.rs
//! ```
//!
//! Sign-in links go the same way: a front never makes a link's token, so
//! a stolen front cannot mint one for someone else and spend it. So do
//! sign-ins through an upstream provider (`crate::sso`): the voter holds
//! the client secret, trades the code and checks the tokens.

pub mod check;
pub mod forward;
pub mod links;
pub mod own;
pub mod passkeys;
pub mod service;

use std::net::IpAddr;

pub use check::{Attempt, Opened};
pub use links::{LinkRequest, LinkSettings, LinkSpend};
pub use own::{NewOwnKey, OwnKey};

use crate::http::front::Front;
use crate::identity::Principal;
use crate::mfa::check::{Enrolling, Presented};
use crate::passwords::PasswordPool;
use crate::sso::logout::LogoutError;
use crate::sso::sign_in::{Callback, SsoError, Started};
use crate::{ApiError, Node};

/// Where this node's sign-ins are checked.
#[derive(Clone)]
pub enum SignIn {
    /// Here, against this voter's own view (it holds the hashes).
    Here(PasswordPool),
    /// On a voter, for a stateless front.
    Voters(forward::VoterSignIn),
}

impl SignIn {
    /// Checks `attempt` and opens a session; returns once this node has
    /// applied it too (the next request here finds it).
    pub async fn login(&self, front: &Front, attempt: Attempt) -> Result<Opened, ApiError> {
        match self {
            SignIn::Here(_) => check::login(front, attempt).await,
            SignIn::Voters(voters) => {
                let opened = voters.login(attempt).await?;
                front.node.wait_applied(opened.log_index).await;
                Ok(opened)
            }
        }
    }

    /// Pays the second factor the session of `token` waits for: the
    /// session's new token (applied here too).
    pub async fn present_factor(
        &self,
        front: &Front,
        token: &str,
        presented: &Presented,
        ip: IpAddr,
        trust: Option<&crate::mfa::devices::Trust>,
    ) -> Result<Opened, ApiError> {
        match self {
            SignIn::Here(_) => crate::mfa::check::present(front, token, presented, ip, trust).await,
            SignIn::Voters(voters) => {
                let opened = voters.present_factor(token, presented, ip, trust).await?;
                front.node.wait_applied(opened.log_index).await;
                Ok(opened)
            }
        }
    }

    /// Ends the caller's session. `credential` is the token `p` came from.
    pub async fn logout(&self, node: &Node, p: &Principal, credential: &str, ip: IpAddr) -> Result<(), ApiError> {
        let index = match self {
            SignIn::Here(_) => check::logout(node, p, &ip.to_string()).await?,
            SignIn::Voters(voters) => voters.logout(credential, ip).await?,
        };
        node.wait_applied(index).await;
        Ok(())
    }

    /// Asks for a sign-in link to be mailed. Returns once the request is
    /// admitted (the strict limits of signing in, counted where logins
    /// are): the lookup, the link and the mail happen after, so the time
    /// taken says nothing of the address.
    pub async fn request_link(&self, front: &Front, req: LinkRequest) -> Result<(), ApiError> {
        match self {
            SignIn::Here(_) => {
                links::sending(front)?;
                let Some(place) = links::place() else { return Ok(()) };
                let front = front.clone();
                tokio::spawn(async move {
                    let _place = place;
                    if let Err(e) = links::request(&front, req).await {
                        tracing::warn!(error = %e, "a sign-in link request failed");
                    }
                });
                Ok(())
            }
            SignIn::Voters(voters) => voters.request_link(req).await,
        }
    }

    /// Spends a sign-in link and opens its session; returns once this node
    /// has applied it.
    pub async fn spend_link(&self, front: &Front, spend: LinkSpend) -> Result<Opened, ApiError> {
        match self {
            SignIn::Here(_) => links::spend(front, spend).await,
            SignIn::Voters(voters) => {
                let opened = voters.spend_link(spend).await?;
                front.node.wait_applied(opened.log_index).await;
                Ok(opened)
            }
        }
    }

    /// Ends one of the caller's sessions.
    pub async fn revoke_own(
        &self,
        node: &Node,
        p: &Principal,
        credential: &str,
        session_id: &str,
        ip: IpAddr,
    ) -> Result<(), ApiError> {
        let index = match self {
            SignIn::Here(_) => check::revoke_own(node, p, session_id, &ip.to_string()).await?,
            SignIn::Voters(voters) => voters.revoke_own(credential, session_id, ip).await?,
        };
        node.wait_applied(index).await;
        Ok(())
    }

    /// Makes an API key for the caller (a recent session: [`own`]);
    /// returns once this node has applied it.
    pub async fn create_own_key(
        &self,
        front: &Front,
        p: &Principal,
        credential: &str,
        key: OwnKey,
        ip: IpAddr,
    ) -> Result<NewOwnKey, ApiError> {
        let made = match self {
            SignIn::Here(_) => own::create_key(front, p, key, ip).await?,
            SignIn::Voters(voters) => voters.create_own_key(credential, key, ip).await?,
        };
        front.node.wait_applied(made.log_index).await;
        Ok(made)
    }

    /// Revokes one of the caller's keys.
    pub async fn revoke_own_key(
        &self,
        front: &Front,
        p: &Principal,
        credential: &str,
        key_id: &str,
        ip: IpAddr,
    ) -> Result<(), ApiError> {
        let index = match self {
            SignIn::Here(_) => own::revoke_key(front, p, key_id, ip).await?,
            SignIn::Voters(voters) => voters.revoke_own_key(credential, key_id, ip).await?,
        };
        front.node.wait_applied(index).await;
        Ok(())
    }

    /// Changes the caller's password; the session returned replaces every
    /// session the user had.
    #[allow(clippy::too_many_arguments)]
    pub async fn change_password(
        &self,
        front: &Front,
        p: &Principal,
        credential: &str,
        current: String,
        new: String,
        ip: IpAddr,
        user_agent: String,
    ) -> Result<Opened, ApiError> {
        let opened = match self {
            SignIn::Here(_) => own::change_password(front, p, current, new, ip, user_agent).await?,
            SignIn::Voters(voters) => voters.change_password(credential, current, new, ip, user_agent).await?,
        };
        front.node.wait_applied(opened.log_index).await;
        Ok(opened)
    }

    /// A fresh TOTP secret offered to `p` (nothing is written).
    pub async fn offer_totp(&self, front: &Front, p: &Principal, credential: &str) -> Result<Enrolling, ApiError> {
        match self {
            SignIn::Here(_) => crate::mfa::check::enrolling(front, p),
            SignIn::Voters(voters) => voters.offer_totp(credential).await,
        }
    }

    /// Enrolls the secret a form carries (`sealed`), proven by `code`; the
    /// recovery codes, shown once. Returns once this node applied it.
    #[allow(clippy::too_many_arguments)]
    pub async fn enroll_totp(
        &self,
        front: &Front,
        p: &Principal,
        credential: &str,
        sealed: &str,
        code: &str,
        password: String,
        ip: IpAddr,
    ) -> Result<Vec<String>, ApiError> {
        let (codes, index) = match self {
            SignIn::Here(_) => crate::mfa::check::enroll(front, p, sealed, code, password, ip).await?,
            SignIn::Voters(voters) => {
                let request = own_factor(credential, ip, code, password, sealed);
                voters.enroll_totp(request).await?
            }
        };
        front.node.wait_applied(index).await;
        Ok(codes)
    }

    /// Enrolls a first factor from a session waiting for one (`token`),
    /// with the admin's ticket: the session's new token (applied here
    /// too) and the recovery codes.
    pub async fn enroll_waiting(
        &self,
        front: &Front,
        token: &str,
        sealed: &str,
        code: &str,
        ticket: &str,
        ip: IpAddr,
    ) -> Result<(Opened, Vec<String>), ApiError> {
        match self {
            SignIn::Here(_) => crate::mfa::check::enroll_waiting(front, token, sealed, code, ticket, ip).await,
            SignIn::Voters(voters) => {
                let mut request = own_factor(token, ip, code, String::new(), sealed);
                request.ticket = ticket.to_string();
                let (opened, codes) = voters.enroll_waiting(request).await?;
                front.node.wait_applied(opened.log_index).await;
                Ok((opened, codes))
            }
        }
    }

    /// A step-up: `code` makes `p`'s session's second factor fresh.
    /// Returns once this node applied it.
    pub async fn step_up(
        &self,
        front: &Front,
        p: &Principal,
        credential: &str,
        presented: &Presented,
        ip: IpAddr,
    ) -> Result<(), ApiError> {
        let index = match self {
            SignIn::Here(_) => crate::mfa::check::step_up_with(front, p, presented, ip).await?,
            SignIn::Voters(voters) => {
                let mut request = own_factor(credential, ip, "", String::new(), "");
                presented.write_to(&mut request);
                voters.step_up(request).await?
            }
        };
        front.node.wait_applied(index).await;
        Ok(())
    }

    /// Forgets every browser `p` trusted to skip the second step.
    pub async fn forget_devices(
        &self,
        front: &Front,
        p: &Principal,
        credential: &str,
        ip: IpAddr,
    ) -> Result<(), ApiError> {
        let index = match self {
            SignIn::Here(_) => {
                let actor = crate::audit::Actor::of(p, ip.to_string());
                crate::mfa::devices::forget_all(front, p, &actor).await?
            }
            SignIn::Voters(voters) => voters.forget_devices(own_factor(credential, ip, "", String::new(), "")).await?,
        };
        front.node.wait_applied(index).await;
        Ok(())
    }

    /// Turns `p`'s authenticator off (the password and a current code).
    pub async fn remove_totp(
        &self,
        front: &Front,
        p: &Principal,
        credential: &str,
        code: &str,
        password: String,
        ip: IpAddr,
    ) -> Result<(), ApiError> {
        let index = match self {
            SignIn::Here(_) => crate::mfa::check::remove_totp(front, p, code, password, ip).await?,
            SignIn::Voters(voters) => voters.remove_totp(own_factor(credential, ip, code, password, "")).await?,
        };
        front.node.wait_applied(index).await;
        Ok(())
    }

    /// New recovery codes for `p` (the password and a current code).
    pub async fn new_recovery_codes(
        &self,
        front: &Front,
        p: &Principal,
        credential: &str,
        code: &str,
        password: String,
        ip: IpAddr,
    ) -> Result<Vec<String>, ApiError> {
        let (codes, index) = match self {
            SignIn::Here(_) => crate::mfa::check::new_recovery_codes(front, p, code, password, ip).await?,
            SignIn::Voters(voters) => voters.new_recovery_codes(own_factor(credential, ip, code, password, "")).await?,
        };
        front.node.wait_applied(index).await;
        Ok(codes)
    }

    /// Starts a sign-in through an upstream provider.
    pub async fn upstream_start(&self, front: &Front, provider: &str, return_to: &str) -> Result<Started, SsoError> {
        match self {
            SignIn::Here(_) => crate::sso::sign_in::start(front, provider, return_to).await,
            SignIn::Voters(voters) => voters.upstream_start(provider, return_to).await,
        }
    }

    /// Finishes a sign-in through an upstream provider: the session (applied
    /// here too) and where the browser goes.
    pub async fn upstream_finish(&self, front: &Front, cb: Callback) -> Result<(Opened, String), SsoError> {
        match self {
            SignIn::Here(_) => crate::sso::sign_in::finish(front, cb).await,
            SignIn::Voters(voters) => {
                let (opened, rd) = voters.upstream_finish(cb).await?;
                front.node.wait_applied(opened.log_index).await;
                Ok((opened, rd))
            }
        }
    }

    /// A provider's back-channel logout token: how many sessions ended.
    pub async fn upstream_logout(
        &self,
        front: &Front,
        provider: &str,
        token: &str,
        ip: IpAddr,
    ) -> Result<usize, LogoutError> {
        match self {
            SignIn::Here(_) => crate::sso::logout::back_channel(front, provider, token, &ip.to_string()).await,
            SignIn::Voters(voters) => voters.upstream_logout(provider, token, ip).await,
        }
    }
}

/// A front's request about the caller's own second factor.
fn own_factor(
    credential: &str,
    ip: IpAddr,
    code: &str,
    password: String,
    sealed: &str,
) -> gatehouse_proto::front::OwnFactorRequest {
    gatehouse_proto::front::OwnFactorRequest {
        credential: credential.to_string(),
        client_ip: ip.to_string(),
        code: code.to_string(),
        password,
        sealed: sealed.to_string(),
        ..Default::default()
    }
}
