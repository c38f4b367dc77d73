//! The benchmark parts of stateless fronts and Envoy: how soon a revocation
//! is refused by every voter and front, and ext_authz `Check` calls per
//! second beside a bare tonic `Authorization` server answering OK.

use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::{
    Address, Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::{socket_address::PortSpecifier, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use hdrhistogram::Histogram;

use crate::cluster::ProcCluster;
use crate::figures::{histogram, merge, Figures, TaskFigures};

/// One node's (or front's) delays from a revocation's acknowledgement to
/// its first refusal of the key, in microseconds.
pub struct Delays {
    pub id: u64,
    pub delays: Histogram<u64>,
}

/// `n` revocations: for each, a new key, verified in a tight loop on every
/// target (`(id, http address)`: voters and fronts) until it is refused;
/// the key revoked through voter `1 + i % voters`; each target's delay
/// from the revocation's acknowledgement to its first refusal (0 when it
/// refused before the acknowledgement reached the client).
pub async fn revocations(cluster: &ProcCluster, targets: &[(u64, String)], n: usize) -> anyhow::Result<Vec<Delays>> {
    use gatehouse_proto::admin::key_service_client::KeyServiceClient;
    use gatehouse_proto::admin::user_service_client::UserServiceClient;
    use gatehouse_proto::admin::{CreateKeyRequest, CreateUserRequest, RevokeKeyRequest};
    let voters: Vec<String> = cluster.nodes.values().map(|v| v.grpc.clone()).collect();
    let channel = |i: usize| -> anyhow::Result<tonic::transport::Channel> {
        Ok(tonic::transport::Endpoint::from_shared(format!("http://{}", voters[i % voters.len()]))?.connect_lazy())
    };
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {}", cluster.admin_key).parse()?;
    fn request<T>(msg: T, bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert("authorization", bearer.clone());
        req
    }
    let user = CreateUserRequest {
        username: "revoked".into(),
        email: "revoked@bench.example".into(),
        roles: vec!["viewer".into()],
        password: String::new(),
    };
    UserServiceClient::new(channel(0)?).create(request(user, &bearer)).await?;
    let mut out: Vec<Delays> = targets.iter().map(|(id, _)| Delays { id: *id, delays: histogram() }).collect();
    for i in 0..n {
        let create = CreateKeyRequest { user: "revoked".into(), name: format!("k{i}"), ttl_seconds: 0, roles: vec![] };
        let created = KeyServiceClient::new(channel(i)?).create(request(create, &bearer)).await?.into_inner();
        let key = created.secret;
        let key_id = created.key.map(|k| k.id).unwrap_or_default();
        // Every target verifies it, in a tight loop, until it refuses it.
        let (seen_tx, mut seen) = tokio::sync::mpsc::channel::<()>(targets.len());
        let mut loops = Vec::new();
        for (_, http) in targets {
            let mut sender = crate::load_tls::connect(http, None).await?;
            let (http, key, seen_tx) = (http.clone(), key.clone(), seen_tx.clone());
            loops.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut verified = false;
                while Instant::now() < deadline {
                    let req = hyper::Request::get(format!("http://{http}/auth/verify"))
                        .header("authorization", format!("Bearer {key}"))
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .expect("a valid request");
                    let status = match sender.send_request(req).await {
                        Ok(r) => r.status(),
                        Err(_) => return None,
                    };
                    match status.as_u16() {
                        200 if !verified => {
                            verified = true;
                            let _ = seen_tx.send(()).await;
                        }
                        // Refused: 401, or 429 once this client is over the
                        // refused-credentials limit (the key is still looked
                        // at, and refused).
                        401 | 429 if verified => return Some(Instant::now()),
                        _ => {}
                    }
                }
                None
            }));
        }
        // Revoked once every loop has seen it verify (a key made through a
        // voter verifies everywhere at once).
        drop(seen_tx);
        for _ in 0..targets.len() {
            seen.recv().await.ok_or_else(|| anyhow::anyhow!("a target never verified the new key"))?;
        }
        let revoke = RevokeKeyRequest { id: key_id, wait_all: false };
        KeyServiceClient::new(channel(i + 1)?).revoke(request(revoke, &bearer)).await?;
        let acknowledged = Instant::now();
        for (l, d) in loops.into_iter().zip(out.iter_mut()) {
            let refused = l.await?.ok_or_else(|| anyhow::anyhow!("target {} never refused the revoked key", d.id))?;
            let delay = refused.saturating_duration_since(acknowledged);
            d.delays.record(delay.as_micros() as u64).ok();
        }
    }
    Ok(out)
}

/// A check as Envoy would send it: `authorization` set, a source address.
fn check(authorization: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                    address: Some(Address::SocketAddress(SocketAddress {
                        address: "192.0.2.10".into(),
                        port_specifier: Some(PortSpecifier::PortValue(51000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    host: "app.example".into(),
                    path: "/app".into(),
                    headers: [("authorization".to_string(), authorization.to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// ext_authz `Check` calls against `addr` for `duration`: `streams`
/// concurrent calls, 16 to a connection, each with the Envoy `secret`
/// (when there is one) and `authorization`.
pub async fn checks(
    addr: &str,
    secret: Option<&str>,
    authorization: &str,
    streams: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut channels = Vec::new();
    for _ in 0..streams.div_ceil(16) {
        channels.push(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?);
    }
    let mut tasks = Vec::new();
    for s in 0..streams {
        let mut client = AuthorizationClient::new(channels[s / 16].clone());
        let (secret, authorization) = (secret.map(str::to_string), authorization.to_string());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                let mut req = tonic::Request::new(check(&authorization));
                if let Some(secret) = &secret {
                    req.metadata_mut().insert("x-gatehouse-envoy-secret", secret.parse().expect("ascii"));
                }
                let t = Instant::now();
                match client.check(req).await {
                    Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code == 0) => {
                        ok += 1;
                        hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                    }
                    _ => errors += 1,
                }
            }
            let figures: TaskFigures = (hist, ok, errors, 0);
            figures
        }));
    }
    merge(tasks, started, streams).await
}

/// A bare tonic `Authorization` server answering every check OK, with no
/// work: the ceiling the ext_authz figures are set beside.
pub async fn serve_check_baseline(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    struct Ok200;
    #[tonic::async_trait]
    impl Authorization for Ok200 {
        async fn check(
            &self,
            _req: tonic::Request<CheckRequest>,
        ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
            Ok(tonic::Response::new(CheckResponse {
                status: Some(envoy_types::pb::google::rpc::Status { code: 0, ..Default::default() }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
                ..Default::default()
            }))
        }
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Ok200))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
