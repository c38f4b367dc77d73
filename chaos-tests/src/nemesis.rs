//! Faults, and the network they act on.
//!
//! [`Net`] puts a [`LinkProxy`] on every directed link between the nodes of
//! a [`ProcCluster`], and on every link from a stateless front to a voter;
//! a [`Nemesis`] injects one kind of fault into the cluster and heals it.
//! Partitions put each front on a side (its links to the other side's
//! voters cut), slow and flaky links reach fronts' links too; kills and
//! pauses act on voters. Each fault reports which nodes and fronts form the
//! majority side while it holds (where verification must stay available).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::cluster::ProcCluster;
use crate::proxy::{Fault, LinkProxy};

/// Every kind of fault the chaos runs inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Nemesis {
    /// kill -9 the leader; restart it at the heal.
    KillLeader,
    /// kill -9 a random node.
    KillRandom,
    /// SIGSTOP the leader; SIGCONT at the heal.
    PauseLeader,
    /// SIGSTOP a random node.
    PauseRandom,
    /// Cut every link to and from the leader.
    IsolateLeader,
    /// A random majority and minority, cut apart.
    MajorityMinority,
    /// Two halves that only one bridge node connects.
    Bridge,
    /// The leader's outgoing links cut; it still hears everyone.
    OneWay,
    /// Every link delayed by 5–40 ms each way.
    SlowLinks,
    /// Every link resets 5% of its chunks' connections.
    FlakyLinks,
    /// Each node in turn: SIGTERM, restart, wait until ready.
    RollingRestart,
    /// kill -9 every node at once; restart them all.
    FullRestart,
}

impl Nemesis {
    pub const ALL: [Nemesis; 12] = [
        Nemesis::KillLeader,
        Nemesis::KillRandom,
        Nemesis::PauseLeader,
        Nemesis::PauseRandom,
        Nemesis::IsolateLeader,
        Nemesis::MajorityMinority,
        Nemesis::Bridge,
        Nemesis::OneWay,
        Nemesis::SlowLinks,
        Nemesis::FlakyLinks,
        Nemesis::RollingRestart,
        Nemesis::FullRestart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Nemesis::KillLeader => "kill-leader",
            Nemesis::KillRandom => "kill-random",
            Nemesis::PauseLeader => "pause-leader",
            Nemesis::PauseRandom => "pause-random",
            Nemesis::IsolateLeader => "isolate-leader",
            Nemesis::MajorityMinority => "majority-minority",
            Nemesis::Bridge => "bridge",
            Nemesis::OneWay => "one-way",
            Nemesis::SlowLinks => "slow-links",
            Nemesis::FlakyLinks => "flaky-links",
            Nemesis::RollingRestart => "rolling-restart",
            Nemesis::FullRestart => "full-restart",
        }
    }

    pub fn parse(name: &str) -> Option<Nemesis> {
        Nemesis::ALL.into_iter().find(|n| n.name() == name)
    }

    /// Whether the fault kills the leader (its failover time is measured).
    pub fn kills_leader(self) -> bool {
        matches!(self, Nemesis::KillLeader)
    }
}

/// The proxies on every directed link `from → to`.
pub struct Net {
    links: BTreeMap<(u64, u64), LinkProxy>,
}

impl Net {
    /// Starts a proxy per directed link and routes each node's connections
    /// to its peers through them (`[peer_routes]`); call before launching.
    pub async fn wire(cluster: &ProcCluster, seed: u64) -> anyhow::Result<Net> {
        let mut links = BTreeMap::new();
        for from in cluster.nodes.keys() {
            let mut routes = String::from("\n[peer_routes]\n");
            for (to, node) in cluster.nodes.iter().filter(|(to, _)| *to != from) {
                let proxy = LinkProxy::start(node.peer.clone(), seed ^ (from << 32 | to)).await?;
                routes += &format!("\"{}\" = \"{}\"\n", node.peer, proxy.addr());
                links.insert((*from, *to), proxy);
            }
            cluster.append_config(*from, &routes)?;
        }
        Ok(Net { links })
    }

