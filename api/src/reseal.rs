//! Key rotation for secrets at rest: the leader's background pass that
//! moves every sealed value (TOTP secrets, upstream refresh tokens, JWT
//! signing keys) still
//! under an older key-encryption key to the current one, through the log.
//!
//! A rotation is: put the new key first in `[secrets] keys` on every voter
//! (new values are sealed under it at once), keep the old one listed, and
//! wait until `gatehouse_secrets_stale` reads 0 on the leader (each pass
//! moves up to [`PER_PASS`] values); then the old key may go. Each value
//! is opened with its own key and sealed again for the same record (the
//! same AEAD context), and `ResealSecrets` replaces it only while it is
//! still the value that was opened, so a secret changed meanwhile (a new
//! enrollment, a rotated refresh token) is never overwritten.

use std::time::Duration;

use gatehouse_cluster::periodic::{Periodic, Shutdown};
use gatehouse_domain::Payload;
use gatehouse_proto::events::{ResealSecrets, ResealedSigningKey, ResealedToken, ResealedTotp, Sealed};
use prost::Message as _;
use tokio::task::JoinHandle;

use crate::audit::{self, Actor};
use crate::http::front::Front;

/// Values moved in one pass (several commands, each under [`MAX_BYTES`]).
pub const PER_PASS: usize = 256;
/// The largest `ResealSecrets` proposed (well under a client write's limit).
const MAX_BYTES: usize = 48 * 1024;

/// Starts the pass every `every` on this voter (it acts only while it
/// leads); `None` without `[secrets]`.
pub fn start(front: Front, every: Duration, shutdown: Shutdown) -> Option<JoinHandle<()>> {
    front.mfa.sealer()?;
    Some(Periodic::every("secrets.reseal", every, shutdown).run(move || {
        let front = front.clone();
        async move {
            pass(&front).await;
            true
        }
    }))
}

/// One sealed value under an older key, opened and sealed again.
enum Moved {
    Totp(ResealedTotp),
    Token(ResealedToken),
    SigningKey(ResealedSigningKey),
}

/// Values sealed under a key other than the current one, on this node's view.
pub fn stale(front: &Front) -> usize {
    let Some(sealer) = front.mfa.sealer() else { return 0 };
    let state = front.node.view().read();
    let old = |s: &Option<Sealed>| s.as_ref().is_some_and(|s| s.key_id != sealer.current());
    let totp = state
        .users()
        .filter(|u| state.factors_of(&u.user_id).is_some_and(|f| f.totp.as_ref().is_some_and(|t| old(&t.secret))))
        .count();
    let tokens =
        state.users().flat_map(|u| state.upstream_identities_of(&u.user_id)).filter(|i| old(&i.refresh_token)).count();
    let signing = state.signing_keys().all().filter(|k| old(&k.private_key)).count();
    totp + tokens + signing
}

/// Moves up to [`PER_PASS`] values, if this node leads; how many moved.
pub async fn pass(front: &Front) -> usize {
    let node = &front.node;
    let Some(sealer) = front.mfa.sealer() else { return 0 };
    node.metrics().secrets_stale.set(stale(front) as i64);
    if node.leader().map(|(id, _)| id) != Some(node.id()) || !node.is_fresh() {
        return 0;
    }
    let current = sealer.current().to_string();
    let mut moved: Vec<Moved> = Vec::new();
    {
        let state = node.view().read();
        // Signing keys first: few, and the cluster signs nothing without them.
        // Moved only once the cluster applies them the same everywhere.
        let keys = state.signing_keys().all().filter(|_| state.cluster_version() >= gatehouse_domain::signing::VERSION);
        for k in keys {
            let Some(s) = k.private_key.as_ref().filter(|s| s.key_id != current) else { continue };
            let context = crate::jwt::keys::context(&k.kid);
            match sealer.open(s, &context) {
                Ok(plain) => moved.push(Moved::SigningKey(ResealedSigningKey {
                    kid: k.kid.clone(),
                    previous_nonce: s.nonce.clone(),
                    private_key: Some(sealer.seal(&zeroize::Zeroizing::new(plain), &context)),
                })),
                Err(e) => tracing::warn!(kid = %k.kid, error = %e, "a JWT signing key under an older key did not open"),
            }
        }
        for u in state.users() {
            if moved.len() >= PER_PASS {
                break;
            }
            let totp = state.factors_of(&u.user_id).and_then(|f| f.totp.as_ref()).and_then(|t| t.secret.as_ref());
            if let Some(s) = totp.filter(|s| s.key_id != current) {
                let context = crate::mfa::totp::context(&u.user_id);
                match sealer.open(s, &context) {
                    Ok(plain) => moved.push(Moved::Totp(ResealedTotp {
                        user_id: u.user_id.clone(),
                        previous_nonce: s.nonce.clone(),
                        secret: Some(sealer.seal(&plain, &context)),
                    })),
                    Err(e) => tracing::warn!(error = %e, "a TOTP secret under an older key did not open"),
                }
            }
            for i in state.upstream_identities_of(&u.user_id) {
                let Some(s) = i.refresh_token.as_ref().filter(|s| s.key_id != current) else { continue };
                let context = crate::sso::seal_context(&i.issuer, &i.subject);
                match sealer.open(s, &context) {
                    Ok(plain) => moved.push(Moved::Token(ResealedToken {
                        issuer: i.issuer.clone(),
                        subject: i.subject.clone(),
                        previous_nonce: s.nonce.clone(),
                        refresh_token: Some(sealer.seal(&plain, &context)),
                    })),
                    Err(e) => tracing::warn!(error = %e, "a refresh token under an older key did not open"),
                }
            }
        }
    }
    let mut done = 0;
    let mut batch = ResealSecrets::default();
    let flush = |batch: &mut ResealSecrets| std::mem::take(batch);
    let mut batches = Vec::new();
    for m in moved {
        match m {
            Moved::Totp(t) => batch.totp.push(t),
            Moved::Token(t) => batch.tokens.push(t),
            Moved::SigningKey(k) => batch.signing_keys.push(k),
        }
        if batch.encoded_len() >= MAX_BYTES {
            batches.push(flush(&mut batch));
        }
    }
    if !batch.totp.is_empty() || !batch.tokens.is_empty() || !batch.signing_keys.is_empty() {
        batches.push(batch);
    }
    for b in batches {
        match node.propose_one(node.command(Payload::ResealSecrets(b))).await {
            Ok(r) => done += r.id.parse::<usize>().unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "moving secrets to the current key failed; the next pass tries again");
                break;
            }
        }
    }
    if done > 0 {
        tracing::info!(moved = done, key = %current, "secrets at rest moved to the current key");
        let system = Actor { client_ip: String::new(), ..Default::default() };
        let mut e = audit::event("secrets.resealed", "ok", &system, format!("key:{current}"));
        e.detail = format!("{done} value(s)");
        node.audit(e);
    }
    done
}
