//! New signing keys through the log: `gatehouse admin jwt rotate` (the
//! admin API's `JwtService.Rotate`), and the leader's first key when
//! `[jwt]` is set and the log holds none.
//!
//! A key is made on the node that proposes it, sealed under that voter's
//! `[secrets]` key, and proposed with the publish delay and retirement of
//! that node's `[jwt]`; apply then decides, from log time alone, when it
//! signs and when the key before it goes (`gatehouse_domain::signing`).

use std::time::Duration;

use gatehouse_cluster::periodic::{Periodic, Shutdown};
use gatehouse_domain::Payload;
use tokio::task::JoinHandle;

use crate::audit::Actor;
use crate::http::front::Front;
use crate::ApiError;

/// The command that adds a new key made from `front`'s settings (propose
/// it through `audit::write` or `admin::write`: it is audited as `jwt.rotate`).
pub async fn new_key(front: &Front) -> Result<gatehouse_domain::Command, ApiError> {
    let jwt = front
        .jwt
        .as_deref()
        .ok_or_else(|| ApiError::FailedPrecondition("this node has no [jwt] section: it mints no tokens".into()))?;
    if front.mfa.sealer().is_none() {
        return Err(ApiError::FailedPrecondition(
            "this node holds no [secrets] keys to seal a signing key with".into(),
        ));
    }
    if front.node.view().read().cluster_version() < gatehouse_domain::signing::VERSION {
        return Err(ApiError::FailedPrecondition(
            "every node must run a build with JWT signing keys first (cluster version 7)".into(),
        ));
    }
    let (alg, delay, retire) = (jwt.config.algorithm, jwt.config.publish_delay, jwt.config.retire_after());
    // An RSA key takes a while to find: off the async workers.
    let f = front.clone();
    let c = tokio::task::spawn_blocking(move || {
        let sealer = f.mfa.sealer().ok_or(ApiError::Internal)?;
        super::keys::generate(alg, sealer, delay, retire)
    })
    .await
    .map_err(|_| ApiError::Internal)??;
    Ok(front.node.command(Payload::RotateSigningKey(c)))
}

/// Makes the first key, on the leader, while `[jwt]` is set and the log
/// holds none (checked every `every`); `None` on a node that cannot seal.
pub fn start_first_key(front: Front, every: Duration, shutdown: Shutdown) -> Option<JoinHandle<()>> {
    front.jwt.as_ref()?;
    front.mfa.sealer()?;
    Some(Periodic::every("jwt.first_key", every, shutdown).run(move || {
        let front = front.clone();
        async move {
            first_key(&front).await;
            true
        }
    }))
}

/// One check: a key made if this node leads, is fresh, and none exists.
pub async fn first_key(front: &Front) {
    let node = &front.node;
    if node.leader().map(|(id, _)| id) != Some(node.id()) || !node.is_fresh() {
        return;
    }
    {
        let state = node.view().read();
        if state.cluster_version() < gatehouse_domain::signing::VERSION || state.signing_keys().all().next().is_some() {
            return;
        }
    }
    let made = async {
        let result = crate::audit::write(node, &Actor::default(), new_key(front).await?).await?;
        ApiError::check(&result).map(|()| result.id)
    };
    match made.await {
        Ok(kid) => tracing::info!(%kid, "made the first JWT signing key"),
        // Another node's first key, or a lost leadership: the next check sees.
        Err(e) => tracing::warn!(error = %e, "making the first JWT signing key failed; will retry"),
    }
}
