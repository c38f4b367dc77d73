//! The fronts a voter serves, and how it knows them: each front has an id
//! and a secret of its own, revocable alone. The voter keeps only the
//! SHA-256 of each secret, in its fronts file (one `<id> <sha256 hex>` per
//! line, `#` comments), re-read without a restart.
//!
//! A front's secret opens the follow service ([`crate::follow`]) and nothing
//! else: the Raft and control services ask for the cluster secret, which a
//! front never holds. A front's id may not be a member's: a front can never
//! pass for a voter, and its commands are told apart from a voter's.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use gatehouse_storage::NodeId;

/// gRPC metadata key carrying a front's id.
pub const FRONT_ID_METADATA: &str = "x-gatehouse-front-id";
/// gRPC metadata key carrying a front's secret.
pub const FRONT_SECRET_METADATA: &str = "x-gatehouse-front-secret";
/// Shortest front secret accepted (the same bound as the cluster secret's).
pub const MIN_FRONT_SECRET_LEN: usize = crate::peers::MIN_SECRET_LEN;
/// Most fronts one fronts file may list.
pub const MAX_FRONTS: usize = 1024;

/// The front a call came from (an extension of every admitted request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontId(pub NodeId);

/// The digest of the secret a front was admitted with (an extension of
/// every admitted request): a stream opened with it ends once the fronts
/// file no longer lists it, a rotated secret included.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Admitted(pub(crate) [u8; 32]);

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admitted(..)")
    }
}

/// The fronts this voter accepts: id → SHA-256 of the secret. Every clone
/// shares them; [`Fronts::replace`] changes them in place.
#[derive(Clone, Default)]
pub struct Fronts {
    known: Arc<RwLock<HashMap<NodeId, [u8; 32]>>>,
}

impl std::fmt::Debug for Fronts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fronts").field("count", &self.len()).finish()
    }
}

/// Parses a fronts file. Errors name the line, never a hash.
fn parse(text: &str) -> Result<HashMap<NodeId, [u8; 32]>, String> {
    let mut known = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| Err(format!("fronts file line {}: {why}", n + 1));
        let mut parts = line.split_whitespace();
        let (Some(id), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
            return bad("expected `<front id> <sha256 of its secret, hex>`");
        };
        let Ok(id) = id.parse::<NodeId>() else { return bad("the front id is not a number") };
        if id == 0 {
            return bad("front ids are positive");
        }
        let mut digest = [0u8; 32];
        if hash.len() != 64 || hex::decode_to_slice(hash, &mut digest).is_err() {
            return bad("the hash is not 64 hexadecimal characters");
        }
        if known.insert(id, digest).is_some() {
            return bad("this front id is listed twice");
        }
        if known.len() > MAX_FRONTS {
            return bad(&format!("at most {MAX_FRONTS} fronts"));
        }
    }
    Ok(known)
}

/// The line a fronts file holds for front `id` with `secret`.
pub fn line_for(id: NodeId, secret: &str) -> String {
    format!("{id} {}", hex::encode(Sha256::digest(secret.trim().as_bytes())))
}

impl Fronts {
    /// The fronts in a fronts file's `text`.
    pub fn new(text: &str) -> Result<Fronts, String> {
        Ok(Fronts { known: Arc::new(RwLock::new(parse(text)?)) })
    }

    /// Takes the fronts in `text` for every clone: `Ok(true)` if they
    /// changed; on an error the ones in use stay.
    pub fn replace(&self, text: &str) -> Result<bool, String> {
        let fresh = parse(text)?;
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if *known == fresh {
            return Ok(false);
        }
        *known = fresh;
        Ok(true)
    }

