//! The admin gRPC call being served, as the gRPC layer sets it up: the
//! client's address, the caller once authenticated (so a refusal anywhere
//! in the handler is audited with its actor), and the idempotency scheme:
//! a client's `idempotency-key` becomes per-write request ids scoped to its
//! API key, bound to a digest of the method and the request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::audit::Actor;
use crate::ApiError;

/// What the gRPC layer knows about the call being served: the client's
/// address, the caller once authentication named one (so a refusal
/// anywhere in the handler is audited with its actor), and the client's
/// `idempotency-key`, if it sent one.
#[derive(Debug, Default)]
pub struct GrpcCall {
    pub peer: String,
    caller: Mutex<Option<Actor>>,
    idempotency_key: Option<String>,
    writes: AtomicUsize,
    /// The listener's count of failed authentications per address (none
    /// when rate limits are off).
    pub auth_failures: Option<std::sync::Arc<crate::admin::failures::FailureGate>>,
    /// The gRPC method's path, for the request digest.
    pub method: String,
    /// SHA-256 of the method and the request message, once the handler
    /// noted it ([`note_request`]).
    digest: Mutex<Vec<u8>>,
}

/// Longest accepted `idempotency-key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 64;

impl GrpcCall {
    pub fn new(peer: String, idempotency_key: Option<String>) -> Self {
        GrpcCall {
            peer,
            caller: Mutex::new(None),
            idempotency_key,
            writes: AtomicUsize::new(0),
            auth_failures: None,
            method: String::new(),
            digest: Mutex::new(Vec::new()),
        }
    }

    /// The authenticated caller, if any.
    pub fn caller(&self) -> Option<Actor> {
        self.caller.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

tokio::task_local! {
    /// The admin gRPC call being served (set by the gRPC layer).
    pub static GRPC_CALL: std::sync::Arc<GrpcCall>;
}

/// The address of the admin call's client, if known.
pub fn grpc_peer() -> String {
    GRPC_CALL.try_with(|c| c.peer.clone()).unwrap_or_default()
}

/// Notes the admin call's request message: its writes carry the digest of
/// the method and the message, so an `idempotency-key` reused for another
/// request is refused instead of answered with the first one's result.
pub fn note_request<M: prost::Message>(request: &M) {
    let _ = GRPC_CALL.try_with(|c| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(c.method.as_bytes());
        h.update([0u8]);
        h.update(request.encode_to_vec());
        *c.digest.lock().unwrap_or_else(|e| e.into_inner()) = h.finalize().to_vec();
    });
}

/// The digest [`note_request`] noted for the call being served (empty: none).
pub fn request_digest() -> Vec<u8> {
    GRPC_CALL.try_with(|c| c.digest.lock().unwrap_or_else(|e| e.into_inner()).clone()).unwrap_or_default()
}

/// The request id for the next write of the admin call being served, when
/// its client sent an `idempotency-key`: scoped to the caller's API key (no
/// one can replay or read another caller's results) and numbered per write
/// within the call, so a retried call repeats the same ids and each of its
/// writes is applied once (`gatehouse_domain::requests`). `None` without a key.
pub fn idempotent_request_id(caller: &crate::identity::Principal) -> Result<Option<String>, ApiError> {
    request_id_of_write(caller, true)
}

/// The request id [`idempotent_request_id`] will give the call's next
/// write, without taking it: to ask whether a retried call's write was
/// already applied before checks that its own first attempt would fail.
pub fn next_idempotent_request_id(caller: &crate::identity::Principal) -> Result<Option<String>, ApiError> {
    request_id_of_write(caller, false)
}

fn request_id_of_write(caller: &crate::identity::Principal, take: bool) -> Result<Option<String>, ApiError> {
    let number =
        |c: &GrpcCall| if take { c.writes.fetch_add(1, Ordering::Relaxed) } else { c.writes.load(Ordering::Relaxed) };
    let Ok(Some((key, n))) = GRPC_CALL.try_with(|c| c.idempotency_key.clone().map(|k| (k, number(c)))) else {
        return Ok(None);
    };
    let valid = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if !valid {
        return Err(ApiError::InvalidArgument(format!(
            "idempotency-key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} characters of A-Z a-z 0-9 - _ . :"
        )));
    }
    let crate::identity::Via::ApiKey { key_id } = &caller.via else { return Ok(None) };
    Ok(Some(format!("idem:{key_id}:{key}:{n}")))
}

/// Notes the authenticated caller of the gRPC call being served.
pub fn note_grpc_caller(p: &crate::identity::Principal) {
    let _ = GRPC_CALL.try_with(|c| {
        *c.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(Actor::of(p, c.peer.clone()));
    });
}
