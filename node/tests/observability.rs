//! `GET /metrics` parsed by a Prometheus text parser: the key series are
//! there, move with traffic, stay bounded and never carry a secret.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{admin_cli, base, create_key, http, wait_until, TestCluster};

type Series = HashMap<String, f64>;

/// Every sample as `name{k="v",…}` (labels sorted) → value.
async fn scrape(url: &str) -> Series {
    let resp = http().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let text = resp.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let mut out = Series::new();
    for s in scrape.samples {
        let mut labels: Vec<(String, String)> = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    out
}

fn get(series: &Series, key: &str) -> f64 {
    *series.get(key).unwrap_or_else(|| {
        let mut names: Vec<&String> = series.keys().collect();
        names.sort();
        panic!("no series {key}; have {names:#?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_report_traffic_raft_and_freshness() {
    let c = TestCluster::start_with(3, |cfg| cfg.metrics_on_front = Some(true)).await;
    let leader = c.wait_for_leader().await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let key = create_key(c.node(1), "metric-mia", &["viewer"]).await;
    let url = format!("{}/metrics", base(c.node(follower)));
    let verify = |token: String| {
        let u = format!("{}/auth/verify", base(c.node(follower)));
        async move { http().get(u).bearer_auth(token).send().await.unwrap().status() }
    };
    assert_eq!(verify(key.clone()).await, 200);
    assert_eq!(verify("gk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()).await, 401);
    let hostile = format!("{}/some/{}/path", base(c.node(follower)), "x".repeat(50));
    assert_eq!(http().get(hostile).send().await.unwrap().status(), 404);
    let ep = c.endpoint(follower);
    admin_cli(&ep, &c.admin_key, &["user", "create", "metric-max", "--email", "m@example.com"]).await.unwrap();
    admin_cli(&ep, &c.admin_key, &["user", "get", "nobody-at-all"]).await.unwrap_err();

    let first = scrape(&url).await;
    assert!(get(&first, "gatehouse_http_requests_total{route=\"/auth/verify\",status=\"200\"}") >= 1.0);
    assert!(get(&first, "gatehouse_http_requests_total{route=\"/auth/verify\",status=\"401\"}") >= 1.0);
    assert!(get(&first, "gatehouse_http_requests_total{route=\"unmatched\",status=\"404\"}") >= 1.0);
    assert!(get(&first, "gatehouse_http_request_duration_seconds_count{route=\"/auth/verify\"}") >= 2.0);
    assert!(get(&first, "gatehouse_verify_decisions_total{decision=\"allow\"}") >= 1.0);
    assert!(get(&first, "gatehouse_verify_decisions_total{decision=\"unauthenticated\"}") >= 1.0);
    assert!(get(&first, "gatehouse_grpc_requests_total{code=\"ok\",method=\"UserService/Create\"}") >= 1.0);
    assert!(get(&first, "gatehouse_grpc_requests_total{code=\"not_found\",method=\"UserService/Get\"}") >= 1.0);
    assert!(get(&first, "gatehouse_proposals_total{outcome=\"ok\"}") >= 1.0);
    assert!(get(&first, "gatehouse_proposal_duration_seconds_count{}") >= 1.0);
    assert!(get(&first, "gatehouse_raft_term{}") >= 1.0);
    assert_eq!(get(&first, "gatehouse_raft_leader{}"), leader as f64);
    assert_eq!(get(&first, "gatehouse_raft_is_leader{}"), 0.0);
    assert!(get(&first, "gatehouse_raft_commit_index{}") >= 1.0);
    assert_eq!(get(&first, "gatehouse_fresh{}"), 1.0);
    assert!(get(&first, "gatehouse_staleness_seconds{}") < 2.0);
    assert!(get(&first, "gatehouse_raft_leader_changes_total{}") >= 1.0);
    assert!(get(&first, "gatehouse_raft_elections_total{}") >= 1.0);
    for k in first.keys() {
        assert!(!k.contains("xxxxxxxx") && !k.contains("metric-m"), "unbounded label in {k}");
    }
    let text = http().get(&url).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains(&key[20..]) && !text.contains("metric-mia"), "no secrets or user names in metrics");

    // The series move with traffic; the leader reports replication lag per follower.
    let applied = get(&first, "gatehouse_raft_applied_index{}");
    common::write_user(c.node(leader), "metric-more").await;
    assert_eq!(verify(key.clone()).await, 200);
    wait_until("the follower applied the write", Duration::from_secs(5), || {
        let url = url.clone();
        async move { get(&scrape(&url).await, "gatehouse_raft_applied_index{}") > applied }
    })
    .await;
    let second = scrape(&url).await;
    let key200 = "gatehouse_http_requests_total{route=\"/auth/verify\",status=\"200\"}";
    assert!(get(&second, key200) > get(&first, key200));
    let on_leader = scrape(&format!("{}/metrics", base(c.node(leader)))).await;
    assert_eq!(get(&on_leader, "gatehouse_raft_is_leader{}"), 1.0);
    for peer in (1..=3).filter(|n| *n != leader) {
        assert!(get(&on_leader, &format!("gatehouse_raft_replication_lag_entries{{peer=\"{peer}\"}}")) >= 0.0);
    }
    assert!(get(&on_leader, "gatehouse_grpc_requests_total{code=\"ok\",method=\"ControlService/Propose\"}") >= 1.0);

    // A snapshot shows up in the counters.
    admin_cli(&ep, &c.admin_key, &["cluster", "snapshot"]).await.unwrap();
    let third = scrape(&url).await;
    assert!(get(&third, "gatehouse_snapshots_built_total{}") >= 1.0);
    assert!(get(&third, "gatehouse_snapshot_build_seconds_total{}") > 0.0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_separate_metrics_listener_takes_metrics_off_the_front() {
    let c = TestCluster::start_with(1, |cfg| cfg.metrics_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let node = c.node(1);
    let front = http().get(format!("{}/metrics", base(node))).send().await.unwrap();
    assert_eq!(front.status(), 404);
    let separate = scrape(&format!("http://{}/metrics", node.metrics_addr().unwrap())).await;
    assert_eq!(get(&separate, "gatehouse_raft_is_leader{}"), 1.0);
    c.shutdown().await;
}

/// A production front shows no internals unless told to: no `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_production_front_serves_no_metrics_by_default() {
    let c = TestCluster::start(1).await;
    let r = http().get(format!("{}/metrics", base(c.node(1)))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    c.shutdown().await;
    assert!(gatehouse::Config::dev().metrics_on_front(), "dev mode serves them on the front");
    let mut prod = gatehouse::Config::default();
    assert!(!prod.metrics_on_front());
    prod.metrics_on_front = Some(true);
    assert!(prod.metrics_on_front());
}
