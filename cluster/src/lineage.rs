//! Which cluster a node belongs to, and which life of it (its epoch).
//!
//! A cluster's id is minted when it is initialised; a forced recovery
//! starts a new epoch of the same id, a restore a new id. Every call
//! between nodes carries the caller's lineage ([`LINEAGE_METADATA`]), and a
//! node takes calls only from its own lineage: an old majority that comes
//! back after a recovery, or a node of another cluster that shares the
//! secret, is refused on every Raft and control call, so it can never
//! overwrite the cluster that replaced it. A node that has none yet (a
//! fresh one, about to be added) takes the lineage of the first Raft call
//! it gets (a vote or a replication from a member), stored before the call
//! runs; control calls never give one.

use std::sync::{Arc, RwLock};

use std::path::{Path, PathBuf};

use gatehouse_storage::lineage::{read_lineage, write_lineage};
use gatehouse_storage::{Storage, StorageError};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// Metadata key of the caller's lineage on calls between nodes:
/// `<cluster id>.<epoch>`.
pub const LINEAGE_METADATA: &str = "x-gatehouse-cluster";

/// The lineage of data from before lineages existed: every node of such a
/// cluster takes it at its first start with this version.
pub const LEGACY_ID: &str = "00000000000000000000000000000000";

/// A cluster id and one epoch of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLineage {
    /// 32 lowercase hex digits ([`LEGACY_ID`] for data from before lineages).
    pub cluster_id: String,
    pub epoch: u64,
}

/// This node's lineage, shared by every clone; stored in the node's data
/// directory (a file: holding a `Lineage` never holds the database open).
#[derive(Clone)]
pub struct Lineage {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    current: RwLock<Option<Held>>,
}

#[derive(Clone)]
struct Held {
    lineage: ClusterLineage,
    metadata: MetadataValue<Ascii>,
}

impl std::fmt::Debug for Lineage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lineage").field("current", &self.get().map(|l| text(&l))).finish()
    }
}

/// `<id>.<epoch>`.
pub fn text(l: &ClusterLineage) -> String {
    format!("{}.{}", l.cluster_id, l.epoch)
}

/// A lineage as [`text`] writes it; `None` for anything else.
pub fn parse(s: &str) -> Option<ClusterLineage> {
    let (id, epoch) = s.split_once('.')?;
    let hex = id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let digits = !epoch.is_empty() && epoch.len() <= 20 && epoch.bytes().all(|b| b.is_ascii_digit());
    (hex && digits).then(|| Some(ClusterLineage { cluster_id: id.to_string(), epoch: epoch.parse().ok()? })).flatten()
}

fn held(lineage: ClusterLineage) -> Held {
    let metadata = text(&lineage).parse().expect("hex and digits are valid metadata");
    Held { lineage, metadata }
}

impl Lineage {
    /// The lineage stored with `storage`. A store with Raft state and no
    /// lineage (written before lineages existed) takes [`LEGACY_ID`] at
    /// epoch 0, as every other node of its cluster does.
    pub fn load(storage: &Storage) -> Result<Lineage, StorageError> {
        let data_dir = storage.data_dir().to_path_buf();
        let mut stored = match read_lineage(&data_dir)? {
            Some(text) => Some(parse(&text).ok_or_else(|| StorageError::Corrupt {
                table: "cluster-lineage",
                reason: "not <32 hex digits>.<epoch>".into(),
            })?),
            None => None,
        };
        if stored.is_none() && storage.has_raft_state()? {
            let legacy = ClusterLineage { cluster_id: LEGACY_ID.into(), epoch: 0 };
            write_lineage(&data_dir, &text(&legacy))?;
            tracing::info!(lineage = %text(&legacy), "data from before cluster lineages: taking the legacy lineage");
            stored = Some(legacy);
        }
        Ok(Lineage { inner: Arc::new(Inner { data_dir, current: RwLock::new(stored.map(held)) }) })
    }

    /// Where the lineage of the node at `data_dir` is stored (for the
    /// offline tools: recovery, restore).
    pub fn store(data_dir: &Path, lineage: &ClusterLineage) -> Result<(), StorageError> {
        write_lineage(data_dir, &text(lineage))
    }

