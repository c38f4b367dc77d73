//! Downstream JWTs on a real cluster: tokens minted with every allowed
//! forward-auth answer, verified by an independent library (Python's PyJWT
//! with `cryptography`) against the JWKS any node publishes; what they say
//! follows the user's state at once (a role, a revocation); forged,
//! confused, expired and misaddressed tokens refused by PyJWT and by our
//! own verifier; a rotation under load fails no token; a stateless front
//! hands on tokens a voter signed and holds no private key.

mod common;

use std::collections::HashSet;
use std::io::Write as _;
use std::time::Duration;

use common::fronts::{front_base, front_config};
use common::{admin_cli, base, create_key, create_user_with_password, http, wait_until, TestCluster};
use gatehouse::config::{Config, JwtSettings, KeySettings};
use gatehouse_api::jwt::mint::Claims;
use gatehouse_api::jwt::verify::{Refused, Verifier};
use reqwest::StatusCode;

const ISSUER: &str = "https://auth.test";
const PASSWORD: &str = "pw-of-ann-0001";

fn jwt_settings(publish_delay: &str, lifetime: &str) -> JwtSettings {
    JwtSettings {
        issuer: ISSUER.into(),
        audience: "apps".into(),
        lifetime: lifetime.into(),
        algorithm: "EdDSA".into(),
        header: "Authorization".into(),
        publish_delay: publish_delay.into(),
    }
}

/// `[secrets]` under `dir` (the signing keys are sealed with it).
/// The route rule both clusters carry: `/ops` for operators, its tokens
/// for the `ops` audience.
fn ops_rule() -> gatehouse::config::RouteRule {
    gatehouse::config::RouteRule {
        path_prefix: "/ops".into(),
        roles: vec!["operator".into()],
        audience: Some("ops".into()),
        ..Default::default()
    }
}

fn secrets(dir: &tempfile::TempDir, c: &mut Config) {
    let key = dir.path().join("kek");
    if !key.exists() {
        std::fs::write(&key, hex::encode([7u8; 32])).unwrap();
    }
    c.secrets.keys = vec![KeySettings { id: "k1".into(), file: key }];
}

/// Waits for the newest command version and the first signing key on every node.
async fn ready(c: &TestCluster) {
    let newest = gatehouse_domain::version::COMMAND_VERSION;
    wait_until("the cluster version is raised and a first key made", Duration::from_secs(30), || async {
        c.nodes.values().all(|n| {
            n.cluster().cluster_version() == newest
                && n.cluster().view().read().signing_keys().current(gatehouse_cluster::clock::now_ms()).is_some()
        })
    })
    .await;
}

async fn jwks(base: &str) -> Vec<u8> {
    let resp = http().get(format!("{base}/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/jwk-set+json");
    // Half the (short) publish delay of these clusters: a cache that obeys
    // never misses a key before it signs.
    assert_eq!(resp.headers()["cache-control"], "public, max-age=1");
    resp.bytes().await.unwrap().to_vec()
}

/// `/auth/verify` at `base` with `credential` (and a forwarded path): the
/// status and the token it handed on, if any.
async fn verify(base: &str, credential: &str, uri: &str) -> (StatusCode, Option<String>) {
    let resp = http()
        .get(format!("{base}/auth/verify"))
        .header("authorization", format!("Bearer {credential}"))
        .header("x-forwarded-host", "app.test")
        .header("x-forwarded-uri", uri)
        .send()
        .await
        .unwrap();
    let token = resp.headers().get("authorization").map(|v| {
        let v = v.to_str().unwrap();
        v.strip_prefix("Bearer ").unwrap_or_else(|| panic!("{v}")).to_string()
    });
    (resp.status(), token)
}

/// PyJWT's verdict on each token: the claims or the exception's name.
fn pyjwt(jwks: &[u8], audience: &str, tokens: &[&str]) -> Vec<Result<serde_json::Value, String>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/jwt_verify.py");
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args([script, path.to_str().unwrap(), ISSUER, audience])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyJWT (scripts/deps.sh test installs it)");
    let mut stdin = child.stdin.take().unwrap();
    for t in tokens {
        writeln!(stdin, "{t}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<Result<serde_json::Value, String>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            match v.get("claims") {
                Some(c) => Ok(c.clone()),
                None => Err(v["error"].as_str().unwrap().to_string()),
            }
        })
        .collect();
    assert_eq!(lines.len(), tokens.len());
    lines
}