    /// Starts a proxy per link from front `front` to each voter; returns
    /// the voters as the front is to dial them (id, proxy address).
    pub async fn wire_front(
        &mut self,
        cluster: &ProcCluster,
        front: u64,
        seed: u64,
    ) -> anyhow::Result<Vec<(u64, String)>> {
        let mut voters = Vec::new();
        for (to, node) in &cluster.nodes {
            let proxy = LinkProxy::start(node.peer.clone(), seed ^ (front << 32 | to)).await?;
            voters.push((*to, proxy.addr().to_string()));
            self.links.insert((front, *to), proxy);
        }
        Ok(voters)
    }

    pub fn set(&self, from: u64, to: u64, fault: Fault) {
        if let Some(l) = self.links.get(&(from, to)) {
            l.set(fault);
        }
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        for x in a {
            for y in b {
                self.set(*x, *y, Fault::Cut);
                self.set(*y, *x, Fault::Cut);
            }
        }
    }

    pub fn all(&self, mut fault: impl FnMut() -> Fault) {
        for l in self.links.values() {
            l.set(fault());
        }
    }

    pub fn heal(&self) {
        self.all(|| Fault::Pass);
    }
}

/// What a fault did, for healing it and for the report.
#[derive(Debug, Default)]
pub struct Injected {
    pub description: String,
    /// The nodes on the majority side while the fault holds.
    pub majority: BTreeSet<u64>,
    killed: Vec<u64>,
    paused: Vec<u64>,
}

fn ids(cluster: &ProcCluster) -> Vec<u64> {
    cluster.nodes.keys().copied().collect()
}

/// The fronts, each put on one of two sides at random.
fn split_fronts(cluster: &ProcCluster, rng: &mut StdRng) -> (Vec<u64>, Vec<u64>) {
    cluster.fronts.keys().copied().partition(|_| rng.gen_bool(0.5))
}

/// `side` and the fronts put with it.
fn with(side: &[u64], fronts: &[u64]) -> Vec<u64> {
    side.iter().chain(fronts).copied().collect()
}

/// The side of a bridge partition that can be served: the bridge and the
/// half its leader is in, which keeps its quorum through the bridge and has
/// no reason to step down (the other half cannot replicate, however large
/// its majority with the bridge would be). Everyone if the bridge leads. A
/// leader whose half and the bridge are no majority loses its quorum, and
/// the next one comes from the bridge and the larger half.
fn bridge_majority(bridge: u64, left: &[u64], right: &[u64], leader: u64, nodes: usize) -> BTreeSet<u64> {
    if leader == bridge {
        return left.iter().chain(right).copied().chain([bridge]).collect();
    }
    let (small, large) = if left.len() <= right.len() { (left, right) } else { (right, left) };
    let side = if small.contains(&leader) && (small.len() + 1) * 2 > nodes { small } else { large };
    side.iter().copied().chain([bridge]).collect()
}

