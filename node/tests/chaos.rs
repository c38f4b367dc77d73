//! The short chaos set CI runs: every nemesis once on three real node
//! processes behind link proxies, the faults whose shape changes with
//! the cluster's size once more on five, and two once more with mutual TLS
//! on every link (the proxies pass TLS through; a kill and a partition make
//! nodes handshake again), and four once more with two stateless fronts
//! serving verification and sign-in beside the voters (partitions put each
//! front on a side), with fixed seeds. A failure prints the
//! seed, the violations and the command that replays the run; `make chaos`
//! runs the long version (docs/chaos.md).

use std::time::Duration;

use gatehouse_chaos::nemesis::Nemesis;
use gatehouse_chaos::run::{self, Settings};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// One test for the whole set: runs go one after another, so two clusters
/// never compete for the machine's cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_nemesis_keeps_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    let on_five = [Nemesis::KillLeader, Nemesis::MajorityMinority, Nemesis::Bridge, Nemesis::OneWay];
    let with_tls = [Nemesis::KillLeader, Nemesis::MajorityMinority];
    let with_fronts = [Nemesis::KillLeader, Nemesis::MajorityMinority, Nemesis::PauseLeader, Nemesis::IsolateLeader];
    let runs = Nemesis::ALL.into_iter().map(|n| (n, 3, false, 0)).chain(on_five.into_iter().map(|n| (n, 5, false, 0)));
    let runs = runs.chain(with_tls.into_iter().map(|n| (n, 3, true, 0)));
    let runs = runs.chain(with_fronts.into_iter().map(|n| (n, 3, false, 2)));
    for (i, (nemesis, nodes, tls, fronts)) in runs.enumerate() {
        let seed = 4_000 + i as u64;
        let name = format!(
            "{}-{nodes}{}{}",
            nemesis.name(),
            if tls { "-tls" } else { "" },
            if fronts > 0 { "-fronts" } else { "" }
        );
        let run_dir = dir.path().join(name);
        let mut s = Settings::new(BIN.into(), run_dir.clone(), nemesis, seed);
        s.nodes = nodes;
        s.tls = tls;
        s.fronts = fronts;
        s.duration = Duration::from_secs(14);
        let report =
            run::run(&s).await.unwrap_or_else(|e| panic!("{} (seed {seed}) could not run: {e:#}", nemesis.name()));
        assert!(report.acknowledged > 100, "{}: too little got through to prove anything: {report:?}", nemesis.name());
        assert!(report.writes_checked > 10, "{}: too few acknowledged writes to check: {report:?}", nemesis.name());
        // A passed run's data (up to a gigabyte of node stores) goes at
        // once; a failed one stays for reading.
        if report.passed() {
            std::fs::remove_dir_all(&run_dir).unwrap_or_else(|e| panic!("removing {}: {e}", run_dir.display()));
        }
        reports.push(report);
    }
    eprintln!("{}", run::table(&reports));
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{} seed {}: {:#?}\n  replay: {}", r.scenario, r.seed, [&r.lost, &r.violations], r.replay))
        .collect();
    if !failed.is_empty() {
        // Keep the node logs and histories for reading.
        let kept = dir.keep();
        panic!("invariants broken (runs kept in {}):\n{}", kept.display(), failed.join("\n"));
    }
}
