//! OpenTelemetry export from real node processes to an in-process OTLP
//! receiver: a verify on a follower continues the caller's trace, and an
//! admin write sent to a follower and forwarded to the leader arrives as one
//! trace with spans from both nodes, whose apply links back to it. No span
//! attribute carries a key or password.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_chaos::cluster::ProcCluster;
use gatehouse_proto::admin::user_service_client::UserServiceClient;
use gatehouse_proto::admin::CreateUserRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// One received span: which node sent it, its trace, name, attributes, links.
#[derive(Debug, Clone)]
struct Received {
    node: String,
    trace: String,
    name: String,
    attrs: HashMap<String, String>,
    links: Vec<String>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

fn text(kv: &[KeyValue]) -> HashMap<String, String> {
    kv.iter()
        .map(|a| {
            let v = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (a.key.clone(), v)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let resource = text(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            let node = resource.get("service.instance.id").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Received {
                        node: node.clone(),
                        trace: hex::encode(&s.trace_id),
                        name: s.name.clone(),
                        attrs: text(&s.attributes),
                        links: s.links.iter().map(|l| hex::encode(&l.trace_id)).collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn wait_for_spans(c: &Collector, what: &str, cond: impl Fn(&[Received]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if cond(&c.0.lock().unwrap()) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:#?}", c.0.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_spans_the_follower_and_the_leader() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[telemetry]\notlp_endpoint = \"http://{otlp}\"\nservice_name = \"gatehouse-test\"\n");
    let c = ProcCluster::start_with(BIN.as_ref(), dir.path(), 3, &extra, &[("OTEL_BSP_SCHEDULE_DELAY", "100")])
        .await
        .unwrap();
    let leader = c.wait_for_leader(Duration::from_secs(30)).await.unwrap();
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    for id in 1..=3 {
        c.wait_ready(id, Duration::from_secs(30)).await.unwrap();
    }

    // A write sent to a follower with the caller's trace context.
    let password = "a password that must never be traced";
    let write_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut users = UserServiceClient::connect(format!("http://{}", c.nodes[&follower].grpc)).await.unwrap();
    let mut req = tonic::Request::new(CreateUserRequest {
        username: "traced-tess".into(),
        email: "tess@example.com".into(),
        roles: vec!["viewer".into()],
        password: password.into(),
    });
    req.metadata_mut().insert("authorization", format!("Bearer {}", c.admin_key).parse().unwrap());
    req.metadata_mut().insert("traceparent", format!("00-{write_trace}-00f067aa0ba902b7-01").parse().unwrap());
    users.create(req).await.unwrap();

    // A verification on the follower continues its caller's trace too.
    let verify_trace = "0af7651916cd43dd8448eb211c80319c";
    let resp = reqwest::Client::new()
        .get(format!("http://{}/auth/verify", c.nodes[&follower].http))
        .bearer_auth(&c.admin_key)
        .header("traceparent", format!("00-{verify_trace}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let (leader_id, follower_id) = (leader.to_string(), follower.to_string());
    wait_for_spans(&collector, "the forwarded write's spans on both nodes", |spans| {
        let nodes: BTreeSet<&str> = spans.iter().filter(|s| s.trace == write_trace).map(|s| s.node.as_str()).collect();
        nodes.contains(follower_id.as_str()) && nodes.contains(leader_id.as_str())
    })
    .await;
    wait_for_spans(&collector, "the verify span", |spans| {
        spans.iter().any(|s| s.trace == verify_trace && s.name == "http.request" && s.node == follower_id)
    })
    .await;
    wait_for_spans(&collector, "applies linked to the write on every node", |spans| {
        let linked: BTreeSet<&str> = spans
            .iter()
            .filter(|s| s.name == "apply" && s.links.iter().any(|l| l == write_trace))
            .map(|s| s.node.as_str())
            .collect();
        linked.len() == 3
    })
    .await;

    let spans = collector.0.lock().unwrap().clone();
    let on = |node: &str, name: &str, trace: &str| {
        spans.iter().find(|s| s.node == node && s.name == name && s.trace == trace).cloned()
    };
    let front = on(&follower_id, "grpc.request", write_trace).expect("the follower's admin call span");
    assert_eq!(front.attrs["rpc.method"], "UserService/Create");
    assert!(spans.iter().any(|s| s.node == leader_id
        && s.trace == write_trace
        && s.attrs.get("rpc.method").map(String::as_str) == Some("ControlService/Propose")));
    let verify = on(&follower_id, "http.request", verify_trace).unwrap();
    assert_eq!((verify.attrs["http.route"].as_str(), verify.attrs["decision"].as_str()), ("/auth/verify", "allow"));
    assert_eq!(verify.attrs["http.status_code"], "200");
    assert_eq!(verify.attrs["user_id"].len(), 32, "the caller's user id");
    assert!(spans.iter().any(|s| s.node == follower_id && s.trace == write_trace && s.name == "propose"));

    // Nothing secret in any attribute of any span.
    let secret = c.admin_key.splitn(3, '_').nth(2).unwrap();
    for s in &spans {
        for (k, v) in &s.attrs {
            assert!(!v.contains(secret) && !v.contains(password) && !v.contains("$argon2"), "{} {k}={v}", s.name);
        }
    }
}

/// A collector that accepts connections and never answers: export hangs, the
/// queue fills, requests still answer at once, and `/metrics` counts the
/// spans that had to be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_collector_drops_spans_and_counts_them_without_slowing_requests() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            // Held open, never read: the exporter waits for an answer.
            let _ = held_tx.send(socket);
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[telemetry]\notlp_endpoint = \"http://{otlp}\"\n");
    let env = [
        ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
        ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "120000"),
    ];
    let c = ProcCluster::start_with(BIN.as_ref(), dir.path(), 1, &extra, &env).await.unwrap();
    c.wait_ready(1, Duration::from_secs(30)).await.unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let node = &c.nodes[&1].http;
    for _ in 0..100 {
        let resp = http.get(format!("http://{node}/auth/verify")).bearer_auth(&c.admin_key).send().await.unwrap();
        assert_eq!(resp.status(), 200, "a stalled collector must not fail requests");
    }
    assert!(held_rx.recv().await.is_some(), "the exporter reached the collector");

    let text = http.get(format!("http://{node}/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (dropped, sent) = (value("gatehouse_trace_spans_dropped_total "), value("gatehouse_trace_spans_sent_total "));
    assert!(dropped >= 100.0 - 16.0 - sent, "100 request spans, 16 places: dropped {dropped}, sent {sent}");
    assert!(dropped > 0.0);
}