    pub fn get(&self) -> Option<ClusterLineage> {
        self.read().as_ref().map(|h| h.lineage.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Held>> {
        self.inner.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The lineage of a cluster this node initialises: the stored one (a
    /// start that stopped between minting and initialising), or a new id
    /// at epoch 1.
    pub fn mint(&self) -> Result<ClusterLineage, StorageError> {
        let mut current = self.inner.current.write().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = current.as_ref() {
            return Ok(h.lineage.clone());
        }
        let fresh = ClusterLineage { cluster_id: crate::ids::new_id(), epoch: 1 };
        write_lineage(&self.inner.data_dir, &text(&fresh))?;
        tracing::info!(lineage = %text(&fresh), "new cluster lineage");
        *current = Some(held(fresh.clone()));
        Ok(fresh)
    }

    /// Replaces the lineage (a forced recovery's new epoch, a restore's new
    /// id), durable before this returns.
    pub fn replace(&self, lineage: ClusterLineage) -> Result<(), StorageError> {
        let mut current = self.inner.current.write().unwrap_or_else(|p| p.into_inner());
        write_lineage(&self.inner.data_dir, &text(&lineage))?;
        *current = Some(held(lineage));
        Ok(())
    }

    /// What outgoing calls carry (nothing before the node has a lineage).
    pub(crate) fn metadata(&self) -> Option<MetadataValue<Ascii>> {
        self.read().as_ref().map(|h| h.metadata.clone())
    }

    /// Admits a call from another node: its lineage must be this node's.
    /// A node without one takes the caller's (stored first).
    ///
    /// A call without a lineage is no call of a node of this version
    /// (every node with data sends one): it is taken by a node of the
    /// legacy lineage or of none (a cluster being upgraded from a version
    /// before lineages), and with `tools` (the control service, which
    /// operators' tools holding the secret call too); refused otherwise.
    #[allow(clippy::result_large_err)]
    pub fn check<T>(&self, req: &Request<T>, tools: bool) -> Result<(), Status> {
        // Only a Raft call (from a member that campaigns or replicates to
        // this node) gives a node its lineage; control calls never do.
        self.check_as(req, tools, !tools)
    }

    /// A stateless front's call: one that names no lineage yet is taken,
    /// one of another lineage refused; a node without a lineage takes none
    /// from a front (only a member's call gives it one).
    #[allow(clippy::result_large_err)]
    pub fn check_front<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.check_as(req, true, false)
    }

    #[allow(clippy::result_large_err)]
    fn check_as<T>(&self, req: &Request<T>, tools: bool, adopt: bool) -> Result<(), Status> {
        let refuse = |why: String| {
            static REFUSED: crate::throttle::Throttle = crate::throttle::Throttle::new(1_000);
            if let Some(suppressed) = REFUSED.allow() {
                tracing::warn!(peer = ?req.remote_addr(), why = %why, suppressed, "call from another cluster refused");
            }
            Status::failed_precondition(why)
        };
        let Some(raw) = req.metadata().get(LINEAGE_METADATA) else {
            let before_lineages =
                self.read().as_ref().is_none_or(|h| h.lineage.cluster_id == LEGACY_ID && h.lineage.epoch == 0);
            return if tools || before_lineages {
                Ok(())
            } else {
                Err(refuse("no cluster lineage on the call".into()))
            };
        };
        let Some(presented) = raw.to_str().ok().and_then(parse) else {
            return Err(refuse("a malformed cluster lineage on the call".into()));
        };
        if let Some(own) = self.read().as_ref() {
            return compare(&own.lineage, &presented).map_err(refuse);
        }
        if !adopt {
            return Ok(());
        }
        let mut current = self.inner.current.write().unwrap_or_else(|p| p.into_inner());
        if let Some(own) = current.as_ref() {
            return compare(&own.lineage, &presented).map_err(refuse);
        }
        if let Err(e) = write_lineage(&self.inner.data_dir, &text(&presented)) {
            tracing::error!(error = %e, "storing the cluster lineage failed");
            return Err(Status::unavailable("this node cannot store its cluster lineage"));
        }
        tracing::info!(lineage = %text(&presented), "joined a cluster lineage");
        *current = Some(held(presented));
        Ok(())
    }
}

/// Whether a caller of lineage `theirs` may call a node of lineage `own`;
/// the refusal says what an operator should do.
fn compare(own: &ClusterLineage, theirs: &ClusterLineage) -> Result<(), String> {
    if own.cluster_id != theirs.cluster_id {
        return Err(format!(
            "the caller belongs to cluster {}, this node to cluster {}",
            theirs.cluster_id, own.cluster_id
        ));
    }
    match theirs.epoch.cmp(&own.epoch) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(format!(
            "the caller is of epoch {} of this cluster, which a recovery replaced with epoch {}: \
             wipe that node's data and add it again",
            theirs.epoch, own.epoch
        )),
        std::cmp::Ordering::Greater => Err(format!(
            "the caller is of epoch {} of this cluster, this node of epoch {}, which a recovery \
             replaced: wipe this node's data and add it again",
            theirs.epoch, own.epoch
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage(id: &str, epoch: u64) -> ClusterLineage {
        ClusterLineage { cluster_id: id.into(), epoch }
    }

    fn call(meta: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(m) = meta {
            r.metadata_mut().insert(LINEAGE_METADATA, m.parse().unwrap());
        }
        r
    }

    #[test]
    fn lineages_round_trip_and_nothing_else_parses() {
        let l = lineage(&"a1".repeat(16), 7);
        assert_eq!(parse(&text(&l)), Some(l));
        for bad in [
            "",
            ".",
            "a1.1",
            &format!("{}.", "a1".repeat(16)),
            &format!("{}.x", "a1".repeat(16)),
            &format!("{}.-1", "a1".repeat(16)),
            &format!("{}.1", "A1".repeat(16)),
            &format!("{}.1", "g1".repeat(16)),
            &format!("{}.99999999999999999999999", "a1".repeat(16)),
            &format!("{}.1.2", "a1".repeat(16)),
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_node_takes_calls_of_its_own_lineage_only() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _sm) = gatehouse_storage::open(dir.path()).unwrap();
        let node = Lineage::load(&log.storage()).unwrap();
        let minted = node.mint().unwrap();
        assert_eq!(node.mint().unwrap(), minted, "minting again keeps the first");
        assert_eq!(minted.epoch, 1);
        assert!(node.check(&call(Some(&text(&minted))), false).is_ok());
        // A tool's control call carries none; a node's Raft call must.
        assert!(node.check(&call(None), true).is_ok());
        for (what, meta) in [
            ("none", None),
            ("garbage", Some("nonsense".to_string())),
            ("another cluster", Some(text(&lineage(&"b2".repeat(16), 1)))),
            ("a later epoch", Some(text(&lineage(&minted.cluster_id, 2)))),
            ("an earlier epoch", Some(text(&lineage(&minted.cluster_id, 0)))),
        ] {
            let err = node.check(&call(meta.as_deref()), false).unwrap_err();
            assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{what}");
            if meta.is_some() {
                assert!(node.check(&call(meta.as_deref()), true).is_err(), "{what}, as a tool");
            }
        }
        // A recovery's new epoch: the old one is refused from then on.
        node.replace(lineage(&minted.cluster_id, 2)).unwrap();
        assert!(node.check(&call(Some(&text(&minted))), false).is_err());
        assert!(node.check(&call(Some(&text(&lineage(&minted.cluster_id, 2)))), false).is_ok());
    }

    #[test]
    fn a_front_is_held_to_the_lineage_it_names_and_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _sm) = gatehouse_storage::open(dir.path()).unwrap();
        let node = Lineage::load(&log.storage()).unwrap();
        let theirs = lineage(&"e5".repeat(16), 1);
        // A node without a lineage takes none from a front.
        node.check_front(&call(Some(&text(&theirs)))).unwrap();
        assert_eq!(node.get(), None);
        let own = node.mint().unwrap();
        node.check_front(&call(None)).unwrap();
        node.check_front(&call(Some(&text(&own)))).unwrap();
        assert!(node.check_front(&call(Some(&text(&theirs)))).is_err());
        assert!(node.check_front(&call(Some(&text(&lineage(&own.cluster_id, 9))))).is_err());
    }

    #[test]
    fn a_fresh_node_joins_the_first_lineage_that_calls_it_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = lineage(&"c3".repeat(16), 4);
        {
            let (log, _sm) = gatehouse_storage::open(dir.path()).unwrap();
            let node = Lineage::load(&log.storage()).unwrap();
            assert_eq!(node.get(), None);
            assert!(node.metadata().is_none(), "a fresh node sends no lineage");
            // A call without one (a node from before lineages) joins nothing,
            // nor does a control call (a status probe, a tool).
            node.check(&call(None), false).unwrap();
            node.check(&call(Some(&text(&lineage(&"f6".repeat(16), 1)))), true).unwrap();
            assert_eq!(node.get(), None);
            node.check(&call(Some(&text(&theirs))), false).unwrap();
            assert!(node.check(&call(Some(&text(&lineage(&"d4".repeat(16), 1)))), false).is_err());
        }
        let (log, _sm) = gatehouse_storage::open(dir.path()).unwrap();
        assert_eq!(Lineage::load(&log.storage()).unwrap().get(), Some(theirs), "stored");
    }
}