fn session_token(resp: &reqwest::Response) -> String {
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string()
}

fn payload(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_verify_independently_and_follow_the_users_state() {
    let c = TestCluster::start_with_dir(3, |dir, c| {
        secrets(dir, c);
        c.rate_limits.enabled = false;
        c.jwt = Some(jwt_settings("2s", "60s"));
        c.identity.routes = vec![ops_rule()];
    })
    .await;
    ready(&c).await;
    let user_id = create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    let login = common::login(c.node(1), "ann", PASSWORD).await;
    assert_eq!(login.status(), StatusCode::OK);
    let session_id = login.json::<serde_json::Value>().await.unwrap()["session_id"].as_str().unwrap().to_string();
    let login = common::login(c.node(1), "ann", PASSWORD).await;
    let session = session_token(&login);

    // Minted on one node, verified with the keys another publishes.
    let (status, token) = verify(&base(c.node(2)), &session, "/").await;
    assert_eq!(status, StatusCode::OK);
    let token = token.expect("a token with the answer");
    let keys = jwks(&base(c.node(3))).await;
    let claims = pyjwt(&keys, "apps", &[&token]).remove(0).expect("PyJWT verifies it");
    assert_eq!(claims["sub"], user_id.as_str());
    assert_eq!(claims["name"], "ann");
    assert_eq!(claims["email"], "ann@example.com");
    assert_eq!(claims["roles"], serde_json::json!(["viewer"]));
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], "apps");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 60);
    assert!(claims["auth_time"].as_u64().unwrap() <= claims["iat"].as_u64().unwrap());
    assert_ne!(claims["sid"], session_id.as_str(), "the second login's session, not the first's");
    let ours = Verifier::new(&keys, ISSUER, "apps").unwrap();
    assert_eq!(ours.verify(&token).unwrap().sub, user_id);

    // Cached: the same token again while nothing it says changed.
    assert_eq!(verify(&base(c.node(2)), &session, "/").await.1.as_deref(), Some(token.as_str()));

    // A role given shows in the next token, on every node.
    let root = create_key(c.node(1), "root", &["admin"]).await;
    let endpoint = common::endpoint(c.node(1));
    admin_cli(&endpoint, &root, &["role", "assign", "--user", "ann", "operator"]).await.unwrap();
    wait_until("the role reaches node 2", Duration::from_secs(10), || async {
        let (_, t) = verify(&base(c.node(2)), &session, "/").await;
        t.is_some_and(|t| {
            let roles = payload(&t)["roles"].clone();
            roles.as_array().unwrap().len() == 2 && roles.as_array().unwrap().contains(&"operator".into())
        })
    })
    .await;
    // A route rule's audience; a request the rule refuses gets no token.
    let (status, ops) = verify(&base(c.node(3)), &session, "/ops/x").await;
    assert_eq!(status, StatusCode::OK);
    let ops = ops.unwrap();
    assert_eq!(payload(&ops)["aud"], "ops");
    let verdicts = pyjwt(&keys, "apps", &[&ops]);
    assert_eq!(verdicts[0], Err("InvalidAudienceError".into()), "an ops token is no token for the other apps");
    assert_eq!(ours.verify(&ops), Err(Refused::WrongAudience));
    let viewer = create_key(c.node(1), "viewer-bot", &["viewer"]).await;
    let (status, none) = verify(&base(c.node(1)), &viewer, "/ops/x").await;
    assert_eq!((status, none), (StatusCode::FORBIDDEN, None));

    // An API key: its id as `sid`, `amr` key.
    let (status, by_key) = verify(&base(c.node(1)), &viewer, "/").await;
    assert_eq!(status, StatusCode::OK);
    let key_claims = payload(&by_key.unwrap());
    assert_eq!(key_claims["amr"], serde_json::json!(["key"]));
    assert!(viewer.contains(key_claims["sid"].as_str().unwrap()), "the key's id");

    // A client's own `Authorization` never comes back as a token.
    let (status, t) = verify(&base(c.node(1)), "gs_forged", "/").await;
    assert_eq!((status, t), (StatusCode::UNAUTHORIZED, None));

    // Revoked: no token anywhere, at once.
    let revoke = http()
        .post(format!("{}/api/v1/logout", base(c.node(1))))
        .header("authorization", format!("Bearer {session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::OK);
    for n in 1..=3 {
        let (status, t) = verify(&base(c.node(n)), &session, "/").await;
        assert_eq!((status, t), (StatusCode::UNAUTHORIZED, None), "node {n}");
    }

    // Forgeries, against PyJWT and our verifier alike.
    let sealer = gatehouse_api::seal::Sealer::new(vec![("k1".into(), [7u8; 32])]).unwrap();
    let record = c.node(1).cluster().view().read().signing_keys().current(gatehouse_cluster::clock::now_ms()).cloned();
    let record = record.unwrap();
    let real = gatehouse_api::jwt::keys::Signers::default().get(&record, &sealer).unwrap();
    let now = gatehouse_cluster::clock::now_ms() / 1000;
    let claims = |exp: u64| Claims {
        iss: ISSUER.into(),
        sub: user_id.clone(),
        aud: "apps".into(),
        iat: now,
        exp,
        name: "ann".into(),
        email: String::new(),
        roles: vec!["admin".into()],
        sid: "s".into(),
        amr: vec!["pwd".into()],
        auth_time: now,
    };
    let expired = gatehouse_api::jwt::mint::sign(&real, &claims(now - 120)).unwrap();
    let stranger_key = gatehouse_api::jwt::keys::generate(
        gatehouse_api::jwt::keys::Alg::EdDSA,
        &sealer,
        Duration::ZERO,
        Duration::ZERO,
    )
    .unwrap();
    let stranger_record = gatehouse_domain::signing::record_of(&stranger_key);
    let under_cluster_kid =
        gatehouse_proto::state::SigningKeyRecord { kid: record.kid.clone(), ..stranger_record.clone() };
    // The stranger's key is sealed for its own kid: it opens only there.
    assert!(gatehouse_api::jwt::keys::Signers::default().get(&under_cluster_kid, &sealer).is_err());
    let stranger = gatehouse_api::jwt::keys::Signers::default().get(&stranger_record, &sealer).unwrap();
    let wrong_key = {
        // Signed by another key under the cluster's kid.
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(record.kid.clone());
        let forged = gatehouse_api::jwt::mint::sign(&stranger, &claims(now + 60)).unwrap();
        let mut parts: Vec<&str> = forged.split('.').collect();
        use base64::Engine as _;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&h).unwrap());
        parts[0] = &header;
        parts.join(".")
    };
    let confused = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(record.kid.clone());
        let secret = jsonwebtoken::EncodingKey::from_secret(&record.public_key).unwrap();
        jsonwebtoken::encode(&h, &claims(now + 60), &secret).unwrap()
    };
    let none = {
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let header = b64(serde_json::json!({ "alg": "none", "kid": record.kid }));
        format!("{header}.{}.", b64(serde_json::to_value(claims(now + 60)).unwrap()))
    };
    let verdicts = pyjwt(&keys, "apps", &[&expired, &wrong_key, &confused, &none]);
    assert_eq!(verdicts[0], Err("ExpiredSignatureError".into()));
    assert_eq!(verdicts[1], Err("InvalidSignatureError".into()));
    assert!(verdicts[2].is_err() && verdicts[3].is_err(), "{verdicts:?}");
    assert_eq!(ours.verify(&expired), Err(Refused::Expired));
    assert_eq!(ours.verify(&wrong_key), Err(Refused::BadSignature));
    assert_eq!(ours.verify(&confused), Err(Refused::WrongAlgorithm));
    assert!(ours.verify(&none).is_err());

    // No private key is published or kept in the clear.
    let published = String::from_utf8(keys.clone()).unwrap();
    assert!(!published.contains("\"d\""), "{published}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_under_load_fails_no_token() {
    let c = TestCluster::start_with_dir(3, |dir, c| {
        secrets(dir, c);
        c.rate_limits.enabled = false;
        // Verifiers below refresh the JWKS every second: a 3 s delay covers them.
        c.jwt = Some(jwt_settings("3s", "10s"));
    })
    .await;
    ready(&c).await;
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    let mut sessions = Vec::new();
    for n in 1..=3 {
        sessions.push(session_token(&common::login(c.node(n), "ann", PASSWORD).await));
    }
    let bases: Vec<String> = (1..=3).map(|n| base(c.node(n))).collect();
    let first_kid = c.node(1).cluster().view().read().signing_keys().all().next().unwrap().kid.clone();

    // Apps verify every token with the JWKS they fetched at most a second ago.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (bases, sessions, stop) = (bases.clone(), sessions.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut kids, mut verified, mut failures) = (HashSet::new(), 0u64, Vec::new());
            let mut fetched = std::time::Instant::now();
            let mut verifier = Verifier::new(&jwks(&bases[0]).await, ISSUER, "apps").unwrap();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if fetched.elapsed() >= Duration::from_secs(1) {
                    verifier = Verifier::new(&jwks(&bases[i % 3]).await, ISSUER, "apps").unwrap();
                    fetched = std::time::Instant::now();
                }
                let (status, token) = verify(&bases[i % 3], &sessions[i % sessions.len()], "/").await;
                match (status, token) {
                    (StatusCode::OK, Some(t)) => match verifier.verify(&t) {
                        Ok(_) => {
                            verified += 1;
                            kids.insert(jsonwebtoken::decode_header(&t).unwrap().kid.unwrap());
                        }
                        Err(e) => failures.push(format!("{e}")),
                    },
                    other => failures.push(format!("{other:?}")),
                }
                i += 1;
            }
            (kids, verified, failures)
        })
    };
    wait_until("load runs", Duration::from_secs(5), || async { true }).await;
    let root = create_key(c.node(1), "root", &["admin"]).await;
    let endpoint = common::endpoint(c.node(2));
    // Only cluster.admin rotates: an operator and a viewer are refused, and
    // nothing is proposed.
    for role in ["operator", "viewer"] {
        let key = create_key(c.node(1), &format!("not-admin-{role}"), &[role]).await;
        let err = admin_cli(&endpoint, &key, &["jwt", "rotate"]).await.unwrap_err();
        assert!(err.starts_with("permission denied"), "{role}: {err}");
    }
    assert_eq!(c.node(2).cluster().view().read().signing_keys().all().count(), 1);
    let out = admin_cli(&endpoint, &root, &["jwt", "rotate"]).await.unwrap();
    assert!(out.contains("next"), "{out}");
    // Another rotation while one key waits is refused.
    let again = admin_cli(&endpoint, &root, &["jwt", "rotate"]).await.unwrap_err();
    assert!(again.contains("waiting"), "{again}");
    let listed = admin_cli(&endpoint, &root, &["--json", "jwt", "keys"]).await.unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2);
    wait_until("tokens carry the new key", Duration::from_secs(20), || async {
        let (_, t) = verify(&bases[2], &sessions[0], "/").await;
        t.is_some_and(|t| jsonwebtoken::decode_header(&t).unwrap().kid.unwrap() != first_kid)
    })
    .await;
    // Keep the load going across every node's switch.
    let switched = std::time::Instant::now();
    wait_until("two seconds past the switch", Duration::from_secs(5), || async {
        switched.elapsed() >= Duration::from_secs(2)
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (kids, verified, failures) = load.await.unwrap();
    assert!(failures.is_empty(), "{} of {} failed: {:?}", failures.len(), verified, &failures[..failures.len().min(5)]);
    assert_eq!(kids.len(), 2, "tokens of both keys were verified");
    assert!(verified > 50, "{verified}");
    // The old key is still published (its tokens live on), and retiring.
    let listed = admin_cli(&endpoint, &root, &["--json", "jwt", "keys"]).await.unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let states: Vec<&str> = listed["keys"].as_array().unwrap().iter().map(|k| k["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["retiring", "signing"]);
    wait_until("the rotation is audited", Duration::from_secs(10), || common::audited(&c, "jwt.rotate", "")).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_hands_on_voter_signed_tokens_and_holds_no_private_key() {
    let c = TestCluster::start_with_dir(3, |dir, c| {
        secrets(dir, c);
        c.peer_addr = Some("127.0.0.1:0".parse().unwrap());
        c.fronts_file = Some(common::fronts::fronts_file(dir, &[11]));
        c.rate_limits.enabled = false;
        c.jwt = Some(jwt_settings("2s", "60s"));
        c.identity.routes = vec![ops_rule()];
    })
    .await;
    // The cluster's version is raised once the front too reports it.
    let mut config = front_config(&c, 11);
    config.jwt = Some(jwt_settings("2s", "60s"));
    let front = gatehouse::FrontNode::start(config).await.expect("front starts");
    assert!(front.wait_ready(Duration::from_secs(10)).await);
    ready(&c).await;
    let fb = front_base(&front);
    create_user_with_password(c.node(1), "ann", PASSWORD, &["viewer"]).await;
    let session = session_token(&common::login_at(&fb, "ann", PASSWORD).await);

    let (status, token) = verify(&fb, &session, "/").await;
    assert_eq!(status, StatusCode::OK);
    let token = token.unwrap();
    let keys = jwks(&fb).await;
    assert_eq!(keys, jwks(&base(c.node(1))).await, "the front publishes the voters' keys");
    assert_eq!(pyjwt(&keys, "apps", &[&token])[0].as_ref().unwrap()["name"], "ann");
    // Cached on the front: no voter call for the same token.
    assert_eq!(verify(&fb, &session, "/").await.1.as_deref(), Some(token.as_str()));
    // The front's copy of every key has no private half.
    {
        use gatehouse_cluster::Replica;
        let view = front.front().view().read();
        for k in view.signing_keys().all() {
            let sealed = k.private_key.as_ref().unwrap();
            assert!(sealed.ciphertext.iter().all(|b| *b == 0), "a stand-in, not the sealed key");
        }
    }
    // A stolen front asking a voter directly gets only what the voter's own
    // rules grant the credential it shows.
    {
        use gatehouse_cluster::fronts::{FRONT_ID_METADATA, FRONT_SECRET_METADATA};
        use gatehouse_proto::front::sign_in_service_client::SignInServiceClient;
        use gatehouse_proto::front::MintTokenRequest;
        let voter = c.node(2).advertise_addr().to_string();
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{voter}")).unwrap().connect().await.unwrap();
        let (id, secret): (tonic::metadata::MetadataValue<_>, tonic::metadata::MetadataValue<_>) =
            ("11".parse().unwrap(), common::fronts::front_secret(&c.dir, 11).parse().unwrap());
        let mut client = SignInServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert(FRONT_ID_METADATA, id.clone());
            req.metadata_mut().insert(FRONT_SECRET_METADATA, secret.clone());
            Ok(req)
        });
        let ask = |credential: &str, audience: &str| MintTokenRequest {
            credential: credential.to_string(),
            audience: audience.to_string(),
        };
        let code = |s: tonic::Status| {
            s.metadata().get(gatehouse_api::error::ERROR_CODE_METADATA).map(|v| v.to_str().unwrap().to_string())
        };
        let ops = client.mint_token(ask(&session, "ops")).await.unwrap_err();
        assert_eq!(code(ops).as_deref(), Some("permission_denied"), "ann lacks the ops rule's role");
        let unnamed = client.mint_token(ask(&session, "billing")).await.unwrap_err();
        assert_eq!(code(unnamed).as_deref(), Some("invalid_argument"), "no rule names that audience");
        let forged = client.mint_token(ask("gs_forged-token", "apps")).await.unwrap_err();
        assert_eq!(code(forged).as_deref(), Some("unauthenticated"));
        // Hostile input: a header smuggled in an audience, an oversized
        // one, an empty one; an oversized and an empty credential. Past the
        // service's 64 KiB message limit, nothing is read at all.
        let huge = "a".repeat(8 * 1024);
        let whole = client.mint_token(ask(&session, &"a".repeat(256 * 1024))).await.unwrap_err();
        assert_eq!(whole.code(), tonic::Code::OutOfRange, "{whole:?}");
        for audience in ["apps\r\nx-injected: 1", huge.as_str(), "", "apps\0"] {
            let refused = client.mint_token(ask(&session, audience)).await.unwrap_err();
            assert_eq!(code(refused).as_deref(), Some("invalid_argument"), "{:.40}", audience);
        }
        for credential in [format!("gs_{huge}"), String::new()] {
            let refused = client.mint_token(ask(&credential, "apps")).await.unwrap_err();
            assert_eq!(code(refused).as_deref(), Some("unauthenticated"), "{:.40}", credential);
        }
        let granted = client.mint_token(ask(&session, "apps")).await.unwrap().into_inner();
        assert_eq!(payload(&granted.token)["name"], "ann");
        assert!(!format!("{granted:?}").contains(&granted.token), "no token in Debug");
    }
    // Revoked on a voter: the front hands on nothing.
    let revoke = http()
        .post(format!("{}/api/v1/logout", base(c.node(2))))
        .header("authorization", format!("Bearer {session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::OK);
    wait_until("the front sees the revocation", Duration::from_secs(10), || async {
        verify(&fb, &session, "/").await == (StatusCode::UNAUTHORIZED, None)
    })
    .await;
    front.shutdown().await.unwrap();
    c.shutdown().await;
}
