//! Backup and restore: a backup taken under write load restores, on a new
//! one-voter cluster of a new lineage, exactly the writes applied up to its
//! index, keys and sessions that verify, and an audit chain that verifies.
//! And every bad input is refused with nothing written: a damaged,
//! truncated or foreign file, a non-empty data directory, an existing
//! output file, a caller without the permission.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{admin_cli, base, create_key, http, wait_until, TestCluster};
use gatehouse::{Config, Node};
use reqwest::StatusCode;

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A configuration for a node restored into `dir` (fixed addresses: the
/// membership records them).
fn restored_config(c: &TestCluster, dir: &std::path::Path) -> Config {
    let mut config = common::config(1, &c.dir);
    config.data_dir = dir.to_path_buf();
    config.grpc_addr = free_addr();
    config
}

fn user_command(c: &gatehouse_cluster::Cluster, name: &str) -> gatehouse_domain::Command {
    c.command(gatehouse_domain::Payload::CreateUser(gatehouse_proto::events::CreateUser {
        user_id: gatehouse_cluster::ids::new_id(),
        username: name.into(),
        email: format!("{name}@example.com"),
        password_hash: String::new(),
        roles: vec!["viewer".into()],
    }))
}

fn lineage(node: &Node) -> String {
    gatehouse_cluster::lineage::text(&node.cluster().peers().lineage().unwrap().get().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_write_load_restores_every_write_it_covers_on_a_new_cluster() {
    let c = TestCluster::start(3).await;
    // Led by node 3 in a later term: the restored node (id 1) starts from
    // log ids of another leader and term.
    admin_cli(&c.endpoint(1), &c.admin_key, &["cluster", "transfer-leader", "3"]).await.unwrap();
    let key = create_key(c.node(1), "kept", &["viewer"]).await;
    let password = "a long enough password";
    common::create_user_with_password(c.node(1), "person", password, &["viewer"]).await;
    let session = common::login(c.node(2), "person", password).await;
    assert_eq!(session.status(), StatusCode::OK);
    let cookie = session.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();

    // Writes acknowledged throughout the backup, each with its log index.
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (node, acked, stop) = (c.node(3).cluster().clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("load-{n}");
                if let Ok(r) = node.propose_one(user_command(&node, &name)).await {
                    acked.lock().unwrap().push((name, r.log_index));
                }
                n += 1;
            }
        })
    };
    wait_until("writes under way", Duration::from_secs(5), || async { acked.lock().unwrap().len() >= 20 }).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.ghb");
    let out = admin_cli(&c.endpoint(2), &c.admin_key, &["--json", "cluster", "backup", "-o", file.to_str().unwrap()])
        .await
        .unwrap();
    wait_until("writes after the backup", Duration::from_secs(5), || async { acked.lock().unwrap().len() >= 60 }).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let index = summary["index"].as_u64().unwrap();
    assert_eq!(format!("{}.{}", summary["cluster_id"].as_str().unwrap(), summary["epoch"]), lineage(c.node(2)));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let bytes = std::fs::read(&file).unwrap();
    assert!(!bytes.windows(password.len()).any(|w| w == password.as_bytes()), "no plaintext secret");
    let secret = key.rsplit('.').next().unwrap();
    assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "no key secret");
    let original = lineage(c.node(1));
    let admin_key = c.admin_key.clone();
    c.shutdown().await;

    // Restored into a new data directory: a new cluster of one voter.
    let data = tempfile::tempdir().unwrap();
    let restored_dir = data.path().join("restored");
    let probe = TestCluster::start(1).await; // only for its secret and config defaults
    let config = restored_config(&probe, &restored_dir);
    probe.shutdown().await;
    let r = gatehouse::restore::restore(&file, &config, None).unwrap();
    assert_eq!(r.index, index);
    assert!(r.term >= 2, "backed up in a later term");
    assert_eq!(r.from_lineage, original);
    let node = common::start_on_known_address(config.clone()).await;
    wait_until("the restored node leads", Duration::from_secs(10), || async {
        node.cluster().raft().metrics().borrow().current_leader == Some(1) && node.cluster().is_fresh()
    })
    .await;
    assert_ne!(lineage(&node).split('.').next(), original.split('.').next(), "a new cluster id");
    assert!(lineage(&node).ends_with(".1"));

    // Exactly the writes at or below the backup's index.
    let view = node.cluster().view();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.iter().any(|(_, i)| *i <= index) && acked.iter().any(|(_, i)| *i > index), "load on both sides");
    for (name, at) in &acked {
        let present = view.read().user_by_name(name).is_some();
        assert_eq!(present, *at <= index, "{name} at index {at}, backup at {index}");
    }
    // Keys and sessions verify; the admin key works; the chain verifies.
    let verify = |req: reqwest::RequestBuilder| async move { req.send().await.unwrap().status() };
    let url = format!("{}/auth/verify", base(&node));
    assert_eq!(verify(http().get(&url).bearer_auth(&key)).await, StatusCode::OK);
    assert_eq!(verify(http().get(&url).header("cookie", &cookie)).await, StatusCode::OK);
    let endpoint = common::endpoint(&node);
    let chain = admin_cli(&endpoint, &admin_key, &["--json", "audit", "verify"]).await.unwrap();
    assert!(chain.contains("\"intact\":true"), "{chain}");
    wait_until("the restore in the audit log", Duration::from_secs(10), || async {
        let out = admin_cli(&endpoint, &admin_key, &["--json", "audit", "query", "--action", "cluster.restored"])
            .await
            .unwrap();
        out.contains(&original)
    })
    .await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_truncated_or_foreign_backups_and_bad_targets_are_refused_and_write_nothing() {
    let c = TestCluster::start(1).await;
    create_key(c.node(1), "someone", &["viewer"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.ghb");
    let path = file.to_str().unwrap();
    admin_cli(&c.endpoint(1), &c.admin_key, &["cluster", "backup", "-o", path]).await.unwrap();
    // An existing file is never overwritten; a viewer may not take one.
    let again = admin_cli(&c.endpoint(1), &c.admin_key, &["cluster", "backup", "-o", path]).await.unwrap_err();
    assert!(again.contains("never overwrites"), "{again}");
    let viewer = create_key(c.node(1), "viewer", &["viewer"]).await;
    let other = dir.path().join("v.ghb");
    let denied =
        admin_cli(&c.endpoint(1), &viewer, &["cluster", "backup", "-o", other.to_str().unwrap()]).await.unwrap_err();
    assert!(denied.to_lowercase().contains("permission"), "{denied}");
    assert!(!other.exists() && !dir.path().join(".v.ghb.partial").exists());

    let good = std::fs::read(&file).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("one byte changed", flipped),
        ("truncated", good[..good.len() - 10].to_vec()),
        ("empty", Vec::new()),
        ("not a backup", b"GHSNAP\x01 some snapshot bytes".to_vec()),
        ("random", (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect()),
    ];
    for (what, bytes) in cases {
        let bad = dir.path().join("bad.ghb");
        std::fs::write(&bad, bytes).unwrap();
        let target = dir.path().join(format!("restore-{}", what.replace(' ', "-")));
        let config = restored_config(&c, &target);
        let e = gatehouse::restore::restore(&bad, &config, None).unwrap_err().to_string();
        assert!(e.contains("backup"), "{what}: {e}");
        assert!(!target.exists(), "{what}: nothing written");
    }
    // Into a data directory that holds something: refused, left as it was.
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"x").unwrap();
    let e = gatehouse::restore::restore(&file, &restored_config(&c, &busy), None).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    // Addresses the membership cannot record.
    let mut any_port = restored_config(&c, &dir.path().join("anyport"));
    any_port.grpc_addr = "127.0.0.1:0".parse().unwrap();
    let e = gatehouse::restore::restore(&file, &any_port, None).unwrap_err().to_string();
    assert!(e.contains("fixed"), "{e}");
    // The good one restores.
    let ok = dir.path().join("ok");
    gatehouse::restore::restore(&file, &restored_config(&c, &ok), None).unwrap();
    assert!(!ok.join(gatehouse_storage::backup::RESTORING).exists());
    // A restore that did not finish (a crash) leaves a directory no node
    // starts on.
    std::fs::write(ok.join(gatehouse_storage::backup::RESTORING), b"").unwrap();
    let e = format!("{:#}", Node::start(restored_config(&c, &ok)).await.err().expect("refused"));
    assert!(e.contains("did not finish"), "{e}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sealed_backup_restores_with_its_key_only() {
    let c = TestCluster::start(1).await;
    let key = create_key(c.node(1), "sealed-user", &["viewer"]).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("backup.key");
    let id = gatehouse::cli::backup_key(&gatehouse::cli::BackupKeyArgs { out: key_file.clone() }).unwrap();
    assert_eq!(id.len(), 16);
    let again = gatehouse::cli::backup_key(&gatehouse::cli::BackupKeyArgs { out: key_file.clone() });
    assert!(again.is_err(), "a key file is never overwritten");
    let file = dir.path().join("sealed.ghb");
    let args = ["cluster", "backup", "-o", file.to_str().unwrap(), "--encrypt-key-file", key_file.to_str().unwrap()];
    admin_cli(&c.endpoint(1), &c.admin_key, &args).await.unwrap();
    let bytes = std::fs::read(&file).unwrap();
    assert!(!bytes.windows(11).any(|w| w == b"sealed-user"), "nothing readable in a sealed backup");
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    assert!(!bytes.windows(16).any(|w| w == &key_text.as_bytes()[..16]), "the key is not in the backup");

    let target = |name: &str| restored_config(&c, &dir.path().join(name));
    let e = gatehouse::restore::restore(&file, &target("nokey"), None).unwrap_err().to_string();
    assert!(e.contains("sealed"), "{e}");
    let wrong = dir.path().join("wrong.key");
    gatehouse::cli::backup_key(&gatehouse::cli::BackupKeyArgs { out: wrong.clone() }).unwrap();
    let e = gatehouse::restore::restore(&file, &target("wrongkey"), Some(&wrong)).unwrap_err().to_string();
    assert!(e.contains("another key"), "{e}");
    let mut cut = bytes.clone();
    cut.truncate(bytes.len() - 20);
    let cut_file = dir.path().join("cut.ghb");
    std::fs::write(&cut_file, cut).unwrap();
    assert!(gatehouse::restore::restore(&cut_file, &target("cut"), Some(&key_file)).is_err());
    assert!(!dir.path().join("cut").exists() && !dir.path().join("wrongkey").exists());

    let config = target("ok");
    gatehouse::restore::restore(&file, &config, Some(&key_file)).unwrap();
    c.shutdown().await;
    let node = common::start_on_known_address(config).await;
    wait_until("the restored node serves", Duration::from_secs(10), || async { node.cluster().is_fresh() }).await;
    let url = format!("{}/auth/verify", base(&node));
    assert_eq!(http().get(&url).bearer_auth(&key).send().await.unwrap().status(), StatusCode::OK);
    node.shutdown().await.unwrap();
}