/// Injects `nemesis` (`leader` is the current leader).
pub async fn inject(
    nemesis: Nemesis,
    cluster: &mut ProcCluster,
    net: &Net,
    leader: u64,
    rng: &mut StdRng,
) -> anyhow::Result<Injected> {
    let all = ids(cluster);
    let random = *all.choose(rng).expect("nodes");
    let others = |x: u64| all.iter().copied().filter(|n| *n != x).collect::<BTreeSet<_>>();
    let fronts: Vec<u64> = cluster.fronts.keys().copied().collect();
    // Every voter and front, until a fault says otherwise.
    let mut done = Injected { majority: all.iter().chain(&fronts).copied().collect(), ..Default::default() };
    let others = |x: u64| others(x).into_iter().chain(fronts.iter().copied()).collect::<BTreeSet<_>>();
    match nemesis {
        Nemesis::KillLeader | Nemesis::KillRandom => {
            let victim = if nemesis == Nemesis::KillLeader { leader } else { random };
            cluster.kill(victim);
            done.killed.push(victim);
            done.majority = others(victim);
            done.description = format!("kill -9 node {victim}");
        }
        Nemesis::PauseLeader | Nemesis::PauseRandom => {
            let victim = if nemesis == Nemesis::PauseLeader { leader } else { random };
            cluster.signal(victim, "STOP")?;
            done.paused.push(victim);
            done.majority = others(victim);
            done.description = format!("SIGSTOP node {victim}");
        }
        Nemesis::IsolateLeader => {
            // The fronts too lose the leader.
            net.partition(&[leader], &others(leader).into_iter().collect::<Vec<_>>());
            done.majority = others(leader);
            done.description = format!("isolate leader {leader}");
        }
        Nemesis::MajorityMinority => {
            let mut shuffled = all.clone();
            shuffled.shuffle(rng);
            let (minority, majority) = shuffled.split_at(all.len() / 2);
            let (small, large) = split_fronts(cluster, rng);
            let (minority, majority) = (with(minority, &small), with(majority, &large));
            net.partition(&minority, &majority);
            done.majority = majority.iter().copied().collect();
            done.description = format!("partition {minority:?} | {majority:?}");
        }
        Nemesis::Bridge => {
            let mut shuffled = all.clone();
            shuffled.shuffle(rng);
            let bridge = shuffled[0];
            let rest = &shuffled[1..];
            let (left, right) = rest.split_at(rest.len() / 2);
            let voters = bridge_majority(bridge, left, right, leader, all.len());
            // A front stays in its half (it still reaches the bridge), and
            // is on the majority side when its whole half is.
            let (lf, rf) = split_fronts(cluster, rng);
            let (left, right) = (with(left, &lf), with(right, &rf));
            net.partition(&left, &right);
            let whole = |half: &[u64]| half.iter().all(|id| voters.contains(id) || lf.contains(id) || rf.contains(id));
            let fronts_in = |half: &[u64], fs: &[u64]| if whole(half) { fs.to_vec() } else { Vec::new() };
            done.majority = voters.iter().copied().chain(fronts_in(&left, &lf)).chain(fronts_in(&right, &rf)).collect();
            done.description = format!("bridge {bridge} between {left:?} and {right:?}");
        }
        Nemesis::OneWay => {
            // Links are dialled by the front: none goes from a voter to one.
            for to in others(leader) {
                net.set(leader, to, Fault::Cut);
            }
            done.majority = others(leader);
            done.description = format!("leader {leader} cannot send (one way)");
        }
        Nemesis::SlowLinks => {
            // Round trips up to 80 ms, under the 100 ms heartbeat that openraft
            // 0.9 also uses as its RPC timeout (slower links need a longer
            // heartbeat: see raft.heartbeat_ms).
            net.all(|| Fault::Delay(Duration::from_millis(rng.gen_range(5..=40))));
            done.description = "every link delayed 5-40 ms each way".into();
        }
        Nemesis::FlakyLinks => {
            net.all(|| Fault::Flaky(50));
            done.description = "every link resets 5% of chunks".into();
        }
        Nemesis::RollingRestart => {
            for id in all.iter().copied() {
                cluster.terminate(id, Duration::from_secs(20)).await?;
                cluster.spawn(id)?;
                cluster.wait_ready(id, Duration::from_secs(30)).await?;
            }
            // Each node in turn is down: no side is whole throughout.
            done.majority = BTreeSet::new();
            done.description = "rolling restart (SIGTERM, one node at a time)".into();
        }
        Nemesis::FullRestart => {
            for id in all.iter().copied() {
                cluster.kill(id);
            }
            done.killed = all.clone();
            done.majority = BTreeSet::new();
            done.description = "kill -9 every node".into();
        }
    }
    Ok(done)
}

/// Undoes a fault: links pass, paused nodes continue, killed nodes restart.
pub fn heal(cluster: &mut ProcCluster, net: &Net, injected: &Injected) -> anyhow::Result<()> {
    net.heal();
    for id in &injected.paused {
        cluster.signal(*id, "CONT")?;
    }
    for id in &injected.killed {
        cluster.spawn(*id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_bridge_majority_is_the_bridge_and_the_leaders_half() {
        // Three nodes: either half with the bridge is a majority.
        assert_eq!(bridge_majority(2, &[3], &[1], 1, 3), set(&[1, 2]));
        assert_eq!(bridge_majority(2, &[3], &[1], 3, 3), set(&[2, 3]));
        // Five nodes, two and two.
        assert_eq!(bridge_majority(5, &[1, 2], &[3, 4], 2, 5), set(&[1, 2, 5]));
        // The bridge leads: every node hears it.
        assert_eq!(bridge_majority(2, &[3], &[1], 2, 3), set(&[1, 2, 3]));
        // Four nodes, one and two: the single node's leader loses its quorum.
        assert_eq!(bridge_majority(4, &[1], &[2, 3], 1, 4), set(&[2, 3, 4]));
    }
}
