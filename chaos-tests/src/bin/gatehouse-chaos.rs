//! `gatehouse-chaos`: runs chaos scenarios against real `gatehouse`
//! processes and prints a table of figures. Exits 1 if any run lost an
//! acknowledged write or broke an invariant, naming its seed and the
//! command that replays it. See docs/chaos.md.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use gatehouse_chaos::nemesis::Nemesis;
use gatehouse_chaos::run::{self, Settings};

#[derive(Parser, Debug)]
#[command(about = "Chaos runs against real gatehouse processes")]
struct Args {
    /// A nemesis name, or "all".
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// The first seed (random if unset); run k uses seed + k.
    #[arg(long)]
    seed: Option<u64>,
    /// Runs per nemesis.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Client time per run, faults included.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The gatehouse binary (default: next to this one).
    #[arg(long, env = "GATEHOUSE_BIN")]
    bin: Option<PathBuf>,
    /// Keep every run's directory here (default: a temporary one, kept only on failure).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object per run instead of the table.
    #[arg(long)]
    json: bool,
    /// Mutual TLS between the nodes (the link proxies pass TLS bytes through).
    #[arg(long)]
    tls: bool,
    /// Stateless fronts beside the voters: clients verify and sign in on
    /// them too, and the checkers cover them (docs/fronts.md).
    #[arg(long, default_value_t = 0)]
    fronts: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber_init();
    let args = Args::parse();
    let nemeses: Vec<Nemesis> = if args.nemesis == "all" {
        Nemesis::ALL.to_vec()
    } else {
        let names: Vec<&str> = Nemesis::ALL.iter().map(|n| n.name()).collect();
        vec![Nemesis::parse(&args.nemesis)
            .ok_or_else(|| anyhow::anyhow!("unknown nemesis {:?}; one of: all, {}", args.nemesis, names.join(", ")))?]
    };
    let bin = match args.bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("gatehouse"),
    };
    anyhow::ensure!(bin.exists(), "no gatehouse binary at {} (build it, or pass --bin)", bin.display());
    let first = args.seed.unwrap_or_else(|| u64::from(rand::random::<u32>()));
    let mut reports = Vec::new();
    let mut failed = false;
    for nemesis in nemeses {
        for k in 0..args.seeds {
            let seed = first + k;
            let tmp = tempfile::tempdir()?;
            let dir = match &args.dir {
                Some(d) => d.join(format!("{}-{}n-{seed}", nemesis.name(), args.nodes)),
                None => tmp.path().to_path_buf(),
            };
            // A run restarted in an old run's directory would find the old
            // cluster's data and membership there.
            anyhow::ensure!(
                !dir.exists() || dir.read_dir()?.next().is_none(),
                "{} holds an earlier run; remove it or choose another --dir",
                dir.display()
            );
            let mut s = Settings::new(bin.clone(), dir.clone(), nemesis, seed);
            s.nodes = args.nodes;
            s.duration = Duration::from_secs(args.seconds);
            s.tls = args.tls;
            s.fronts = args.fronts;
            let report = run::run(&s).await?;
            if args.json {
                println!("{}", report.json());
            }
            if !report.inconclusive.is_empty() {
                eprintln!(
                    "INCONCLUSIVE: {} seed {seed}: the linearizability search ran out of budget on {:?}",
                    nemesis.name(),
                    report.inconclusive
                );
            }
            if !report.passed() {
                failed = true;
                let kept = tmp.keep();
                eprintln!("FAILED: {} seed {seed}", nemesis.name());
                for v in report.lost.iter().chain(&report.violations) {
                    eprintln!("  {v}");
                }
                eprintln!("  node logs: {}", if args.dir.is_some() { dir } else { kept }.display());
                eprintln!("  replay: {}", report.replay);
            }
            reports.push(report);
        }
    }
    if !args.json {
        println!("{}", run::table(&reports));
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// Progress on stderr, `RUST_LOG` to change the level.
fn tracing_subscriber_init() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).init();
}
