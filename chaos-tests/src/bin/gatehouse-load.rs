//! `gatehouse-load`: benchmark scenarios against a cluster of real nodes it
//! starts itself. Build in release for figures worth writing down:
//!
//! ```sh
//! cargo build --release --bins
//! target/release/gatehouse-load writes --writers 1,16,64,256 --seconds 10
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gatehouse_chaos::cluster::ProcCluster;
use gatehouse_chaos::load;

#[derive(Parser)]
#[command(about = "Gatehouse load generator")]
struct Args {
    /// The gatehouse binary (default: next to this one).
    #[arg(long, global = true)]
    bin: Option<PathBuf>,
    /// Nodes in the cluster.
    #[arg(long, global = true, default_value_t = 3)]
    nodes: u64,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Committed commands per second and commit latency per number of concurrent writers.
    Writes {
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        writers: Vec<usize>,
        /// Seconds per step.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match args.bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("gatehouse"),
    };
    let dir = tempfile::tempdir()?;
    let cluster = ProcCluster::start(&bin, dir.path(), args.nodes).await?;
    match args.scenario {
        Scenario::Writes { writers, seconds } => {
            let mut rows = Vec::new();
            for (i, w) in writers.iter().enumerate() {
                rows.push(load::writes(&cluster, *w, Duration::from_secs(seconds), &format!("r{i}")).await?);
            }
            if args.json {
                let rows: Vec<_> = rows.iter().map(|r| r.json()).collect();
                println!(
                    "{}",
                    serde_json::json!({ "scenario": "writes", "nodes": args.nodes, "seconds": seconds, "rows": rows })
                );
            } else {
                println!("scenario writes: {} nodes, {seconds} s per step", args.nodes);
                println!(
                    "{:>8} {:>10} {:>8} {:>12} {:>10} {:>10}",
                    "writers", "commits", "errors", "commits/s", "p50 ms", "p99 ms"
                );
                for r in rows {
                    println!(
                        "{:>8} {:>10} {:>8} {:>12.0} {:>10.2} {:>10.2}",
                        r.concurrency, r.ok, r.errors, r.per_second, r.p50_ms, r.p99_ms
                    );
                }
            }
        }
    }
    Ok(())
}
