//! The listeners' own limits, reached before any credential is looked at:
//! the HTTP front's header-read timeout (slowloris), its head limit enforced
//! while reading, its connection cap; the gRPC port's HTTP/2 limits.

mod common;

use std::future::Future as _;
use std::time::Duration;

use common::{base, http, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes or `within` passes; returns what came and
/// whether the connection ended.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_or_oversized_head_is_cut_off_while_it_is_read() {
    let c = TestCluster::start_with(1, |cfg| {
        // Short enough to wait out, long enough for a loaded machine's
        // honest request at the end.
        cfg.http.header_read_timeout_ms = 1_000;
        cfg.http.request_timeout_ms = 1_500;
        cfg.http.h2c = true;
    })
    .await;
    let addr = c.node(1).http_addr();

    // Slowloris: a head begun and never finished is closed after the timeout.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n").await.unwrap();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "a head that never ends keeps its connection");
    // So is a connection that never sends a byte.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(read_until_closed(&mut idle, Duration::from_secs(5)).await.1, "an idle connection stays open");

    // A head past the limit is refused as it arrives (431), not buffered
    // until it ends: this one never ends.
    let mut big = TcpStream::connect(addr).await.unwrap();
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    while head.len() < 40 * 1024 {
        head.extend_from_slice(format!("X-Junk-{}: {}\r\n", head.len(), "j".repeat(100)).as_bytes());
    }
    let _ = big.write_all(&head).await;
    let (answer, _) = read_until_closed(&mut big, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    // Stopping inside the HTTP/2 preface (hyper's own protocol detection
    // has no timer) is cut off too.
    let mut preface = TcpStream::connect(addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2").await.unwrap();
    assert!(read_until_closed(&mut preface, Duration::from_secs(5)).await.1, "a half preface keeps its slot");

    // An idle HTTP/2 connection (h2c) is closed once nothing is in flight.
    let mut h2_idle = TcpStream::connect(addr).await.unwrap();
    h2_idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    h2_idle.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // an empty SETTINGS frame
    assert!(read_until_closed(&mut h2_idle, Duration::from_secs(5)).await.1, "an idle HTTP/2 connection stays open");

    // A body dribbled and never finished gets 408 and the connection ends.
    let mut dribble = TcpStream::connect(addr).await.unwrap();
    dribble
        .write_all(b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nX-Requested-With: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"user")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut dribble, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(closed);

    // A whole request still works.
    assert_eq!(http().get(format!("{}/healthz", base(c.node(1)))).send().await.unwrap().status(), 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_past_the_cap_wait_until_one_closes() {
    let c = TestCluster::start_with(1, |cfg| cfg.http.max_connections = 2).await;
    let addr = c.node(1).http_addr();
    let url = format!("{}/healthz", base(c.node(1)));
    // Two connections hold both slots (heads begun, never finished).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    common::wait_until("both slots taken", Duration::from_secs(5), || {
        let open = c.node(1).api().metrics().http_connections.get();
        async move { open == 2 }
    })
    .await;
    let third = tokio::spawn(async move { http().get(url).send().await.map(|r| r.status().as_u16()) });
    // Not served while the cap is reached (bounded look, not a sleep-and-hope:
    // the request must still be pending after it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection was served past the cap of 2");
    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(5), third).await.expect("served once a slot frees");
    assert_eq!(status.unwrap().unwrap(), 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_grpc_port_bounds_http2_before_any_secret_is_checked() {
    let c = TestCluster::start(1).await;
    let tcp = TcpStream::connect(c.node(1).grpc_addr()).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // The server's SETTINGS: a bounded number of streams per connection.
    let streams = tokio::time::timeout(
        Duration::from_secs(5),
        futures::future::poll_fn(|cx| {
            let _ = std::pin::Pin::new(&mut conn).poll(cx);
            let n = conn.max_concurrent_send_streams();
            if n == gatehouse::grpc::GRPC_MAX_STREAMS as usize {
                std::task::Poll::Ready(n)
            } else {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        }),
    )
    .await
    .expect("the server advertised its stream limit");
    assert_eq!(streams, 256);
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // A header list over the limit never reaches a service; the same call
    // with a small one, and a valid key, is served (so the refusal is the
    // limit's, not the key check's).
    let client = client.ready().await.unwrap();
    let addr = c.node(1).grpc_addr();
    let key = c.admin_key.clone();
    let served = |junk: usize| {
        let mut client = client.clone();
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/gatehouse.admin.v1.ClusterService/Status"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {key}"))
            .header("x-junk", "j".repeat(junk))
            .body(())
            .unwrap();
        async move {
            let Ok((resp, mut body)) = client.send_request(req, false) else { return false };
            // An empty ClusterStatusRequest: no compression, zero length.
            if body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).is_err() {
                return false;
            }
            let Ok(resp) = resp.await else { return false };
            let mut stream = resp.into_body();
            while let Some(chunk) = stream.data().await {
                if chunk.is_err() {
                    return false;
                }
            }
            let trailers = stream.trailers().await.ok().flatten().unwrap_or_default();
            trailers.get("grpc-status").is_some_and(|s| s == "0")
        }
    };
    assert!(served(16).await, "the control call is served");
    assert!(!served(32 * 1024).await, "an oversized header list was served");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_h2c_the_preface_is_no_way_to_hold_a_slot_or_speak_http2() {
    let c = TestCluster::start_with(1, |cfg| cfg.http.header_read_timeout_ms = 1_000).await;
    let addr = c.node(1).http_addr();
    // One byte of the preface, then silence: HTTP/1.1's head timeout ends it.
    let mut p = TcpStream::connect(addr).await.unwrap();
    p.write_all(b"P").await.unwrap();
    assert!(read_until_closed(&mut p, Duration::from_secs(5)).await.1, "a lone byte keeps its slot");
    // The whole preface is not HTTP/2 here: HTTP/1.1 refuses it.
    let mut preface = TcpStream::connect(addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let (answer, closed) = read_until_closed(&mut preface, Duration::from_secs(5)).await;
    assert!(closed && !answer.contains("\0\0"), "{answer:?}");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "{answer:?}");
    c.shutdown().await;
}
