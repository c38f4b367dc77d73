//! The cluster version gate, as the nodes run it (the rule itself is
//! `gatehouse_domain::version`).
//!
//! Every node reports the command version and store format it understands
//! (`LocalStatus`), every front the command version it understands (a
//! header on each call to a voter, [`COMMANDS_METADATA`]). The leader looks
//! every [`RAISE_EVERY`]: once every voter and learner answers, and every
//! front its fronts file lists was heard from within [`FRONT_RECENT`] (as
//! was any other front), all with a version above the cluster's, it
//! proposes `SetClusterVersion` with the lowest of them. A listed front
//! that is down holds the version until it is back or taken off the list.
//! Until then a new kind of command is refused before it is proposed
//! ([`gated`]) and at apply. A front whose build is older than the
//! cluster's version is refused by every voter ([`check_front`]), and its
//! open follow streams end when the version rises.

use std::time::Duration;

use gatehouse_domain::version::{self, BASE_VERSION, COMMAND_VERSION};
use gatehouse_domain::{Command, Payload};
use gatehouse_proto::control::LocalStatusResponse;
use gatehouse_proto::events::SetClusterVersion;
use gatehouse_storage::NodeId;
use tonic::{Request, Status};

use crate::{Cluster, ClusterError};

/// Metadata key of the command version a front understands, on its calls to voters.
pub const COMMANDS_METADATA: &str = "x-gatehouse-commands";

/// How often the leader looks whether it may raise the cluster version.
const RAISE_EVERY: Duration = Duration::from_secs(2);

/// A front counts toward the raise while it asked a voter within this long.
pub const FRONT_RECENT: Duration = Duration::from_secs(60);

/// How long one member has to answer the leader's status call.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// A version as reported: a build from before the gate reports none (0).
pub fn reported(v: u32) -> u32 {
    v.max(BASE_VERSION)
}

/// Refuses commands of a kind newer than the cluster's version, before
/// anything is proposed.
pub fn gated(state: &gatehouse_domain::State, commands: &[Command]) -> Result<(), ClusterError> {
    for c in commands.iter().filter_map(|c| c.payload.as_ref()) {
        version::gate(state, c)?;
    }
    Ok(())
}

