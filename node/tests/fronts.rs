//! Stateless fronts beside three voters, started through the library entry
//! point: what a front verifies, how fast a revocation reaches it, what it
//! does cut off and when its voter dies, what it holds, and what its secret
//! opens (nothing but the follow service).

mod common;

use std::time::{Duration, Instant};

use common::fronts::{cluster_for_fronts, front_base, front_config, front_secret, start_front};
use common::{create_key, http, wait_until};
use gatehouse::FrontNode;
use gatehouse_cluster::fronts::{FRONT_ID_METADATA, FRONT_SECRET_METADATA};
use gatehouse_domain::Payload;
use gatehouse_proto::control::{ProposeRequest, ReadIndexRequest};
use gatehouse_proto::events::{CommandBatch, CreateUser, RecordUse, RevokeApiKey};
use gatehouse_proto::front::follow_service_client::FollowServiceClient;
use gatehouse_proto::front::{FollowRequest, FrontReadIndexRequest, SnapshotRequest};
use reqwest::StatusCode;
use tokio_stream::StreamExt;

async fn verify(front: &FrontNode, key: &str) -> StatusCode {
    http().get(format!("{}/auth/verify", front_base(front))).bearer_auth(key).send().await.unwrap().status()
}

fn key_id(key: &str) -> String {
    gatehouse_domain::keys::parse_key(key).unwrap().0.to_string()
}

/// A follow-service client to `addr` presenting front `id`'s credentials.
async fn follow_client(
    addr: &str,
    id: &str,
    secret: &str,
) -> FollowServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor + Clone,
    >,
> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let (id, secret): (tonic::metadata::MetadataValue<_>, tonic::metadata::MetadataValue<_>) =
        (id.parse().unwrap(), secret.parse().unwrap());
    FollowServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert(FRONT_ID_METADATA, id.clone());
        req.metadata_mut().insert(FRONT_SECRET_METADATA, secret.clone());
        Ok(req)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_verifies_on_every_front_at_once_and_its_revocation_reaches_them_within_the_bound() {
    let c = cluster_for_fronts(3, &[101, 102], |_| {}).await;
    let fronts = [start_front(&c, 101).await, start_front(&c, 102).await];

    // Created through any voter: the first try on each front already
    // passes (an unknown key makes a front catch up to the leader's commit
    // index), and so does every try after it: 1,000 tries, no refusal.
    for n in 0..10u64 {
        let key = create_key(c.node(1 + n % 3), &format!("user{n}"), &["viewer"]).await;
        for f in &fronts {
            assert_eq!(verify(f, &key).await, StatusCode::OK, "key {n} on front {}", f.id());
        }
    }
    let key = create_key(c.node(2), "alice", &["viewer"]).await;
    let mut refused = 0;
    for _ in 0..500 {
        for f in &fronts {
            refused += usize::from(verify(f, &key).await != StatusCode::OK);
        }
    }
    assert_eq!(refused, 0, "a key acknowledged by a voter was refused by a front");

    // Revoked through a voter: refused by both fronts, each within max_staleness.
    let revoke = c.node(3).cluster().command(Payload::RevokeApiKey(RevokeApiKey { key_id: key_id(&key) }));
    c.node(3).cluster().propose_one(revoke).await.unwrap();
    let acknowledged = Instant::now();
    for f in &fronts {
        wait_until("the revoked key refused on the front", Duration::from_secs(2), || async {
            verify(f, &key).await == StatusCode::UNAUTHORIZED
        })
        .await;
    }
    assert!(acknowledged.elapsed() <= Duration::from_millis(2_000), "within max_staleness");
    for f in fronts {
        f.shutdown().await.unwrap();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_cut_off_from_every_voter_answers_503_within_the_bound_and_recovers() {
    let mut c = cluster_for_fronts(3, &[101], |_| {}).await;
    let front = start_front(&c, 101).await;
    let key = create_key(c.node(1), "alice", &["viewer"]).await;
    assert_eq!(verify(&front, &key).await, StatusCode::OK);

    for id in [1, 2, 3] {
        c.stop(id).await;
    }
    let cut = Instant::now();
    wait_until("the cut-off front refuses (503)", Duration::from_secs(4), || async {
        verify(&front, &key).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    // max_staleness (2 s) plus a probe's wait and a request.
    assert!(cut.elapsed() < Duration::from_millis(2_600), "503 within the bound: {:?}", cut.elapsed());
    let ready = http().get(format!("{}/readyz", front_base(&front))).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    // The voters come back on their addresses: the front resumes, fresh again.
    for id in [1, 2, 3] {
        c.restart(id).await;
    }
    c.wait_for_leader().await;
    wait_until("the front serves again", Duration::from_secs(15), || async {
        verify(&front, &key).await == StatusCode::OK
    })
    .await;
    front.shutdown().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_voter_a_front_follows_does_not_stop_its_verification() {
    let mut c = cluster_for_fronts(3, &[101], |_| {}).await;
    let front = start_front(&c, 101).await;
    let key = create_key(c.node(1), "alice", &["viewer"]).await;
    assert_eq!(verify(&front, &key).await, StatusCode::OK);

    let (_, followed) = front.front().voters().current();
    let followed = followed.to_string();
    let id = *c.nodes.iter().find(|(_, n)| n.advertise_addr() == followed).expect("a voter").0;
    c.stop(id).await;
    // Well past max_staleness: every answer in between is a pass.
    let until = Instant::now() + Duration::from_secs(4);
    let mut answers = 0;
    while Instant::now() < until {
        assert_eq!(verify(&front, &key).await, StatusCode::OK, "after {answers} answers");
        answers += 1;
    }
    assert_ne!(front.front().voters().current().1, followed, "the front moved on to another voter");
    // And it keeps following: a key made now verifies on the front.
    let later = create_key(c.node(if id == 1 { 2 } else { 1 }), "bob", &["viewer"]).await;
    assert_eq!(verify(&front, &later).await, StatusCode::OK);
    front.shutdown().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_holds_no_password_hash_and_no_audit_record() {
    let c = cluster_for_fronts(3, &[101], |_| {}).await;
    common::create_user_with_password(c.node(1), "carol", "correct horse battery staple", &["viewer"]).await;
    c.wait_replicated("carol").await;
    let front = start_front(&c, 101).await;
    // One user made before the copy, one after it (through the stream).
    common::create_user_with_password(c.node(2), "dave", "another long passphrase", &["viewer"]).await;
    use gatehouse_cluster::Replica;
    wait_until("dave on the front", Duration::from_secs(5), || async {
        front.front().view().read().user_by_name("dave").is_some()
    })
    .await;
    {
        let view = front.front().view().read();
        for name in ["carol", "dave"] {
            let user = view.user_by_name(name).unwrap();
            assert_eq!(user.password_hash, gatehouse_domain::front::WITHHELD, "{name}");
            let on_voter = c.node(1).cluster().view().read().user_by_name(name).unwrap().password_hash.clone();
            assert!(on_voter.starts_with("$argon2id$v="));
        }
        assert_eq!(view.audit_chain(), gatehouse_domain::State::default().audit_chain(), "no audit on a front");
    }
    front.shutdown().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_s_secret_opens_the_follow_service_and_nothing_else() {
    let c = cluster_for_fronts(3, &[101], |_| {}).await;
    let voter = c.node(1).advertise_addr().to_string();
    let secret = front_secret(&c.dir, 101);

    // Its own credentials: a snapshot, a stream, a read index, its own writes.
    let mut client = follow_client(&voter, "101", &secret).await;
    let mut chunks = client.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
    let mut last = false;
    while let Some(chunk) = chunks.next().await {
        last |= chunk.unwrap().last;
    }
    assert!(last);
    assert!(client.read_index(FrontReadIndexRequest::default()).await.unwrap().into_inner().index > 0);
    client.follow(FollowRequest { after_index: 0 }).await.unwrap();
    // Hostile: an index with no next one.
    let past = client.follow(FollowRequest { after_index: u64::MAX }).await.unwrap_err();
    assert_eq!(past.code(), tonic::Code::InvalidArgument);
    let node = c.node(1).cluster();
    let touch = node.command(Payload::RecordUse(RecordUse::default()));
    let batch = |cmd| ProposeRequest { batch: Some(CommandBatch { commands: vec![cmd] }) };
    client.propose(batch(touch)).await.expect("a front's own kind of write");

    // Attack: a write only a voter may make (an admin for the attacker).
    let admin = node.command(Payload::CreateUser(CreateUser {
        user_id: gatehouse_cluster::ids::new_id(),
        username: "mallory".into(),
        email: "mallory@example.com".into(),
        password_hash: String::new(),
        roles: vec!["admin".into()],
    }));
    let refused = client.propose(batch(admin)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(node.view().read().user_by_name("mallory").is_none());

    // Attack: a cluster version no build understands, halting every node.
    let raise =
        node.command(Payload::SetClusterVersion(gatehouse_proto::events::SetClusterVersion { version: u32::MAX }));
    assert_eq!(client.propose(batch(raise)).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    assert!(node.view().read().cluster_version() <= gatehouse_domain::version::COMMAND_VERSION);

    // Attack: writes of a front's kind with contents it must not choose.
    use gatehouse_proto::events::{rate_deltas::Delta, record_use::Use, RateDeltas, RateHit};
    for (what, payload) in [
        (
            "a shorter window, dropping every login hit counted",
            Payload::RateHit(RateHit {
                policy: "login".into(),
                bucket: "ip:192.0.2.9".into(),
                limit: 5,
                window_ms: 1_000,
            }),
        ),
        (
            "a count that locks an address out",
            Payload::RateDeltas(RateDeltas {
                deltas: vec![Delta {
                    policy: "api".into(),
                    bucket: "ip:192.0.2.9".into(),
                    count: 1_000_000,
                    window_ms: 60_000,
                }],
            }),
        ),
        (
            "a policy of its own",
            Payload::RateHit(RateHit { policy: "mine".into(), bucket: "all".into(), limit: 1, window_ms: 60_000 }),
        ),
        (
            "a session kept alive forever",
            Payload::RecordUse(RecordUse { sessions: vec![Use { id: "s".into(), at: u64::MAX }], keys: vec![] }),
        ),
    ] {
        let refused = client.propose(batch(node.command(payload))).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{what}");
    }
    assert!(!node.view().read().limits().has_policy("mine"));
    // Audit events it sends are recorded as its own, whatever they claim.
    let forged = node.command(Payload::AppendAudit(gatehouse_proto::events::AppendAudit {
        events: vec![gatehouse_proto::events::AuditEvent {
            action: "forged.by_front".into(),
            node_id: 1,
            at: u64::MAX,
            ..Default::default()
        }],
        ..Default::default()
    }));
    client.propose(batch(forged)).await.unwrap();
    let mut found = None;
    c.node(1)
        .audit_log()
        .scan(u64::MAX, true, |r| {
            let e = r.event.unwrap_or_default();
            if e.action == "forged.by_front" {
                found = Some(e);
                return false;
            }
            true
        })
        .unwrap();
    let found = found.expect("recorded");
    assert_eq!(found.node_id, 101);
    assert!(found.at < u64::MAX);

    // Attack: the front's secret on the Raft and control services, and the
    // cluster secret on the front's services.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{voter}")).unwrap().connect().await.unwrap();
    let mut raft = gatehouse_proto::raft::raft_service_client::RaftServiceClient::new(channel.clone());
    let mut vote = tonic::Request::new(gatehouse_proto::raft::VoteRequest::default());
    vote.metadata_mut().insert(gatehouse_cluster::peers::SECRET_METADATA, secret.parse().unwrap());
    assert_eq!(raft.vote(vote).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let cluster_secret = c.secret();
    let mut as_node = FollowServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert(gatehouse_cluster::peers::SECRET_METADATA, cluster_secret.parse().unwrap());
        Ok(req)
    });
    assert_eq!(
        as_node.read_index(FrontReadIndexRequest::default()).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{voter}")).unwrap().connect().await.unwrap();
    let mut control = gatehouse_proto::control::control_service_client::ControlServiceClient::new(channel);
    let mut req = tonic::Request::new(ReadIndexRequest {});
    req.metadata_mut().insert(FRONT_ID_METADATA, "101".parse().unwrap());
    req.metadata_mut().insert(FRONT_SECRET_METADATA, secret.parse().unwrap());
    req.metadata_mut().insert(gatehouse_cluster::peers::SECRET_METADATA, secret.parse().unwrap());
    assert_eq!(control.read_index(req).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    // Attack: another front's id, a member's id, a wrong or missing secret,
    // the cluster secret.
    for (id, presented) in [
        ("102", secret.clone()),
        ("1", secret.clone()),
        ("101", "wrong-secret-wrong-secret-wrong-secret".to_string()),
        ("101", c.secret()),
    ] {
        let mut other = follow_client(&voter, id, &presented).await;
        let status = other.read_index(FrontReadIndexRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "front {id}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_removed_from_the_fronts_file_is_cut_off() {
    let c = cluster_for_fronts(3, &[101], |_| {}).await;
    let front = start_front(&c, 101).await;
    let key = create_key(c.node(1), "alice", &["viewer"]).await;
    assert_eq!(verify(&front, &key).await, StatusCode::OK);
    // Every voter's file loses the front; a reload tick takes it.
    std::fs::write(c.dir.path().join("fronts.txt"), "").unwrap();
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    wait_until("the removed front refuses (503)", Duration::from_secs(10), || async {
        verify(&front, &key).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    front.shutdown().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_s_configuration_is_checked() {
    let c = cluster_for_fronts(1, &[101], |_| {}).await;
    let mut bad = front_config(&c, 101);
    bad.front.as_mut().unwrap().voters.clear();
    assert!(FrontNode::start(bad).await.is_err());
    let mut voterish = front_config(&c, 101);
    voterish.initialize = true;
    assert!(FrontNode::start(voterish).await.is_err());
    let mut short = front_config(&c, 101);
    short.front.as_mut().unwrap().secret = Some("short".into());
    assert!(FrontNode::start(short).await.is_err());
    let mut offbox = front_config(&c, 101);
    offbox.front.as_mut().unwrap().voters = vec!["1@10.1.2.3:7000".into()];
    let err = FrontNode::start(offbox).await.err().unwrap().to_string();
    assert!(err.contains("plaintext"), "{err}");
    // And a voter refuses a [front] section.
    let mut voter = c.configs[&1].clone();
    voter.front = front_config(&c, 101).front;
    assert!(gatehouse::Node::start(voter).await.is_err());
    c.shutdown().await;
}

const PASSWORD: &str = "correct horse battery staple";

/// The `name=value` of the session cookie a login set.
fn session_cookie(resp: &reqwest::Response) -> String {
    let set = resp.headers().get("set-cookie").expect("a session cookie").to_str().unwrap();
    set.split(';').next().unwrap().to_string()
}

async fn with_cookie(base: &str, path: &str, cookie: &str) -> StatusCode {
    http().get(format!("{base}{path}")).header("cookie", cookie).send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_signs_in_on_a_front_and_the_session_holds_on_every_node() {
    let c = cluster_for_fronts(3, &[101, 102], |_| {}).await;
    let user_id = common::create_user_with_password(c.node(1), "erin", PASSWORD, &["viewer"]).await;
    let (a, b) = (start_front(&c, 101).await, start_front(&c, 102).await);

    // Checked by a voter (the front has no hash), opened as a session there.
    let resp = common::login_at(&front_base(&a), "erin", PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = session_cookie(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["user"]["id"], user_id.as_str());
    assert_eq!(with_cookie(&front_base(&a), "/auth/verify", &cookie).await, StatusCode::OK);
    assert_eq!(with_cookie(&front_base(&b), "/auth/verify", &cookie).await, StatusCode::OK);
    assert_eq!(with_cookie(&common::base(c.node(3)), "/auth/verify", &cookie).await, StatusCode::OK);
    let me: serde_json::Value = http()
        .get(format!("{}/api/v1/me", front_base(&b)))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "erin");

    // A wrong password: the same answer as on a voter, and it counts there.
    let wrong = common::login_at(&front_base(&b), "erin", "not the password at all").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let v: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_credentials");
    wait_until("the failure recorded on the voters", Duration::from_secs(5), || async {
        c.node(2).cluster().view().read().user(&user_id).is_some_and(|u| u.failed_logins == 1)
    })
    .await;

    // Logout on the other front ends the session everywhere.
    let out = http()
        .post(format!("{}/api/v1/logout", front_base(&b)))
        .header("cookie", &cookie)
        .header("x-requested-with", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::OK);
    assert_eq!(with_cookie(&front_base(&b), "/auth/verify", &cookie).await, StatusCode::UNAUTHORIZED);
    for f in [&a, &b] {
        wait_until("the logout on every front", Duration::from_secs(2), || async {
            with_cookie(&front_base(f), "/auth/verify", &cookie).await == StatusCode::UNAUTHORIZED
        })
        .await;
    }
    for f in [a, b] {
        f.shutdown().await.unwrap();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_cannot_open_or_end_a_session_without_the_person_s_own_credential() {
    use gatehouse_proto::front::sign_in_service_client::SignInServiceClient;
    use gatehouse_proto::front::{LoginRequest, LogoutRequest, RevokeOwnSessionRequest};
    let c = cluster_for_fronts(3, &[101], |_| {}).await;
    common::create_user_with_password(c.node(1), "frank", PASSWORD, &["viewer"]).await;
    let victim = common::login(c.node(1), "frank", PASSWORD).await;
    let victim_session: serde_json::Value = victim.json().await.unwrap();
    let victim_session = victim_session["session_id"].as_str().unwrap().to_string();

    let voter = c.node(2).advertise_addr().to_string();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{voter}")).unwrap().connect().await.unwrap();
    let (id, secret): (tonic::metadata::MetadataValue<_>, tonic::metadata::MetadataValue<_>) =
        ("101".parse().unwrap(), front_secret(&c.dir, 101).parse().unwrap());
    let mut client = SignInServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert(FRONT_ID_METADATA, id.clone());
        req.metadata_mut().insert(FRONT_SECRET_METADATA, secret.clone());
        Ok(req)
    });
    // A stolen front guessing: no password, no session.
    let guess = LoginRequest {
        username: "frank".into(),
        password: "a guess that is long enough".into(),
        client_ip: "192.0.2.7".into(),
        user_agent: String::new(),
        ..Default::default()
    };
    let code = |s: &tonic::Status| {
        s.metadata().get(gatehouse_api::error::ERROR_CODE_METADATA).map(|v| v.to_str().unwrap().to_string())
    };
    let refused = client.login(guess.clone()).await.unwrap_err();
    assert_eq!(code(&refused).as_deref(), Some("invalid_credentials"), "the voter's decision, not admission");
    // Ending someone's session needs their token, not its id.
    let logout = LogoutRequest { credential: "gs_not-a-real-token".into(), client_ip: "192.0.2.7".into() };
    let refused = client.logout(logout).await.unwrap_err();
    assert_eq!(code(&refused).as_deref(), Some("unauthenticated"));
    let other = common::create_key(c.node(1), "mallory", &["viewer"]).await;
    let revoke = RevokeOwnSessionRequest {
        credential: other,
        session_id: victim_session.clone(),
        client_ip: "192.0.2.7".into(),
    };
    assert_eq!(client.revoke_own_session(revoke).await.unwrap_err().code(), tonic::Code::NotFound);
    assert!(c.node(1).cluster().view().read().session(&victim_session).is_some());
    // Malformed: an address that is none.
    let bad = LoginRequest { client_ip: "not an address".into(), ..guess };
    assert_eq!(client.login(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_whose_place_in_the_log_was_compacted_copies_the_view_again() {
    let mut c = cluster_for_fronts(3, &[101], |cfg| {
        cfg.raft.snapshot_every = 10;
        cfg.raft.keep_behind_snapshot = 0;
    })
    .await;
    let leader = c.wait_for_leader().await;
    let followed = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    // The front follows one voter only, which goes down for a while.
    let mut config = front_config(&c, 101);
    config.front.as_mut().unwrap().voters = vec![format!("{followed}@{}", c.node(followed).advertise_addr())];
    let front = FrontNode::start(config).await.unwrap();
    assert!(front.wait_ready(Duration::from_secs(10)).await);
    assert_eq!(front.front().copies(), 1);
    c.stop(followed).await;
    let mut keys = Vec::new();
    for i in 0..8 {
        keys.push(create_key(c.node(leader), &format!("while-down-{i}"), &["viewer"]).await);
    }
    for i in 0..30 {
        common::write_user(c.node(leader), &format!("filler-{i}")).await;
    }
    wait_until("the leader purged its log", Duration::from_secs(10), || {
        let purged = c.node(leader).cluster().raft().metrics().borrow().purged.map_or(0, |p| p.index);
        async move { purged > 20 }
    })
    .await;
    // The voter comes back through a snapshot; the front's next index is
    // gone from its log, so the front copies the view again.
    c.restart(followed).await;
    wait_until("the front copied the view again and serves", Duration::from_secs(15), || async {
        front.front().copies() >= 2 && verify(&front, &keys[7]).await == StatusCode::OK
    })
    .await;
    for key in &keys {
        assert_eq!(verify(&front, key).await, StatusCode::OK);
    }
    front.shutdown().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fronts_appear_in_cluster_status_and_in_metrics() {
    let c = cluster_for_fronts(3, &[101, 102], |_| {}).await;
    let fronts = [start_front(&c, 101).await, start_front(&c, 102).await];
    let status = || async {
        let out = common::admin_cli(&c.endpoint(1), &c.admin_key, &["--json", "cluster", "status"]).await.unwrap();
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    wait_until("both fronts in the status, following", Duration::from_secs(5), || async {
        let s = status().await;
        let rows = s["fronts"].as_array().cloned().unwrap_or_default();
        rows.len() == 2 && rows.iter().all(|f| f["following"] == true && f["applied_index"].as_u64() > Some(0))
    })
    .await;
    let s = status().await;
    assert_eq!(s["fronts"][0]["id"], 101);
    assert_eq!(s["fronts"][1]["id"], 102);
    assert!(s["fronts"][0]["last_proof_ms_ago"].as_u64().unwrap() < 2_000);
    let table = common::admin_cli(&c.endpoint(2), &c.admin_key, &["cluster", "status"]).await.unwrap();
    assert!(table.contains("fronts:") && table.contains("101"), "{table}");

    // A front's own series, on its /metrics.
    use gatehouse_cluster::Replica;
    let scrape = fronts[0].api().scrape_metrics();
    for series in ["gatehouse_front_applied_index", "gatehouse_front_fresh 1", "gatehouse_front_view_copies_total 1"] {
        assert!(scrape.contains(series), "{series} in\n{scrape}");
    }
    assert!(fronts[0].front().is_fresh());
    // And the voters count the fronts following them.
    let following: i64 = c
        .nodes
        .values()
        .map(|n| {
            let scrape = n.api().scrape_metrics();
            let line = scrape.lines().find(|l| l.starts_with("gatehouse_fronts_following ")).unwrap().to_string();
            line.rsplit(' ').next().unwrap().parse::<i64>().unwrap()
        })
        .sum();
    assert_eq!(following, 2);
    for f in fronts {
        f.shutdown().await.unwrap();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_on_fronts_are_limited_once_on_the_voters() {
    let limits = |c: &mut gatehouse::Config| {
        c.rate_limits.enabled = true;
        // Every test client is 127.0.0.1: only the login policy matters here.
        c.rate_limits.policies.retain(|p| p.name == "login");
    };
    let c = cluster_for_fronts(3, &[101, 102], limits).await;
    common::create_user_with_password(c.node(1), "grace", PASSWORD, &["viewer"]).await;
    let start = |id| {
        let mut config = front_config(&c, id);
        limits(&mut config);
        async move {
            let f = FrontNode::start(config).await.unwrap();
            assert!(f.wait_ready(Duration::from_secs(10)).await);
            f
        }
    };
    let (a, b) = (start(101).await, start(102).await);
    // Five a minute from one address, on whichever front: each counted once.
    let mut statuses = Vec::new();
    for n in 0..6 {
        let f = if n % 2 == 0 { &a } else { &b };
        statuses.push(common::login_at(&front_base(f), "grace", PASSWORD).await.status());
    }
    assert_eq!(statuses[..5], [StatusCode::OK; 5], "{statuses:?}");
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    let limited = common::login_at(&front_base(&a), "grace", PASSWORD).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(limited.headers()["x-ratelimit-limit"], "5");
    for f in [a, b] {
        f.shutdown().await.unwrap();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_whose_clock_went_back_still_gets_its_audit_events_in() {
    let c = cluster_for_fronts(3, &[101], |_| {}).await;
    // Before a restart, the front's clock ran a day ahead: the log took a
    // batch numbered from it (microseconds). Its clock is right again now,
    // and a front holds no audit chain to read that number from.
    let ahead = (gatehouse_cluster::clock::now_ms() + 86_400_000) * 1000;
    let voter = c.node(1).advertise_addr().to_string();
    let mut client = follow_client(&voter, "101", &front_secret(&c.dir, 101)).await;
    let before = c.node(1).cluster().command(Payload::AppendAudit(gatehouse_proto::events::AppendAudit {
        events: vec![gatehouse_proto::events::AuditEvent { action: "before.restart".into(), ..Default::default() }],
        batch: ahead,
        ..Default::default()
    }));
    client.propose(ProposeRequest { batch: Some(CommandBatch { commands: vec![before] }) }).await.unwrap();

    // An event the front records: a key without the role it asks for.
    let key = create_key(c.node(1), "viewer", &["viewer"]).await;
    let front = start_front(&c, 101).await;
    let denied =
        http().get(format!("{}/auth/verify?role=admin", front_base(&front))).bearer_auth(&key).send().await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    // Its batch is numbered below the log's last from it, answered as a
    // retry with that number, renumbered above it, and appended.
    wait_until("the front's event in the log", Duration::from_secs(10), || async {
        let mut found = false;
        c.node(2)
            .audit_log()
            .scan(u64::MAX, true, |r| {
                let e = r.event.unwrap_or_default();
                found = e.action == "forward_auth.denied" && e.node_id == 101;
                !found
            })
            .unwrap();
        found
    })
    .await;
    let scrape = front.api().scrape_metrics();
    assert!(series(&scrape, "gatehouse_audit_batches_renumbered_total").is_some_and(|n| n >= 1), "{scrape}");
    use gatehouse_domain::audit::last_batch;
    let last = last_batch(&c.node(2).cluster().view().read().audit_chain(), 101).unwrap();
    assert!(last > ahead, "{last} after {ahead}");
    front.shutdown().await.unwrap();
    c.shutdown().await;
}

/// The value of a series with no labels in a scrape.
fn series(scrape: &str, name: &str) -> Option<i64> {
    scrape.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_global_limit_is_shared_over_voters_and_fronts_within_its_bound() {
    use gatehouse_api::rate_limit::policy::{By, LimitsConfig, Mode};
    const LIMIT: u32 = 100;
    let limits = |c: &mut gatehouse::Config| {
        c.rate_limits = LimitsConfig {
            enabled: true,
            policies: vec![common::policy("per_key", By::Key, LIMIT, Mode::Global)],
            ..Default::default()
        };
    };
    let c = cluster_for_fronts(3, &[101, 102], limits).await;
    let key = create_key(c.node(1), "busy", &["viewer"]).await;
    let mut fronts = Vec::new();
    for id in [101, 102] {
        let mut config = front_config(&c, id);
        limits(&mut config);
        let f = FrontNode::start(config).await.unwrap();
        assert!(f.wait_ready(Duration::from_secs(10)).await);
        fronts.push(f);
    }
    // Five nodes admit: three voters and the two fronts their fronts file
    // lists. Each counts five shares, a front as its voter tells it.
    let scrapes = || {
        let mut all: Vec<String> = c.nodes.values().map(|n| n.api().scrape_metrics()).collect();
        all.extend(fronts.iter().map(|f| f.api().scrape_metrics()));
        all
    };
    wait_until("every node shares the limit five ways", Duration::from_secs(10), || async {
        scrapes().iter().all(|s| series(s, "gatehouse_rate_limit_shares") == Some(5))
    })
    .await;

    // Hammered through all five until none admitted anything for ten
    // sync rounds. Had each front counted only the voters and itself (four
    // shares) and each voter only the voters (three), the first round alone
    // would admit 3·34 + 2·25 = 152.
    let urls: Vec<String> = c
        .nodes
        .values()
        .map(|n| format!("{}/auth/verify", common::base(n)))
        .chain(fronts.iter().map(|f| format!("{}/auth/verify", front_base(f))))
        .collect();
    let admitted = common::verify_until_limited(&urls, &key).await;
    // The documented bound when nodes keep up: the limit plus one per node
    // per round (rounding), checked with room for a second round's.
    assert!((LIMIT..=LIMIT + 2 * 5).contains(&admitted), "admitted {admitted} of {LIMIT}");
    for f in fronts {
        f.shutdown().await.unwrap();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_whose_secret_was_rotated_away_is_cut_off() {
    let c = cluster_for_fronts(3, &[101], |_| {}).await;
    let front = start_front(&c, 101).await;
    let key = create_key(c.node(1), "alice", &["viewer"]).await;
    assert_eq!(verify(&front, &key).await, StatusCode::OK);
    // The line now holds another secret: the running front's one is stale.
    let line = gatehouse_cluster::fronts::line_for(101, "another-front-secret-another-front-secret");
    std::fs::write(c.dir.path().join("fronts.txt"), line + "\n").unwrap();
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    wait_until("the front with the old secret refuses (503)", Duration::from_secs(10), || async {
        verify(&front, &key).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    front.shutdown().await.unwrap();
    c.shutdown().await;
}

/// A channel to node `id` at `addr` over TLS with `config` (a front's or a node's certificate).
async fn tls_channel(addr: &str, id: u64, config: std::sync::Arc<rustls::ClientConfig>) -> tonic::transport::Channel {
    let addr = addr.to_string();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let (addr, config) = (addr.clone(), config.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let name = gatehouse_tls::peer::server_name(id);
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_static("http://voter").connect_with_connector(connector).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fronts_dial_voters_over_mutual_tls_with_a_certificate_that_binds_them() {
    use common::pki::Pki;
    let pki = Pki::new();
    for id in [101, 102] {
        let issued = gatehouse_tls::issue::front_certificate(&pki.ca, id, 30).unwrap();
        Pki::write(pki.dir.path(), &format!("front-{id}"), &issued);
    }
    let c = cluster_for_fronts(3, &[101, 102], |cfg| cfg.cluster_tls = Some(pki.config(cfg.node_id, &[]))).await;
    let with_cert = |id: u64, name: &str| {
        let mut config = front_config(&c, id);
        let f = config.front.as_mut().unwrap();
        f.cert_file = Some(pki.path(&format!("{name}.pem")));
        f.key_file = Some(pki.path(&format!("{name}.key")));
        f.ca_file = Some(pki.path("ca.pem"));
        config
    };
    let front = FrontNode::start(with_cert(101, "front-101")).await.unwrap();
    assert!(front.wait_ready(Duration::from_secs(10)).await, "the front follows over mutual TLS");
    let key = create_key(c.node(1), "alice", &["viewer"]).await;
    assert_eq!(verify(&front, &key).await, StatusCode::OK);
    common::create_user_with_password(c.node(2), "heidi", PASSWORD, &["viewer"]).await;
    assert_eq!(common::login_at(&front_base(&front), "heidi", PASSWORD).await.status(), StatusCode::OK);

    // A front's own certificate is checked at its start: another front's is refused.
    assert!(FrontNode::start(with_cert(102, "front-101")).await.is_err());
    // Without a certificate, a front cannot reach voters with [cluster_tls].
    let plain = FrontNode::start(front_config(&c, 102)).await.unwrap();
    assert!(!plain.wait_ready(Duration::from_secs(2)).await);
    plain.shutdown().await.unwrap();
    // A voter is taken only as the node it is listed as: node 2's
    // certificate at an address listed as node 3's is refused.
    let mut misnamed = with_cert(102, "front-102");
    misnamed.front.as_mut().unwrap().voters = vec![format!("3@{}", c.node(2).advertise_addr())];
    let misnamed = FrontNode::start(misnamed).await.unwrap();
    assert!(!misnamed.wait_ready(Duration::from_secs(2)).await);
    misnamed.shutdown().await.unwrap();
    // A voter certificate on the front's deny-list is refused.
    let serial =
        gatehouse_tls::Material::load(&pki.path("node-2.pem"), &pki.path("node-2.key")).unwrap().info().serial.clone();
    let mut denying = with_cert(102, "front-102");
    let f = denying.front.as_mut().unwrap();
    f.voters = vec![format!("2@{}", c.node(2).advertise_addr())];
    f.deny_serials = vec![serial];
    let denying = FrontNode::start(denying).await.unwrap();
    assert!(!denying.wait_ready(Duration::from_secs(2)).await);
    denying.shutdown().await.unwrap();

    let trust = gatehouse_tls::peer::Trust::load(&pki.path("ca.pem"), &[], None).unwrap();
    let config_of = |name: &str| {
        let m = gatehouse_tls::Material::load(&pki.path(&format!("{name}.pem")), &pki.path(&format!("{name}.key")))
            .unwrap();
        trust.client_config(&m).unwrap()
    };
    let voter = c.node(2).advertise_addr().to_string();
    let ask = |channel: tonic::transport::Channel, id: &str, secret: String| {
        let (id, secret): (tonic::metadata::MetadataValue<_>, tonic::metadata::MetadataValue<_>) =
            (id.parse().unwrap(), secret.parse().unwrap());
        let mut client = FollowServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert(FRONT_ID_METADATA, id.clone());
            req.metadata_mut().insert(FRONT_SECRET_METADATA, secret.clone());
            Ok(req)
        });
        async move { client.read_index(FrontReadIndexRequest::default()).await.map(|_| ()) }
    };
    // Attack: front 102's id and secret over front 101's certificate.
    let stolen = ask(tls_channel(&voter, 2, config_of("front-101")).await, "102", front_secret(&c.dir, 102)).await;
    assert_eq!(stolen.unwrap_err().code(), tonic::Code::Unauthenticated);
    // Attack: a node's certificate does not open a front's services.
    let node_cert = ask(tls_channel(&voter, 2, config_of("node-3")).await, "101", front_secret(&c.dir, 101)).await;
    assert_eq!(node_cert.unwrap_err().code(), tonic::Code::Unauthenticated);
    // The rightful front's certificate, id and secret do.
    ask(tls_channel(&voter, 2, config_of("front-101")).await, "101", front_secret(&c.dir, 101)).await.unwrap();
    // Attack: a front's certificate with the cluster secret on the control service.
    let channel = tls_channel(&voter, 2, config_of("front-101")).await;
    let mut control = gatehouse_proto::control::control_service_client::ControlServiceClient::new(channel);
    let mut req = tonic::Request::new(ReadIndexRequest {});
    req.metadata_mut().insert(gatehouse_cluster::peers::SECRET_METADATA, c.secret().parse().unwrap());
    assert_eq!(control.read_index(req).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    front.shutdown().await.unwrap();
    c.shutdown().await;
}
