//! The admin API's server streams (`Watch`, `Export`) are bounded (issue
//! 16: 200 `Watch` streams that never read took a node from 231 MB to
//! 1.6 GB): a caller holds a few at a time, and a client that stops reading
//! is cut off and told where to resume.

mod common;

use std::time::Duration;

use common::{create_key, wait_until, TestCluster};
use gatehouse_api::admin::streams::{PER_CALLER, STALL};
use gatehouse_proto::admin::audit_service_client::AuditServiceClient;
use gatehouse_proto::admin::event_service_client::EventServiceClient;
use gatehouse_proto::admin::{AuditExportRequest, WatchEvent, WatchRequest};
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

async fn channel(c: &TestCluster) -> Channel {
    Channel::from_shared(c.endpoint(1)).unwrap().connect().await.unwrap()
}

fn authed<T>(msg: T, key: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

async fn watch(ch: &Channel, key: &str) -> Result<Streaming<WatchEvent>, tonic::Status> {
    EventServiceClient::new(ch.clone()).watch(authed(WatchRequest { from_index: 0 }, key)).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_holds_a_few_streams_at_a_time() {
    let c = TestCluster::start(1).await;
    let ch = channel(&c).await;
    let mut open = Vec::new();
    for _ in 0..PER_CALLER {
        open.push(watch(&ch, &c.admin_key).await.expect("within the cap"));
    }
    let over = watch(&ch, &c.admin_key).await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert!(over.message().contains("open streams per caller"), "{}", over.message());
    let over = AuditServiceClient::new(ch.clone())
        .export(authed(AuditExportRequest::default(), &c.admin_key))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "exports count against the same cap");

    // Another caller is not held back by this one.
    let other = create_key(c.node(1), "watcher-wes", &["admin"]).await;
    let mut theirs = watch(&ch, &other).await.expect("another caller's stream");
    assert!(theirs.message().await.unwrap().is_some());

    // Closing one frees its place.
    drop(open.pop());
    let reopened = std::sync::Arc::new(tokio::sync::Mutex::new(None));
    wait_until("a closed stream's place is free again", Duration::from_secs(10), || {
        let (ch, key, got) = (ch.clone(), c.admin_key.clone(), reopened.clone());
        async move {
            match watch(&ch, &key).await {
                Ok(s) => {
                    *got.lock().await = Some(s);
                    true
                }
                Err(s) => {
                    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                    false
                }
            }
        }
    })
    .await;
    let mut reopened = reopened.lock().await.take().unwrap();
    assert!(reopened.message().await.unwrap().is_some(), "the reopened stream serves events");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_that_stops_reading_is_cut_off_and_told_where_to_resume() {
    let c = TestCluster::start(1).await;
    // 24 MB of log: more than the client's and the stream's buffers hold.
    common::append_large_audit(c.node(1), 30, "test.event").await;
    let ch = channel(&c).await;
    let mut stream = watch(&ch, &c.admin_key).await.unwrap();
    assert!(stream.message().await.unwrap().is_some(), "the stream started");
    let gauge = || c.node(1).api().metrics().watch_streams.get();
    assert_eq!(gauge(), 1);
    // The client holds its stream open and reads nothing: the node lets go.
    wait_until("the node cut off the stream that stopped reading", STALL * 3, || {
        let open = gauge();
        async move { open == 0 }
    })
    .await;
    // Reading again, it gets what was already on its way, then why it ended.
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(ended.message().contains("resume from index"), "{}", ended.message());
    // The caller's place is free again.
    assert!(watch(&ch, &c.admin_key).await.unwrap().message().await.unwrap().is_some());
    c.shutdown().await;
}