/// The command version a front's call says it understands.
pub fn of_front<T>(req: &Request<T>) -> u32 {
    let raw = req.metadata().get(COMMANDS_METADATA).and_then(|v| v.to_str().ok());
    reported(raw.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Refuses a front whose build does not understand the cluster's version.
#[allow(clippy::result_large_err)]
pub fn check_front(cluster_version: u32, front_version: u32) -> Result<(), Status> {
    if front_version < cluster_version {
        return Err(Status::failed_precondition(format!(
            "this front understands command version {front_version}, and the cluster runs version \
             {cluster_version}: run a newer Gatehouse on it"
        )));
    }
    Ok(())
}

/// Who keeps the cluster at its version: the members and fronts that
/// understand no more (or did not answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The highest version every member and recent front understands.
    pub understood: u32,
    /// `node N` / `front N` for each one at `understood`, and `node N
    /// (no answer)` for a member that did not answer.
    pub by: Vec<String>,
    /// Whether every member answered (no raise on a partial view).
    pub complete: bool,
}

impl Cluster {
    /// Starts the leader's look at the versions (every node runs it; only a leader acts).
    pub(crate) fn raising_version(self) -> Self {
        self.every("cluster.version", RAISE_EVERY, |cluster| async move {
            cluster.raise_version().await;
            true
        });
        self
    }

    /// The command version the cluster runs (its replicated state).
    pub fn cluster_version(&self) -> u32 {
        self.inner.view.read().cluster_version()
    }

    async fn raise_version(&self) {
        let leading = || self.inner.raft.metrics().borrow().current_leader == Some(self.inner.id);
        if !leading() || self.cluster_version() >= COMMAND_VERSION {
            return;
        }
        // No node joins from here until the raise is committed (add_learner
        // checks a node's version under the same lock).
        let _held = self.hold_versions().await;
        let runs = self.cluster_version();
        let holding = self.versions().await;
        if !holding.complete || holding.understood <= runs {
            tracing::debug!(runs, ?holding, "the cluster version stays");
            return;
        }
        let to = holding.understood.min(COMMAND_VERSION);
        let cmd = self.command(Payload::SetClusterVersion(SetClusterVersion { version: to }));
        // Written here or not at all: a node that stopped leading since it
        // asked never has its raise forwarded (the new leader asks for
        // itself, and refuses a forwarded one: `control::propose`).
        match self.write_local(vec![cmd]).await {
            Ok((results, _)) if results.first().is_some_and(|r| r.code == 0) => {
                tracing::info!(
                    from = runs,
                    to,
                    "every node understands a newer command version: cluster version raised"
                )
            }
            Ok((results, _)) => tracing::debug!(?results, "cluster version not raised"),
            Err(e) => tracing::debug!(error = %e, "cluster version not raised"),
        }
    }

    /// What every member (asked now) and every front it heard of
    /// understands, and who holds the cluster there.
    pub async fn versions(&self) -> Holding {
        let answers = crate::control::ask_members(self, ASK_TIMEOUT).await;
        holding(answers.iter().map(|(id, _, s)| (*id, s.as_ref())), &self.fronts_listed())
    }
}

/// Who holds the cluster at its version, from every member's status
/// (`None`: no answer), the fronts each reports, and the fronts `listed`.
pub fn holding<'a>(
    answers: impl Iterator<Item = (NodeId, Option<&'a LocalStatusResponse>)>,
    listed: &[NodeId],
) -> Holding {
    let mut levels: Vec<(String, u32)> = Vec::new();
    let mut missing = Vec::new();
    // Each front as the voter that heard from it last saw it: a front that
    // restarted on a new build is what it runs now.
    let mut fronts: std::collections::BTreeMap<NodeId, &gatehouse_proto::control::FrontSeen> = Default::default();
    for (id, status) in answers {
        let Some(s) = status else {
            missing.push(format!("node {id} (no answer)"));
            continue;
        };
        levels.push((format!("node {id}"), reported(s.command_version)));
        let recent = s.fronts.iter().filter(|f| f.following || f.asked_ms_ago < FRONT_RECENT.as_millis() as u64);
        for f in recent {
            let newer = fronts.get(&f.front_id).is_none_or(|old| f.asked_ms_ago < old.asked_ms_ago);
            if newer {
                fronts.insert(f.front_id, f);
            }
        }
    }
    levels.extend(fronts.values().map(|f| (format!("front {}", f.front_id), reported(f.command_version))));
    missing
        .extend(listed.iter().filter(|id| !fronts.contains_key(id)).map(|id| format!("front {id} (not heard from)")));
    let understood = levels.iter().map(|(_, v)| *v).min().unwrap_or(BASE_VERSION);
    let mut by: Vec<String> = levels.into_iter().filter(|(_, v)| *v == understood).map(|(who, _)| who).collect();
    by.sort();
    by.dedup();
    let complete = missing.is_empty();
    by.extend(missing);
    Holding { understood, by, complete }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_front_of_an_older_build_is_refused_with_what_to_do() {
        assert!(check_front(1, 1).is_ok());
        assert!(check_front(1, 2).is_ok(), "a newer front serves an older cluster");
        let refused = check_front(2, 1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("run a newer Gatehouse"), "{}", refused.message());
    }

    #[test]
    fn the_lowest_version_of_members_and_recent_fronts_holds_the_cluster() {
        let front = |id, version, asked_ms_ago, following| gatehouse_proto::control::FrontSeen {
            front_id: id,
            command_version: version,
            asked_ms_ago,
            following,
            ..Default::default()
        };
        let node = |version, fronts| LocalStatusResponse { command_version: version, fronts, ..Default::default() };
        let new = node(2, vec![front(101, 2, 10, true), front(102, 0, 3_600_000, false)]);
        let old = node(0, vec![front(101, 2, 500, false)]);
        let h = holding([(1, Some(&new)), (2, Some(&new))].into_iter(), &[101]);
        assert_eq!(
            h,
            Holding { understood: 2, by: vec!["front 101".into(), "node 1".into(), "node 2".into()], complete: true },
            "front 102 was not heard from lately"
        );
        let h = holding([(1, Some(&new)), (2, Some(&old))].into_iter(), &[]);
        assert_eq!(
            (h.understood, h.by.as_slice()),
            (1, &["node 2".to_string()][..]),
            "a build before the gate is version 1"
        );
        let recent_old_front = node(2, vec![front(103, 1, 100, false)]);
        let h = holding([(1, Some(&new)), (2, Some(&recent_old_front))].into_iter(), &[]);
        assert_eq!((h.understood, h.by.as_slice()), (1, &["front 103".to_string()][..]));
        // Front 101 restarted on a new build: what it said last counts.
        let before_restart = node(2, vec![front(101, 1, 5_000, false)]);
        let h = holding([(1, Some(&new)), (2, Some(&before_restart))].into_iter(), &[101]);
        assert_eq!((h.understood, h.complete), (2, true));
        let h = holding([(1, Some(&new)), (3, None)].into_iter(), &[]);
        assert!(!h.complete);
        assert_eq!(h.by.last().unwrap(), "node 3 (no answer)");
        // A listed front not heard from lately holds the version: it may be
        // an old build that is down for now.
        let h = holding([(1, Some(&new)), (2, Some(&new))].into_iter(), &[101, 102]);
        assert!(!h.complete);
        assert_eq!(h.by.last().unwrap(), "front 102 (not heard from)");
    }

    #[test]
    fn a_front_that_names_no_version_is_of_the_first() {
        let mut req = Request::new(());
        assert_eq!(of_front(&req), BASE_VERSION);
        req.metadata_mut().insert(COMMANDS_METADATA, "7".parse().unwrap());
        assert_eq!(of_front(&req), 7);
        req.metadata_mut().insert(COMMANDS_METADATA, "seven".parse().unwrap());
        assert_eq!(of_front(&req), BASE_VERSION, "garbage counts as the oldest");
        assert_eq!(reported(0), BASE_VERSION);
    }
}
