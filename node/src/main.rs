//! `gatehouse`: parses flags and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use gatehouse::cli::{Cli, Command};
use gatehouse::{config::Mode, Config, Node};

/// mimalloc instead of glibc's malloc: the node allocates and frees a
/// message-sized buffer at every step of a command's way (decode, log,
/// replication, apply), from threads that hand buffers to one another,
/// and glibc's malloc and free took about 8% of the node's CPU under audit
/// ingest (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // Every file the node writes (store, snapshots, key files) is private.
    gatehouse::data_dir::private_umask();
    let cli = Cli::parse();
    if token_in_argv() {
        eprintln!(
            "warning: --token puts the API key where every user of this machine can read it (ps, /proc); \
             use GATEHOUSE_TOKEN or --token-file"
        );
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Front(args) => front(args).await,
        Command::FrontSecret(args) => gatehouse::cli::front_secret(&args).map(|line| {
            println!("wrote {} (the front's secret: set front.secret_file to it)", args.out.display());
            println!("add this line to every voter's fronts file:\n\n    {line}\n");
        }),
        Command::Admin(args) => gatehouse::cli::admin(*args, &mut std::io::stdout().lock()).await,
        Command::RecoverAdmin(args) => gatehouse::recovery::request(&args.data_dir, &args.username).map(|key| {
            // Shown once, on stdout; the data directory holds only its hash.
            println!("New admin API key for {} (shown once, store it now):\n\n    {key}\n", args.username);
            println!("Start the node: once it has a leader, the key works on every node (audited as cluster.admin_recovered).");
        }),
        Command::Recover(args) => recover(args).await,
        Command::BackupKey(args) => gatehouse::cli::backup_key(&args).map(|id| {
            println!("wrote {} (key id {id}): keep it apart from the backups it seals", args.out.display());
        }),
        Command::Restore(args) => Config::load(Some(&args.config)).map_err(anyhow::Error::from).and_then(|config| {
            let r = gatehouse::restore::restore(&args.file, &config, args.decrypt_key_file.as_deref())?;
            println!(
                "restored {} records at index {} (term {}) of cluster {} into {}: node {} is the only voter of the new cluster {}",
                r.records, r.index, r.term, r.from_lineage, config.data_dir.display(), r.node_id, r.lineage
            );
            println!("Start it (gatehouse serve --config …) and add the other nodes with admin cluster add-learner and promote.");
            Ok(())
        }),
        Command::Tls(cmd) => gatehouse::cli::tls::run(cmd).map(|wrote| {
            for path in wrote {
                println!("wrote {}", path.display());
            }
        }),
        Command::Completions { shell } => {
            gatehouse::cli::completions(shell, &mut std::io::stdout().lock());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the admin key was given as `--token KEY` (or `--token=KEY`).
fn token_in_argv() -> bool {
    std::env::args_os().any(|a| a == "--token" || a.as_encoded_bytes().starts_with(b"--token="))
}

async fn recover(args: gatehouse::cli::RecoverArgs) -> anyhow::Result<()> {
    let config = Config::load(Some(&args.config))?;
    let recovered = gatehouse::forced_recovery::force_new_cluster(&config, args.force_new_cluster).await?;
    println!("{}", recovered.warning());
    println!("Start the node: it elects itself and records the recovery in the audit log (cluster.force_recovered).");
    Ok(())
}

async fn serve(args: gatehouse::cli::ServeArgs) -> anyhow::Result<()> {
    let config = if args.dev { Config::load_dev()? } else { Config::load(args.config.as_deref())? };
    let telemetry = gatehouse::telemetry::init(config.log_format, &config.telemetry, config.node_id);
    let dev = config.mode == Mode::Dev;
    let mut node = Node::start(config).await?;
    if let Some(key) = node.take_bootstrap_key() {
        if dev {
            // Shown once, on stdout, never in the log.
            println!("\nBootstrap admin API key (shown once, store it now):\n\n    {key}\n");
            println!("Try:  GATEHOUSE_TOKEN={key} gatehouse admin cluster status --endpoint {}\n", node.grpc_addr());
        }
    }
    // Raft stopping on its own (a storage failure, a log entry this build
    // cannot apply) ends the process with an error: a supervisor sees it,
    // and nothing serves from a node that no longer follows the log.
    let cluster = node.cluster().clone();
    let failed = tokio::select! {
        _ = shutdown_signal() => None,
        why = cluster.raft_failed() => Some(why),
    };
    let stopped = node.shutdown().await;
    telemetry.shutdown();
    match failed {
        Some(why) => Err(anyhow::anyhow!("Raft stopped: {why}; see the log above")),
        None => stopped,
    }
}

async fn front(args: gatehouse::cli::FrontArgs) -> anyhow::Result<()> {
    let config = Config::load(Some(&args.config))?;
    let telemetry = gatehouse::telemetry::init(config.log_format, &config.telemetry, config.node_id);
    let front = gatehouse::FrontNode::start(config).await?;
    shutdown_signal().await;
    let stopped = front.shutdown().await;
    telemetry.shutdown();
    stopped
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
