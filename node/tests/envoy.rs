//! Envoy's ext_authz, driven by a gRPC client built from Envoy's own protos
//! (`envoy-types`; no Envoy binary here), on a voter and on a stateless
//! front: allowed, denied, rate-limited, stale, and malformed checks.

mod common;

use std::time::Duration;

use common::fronts::{cluster_for_fronts, front_config};
use common::{create_key, wait_until};
use envoy_types::ext_authz::v3::pb::{Address, CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{
    socket_address::PortSpecifier, HeaderMap as EnvoyHeaders, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

/// The secret Envoy's calls carry in these tests.
const SECRET: &str = "envoy-secret-of-these-tests-0123456789abcdef";

/// Writes [`SECRET`] to a file in `dir` and returns its path.
fn secret_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("envoy.secret");
    std::fs::write(&path, SECRET).unwrap();
    path
}

/// Serve Envoy's services on a free port, with the tests' secret.
fn with_envoy(c: &mut gatehouse::Config, secret: &std::path::Path) {
    c.ext_authz_addr = Some("127.0.0.1:0".parse().unwrap());
    c.ext_authz_secret_file = Some(secret.to_path_buf());
}

/// Adds the Envoy secret to every call (Envoy's `initial_metadata`).
#[derive(Clone)]
struct WithSecret(&'static str);

impl tonic::service::Interceptor for WithSecret {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(gatehouse_api::envoy::SECRET_METADATA, self.0.parse().unwrap());
        Ok(req)
    }
}

type Channel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, WithSecret>;
type Client = AuthorizationClient<Channel>;

async fn channel(addr: std::net::SocketAddr, secret: &'static str) -> Channel {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    tonic::service::interceptor::InterceptedService::new(channel, WithSecret(secret))
}

async fn client(addr: std::net::SocketAddr) -> Client {
    AuthorizationClient::new(channel(addr, SECRET).await)
}

fn check(path: &str, headers: &[(&str, &str)]) -> CheckRequest {
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
                    path: path.into(),
                    headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Makes `ip` the checked request's source peer.
fn set_source(c: &mut CheckRequest, ip: &str) {
    let peer = c.attributes.as_mut().unwrap().source.as_mut().unwrap();
    if let Some(Address::SocketAddress(a)) = peer.address.as_mut().and_then(|a| a.address.as_mut()) {
        a.address = ip.into();
    }
}

/// The HTTP status of the answer (200 for an allowed check) and its headers.
fn outcome(r: &CheckResponse) -> (u16, Vec<(String, String)>) {
    let pairs = |h: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]| {
        h.iter().filter_map(|o| o.header.as_ref().map(|h| (h.key.clone(), h.value.clone()))).collect()
    };
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(r.status.as_ref().unwrap().code, 0);
            (200, pairs(&ok.headers))
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_ne!(r.status.as_ref().unwrap().code, 0);
            (d.status.as_ref().unwrap().code as u16, pairs(&d.headers))
        }
        other => panic!("no HTTP response: {other:?}"),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ext_authz_decides_as_verify_does_on_a_voter_and_on_a_front() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secret_file(&secrets);
    let c = cluster_for_fronts(3, &[101], |cfg| {
        with_envoy(cfg, &secret);
        cfg.identity.routes = vec![gatehouse::config::RouteRule {
            host: None,
            path_prefix: "/ops".into(),
            roles: vec!["operator".into()],
            ignore_case: false,
            ..Default::default()
        }];
    })
    .await;
    let mut config = front_config(&c, 101);
    with_envoy(&mut config, &secret);
    config.identity.routes = c.configs[&1].identity.routes.clone();
    let front = gatehouse::FrontNode::start(config).await.unwrap();
    assert!(front.wait_ready(Duration::from_secs(10)).await);
    let key = create_key(c.node(1), "alice", &["viewer"]).await;
    let bearer = format!("Bearer {key}");

    for addr in [c.node(2).ext_authz_addr().unwrap(), front.ext_authz_addr().unwrap()] {
        let mut envoy = client(addr).await;
        // Allowed: identity set, the client's own identity headers dropped.
        let r = envoy
            .check(check("/app", &[("authorization", &bearer), ("x-auth-user", "mallory"), ("x-auth-admin", "1")]))
            .await
            .unwrap()
            .into_inner();
        let (status, headers) = outcome(&r);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-auth-user"), Some("alice"));
        assert_eq!(header(&headers, "x-auth-roles"), Some("viewer"));
        let Some(HttpResponse::OkResponse(ok)) = &r.http_response else { unreachable!() };
        // A key presents no second factor: `none`, and no age the client could set.
        assert_eq!(header(&headers, "x-auth-mfa"), Some("none"));
        assert_eq!(ok.headers_to_remove, ["x-auth-admin", "x-auth-mfa-age"]);

        // Denied: no credential, an unknown key (401 with WWW-Authenticate).
        for headers in [vec![], vec![("authorization", "Bearer gk_0123456789abcdef_nope")]] {
            let (status, h) = outcome(&envoy.check(check("/app", &headers)).await.unwrap().into_inner());
            assert_eq!(status, 401);
            assert!(header(&h, "www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
        }
        // A route rule: 403 without the role, and by any spelling of the path.
        for path in ["/ops/deploy", "/x/../ops", "//ops"] {
            let (status, _) =
                outcome(&envoy.check(check(path, &[("authorization", &bearer)])).await.unwrap().into_inner());
            assert_eq!(status, 403, "{path}");
        }
        // The path is Envoy's, never the client's X-Forwarded-Uri: both ways.
        let dodge = [("authorization", bearer.as_str()), ("x-forwarded-uri", "/app")];
        assert_eq!(outcome(&envoy.check(check("/ops", &dodge)).await.unwrap().into_inner()).0, 403);
        let framed = [("authorization", bearer.as_str()), ("x-forwarded-uri", "/ops")];
        assert_eq!(outcome(&envoy.check(check("/app", &framed)).await.unwrap().into_inner()).0, 200);
        // Two Authorization headers are no credential (which one would the upstream read?).
        let mut two = check("/app", &[]);
        let http = two.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
        http.header_map = Some(EnvoyHeaders {
            headers: [bearer.as_str(), "Bearer gk_0123456789abcdef_other"]
                .iter()
                .map(|v| envoy_types::ext_authz::v3::pb::HeaderValue {
                    key: "authorization".into(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        });
        // The raw header map is what counts when Envoy sends one.
        http.headers.insert("authorization".into(), bearer.clone());
        assert_eq!(outcome(&envoy.check(two).await.unwrap().into_inner()).0, 401);

        // Without the secret, or with another: no answer at all.
        for wrong in ["", "not-the-envoy-secret-not-the-envoy-secret"] {
            let mut stranger =
                AuthorizationClient::new(channel(addr, if wrong.is_empty() { "x" } else { wrong }).await);
            let refused = stranger.check(check("/app", &[("authorization", &bearer)])).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        }
    }
    front.shutdown().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_checks_get_a_clear_denial_and_change_nothing() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secret_file(&secrets);
    let c = cluster_for_fronts(1, &[], |cfg| with_envoy(cfg, &secret)).await;
    let key = create_key(c.node(1), "alice", &["viewer"]).await;
    let mut envoy = client(c.node(1).ext_authz_addr().unwrap()).await;
    // No attributes at all, no HTTP request, no source address.
    assert_eq!(outcome(&envoy.check(CheckRequest::default()).await.unwrap().into_inner()).0, 400);
    let mut no_source = check("/", &[]);
    no_source.attributes.as_mut().unwrap().source = None;
    assert_eq!(outcome(&envoy.check(no_source).await.unwrap().into_inner()).0, 400);
    // Huge or too many headers: 431.
    let big = "x".repeat(20_000);
    assert_eq!(outcome(&envoy.check(check("/", &[("cookie", &big)])).await.unwrap().into_inner()).0, 431);
    let many: Vec<(String, String)> = (0..200).map(|i| (format!("h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(outcome(&envoy.check(check("/", &many)).await.unwrap().into_inner()).0, 431);
    // Raw headers: a control character is refused, a non-UTF-8 credential is no credential.
    let raw = |value: &[u8]| {
        let mut c = check("/", &[]);
        let http = c.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
        http.header_map = Some(EnvoyHeaders {
            headers: vec![envoy_types::ext_authz::v3::pb::HeaderValue {
                key: "authorization".into(),
                raw_value: value.to_vec(),
                ..Default::default()
            }],
        });
        c
    };
    assert_eq!(outcome(&envoy.check(raw(b"Bearer \x00")).await.unwrap().into_inner()).0, 400);
    assert_eq!(outcome(&envoy.check(raw(b"Bearer \xff\xfe")).await.unwrap().into_inner()).0, 401);
    let good = format!("Bearer {key}");
    assert_eq!(outcome(&envoy.check(raw(good.as_bytes())).await.unwrap().into_inner()).0, 200);
    // A message larger than a check may be is refused by gRPC itself.
    let huge = "y".repeat(300 << 10);
    let mut oversized = check("/", &[]);
    oversized.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap().body = huge;
    assert_eq!(envoy.check(oversized).await.unwrap_err().code(), tonic::Code::OutOfRange);
    // The node still answers.
    assert_eq!(outcome(&envoy.check(check("/", &[("authorization", &good)])).await.unwrap().into_inner()).0, 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ext_authz_limits_and_fails_closed() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secret_file(&secrets);
    let c = cluster_for_fronts(3, &[101], |cfg| {
        with_envoy(cfg, &secret);
        cfg.rate_limits.enabled = true;
        cfg.rate_limits.policies.retain(|p| p.name == "credential_failures");
    })
    .await;
    let mut config = front_config(&c, 101);
    with_envoy(&mut config, &secret);
    config.rate_limits = c.configs[&1].rate_limits.clone();
    let front = gatehouse::FrontNode::start(config).await.unwrap();
    assert!(front.wait_ready(Duration::from_secs(10)).await);
    let mut envoy = client(front.ext_authz_addr().unwrap()).await;
    // Ten refused keys from one client address, then 429 with Retry-After.
    let wrong = [("authorization", "Bearer gk_0123456789abcdef_wrong")];
    let mut statuses = Vec::new();
    for _ in 0..11 {
        statuses.push(outcome(&envoy.check(check("/", &wrong)).await.unwrap().into_inner()));
    }
    assert!(statuses[..10].iter().all(|(s, _)| *s == 401), "{statuses:?}");
    let (status, headers) = &statuses[10];
    assert_eq!(*status, 429);
    assert!(header(headers, "retry-after").is_some());
    assert_eq!(header(headers, "x-ratelimit-limit"), Some("10"));

    // The client's address is Envoy's source peer: another address has a
    // bucket of its own; a client's X-Forwarded-For is believed only from a
    // trusted proxy (loopback by default), as on the HTTP front.
    let mut elsewhere = check("/", &wrong);
    set_source(&mut elsewhere, "198.51.100.4");
    assert_eq!(outcome(&envoy.check(elsewhere).await.unwrap().into_inner()).0, 401);
    let spoofed = [("authorization", "Bearer gk_0123456789abcdef_wrong"), ("x-forwarded-for", "198.51.100.99")];
    assert_eq!(outcome(&envoy.check(check("/", &spoofed)).await.unwrap().into_inner()).0, 429, "not another address");
    let mut via_proxy = check("/", &spoofed);
    set_source(&mut via_proxy, "127.0.0.1");
    assert_eq!(outcome(&envoy.check(via_proxy).await.unwrap().into_inner()).0, 401, "a trusted proxy's word");

    // Cut off from every voter: 503 within the bound.
    let key = create_key(c.node(1), "alice", &["viewer"]).await;
    let mut c = c;
    for id in [1, 2, 3] {
        c.stop(id).await;
    }
    let bearer = format!("Bearer {key}");
    wait_until("ext_authz on the cut-off front answers 503", Duration::from_secs(4), || {
        let mut envoy = envoy.clone();
        let req = check("/", &[("authorization", bearer.as_str())]);
        async move { outcome(&envoy.check(req).await.unwrap().into_inner()).0 == 503 }
    })
    .await;
    front.shutdown().await.unwrap();
}

mod rls {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        rate_limit_descriptor::Entry, RateLimitDescriptor,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
    use gatehouse_api::rate_limit::policy::{By, EnvoyDescriptor, Mode, Policy};

    fn envoy_policy(name: &str, keys: &[&str], limit: u32, mode: Mode, fail_open: bool) -> Policy {
        let envoy = EnvoyDescriptor { domain: "edge".into(), keys: keys.iter().map(|k| k.to_string()).collect() };
        Policy { envoy: Some(envoy), fail_open, ..common::policy(name, By::Descriptor, limit, mode) }
    }

    fn limits(c: &mut gatehouse::Config, secret: &std::path::Path) {
        with_envoy(c, secret);
        c.rate_limits.enabled = true;
        c.rate_limits.policies = vec![
            envoy_policy("edge_login", &["remote_address", "path"], 3, Mode::Strict, false),
            envoy_policy("edge_api", &["api_key"], 20, Mode::Global, false),
            envoy_policy("edge_open", &["tenant"], 1, Mode::Strict, true),
        ];
    }

    fn ask(entries: &[(&str, &str)]) -> RateLimitRequest {
        RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
                ..Default::default()
            }],
            hits_addend: 0,
        }
    }

    type Rls = RateLimitServiceClient<Channel>;

    async fn should(client: &mut Rls, entries: &[(&str, &str)]) -> RateLimitResponse {
        client.should_rate_limit(ask(entries)).await.unwrap().into_inner()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn descriptors_are_counted_exactly_in_strict_mode_across_voters_and_fronts() {
        let secrets = tempfile::tempdir().unwrap();
        let secret = secret_file(&secrets);
        let c = cluster_for_fronts(3, &[101], |cfg| limits(cfg, &secret)).await;
        let mut config = front_config(&c, 101);
        limits(&mut config, &secret);
        let front = gatehouse::FrontNode::start(config).await.unwrap();
        assert!(front.wait_ready(Duration::from_secs(10)).await);
        let mut on_voter = RateLimitServiceClient::new(channel(c.node(2).ext_authz_addr().unwrap(), SECRET).await);
        let mut on_front = RateLimitServiceClient::new(channel(front.ext_authz_addr().unwrap(), SECRET).await);

        // Three a minute for one (address, path), whichever node is asked.
        let login = [("remote_address", "192.0.2.7"), ("path", "/login")];
        let mut codes = Vec::new();
        for n in 0..5 {
            let client = if n % 2 == 0 { &mut on_voter } else { &mut on_front };
            let r = should(client, &login).await;
            codes.push(r.overall_code);
            assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().requests_per_unit, 3);
        }
        let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
        assert_eq!(codes, [ok, ok, ok, over, over]);
        let over_limit = should(&mut on_front, &login).await;
        assert!(over_limit.response_headers_to_add.iter().any(|h| h.key == "x-ratelimit-remaining" && h.value == "0"));
        // Another address has its own bucket; a descriptor no policy names is not limited.
        assert_eq!(
            should(&mut on_front, &[("remote_address", "192.0.2.8"), ("path", "/login")]).await.overall_code,
            ok
        );
        let free = should(&mut on_front, &[("remote_address", "192.0.2.7")]).await;
        assert_eq!(free.overall_code, ok);
        assert!(free.statuses[0].current_limit.is_none());

        // Global: admitted within the node's share, never past the limit.
        let mut admitted = 0;
        for _ in 0..40 {
            if should(&mut on_voter, &[("api_key", "k1")]).await.overall_code == ok {
                admitted += 1;
            }
        }
        assert!((1..=20).contains(&admitted), "{admitted}");

        // An IPv6 client is one client per /64: rotating inside it dodges nothing.
        let mut rotated = Vec::new();
        for host in 1..=4 {
            let addr = format!("2001:db8:7:7::{host}");
            rotated.push(should(&mut on_front, &[("remote_address", &addr), ("path", "/login")]).await.overall_code);
        }
        assert_eq!(rotated, [ok, ok, ok, over]);
        // A long value (a long URL, say) is counted, never an error Envoy
        // would let through; too many hits at once refuse that descriptor.
        let long = format!("/{}", "x".repeat(5_000));
        let r = should(&mut on_front, &[("remote_address", "192.0.2.20"), ("path", &long)]).await;
        assert_eq!(r.overall_code, ok);
        let mut greedy = ask(&[("remote_address", "192.0.2.21"), ("path", "/login")]);
        greedy.hits_addend = 2;
        let r = on_front.should_rate_limit(greedy).await.unwrap().into_inner();
        assert_eq!(r.overall_code, over, "a strict policy counts one hit at a time");
        // Malformed requests: a broken shape is an error.
        let mut empty = ask(&[("k", "v")]);
        empty.domain.clear();
        assert_eq!(on_front.should_rate_limit(empty).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(on_front.should_rate_limit(ask(&[])).await.unwrap_err().code(), tonic::Code::InvalidArgument);

        // Cut off from every voter: closed policies refuse, an open one admits.
        let mut c = c;
        for id in [1, 2, 3] {
            c.stop(id).await;
        }
        wait_until("the front is stale", Duration::from_secs(4), || {
            use gatehouse_cluster::Replica;
            let stale = !front.front().is_fresh();
            async move { stale }
        })
        .await;
        let r = should(&mut on_front, &[("remote_address", "192.0.2.9"), ("path", "/login")]).await;
        assert_eq!(r.overall_code, over, "fail closed");
        let r = should(&mut on_front, &[("tenant", "acme")]).await;
        assert_eq!(r.overall_code, ok, "fail_open = true");
        // ... and audited: once the voters are back, the front's record is in the log.
        for id in [1, 2, 3] {
            c.restart(id).await;
        }
        c.wait_for_leader().await;
        wait_until("the failed-open admission in the audit log", Duration::from_secs(15), || {
            let mut found = false;
            c.node(1)
                .audit_log()
                .scan(u64::MAX, true, |r| {
                    let e = r.event.unwrap_or_default();
                    found |=
                        e.action == "ratelimit.failed_open" && e.resource == "policy:edge_open" && e.node_id == 101;
                    !found
                })
                .unwrap();
            async move { found }
        })
        .await;
        front.shutdown().await.unwrap();
        c.shutdown().await;
    }
}

/// `deploy/envoy/envoy.yaml` parses as Envoy's own Bootstrap message
/// (`scripts/check_envoy_config.py`, Envoy's protos from PyPI's
/// `xds-protos`, installed by `scripts/deps.sh test`).
#[test]
fn the_example_envoy_bootstrap_is_one_envoy_reads() {
    let venv = std::env::var("GATEHOUSE_PYENV")
        .unwrap_or_else(|_| format!("{}/.cache/gatehouse/pyenv", std::env::var("HOME").expect("HOME")));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = std::process::Command::new(format!("{venv}/bin/python"))
        .arg(root.join("scripts/check_envoy_config.py"))
        .arg(root.join("deploy/envoy/envoy.yaml"))
        .output()
        .expect("the Python environment of scripts/deps.sh test");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("a valid Envoy bootstrap"));
}
