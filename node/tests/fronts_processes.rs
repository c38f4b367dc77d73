//! Three voters and two stateless fronts as real `gatehouse` processes: a
//! key created through a voter verifies at once on both fronts; revoked, it
//! is refused on both within the bound; a front cut off from every voter
//! (its links through fault proxies) answers 503 within `max_staleness` and
//! recovers when the links heal; killing the voter a front follows does not
//! stop its verification.

mod common;

use std::time::{Duration, Instant};

use common::{admin_cli, http, wait_until};
use gatehouse_chaos::cluster::ProcCluster;
use gatehouse_chaos::proxy::{Fault, LinkProxy};
use reqwest::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

async fn verify(base: &str, key: &str) -> StatusCode {
    match http().get(format!("http://{base}/auth/verify")).bearer_auth(key).send().await {
        Ok(r) => r.status(),
        Err(_) => StatusCode::BAD_GATEWAY,
    }
}

/// A user with a key through the admin API of `endpoint`; returns the key.
async fn new_key(c: &ProcCluster, endpoint: &str, user: &str) -> String {
    let token = &c.admin_key;
    admin_cli(
        endpoint,
        token,
        &["user", "create", user, "--email", &format!("{user}@example.com"), "--role", "viewer"],
    )
    .await
    .unwrap();
    let out = admin_cli(endpoint, token, &["--json", "key", "create", "--user", user, "--name", "it"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["key"].as_str().expect("the key, once").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_voters_and_two_front_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ProcCluster::start(BIN.as_ref(), dir.path(), 3).await.unwrap();
    // Front 101 reaches every voter through a proxy that can cut the link;
    // front 102 dials them directly.
    let mut proxies = Vec::new();
    for (n, node) in c.nodes.values().enumerate() {
        proxies.push((node.id, LinkProxy::start(node.peer.clone(), n as u64).await.unwrap()));
    }
    let through: Vec<(u64, String)> = proxies.iter().map(|(id, p)| (*id, p.addr().to_string())).collect();
    let direct: Vec<(u64, String)> = c.nodes.values().map(|n| (n.id, n.peer.clone())).collect();
    c.add_front(101, &through).unwrap();
    c.add_front(102, &direct).unwrap();
    for id in [101, 102] {
        let took = c.wait_front_ready(id, Duration::from_secs(30)).await.unwrap();
        eprintln!("front {id} serving {took:?} after its start");
    }
    let fronts = [c.fronts[&101].http.clone(), c.fronts[&102].http.clone()];
    let endpoint = |id: u64| format!("http://{}", c.nodes[&id].grpc);

    // Made through a voter: every one of 1,000 tries on the fronts passes,
    // the first ones included.
    let key = new_key(&c, &endpoint(2), "alice").await;
    let mut refused = 0;
    for n in 0..1000 {
        refused += usize::from(verify(&fronts[n % 2], &key).await != StatusCode::OK);
    }
    assert_eq!(refused, 0);

    // Revoked through a voter: refused on both fronts within the bound.
    let key_id = gatehouse_domain::keys::parse_key(&key).unwrap().0.to_string();
    admin_cli(&endpoint(3), &c.admin_key, &["key", "revoke", &key_id]).await.unwrap();
    let revoked = Instant::now();
    for f in &fronts {
        wait_until("the revoked key refused on the front", Duration::from_secs(3), || async {
            verify(f, &key).await == StatusCode::UNAUTHORIZED
        })
        .await;
    }
    assert!(revoked.elapsed() <= Duration::from_secs(2), "within max_staleness: {:?}", revoked.elapsed());

    // Front 101 cut off from every voter: 503 within the bound; healed, it serves.
    let key = new_key(&c, &endpoint(1), "bob").await;
    assert_eq!(verify(&fronts[0], &key).await, StatusCode::OK);
    for (_, p) in &proxies {
        p.set(Fault::Cut);
    }
    let cut = Instant::now();
    wait_until("the cut-off front answers 503", Duration::from_secs(4), || async {
        verify(&fronts[0], &key).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(cut.elapsed() < Duration::from_millis(2_600), "503 within the bound: {:?}", cut.elapsed());
    assert_eq!(verify(&fronts[1], &key).await, StatusCode::OK, "the other front is unaffected");
    for (_, p) in &proxies {
        p.set(Fault::Pass);
    }
    wait_until("the healed front serves again", Duration::from_secs(15), || async {
        verify(&fronts[0], &key).await == StatusCode::OK
    })
    .await;

    // Killing the voter front 102 follows: its verification goes on.
    let status = admin_cli(&endpoint(1), &c.admin_key, &["--json", "cluster", "status"]).await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let followed = status["fronts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == 102 && f["following"] == true)
        .map(|f| f["via_node"].as_u64().unwrap())
        .expect("front 102 follows a voter");
    c.kill(followed);
    let until = Instant::now() + Duration::from_secs(4);
    let mut answers = 0;
    while Instant::now() < until {
        assert_eq!(verify(&fronts[1], &key).await, StatusCode::OK, "after {answers} answers");
        answers += 1;
    }
}
