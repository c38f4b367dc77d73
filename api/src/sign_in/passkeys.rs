//! Passkeys where sign-ins are decided: on this voter
//! ([`crate::mfa::passkey`]), or for a stateless front on a voter through
//! `SignInService` (a front cannot seal or open a ceremony's state, so it
//! asks a voter to begin each one and sends the browser's answer back).
//! A front offers passkeys when its own `[mfa.passkeys]` is set, as its
//! voters' is.

use std::net::IpAddr;

use super::{Opened, SignIn};
use crate::http::front::Front;
use crate::identity::{Principal, Via};
use crate::mfa::passkey::{self, Offer};
use crate::ApiError;

/// Which ceremony a page offers.
pub enum Ceremony<'a> {
    /// A sign-in by passkey alone (the login page).
    SignIn,
    /// The second step or a step-up of the session of `token` (waiting or
    /// not), `session_id` of `user_id`.
    Factor { token: &'a str, user_id: &'a str, session_id: &'a str },
    /// A new passkey for `p` (the session of `token`).
    Register { p: &'a Principal, token: &'a str },
}

/// A passkey to add: its name, the ceremony and answer, the password
/// again, and a code when the person's second factor is not fresh.
pub struct NewPasskey {
    pub name: String,
    pub ceremony: String,
    pub response: String,
    pub password: String,
    pub code: String,
}

impl std::fmt::Debug for NewPasskey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPasskey").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Whether this node's pages offer passkeys.
pub fn offered(front: &Front) -> bool {
    match front.sign_in {
        SignIn::Here(_) => passkey::available(front),
        SignIn::Voters(_) => front.mfa.config.passkeys.is_some(),
    }
}

fn own_request(credential: &str, ip: IpAddr) -> gatehouse_proto::front::OwnFactorRequest {
    gatehouse_proto::front::OwnFactorRequest {
        credential: credential.to_string(),
        client_ip: ip.to_string(),
        ..Default::default()
    }
}

impl SignIn {
    /// A ceremony for a page; `None` when passkeys are not offered here,
    /// or (a step) the person holds none.
    pub async fn offer_passkey(&self, front: &Front, ceremony: Ceremony<'_>) -> Option<Offer> {
        if !offered(front) {
            return None;
        }
        // Signing in through the identity provider only: no passkey sign-in
        // is offered (it would sign in past the provider; see `passkey::sign_in`).
        if matches!(ceremony, Ceremony::SignIn) && front.config.password_users.is_some() {
            return None;
        }
        let offer = match (self, ceremony) {
            (SignIn::Here(_), Ceremony::SignIn) => passkey::discoverable(front),
            (SignIn::Here(_), Ceremony::Factor { user_id, session_id, .. }) => {
                passkey::assertion(front, user_id, session_id)
            }
            (SignIn::Here(_), Ceremony::Register { p, .. }) => passkey::registration(front, p).map(Some),
            (SignIn::Voters(voters), c) => {
                let (kind, credential) = match c {
                    Ceremony::SignIn => ("discover", ""),
                    Ceremony::Factor { token, user_id, .. } => {
                        // Nothing to ask a voter for without a passkey.
                        let held = front.node.view().read().factors_of(user_id).is_some_and(|r| !r.passkeys.is_empty());
                        if !held {
                            return None;
                        }
                        ("assert", token)
                    }
                    Ceremony::Register { token, .. } => ("register", token),
                };
                voters.offer_passkey(kind, credential).await.map(Some)
            }
        };
        offer.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "a passkey ceremony could not be begun");
            None
        })
    }

    /// Signs a person in with a passkey alone; returns once this node
    /// applied the session.
    pub async fn passkey_sign_in(
        &self,
        front: &Front,
        ceremony: &str,
        response: &str,
        ip: IpAddr,
        user_agent: &str,
    ) -> Result<Opened, ApiError> {
        match self {
            SignIn::Here(_) => passkey::sign_in(front, ceremony, response, ip, user_agent).await,
            SignIn::Voters(voters) => {
                let request = gatehouse_proto::front::PasskeySignInRequest {
                    ceremony: ceremony.to_string(),
                    response: response.to_string(),
                    client_ip: ip.to_string(),
                    user_agent: user_agent.to_string(),
                };
                let opened = voters.passkey_sign_in(request).await?;
                front.node.wait_applied(opened.log_index).await;
                Ok(opened)
            }
        }
    }

    /// Adds a passkey for `p` (`credential`: its session's token): recovery
    /// codes when it is their first factor. Returns once applied here.
    pub async fn add_passkey(
        &self,
        front: &Front,
        p: &Principal,
        credential: &str,
        new: NewPasskey,
        ip: IpAddr,
    ) -> Result<Vec<String>, ApiError> {
        match self {
            SignIn::Here(_) => {
                let added =
                    passkey::add_own(front, p, &new.name, &new.ceremony, &new.response, new.password, &new.code, ip);
                Ok(added.await?.0)
            }
            SignIn::Voters(voters) => {
                let mut request = own_request(credential, ip);
                request.name = new.name;
                request.passkey_ceremony = new.ceremony;
                request.passkey_response = new.response;
                request.password = new.password;
                request.code = new.code;
                let (codes, index) = voters.add_passkey(request).await?;
                front.node.wait_applied(index).await;
                Ok(codes)
            }
        }
    }

    /// Renames one of `p`'s passkeys (`id`, base64url).
    pub async fn rename_passkey(
        &self,
        front: &Front,
        p: &Principal,
        credential: &str,
        id: &str,
        name: &str,
        ip: IpAddr,
    ) -> Result<(), ApiError> {
        let index = match self {
            SignIn::Here(_) => {
                let actor = crate::audit::Actor::of(p, ip.to_string());
                passkey::rename(front, p, id, name, &actor).await?
            }
            SignIn::Voters(voters) => {
                let mut request = own_request(credential, ip);
                request.passkey_id = id.to_string();
                request.name = name.to_string();
                voters.rename_passkey(request).await?
            }
        };
        front.node.wait_applied(index).await;
        Ok(())
    }

    /// Removes one of `p`'s passkeys (the password, and a fresh second
    /// factor or `code`).
    #[allow(clippy::too_many_arguments)]
    pub async fn remove_passkey(
        &self,
        front: &Front,
        p: &Principal,
        credential: &str,
        id: &str,
        password: String,
        code: &str,
        ip: IpAddr,
    ) -> Result<(), ApiError> {
        let index = match self {
            SignIn::Here(_) => passkey::remove_own(front, p, id, password, code, ip).await?,
            SignIn::Voters(voters) => {
                let mut request = own_request(credential, ip);
                request.passkey_id = id.to_string();
                request.password = password;
                request.code = code.to_string();
                voters.remove_passkey(request).await?
            }
        };
        front.node.wait_applied(index).await;
        Ok(())
    }
}

/// The session a principal stands for (none for an API key).
pub fn session_id(p: &Principal) -> &str {
    match &p.via {
        Via::Session { session_id } => session_id,
        Via::ApiKey { .. } => "",
    }
}