    /// The ids listed now, in order.
    pub fn ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.known.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn len(&self) -> usize {
        self.known.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether front `id` is listed now (a removed front's streams end).
    pub fn knows(&self, id: NodeId) -> bool {
        self.known.read().unwrap_or_else(|p| p.into_inner()).contains_key(&id)
    }

    /// Whether front `id` is still listed with the secret it was admitted with.
    pub fn still(&self, id: NodeId, admitted: Admitted) -> bool {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        known.get(&id).is_some_and(|d| bool::from(d.ct_eq(&admitted.0)))
    }

    /// The digest of `secret` if it is front `id`'s (constant time in the secret).
    fn matches(&self, id: NodeId, secret: &[u8]) -> Option<Admitted> {
        let presented: [u8; 32] = Sha256::digest(secret).into();
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        // An unknown id compares against zeros: the same work either way.
        let expected = known.get(&id).copied();
        let same: bool = presented.ct_eq(&expected.unwrap_or([0; 32])).into();
        (same && expected.is_some()).then_some(Admitted(presented))
    }

    /// Admits a call from a front: its id and its secret, an id that no
    /// member holds, and over mutual TLS (`trust`) a certificate that binds
    /// that front (`gatehouse-front-<id>`; a node's certificate does not
    /// open a front's services). The front's id is then a [`FrontId`]
    /// extension.
    #[allow(clippy::result_large_err)]
    pub fn admit<T>(
        &self,
        members: impl FnOnce(NodeId) -> bool,
        trust: Option<&gatehouse_tls::peer::Trust>,
        mut req: Request<T>,
    ) -> Result<Request<T>, Status> {
        let id = req.metadata().get(FRONT_ID_METADATA).and_then(|v| v.to_str().ok()?.parse::<NodeId>().ok());
        let secret = req.metadata().get(FRONT_SECRET_METADATA).map(|v| v.as_bytes().to_vec());
        let refuse = |why: &str| {
            static REFUSED: crate::throttle::Throttle = crate::throttle::Throttle::new(1_000);
            if let Some(suppressed) = REFUSED.allow() {
                tracing::warn!(peer = ?req.remote_addr(), front = ?id, why, suppressed, "front refused");
            }
            Status::unauthenticated("a front's id and secret are required")
        };
        let (Some(id), Some(secret)) = (id, secret) else { return Err(refuse("no front id or secret")) };
        let Some(admitted) = self.matches(id, &secret) else {
            return Err(refuse("unknown front or wrong secret"));
        };
        if members(id) {
            return Err(refuse("the front's id is a member's"));
        }
        if let Some(trust) = trust {
            use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
            let certs = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs());
            let holder = certs.as_ref().and_then(|c| c.first()).map(|c| trust.holder(c));
            if holder != Some(Ok(gatehouse_tls::identity::Holder::Front(id))) {
                return Err(refuse("the certificate is not this front's"));
            }
        }
        req.extensions_mut().insert(FrontId(id));
        req.extensions_mut().insert(admitted);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-front-secret-of-at-least-32-characters";

    fn request(id: &str, secret: &str) -> Request<()> {
        let mut req = Request::new(());
        req.metadata_mut().insert(FRONT_ID_METADATA, id.parse().unwrap());
        req.metadata_mut().insert(FRONT_SECRET_METADATA, secret.parse().unwrap());
        req
    }

    #[test]
    fn a_listed_front_with_its_secret_is_admitted_and_named() {
        let fronts = Fronts::new(&format!("# fronts\n{}\n\n", line_for(7, SECRET))).unwrap();
        let req = fronts.admit(|_| false, None, request("7", SECRET)).unwrap();
        assert_eq!(req.extensions().get::<FrontId>(), Some(&FrontId(7)));
    }

    #[test]
    fn a_wrong_secret_another_front_s_id_a_member_s_id_or_nothing_is_refused() {
        let fronts = Fronts::new(&format!("{}\n{}\n", line_for(7, SECRET), line_for(8, &SECRET.repeat(2)))).unwrap();
        assert!(fronts.admit(|_| false, None, request("7", "wrong-secret-wrong-secret-wrong-secret")).is_err());
        assert!(fronts.admit(|_| false, None, request("8", SECRET)).is_err(), "7's secret does not open 8");
        assert!(fronts.admit(|_| false, None, request("9", SECRET)).is_err());
        assert!(fronts.admit(|id| id == 7, None, request("7", SECRET)).is_err(), "a member's id");
        assert!(fronts.admit(|_| false, None, request("seven", SECRET)).is_err());
        assert!(fronts.admit(|_| false, None, Request::new(())).is_err());
        let status = fronts.admit(|_| false, None, request("7", "x")).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_removed_front_is_refused_and_a_bad_file_keeps_the_fronts_in_use() {
        let fronts = Fronts::new(&line_for(7, SECRET)).unwrap();
        assert!(fronts.replace("7 not-a-hash").unwrap_err().contains("line 1"));
        assert!(fronts.knows(7));
        assert!(!fronts.replace(&line_for(7, SECRET)).unwrap());
        let admitted =
            *fronts.admit(|_| false, None, request("7", SECRET)).unwrap().extensions().get::<Admitted>().unwrap();
        assert!(fronts.still(7, admitted));
        // A rotated secret: streams opened with the old one end.
        fronts.replace(&line_for(7, &SECRET.repeat(2))).unwrap();
        assert!(fronts.knows(7) && !fronts.still(7, admitted));
        assert!(fronts.replace("").unwrap());
        assert!(!fronts.knows(7));
        assert!(fronts.admit(|_| false, None, request("7", SECRET)).is_err());
    }

    #[test]
    fn malformed_files_are_refused_by_line_without_echoing_the_hash() {
        let hash = "ab".repeat(32);
        for (text, why) in [
            (format!("7 {hash}\n7 {hash}"), "twice"),
            (format!("0 {hash}"), "positive"),
            (format!("x {hash}"), "not a number"),
            ("7".to_string(), "expected"),
            (format!("7 {hash} extra"), "expected"),
            (format!("7 {}", "zz".repeat(32)), "hexadecimal"),
        ] {
            let err = Fronts::new(&text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
            assert!(!err.contains(&hash));
        }
    }
}
