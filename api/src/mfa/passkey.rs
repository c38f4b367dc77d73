//! Passkeys on the voters: the WebAuthn ceremonies (webauthn-rs), as a
//! second factor and as a sign-in of their own.
//!
//! A ceremony's state (its challenge, the credentials it allows, the user
//! verification it asks for) never waits in a node's memory: it is sealed
//! under the voters' `[secrets]` key, bound to its kind, user and session,
//! and rides in the page's form to come back with the browser's answer.
//! So any voter finishes a ceremony any voter began, and a node restart
//! loses none. What stops a replay is the log: the command that takes an
//! answer (opening or paying a session, a step-up, a registration) spends
//! the challenge's hash until the ceremony expires, on every node alike
//! (`gatehouse_domain::passkeys`), and the authenticator's signature
//! counter must move forward.
//!
//! Every ceremony asks for user verification (a PIN or a biometric on the
//! authenticator): a passkey is then two factors at once, which is why it
//! may sign a person in alone. Registration asks for a discoverable
//! credential, so the sign-in page needs no username first (and says
//! nothing about which usernames exist).

use base64::Engine as _;
use gatehouse_domain::passkeys as domain;
use gatehouse_domain::Payload;
use gatehouse_proto::events::factor_proof::Proof;
use gatehouse_proto::events::{AddPasskey, FactorProof, PasskeyUse, RemoveFactors, RenamePasskey, Sealed};
use prost::Message as _;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{
    DiscoverableAuthentication, DiscoverableKey, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid,
};
use webauthn_rs::{Webauthn, WebauthnBuilder};

use super::recovery;
use crate::audit::{self, Actor};
use crate::http::front::Front;
use crate::identity::{Principal, Via};
use crate::sign_in::Opened;
use crate::{ApiError, Node};
use gatehouse_cluster::clock::now_ms;

/// How long a ceremony may be finished after it began (the browser's
/// timeout is the same).
pub const CEREMONY_MS: u64 = 5 * 60_000;
/// The largest browser answer (JSON) a form may carry.
pub const MAX_RESPONSE: usize = 16 * 1024;
/// The largest sealed ceremony a form may carry.
/// (Its state lists every credential allowed: ten RSA passkeys with long
/// ids take some 10 KiB.)
pub const MAX_CEREMONY: usize = 32 * 1024;

const REGISTER: &str = "register";
const ASSERT: &str = "assert";
const DISCOVER: &str = "discover";

/// The relying party: who the passkeys are for (`[mfa.passkeys]`).
pub struct Passkeys {
    webauthn: Webauthn,
    rp_id: String,
}

impl std::fmt::Debug for Passkeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passkeys").field("rp_id", &self.rp_id).finish_non_exhaustive()
    }
}

impl Passkeys {
    /// The relying party `rp_id` (a domain: passkeys made for it work on
    /// it and its subdomains), named `rp_name`, answering only pages at
    /// `origins` (`https://…`, or `http://localhost…` for development).
    pub fn new(rp_id: &str, rp_name: &str, origins: &[String]) -> Result<Passkeys, String> {
        let parsed: Vec<Url> = origins
            .iter()
            .map(|o| Url::parse(o).map_err(|e| format!("passkey origin {o:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let (first, rest) = parsed.split_first().ok_or("passkeys need at least one origin")?;
        for o in &parsed {
            let local = o.host_str() == Some("localhost");
            if o.scheme() != "https" && !(local && o.scheme() == "http") {
                return Err(format!("passkey origin {o} must be https (http only for localhost)"));
            }
            if o.path() != "/" || o.query().is_some() {
                return Err(format!("passkey origin {o} must be a scheme, host and port only"));
            }
            let host = o.host_str().unwrap_or("");
            if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
                return Err(format!("passkey origin {o} is not on {rp_id} or a subdomain of it"));
            }
        }
        let mut builder =
            WebauthnBuilder::new(rp_id, first).map_err(|e| format!("passkeys for {rp_id:?}: {e}"))?.rp_name(rp_name);
        for o in rest {
            builder = builder.append_allowed_origin(o);
        }
        let webauthn = builder.build().map_err(|e| format!("passkeys for {rp_id:?}: {e}"))?;
        Ok(Passkeys { webauthn, rp_id: rp_id.to_string() })
    }

    pub fn rp_id(&self) -> &str {
        &self.rp_id
    }
}

/// A ceremony begun: the options for `navigator.credentials` (JSON, for
/// the page's script) and the sealed state its form sends back.
pub struct Offer {
    pub options: String,
    pub ceremony: String,
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offer").finish_non_exhaustive()
    }
}

/// A passkey as "my account" lists it.
#[derive(Debug, Clone)]
pub struct PasskeyView {
    /// The credential id, base64url (what rename and remove name).
    pub id: String,
    pub name: String,
    pub created_at: u64,
    pub last_used_at: u64,
}

/// What a sealed ceremony holds.
#[derive(Serialize, Deserialize)]
struct Ceremony<S> {
    state: S,
    challenge_sha256: [u8; 32],
    expires_at: u64,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn context(kind: &str, user_id: &str, session_id: &str) -> Vec<u8> {
    format!("gatehouse passkey {kind}\n{user_id}\n{session_id}").into_bytes()
}

fn challenge_hash(challenge: &[u8]) -> [u8; 32] {
    Sha256::new().chain_update(b"gatehouse passkey challenge\0").chain_update(challenge).finalize().into()
}

/// The passkeys and sealer this node runs ceremonies with, if it does
/// (a voter with `[mfa.passkeys]` and `[secrets]`).
fn parts(front: &Front) -> Option<(&Passkeys, &crate::seal::Sealer)> {
    Some((front.mfa.config.passkeys.as_deref()?, front.mfa.sealer()?))
}

fn unavailable() -> ApiError {
    ApiError::FailedPrecondition("passkeys are not available here".into())
}

fn seal<S: Serialize>(
    front: &Front,
    kind: &str,
    user_id: &str,
    session_id: &str,
    state: S,
    challenge: &[u8],
) -> Result<String, ApiError> {
    let (_, sealer) = parts(front).ok_or_else(unavailable)?;
    let c = Ceremony { state, challenge_sha256: challenge_hash(challenge), expires_at: now_ms() + CEREMONY_MS };
    let json = serde_json::to_vec(&c).map_err(|_| ApiError::Internal)?;
    let sealed = sealer.seal(&json, &context(kind, user_id, session_id));
    Ok(b64().encode(sealed.encode_to_vec()))
}

/// Opens a ceremony sealed for `kind`, `user_id` and `session_id`: one
/// sealed for anything else, expired, or not ours reads as a wrong answer.
fn open<S: DeserializeOwned>(
    front: &Front,
    kind: &str,
    user_id: &str,
    session_id: &str,
    ceremony: &str,
) -> Result<Ceremony<S>, ApiError> {
    let (_, sealer) = parts(front).ok_or_else(unavailable)?;
    if ceremony.len() > MAX_CEREMONY {
        return Err(ApiError::InvalidSecondFactor);
    }
    let bytes = b64().decode(ceremony.trim()).map_err(|_| ApiError::InvalidSecondFactor)?;
    let sealed = Sealed::decode(bytes.as_slice()).map_err(|_| ApiError::InvalidSecondFactor)?;
    let json = sealer.open(&sealed, &context(kind, user_id, session_id)).map_err(|_| ApiError::InvalidSecondFactor)?;
    let c: Ceremony<S> = serde_json::from_slice(&json).map_err(|_| ApiError::InvalidSecondFactor)?;
    if c.expires_at <= now_ms() {
        return Err(ApiError::InvalidSecondFactor);
    }
    Ok(c)
}

fn parse<T: DeserializeOwned>(response: &str) -> Result<T, ApiError> {
    if response.len() > MAX_RESPONSE {
        return Err(ApiError::InvalidSecondFactor);
    }
    serde_json::from_str(response).map_err(|_| ApiError::InvalidSecondFactor)
}

/// A user id (32 hex) as the 16-byte handle the authenticator keeps.
fn handle(user_id: &str) -> Result<Uuid, ApiError> {
    let bytes = hex::decode(user_id).map_err(|_| ApiError::Internal)?;
    Uuid::from_slice(&bytes).map_err(|_| ApiError::Internal)
}

fn stored(r: &gatehouse_proto::state::PasskeyFactor) -> Option<Passkey> {
    serde_json::from_slice(&r.credential).ok()
}

fn session_of(p: &Principal) -> Result<&str, ApiError> {
    match &p.via {
        Via::Session { session_id } => Ok(session_id),
        Via::ApiKey { .. } => Err(ApiError::PermissionDenied("this needs a signed-in session, not an API key".into())),
    }
}

/// Whether this node runs passkey ceremonies.
pub fn available(front: &Front) -> bool {
    parts(front).is_some()
}

/// `user_id`'s passkeys, newest first.
pub fn list(node: &Node, user_id: &str) -> Vec<PasskeyView> {
    let state = node.view().read();
    let mut list: Vec<PasskeyView> = state
        .factors_of(user_id)
        .map(|r| {
            r.passkeys
                .iter()
                .map(|k| PasskeyView {
                    id: b64().encode(&k.credential_id),
                    name: k.name.clone(),
                    created_at: k.created_at,
                    last_used_at: k.last_used_at,
                })
                .collect()
        })
        .unwrap_or_default();
    list.sort_by_key(|k| std::cmp::Reverse(k.created_at));
    list
}

/// A registration ceremony for `p`'s session: a new passkey for this user
/// (those they hold are excluded, so one authenticator registers once).
pub fn registration(front: &Front, p: &Principal) -> Result<Offer, ApiError> {
    let session_id = session_of(p)?;
    let (passkeys, _) = parts(front).ok_or_else(unavailable)?;
    let (name, email, exclude) = {
        let state = front.node.view().read();
        let user = state.user(&p.user_id).ok_or(ApiError::Unauthenticated)?;
        let held = state.factors_of(&p.user_id).map(|r| r.passkeys.clone()).unwrap_or_default();
        let exclude: Vec<_> = held.iter().map(|k| k.credential_id.clone().into()).collect();
        (user.username.clone(), user.email.clone(), exclude)
    };
    let display = if email.is_empty() { name.clone() } else { email };
    let (options, state) = passkeys
        .webauthn
        .start_passkey_registration(handle(&p.user_id)?, &name, &display, Some(exclude))
        .map_err(|e| {
            tracing::warn!(error = %e, "starting a passkey registration");
            ApiError::Internal
        })?;
    let challenge = options.public_key.challenge.to_vec();
    // A discoverable credential, so it can sign in without a username.
    let mut json = serde_json::to_value(&options).map_err(|_| ApiError::Internal)?;
    if let Some(sel) = json.pointer_mut("/publicKey/authenticatorSelection").and_then(|v| v.as_object_mut()) {
        sel.insert("residentKey".into(), "required".into());
        sel.insert("requireResidentKey".into(), true.into());
    }
    let ceremony = seal::<PasskeyRegistration>(front, REGISTER, &p.user_id, session_id, state, &challenge)?;
    Ok(Offer { options: json.to_string(), ceremony })
}

/// Finishes a registration by `p` (the ceremony from [`registration`] on
/// this session, and the browser's answer), named `name`. When it is the
/// user's first factor and no recovery codes are left, new ones come back
/// (shown once), with the log index it was applied at. The caller has
/// checked the password or a fresh sign-in.
pub async fn register(
    front: &Front,
    p: &Principal,
    name: &str,
    ceremony: &str,
    response: &str,
    actor: &Actor,
) -> Result<(Vec<String>, u64), ApiError> {
    let session_id = session_of(p)?;
    let (passkeys, _) = parts(front).ok_or_else(unavailable)?;
    let name = name.trim();
    let name = if name.is_empty() { "Passkey" } else { name };
    if name.chars().count() > domain::MAX_NAME || !name.chars().all(domain::printable) {
        return Err(ApiError::InvalidArgument(format!(
            "a passkey name is 1 to {} printable characters",
            domain::MAX_NAME
        )));
    }
    let c: Ceremony<PasskeyRegistration> = open(front, REGISTER, &p.user_id, session_id, ceremony)?;
    let answer: RegisterPublicKeyCredential = parse(response)?;
    let passkey = passkeys.webauthn.finish_passkey_registration(&answer, &c.state).map_err(|e| {
        super::check::audit_factor(
            &front.node,
            "mfa.failure",
            "denied",
            actor,
            &p.user_id,
            &format!("passkey registration: {e}"),
        );
        ApiError::InvalidSecondFactor
    })?;
    // Recovery codes come with a first factor (or when none are left).
    let codes_due = {
        let state = front.node.view().read();
        state
            .factors_of(&p.user_id)
            .is_none_or(|r| !gatehouse_domain::factors::enrolled(r) || gatehouse_domain::factors::recovery_left(r) == 0)
    };
    let codes = if codes_due { recovery::new_codes() } else { Vec::new() };
    let credential = serde_json::to_vec(&passkey).map_err(|_| ApiError::Internal)?;
    let cmd = front.node.command(Payload::AddPasskey(AddPasskey {
        user_id: p.user_id.clone(),
        credential_id: passkey.cred_id().to_vec(),
        name: name.to_string(),
        credential,
        challenge_sha256: c.challenge_sha256.to_vec(),
        challenge_expires_at: c.expires_at,
        recovery_sha256: codes.iter().map(|c| recovery::hash(c).to_vec()).collect(),
        session_id: session_id.to_string(),
    }));
    // Audited as `mfa.enroll` (the factors before and after), refused or not.
    let applied = crate::audit::write(&front.node, actor, cmd).await.map_err(|e| match e {
        ApiError::FailedPrecondition(m) if m == domain::CHALLENGE_USED => ApiError::InvalidSecondFactor,
        e => e,
    })?;
    Ok((codes, applied.log_index))
}

/// An authentication ceremony for `user_id`'s session `session_id` (its
/// second step, or a step-up) over the passkeys they hold; `None` when
/// they hold none or this node runs no ceremonies.
pub fn assertion(front: &Front, user_id: &str, session_id: &str) -> Result<Option<Offer>, ApiError> {
    let Some((passkeys, _)) = parts(front) else { return Ok(None) };
    let held: Vec<Passkey> = {
        let state = front.node.view().read();
        state.factors_of(user_id).map(|r| r.passkeys.iter().filter_map(stored).collect()).unwrap_or_default()
    };
    if held.is_empty() {
        return Ok(None);
    }
    let (options, state) = passkeys.webauthn.start_passkey_authentication(&held).map_err(|e| {
        tracing::warn!(error = %e, "starting a passkey authentication");
        ApiError::Internal
    })?;
    let challenge = options.public_key.challenge.to_vec();
    let ceremony = seal::<PasskeyAuthentication>(front, ASSERT, user_id, session_id, state, &challenge)?;
    Ok(Some(Offer { options: options_json(&options)?, ceremony }))
}

/// A ceremony for signing in with a passkey alone (the browser offers the
/// credentials it holds for us); `None` when this node runs none.
pub fn discoverable(front: &Front) -> Result<Option<Offer>, ApiError> {
    let Some((passkeys, _)) = parts(front) else { return Ok(None) };
    let (options, state) = passkeys.webauthn.start_discoverable_authentication().map_err(|e| {
        tracing::warn!(error = %e, "starting a passkey sign-in");
        ApiError::Internal
    })?;
    let challenge = options.public_key.challenge.to_vec();
    let ceremony = seal::<DiscoverableAuthentication>(front, DISCOVER, "", "", state, &challenge)?;
    Ok(Some(Offer { options: options_json(&options)?, ceremony }))
}

/// The request options as the page's script passes them on: a modal
/// request (the sign-in button), not the autofill kind.
fn options_json(options: &webauthn_rs::prelude::RequestChallengeResponse) -> Result<String, ApiError> {
    let mut json = serde_json::to_value(options).map_err(|_| ApiError::Internal)?;
    if let Some(o) = json.as_object_mut() {
        o.remove("mediation");
    }
    Ok(json.to_string())
}

/// The proof of an answer to an [`assertion`] ceremony of `user_id`'s
/// session `session_id`, to spend in the command that pays or steps up
/// the session. A wrong answer is audited.
pub fn proof(
    front: &Front,
    user_id: &str,
    session_id: &str,
    ceremony: &str,
    response: &str,
    actor: &Actor,
) -> Result<FactorProof, ApiError> {
    let checked = (|| {
        let (passkeys, _) = parts(front).ok_or_else(unavailable)?;
        let c: Ceremony<PasskeyAuthentication> = open(front, ASSERT, user_id, session_id, ceremony)?;
        let answer: PublicKeyCredential = parse(response)?;
        let result = passkeys
            .webauthn
            .finish_passkey_authentication(&answer, &c.state)
            .map_err(|e| ApiError::FailedPrecondition(format!("passkey: {e}")))?;
        Ok::<_, ApiError>(use_proof(result.cred_id().to_vec(), result.counter(), c.challenge_sha256, c.expires_at))
    })();
    checked.inspect_err(|e| {
        super::check::audit_factor(&front.node, "mfa.failure", "denied", actor, user_id, &format!("passkey: {e}"));
    })
}

fn use_proof(credential_id: Vec<u8>, counter: u32, challenge_sha256: [u8; 32], expires_at: u64) -> FactorProof {
    FactorProof {
        proof: Some(Proof::Passkey(PasskeyUse {
            credential_id,
            counter,
            challenge_sha256: challenge_sha256.to_vec(),
            challenge_expires_at: expires_at,
        })),
    }
}

/// Signs a person in with a passkey alone: the answer to a
/// [`discoverable`] ceremony names the credential and its user; the
/// session opens with the passkey as its factor. A wrong answer counts
/// against the address's sign-in limits (the caller's) and is audited.
pub async fn sign_in(
    front: &Front,
    ceremony: &str,
    response: &str,
    ip: std::net::IpAddr,
    user_agent: &str,
) -> Result<Opened, ApiError> {
    let node = &front.node;
    let mut actor = Actor { client_ip: ip.to_string(), ..Default::default() };
    let (user, proof) = match discovered(front, ceremony, response) {
        Ok(found) => found,
        Err((user_id, e)) => {
            // Against the user only when the credential is theirs: a user
            // handle is the browser's word.
            let user_id = if user_id.is_empty() { "unknown".to_string() } else { user_id };
            super::check::audit_factor(node, "login.failure", "denied", &actor, &user_id, &format!("passkey: {e}"));
            return Err(ApiError::InvalidCredentials);
        }
    };
    // Where people sign in through their identity provider only, a
    // passkey signs in only those who may still use a password (the
    // break-glass users): it would sign in past the provider.
    if !front.config.password_allowed(&user.username) {
        let why = "passkey: sign-in through the provider only";
        super::check::audit_factor(node, "login.failure", "denied", &actor, &user.user_id, why);
        return Err(ApiError::InvalidCredentials);
    }
    let (mut create, pending) = crate::sign_in::check::session_for(&front.config, &user, &actor.client_ip, user_agent);
    actor.user_id = user.user_id.clone();
    actor.session_id = create.session_id.clone();
    create.factor = Some(proof);
    create.method = "passkey".into();
    let cmd = node.command(Payload::CreateSession(create));
    let request_id = cmd.request_id.clone();
    let applied = node.propose(vec![cmd]).await?;
    if let Err(e) = applied.results.iter().try_for_each(ApiError::check) {
        super::check::audit_factor(node, "login.failure", "denied", &actor, &user.user_id, &format!("passkey: {e}"));
        return Err(match e {
            ApiError::FailedPrecondition(_) => ApiError::InvalidCredentials,
            e => e,
        });
    }
    let opened = pending.opened(applied.log_index);
    let mut e = audit::event("login.success", "ok", &actor, format!("session:{}", opened.session_id));
    e.request_id = request_id;
    e.detail = "passkey".into();
    node.audit(e);
    Ok(opened)
}

/// The user and proof of an answer to a discoverable ceremony; on a
/// refusal, the user it named (if any) and why.
fn discovered(
    front: &Front,
    ceremony: &str,
    response: &str,
) -> Result<(gatehouse_proto::state::UserRecord, FactorProof), (String, ApiError)> {
    let (passkeys, _) = parts(front).ok_or_else(|| (String::new(), unavailable()))?;
    let c: Ceremony<DiscoverableAuthentication> =
        open(front, DISCOVER, "", "", ceremony).map_err(|e| (String::new(), e))?;
    let answer: PublicKeyCredential = parse(response).map_err(|e| (String::new(), e))?;
    let (handle, credential_id) = passkeys
        .webauthn
        .identify_discoverable_authentication(&answer)
        .map_err(|e| (String::new(), ApiError::FailedPrecondition(format!("passkey: {e}"))))?;
    let user_id = hex::encode(handle.as_bytes());
    // The user a refusal is audited against: only once the credential is
    // known to be theirs.
    let refused = |m: &str| (String::new(), ApiError::FailedPrecondition(m.to_string()));
    let (user, key) = {
        let state = front.node.view().read();
        // The credential must be this user's: a handle of one user with
        // another's credential is refused here and at apply.
        if domain::owner(&state, credential_id) != Some(user_id.as_str()) {
            return Err(refused(domain::NOT_A_PASSKEY));
        }
        let user = state.user(&user_id).cloned().ok_or_else(|| refused("no such user"))?;
        let key = state
            .factors_of(&user_id)
            .and_then(|r| r.passkeys.iter().find(|k| k.credential_id == credential_id))
            .and_then(stored)
            .ok_or_else(|| refused(domain::NOT_A_PASSKEY))?;
        (user, key)
    };
    let (challenge, expires_at) = (c.challenge_sha256, c.expires_at);
    let result = passkeys
        .webauthn
        .finish_discoverable_authentication(&answer, c.state, &[DiscoverableKey::from(&key)])
        .map_err(|e| (user_id.clone(), ApiError::FailedPrecondition(format!("passkey: {e}"))))?;
    let proof = use_proof(result.cred_id().to_vec(), result.counter(), challenge, expires_at);
    Ok((user, proof))
}

fn credential_id(id: &str) -> Result<Vec<u8>, ApiError> {
    if id.is_empty() || id.len() > 2 * domain::MAX_CREDENTIAL_ID {
        return Err(ApiError::InvalidArgument("no such passkey".into()));
    }
    b64().decode(id.trim()).map_err(|_| ApiError::InvalidArgument("no such passkey".into()))
}

/// Adds a passkey from "my account": the password again (or a recent
/// sign-in, for a person without one) and, for a person who has a second
/// factor, that factor fresh (or `code` now), then [`register`]. So
/// neither a stolen session nor a stolen password adds an authenticator.
#[allow(clippy::too_many_arguments)]
pub async fn add_own(
    front: &Front,
    p: &Principal,
    name: &str,
    ceremony: &str,
    response: &str,
    password: String,
    code: &str,
    ip: std::net::IpAddr,
) -> Result<(Vec<String>, u64), ApiError> {
    crate::sign_in::own::reauth(front, p, password, ip).await?;
    let window = crate::sign_in::own::window(front);
    super::check::fresh_factor(front, p, code, window, ip).await?;
    register(front, p, name, ceremony, response, &Actor::of(p, ip.to_string())).await
}

/// Removes a passkey from "my account": the password again and a second
/// factor fresh within the re-authentication window (or `code` now), so
/// neither a stolen session nor a stolen password alone takes it away.
pub async fn remove_own(
    front: &Front,
    p: &Principal,
    id: &str,
    password: String,
    code: &str,
    ip: std::net::IpAddr,
) -> Result<u64, ApiError> {
    crate::sign_in::own::reauth(front, p, password, ip).await?;
    let window = crate::sign_in::own::window(front);
    super::check::fresh_factor(front, p, code, window, ip).await?;
    remove(front, p, id, &Actor::of(p, ip.to_string())).await
}

/// Renames one of `p`'s passkeys.
pub async fn rename(front: &Front, p: &Principal, id: &str, name: &str, actor: &Actor) -> Result<u64, ApiError> {
    session_of(p)?;
    let cmd = front.node.command(Payload::RenamePasskey(RenamePasskey {
        user_id: p.user_id.clone(),
        credential_id: credential_id(id)?,
        name: name.trim().to_string(),
    }));
    Ok(crate::audit::write(&front.node, actor, cmd).await?.log_index)
}

/// Removes one of `p`'s passkeys (refused for the last factor a role
/// requires). The caller has checked the password and a fresh factor.
pub async fn remove(front: &Front, p: &Principal, id: &str, actor: &Actor) -> Result<u64, ApiError> {
    let cmd = front.node.command(Payload::RemoveFactors(RemoveFactors {
        user_id: p.user_id.clone(),
        kind: domain::PASSKEY.into(),
        credential_id: credential_id(id)?,
    }));
    Ok(crate::audit::write(&front.node, actor, cmd).await?.log_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_must_be_secure_and_on_the_relying_party() {
        assert!(Passkeys::new("example.com", "Acme", &["https://auth.example.com".into()]).is_ok());
        assert!(Passkeys::new("localhost", "Dev", &["http://localhost:8080".into()]).is_ok());
        for bad in [
            vec![],
            vec!["http://auth.example.com".to_string()],
            vec!["https://example.org".to_string()],
            vec!["https://badexample.com".to_string()],
            vec!["https://auth.example.com/login".to_string()],
            vec!["not a url".to_string()],
        ] {
            assert!(Passkeys::new("example.com", "Acme", &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_challenge_hash_is_domain_separated() {
        assert_ne!(challenge_hash(b"x"), <[u8; 32]>::from(Sha256::digest(b"x")));
        assert_eq!(challenge_hash(b"x"), challenge_hash(b"x"));
    }
}
