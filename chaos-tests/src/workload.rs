//! The chaos workload: concurrent clients, each on its own seeded random
//! stream, spread over every node. They create users, keys and sessions,
//! disable and enable users, revoke keys and sessions, read them back
//! through the admin API (linearizable reads) and verify keys and session
//! cookies on the HTTP front. Every operation goes into the [`Recorder`].
//!
//! Key creates carry an `idempotency-key` (also the key's name); a create
//! whose answer was lost is retried with the same one, each retry on the
//! next node of the client's list, which is what the exactly-once checker
//! looks at: the cluster must deduplicate across nodes, not just within one.
//! A key create records the user the key is for ([`Op::owner`]).

use std::collections::HashMap;
use std::time::Duration;

use gatehouse_proto::admin::key_service_client::KeyServiceClient;
use gatehouse_proto::admin::session_service_client::SessionServiceClient;
use gatehouse_proto::admin::user_service_client::UserServiceClient;
use gatehouse_proto::admin::{
    CreateKeyRequest, CreateUserRequest, GetKeyRequest, GetSessionRequest, GetUserRequest, RevokeKeyRequest,
    RevokeSessionRequest, UpdateUserRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::history::{Kind, Op, Outcome, Recorder, Seen, Value};

/// A node as clients reach it (directly, not through the link proxies).
#[derive(Debug, Clone)]
pub struct Target {
    pub id: u64,
    pub http: String,
    pub grpc: String,
    /// A stateless front: it verifies and signs in (HTTP), and has no admin API.
    pub front: bool,
}

/// One client operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    CreateUser,
    SetStatus,
    ReadUser,
    CreateKey,
    RevokeKey,
    ReadKey,
    Login,
    RevokeSession,
    ReadSession,
    VerifyKey,
    VerifySession,
}

impl Step {
    /// What a stateless front answers too (its HTTP front); the rest goes
    /// to the voters' admin API.
    fn on_fronts(self) -> bool {
        matches!(self, Step::Login | Step::VerifyKey | Step::VerifySession)
    }
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    pub admin_key: String,
    /// Every workload user's password.
    pub password: String,
    /// A client gives up on an operation after this (a write then is unknown).
    pub op_timeout: Duration,
    /// The pause between one client's operations.
    pub think: Duration,
}

/// Runs the clients until `stop` turns true.
pub async fn run(targets: Vec<Target>, w: Workload, rec: Recorder, seed: u64, stop: watch::Receiver<bool>) {
    let mut tasks = Vec::new();
    for client in 0..w.clients {
        let c = Client::new(client, targets.clone(), w.clone(), rec.clone(), seed);
        let stop = stop.clone();
        tasks.push(tokio::spawn(c.run(stop)));
    }
    for t in tasks {
        let _ = t.await;
    }
}

struct Client {
    id: usize,
    /// Voters and fronts: where HTTP operations go.
    targets: Vec<Target>,
    /// Voters only: where admin operations (and their retries) go.
    voters: Vec<Target>,
    w: Workload,
    rec: Recorder,
    rng: StdRng,
    channels: HashMap<u64, Channel>,
    http: reqwest::Client,
    /// Usernames whose creation was acknowledged.
    users: Vec<String>,
    /// Keys created here: (id, whole key).
    keys: Vec<(String, String)>,
    /// Sessions opened here: (id, the cookie's `name=value` as the node set it).
    sessions: Vec<(String, String)>,
    seq: u64,
}

/// Where a retry goes: the target after node `previous` in `targets`
/// (wrapping), so consecutive attempts land on different nodes whenever
/// there are two or more. Deterministic: it uses no randomness, so the
/// client's seeded stream is the same whether or not a create is retried.
fn retry_target(targets: &[Target], previous: u64) -> Target {
    let at = targets.iter().position(|t| t.id == previous).unwrap_or(0);
    targets[(at + 1) % targets.len()].clone()
}

/// How an answered-or-not gRPC call ends up in the history.
fn grpc_outcome<T>(write: bool, r: Result<T, tonic::Status>, ok: impl FnOnce(T) -> Value) -> Outcome {
    match r {
        Ok(v) => Outcome::Ok(ok(v)),
        Err(s) => match s.code() {
            Code::NotFound => Outcome::Ok(Value::NotFound),
            Code::AlreadyExists => Outcome::Ok(Value::AlreadyExists(s.message().to_string())),
            Code::FailedPrecondition => Outcome::Ok(Value::Precondition),
            // Refused before anything was proposed.
            Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated | Code::ResourceExhausted => {
                Outcome::Fail(format!("{:?}: {}", s.code(), s.message()))
            }
            // Nothing was sent: the node's port was closed (it is down).
            Code::Unavailable if format!("{s:?}").contains("Connection refused") => {
                Outcome::Fail("connection refused".into())
            }
            // The answer is lost: a write may have happened.
            _ if write => Outcome::Unknown(format!("{:?}: {}", s.code(), s.message())),
            _ => Outcome::Fail(format!("{:?}: {}", s.code(), s.message())),
        },
    }
}

/// A user's state from its admin API `status` field.
pub(crate) fn user_state(status: &str) -> Seen {
    if status == "disabled" {
        Seen::Disabled
    } else {
        Seen::Active
    }
}

impl Client {
    fn new(id: usize, targets: Vec<Target>, w: Workload, rec: Recorder, seed: u64) -> Client {
        let http = reqwest::Client::builder().timeout(w.op_timeout).build().expect("an HTTP client builds");
        Client {
            id,
            voters: targets.iter().filter(|t| !t.front).cloned().collect(),
            targets,
            w,
            rec,
            rng: StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            channels: HashMap::new(),
            http,
            users: Vec::new(),
            keys: Vec::new(),
            sessions: Vec::new(),
            seq: 0,
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            self.step().await;
            tokio::select! {
                _ = tokio::time::sleep(self.w.think) => {}
                _ = stop.changed() => {}
            }
        }
    }

    fn channel(&mut self, node: &Target) -> Channel {
        let timeout = self.w.op_timeout;
        self.channels
            .entry(node.id)
            .or_insert_with(|| {
                Endpoint::from_shared(format!("http://{}", node.grpc))
                    .expect("a valid address")
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(timeout)
                    .connect_lazy()
            })
            .clone()
    }

    /// Every admin call asks for linearizable consistency: a node that cannot
    /// catch up with the leader refuses (`UNAVAILABLE`) instead of deciding
    /// from a state that may be stale (a write's checks read it too).
    fn request<T>(&self, msg: T, idempotency: Option<&str>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.w.op_timeout);
        let meta = r.metadata_mut();
        meta.insert("authorization", format!("Bearer {}", self.w.admin_key).parse().expect("ascii"));
        if let Some(k) = idempotency {
            meta.insert("idempotency-key", k.parse().expect("ascii"));
        }
        meta.insert("gatehouse-consistency", "linearizable".parse().expect("ascii"));
        r
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.rng.gen_range(0..from.len())].clone())
    }

    /// One operation, chosen by weight among those possible now.
    async fn step(&mut self) {
        let node = self.targets[self.rng.gen_range(0..self.targets.len())].clone();
        let roll = self.rng.gen_range(0..100);
        let has_users = !self.users.is_empty();
        let has_keys = !self.keys.is_empty();
        let has_sessions = !self.sessions.is_empty();
        let op = match roll {
            _ if !has_users => Step::CreateUser,
            0..=5 => Step::CreateUser,
            6..=9 => Step::SetStatus,
            10..=17 => Step::ReadUser,
            18..=29 => Step::CreateKey,
            30..=36 if has_keys => Step::RevokeKey,
            37..=44 if has_keys => Step::ReadKey,
            45..=51 => Step::Login,
            52..=56 if has_sessions => Step::RevokeSession,
            57..=63 if has_sessions => Step::ReadSession,
            64..=84 if has_keys => Step::VerifyKey,
            85..=99 if has_sessions => Step::VerifySession,
            _ => Step::ReadUser,
        };
        // An admin operation drawn for a front goes to a voter instead.
        let node = if node.front && !op.on_fronts() {
            self.voters[self.rng.gen_range(0..self.voters.len())].clone()
        } else {
            node
        };
        match op {
            Step::CreateUser => self.create_user(&node).await,
            Step::SetStatus => self.set_status(&node).await,
            Step::ReadUser => self.read_user(&node).await,
            Step::CreateKey => self.create_key(&node).await,
            Step::RevokeKey => self.revoke_key(&node).await,
            Step::ReadKey => self.read_key(&node).await,
            Step::Login => self.login(&node).await,
            Step::RevokeSession => self.revoke_session(&node).await,
            Step::ReadSession => self.read_session(&node).await,
            Step::VerifyKey => self.verify_key(&node).await,
            Step::VerifySession => self.verify_session(&node).await,
        }
    }

    fn record(&self, node: u64, kind: Kind, target: String, invoke: u64, outcome: Outcome) {
        self.record_owned(node, kind, target, None, invoke, outcome);
    }

    /// Like [`Client::record`], naming the user the object belongs to.
    fn record_owned(
        &self,
        node: u64,
        kind: Kind,
        target: String,
        owner: Option<String>,
        invoke: u64,
        outcome: Outcome,
    ) {
        let complete = self.rec.now();
        self.rec.record(Op { client: self.id, node, kind, target, owner, invoke, complete, outcome });
    }

    async fn create_user(&mut self, node: &Target) {
        self.seq += 1;
        let username = format!("c{}-u{}", self.id, self.seq);
        let msg = CreateUserRequest {
            username: username.clone(),
            email: format!("{username}@chaos.test"),
            roles: vec!["viewer".into()],
            password: self.w.password.clone(),
        };
        let req = self.request(msg, None);
        let mut users = UserServiceClient::new(self.channel(node));
        let invoke = self.rec.now();
        let outcome = grpc_outcome(true, users.create(req).await, |u| Value::Created(u.into_inner().id));
        if matches!(outcome, Outcome::Ok(Value::Created(_))) {
            self.users.push(username.clone());
        }
        self.record(node.id, Kind::CreateUser, username, invoke, outcome);
    }

    async fn set_status(&mut self, node: &Target) {
        let Some(user) = self.pick(&self.users.clone()) else { return };
        let disable = self.rng.gen_bool(0.5);
        let msg = UpdateUserRequest {
            user: user.clone(),
            status: if disable { "disabled" } else { "active" }.into(),
            ..Default::default()
        };
        let req = self.request(msg, None);
        let mut users = UserServiceClient::new(self.channel(node));
        let invoke = self.rec.now();
        let outcome = grpc_outcome(true, users.update(req).await, |_| Value::Done);
        let kind = if disable { Kind::DisableUser } else { Kind::EnableUser };
        self.record(node.id, kind, user, invoke, outcome);
    }

    async fn read_user(&mut self, node: &Target) {
        // Sometimes a name that may never have been created.
        let user = match self.pick(&self.users.clone()) {
            Some(u) if self.rng.gen_bool(0.9) => u,
            _ => format!("c{}-u{}", self.id, self.seq + 1),
        };
        let req = self.request(GetUserRequest { user: user.clone() }, None);
        let mut users = UserServiceClient::new(self.channel(node));
        let invoke = self.rec.now();
        let outcome =
            match grpc_outcome(false, users.get(req).await, |u| Value::Read(user_state(&u.into_inner().status))) {
                Outcome::Ok(Value::NotFound) => Outcome::Ok(Value::Read(Seen::Absent)),
                o => o,
            };
        self.record(node.id, Kind::ReadUser, user, invoke, outcome);
    }

    async fn create_key(&mut self, node: &Target) {
        let Some(user) = self.pick(&self.users.clone()) else { return };
        self.seq += 1;
        let name = format!("c{}-k{}", self.id, self.seq);
        // A lost answer is retried with the same idempotency key, a few
        // times, each time on another node.
        let mut node = node.clone();
        for attempt in 0..3 {
            if attempt > 0 {
                node = retry_target(&self.voters, node.id);
            }
            let msg = CreateKeyRequest { user: user.clone(), name: name.clone(), ..Default::default() };
            let req = self.request(msg, Some(&name));
            let mut keys = KeyServiceClient::new(self.channel(&node));
            let invoke = self.rec.now();
            let r = keys.create(req).await.map(|r| r.into_inner());
            let secret = r.as_ref().ok().map(|k| k.secret.clone());
            let outcome = grpc_outcome(true, r, |k| Value::Created(k.key.map(|k| k.id).unwrap_or_default()));
            let outcome = match outcome {
                // The retry names the key its first attempt created.
                Outcome::Ok(Value::AlreadyExists(msg)) => Outcome::Ok(Value::AlreadyExists(key_id_in(&msg))),
                o => o,
            };
            match (&outcome, secret) {
                (Outcome::Ok(Value::Created(id)), Some(secret)) => self.keys.push((id.clone(), secret)),
                // Made by an attempt whose answer was lost: read and revoked
                // like the others, never verified (its secret is gone).
                (Outcome::Ok(Value::AlreadyExists(id)), _) if !id.is_empty() => {
                    self.keys.push((id.clone(), String::new()))
                }
                _ => {}
            }
            let retry = matches!(outcome, Outcome::Unknown(_));
            self.record_owned(node.id, Kind::CreateKey, name.clone(), Some(user.clone()), invoke, outcome);
            if !retry {
                return;
            }
        }
    }

    async fn revoke_key(&mut self, node: &Target) {
        let Some((id, _)) = self.pick(&self.keys.clone()) else { return };
        let req = self.request(RevokeKeyRequest { id: id.clone(), wait_all: false }, None);
        let mut keys = KeyServiceClient::new(self.channel(node));
        let invoke = self.rec.now();
        let outcome = grpc_outcome(true, keys.revoke(req).await, |_| Value::Done);
        self.record(node.id, Kind::RevokeKey, id, invoke, outcome);
    }

    async fn read_key(&mut self, node: &Target) {
        let Some((id, _)) = self.pick(&self.keys.clone()) else { return };
        let req = self.request(GetKeyRequest { id: id.clone() }, None);
        let mut keys = KeyServiceClient::new(self.channel(node));
        let invoke = self.rec.now();
        let outcome = grpc_outcome(false, keys.get(req).await, |k| {
            Value::Read(if k.into_inner().revoked_at != 0 { Seen::Revoked } else { Seen::Active })
        });
        let outcome = match outcome {
            Outcome::Ok(Value::NotFound) => Outcome::Ok(Value::Read(Seen::Absent)),
            o => o,
        };
        self.record(node.id, Kind::ReadKey, id, invoke, outcome);
    }

    async fn login(&mut self, node: &Target) {
        let Some(user) = self.pick(&self.users.clone()) else { return };
        let invoke = self.rec.now();
        let resp = self
            .http
            .post(format!("http://{}/api/v1/login", node.http))
            .header("x-requested-with", "gatehouse-chaos")
            .json(&serde_json::json!({ "username": user, "password": self.w.password }))
            .send()
            .await;
        let outcome = match resp {
            Ok(r) if r.status() == 200 => {
                let cookie = r
                    .headers()
                    .get("set-cookie")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .filter(|pair| pair.contains('='))
                    .map(str::to_string);
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                match (body["session_id"].as_str(), cookie) {
                    (Some(id), Some(token)) => {
                        self.sessions.push((id.to_string(), token));
                        Outcome::Ok(Value::Created(id.to_string()))
                    }
                    _ => Outcome::Unknown("a 200 without a session".into()),
                }
            }
            // Refused (disabled user: 401/403), or locked out: no session.
            Ok(r) if r.status().is_client_error() => Outcome::Fail(format!("HTTP {}", r.status())),
            Ok(r) => Outcome::Unknown(format!("HTTP {}", r.status())),
            Err(e) if e.is_connect() => Outcome::Fail(format!("not sent: {e}")),
            Err(e) => Outcome::Unknown(e.to_string()),
        };
        self.record(node.id, Kind::Login, user, invoke, outcome);
    }

    async fn revoke_session(&mut self, node: &Target) {
        let Some((id, _)) = self.pick(&self.sessions.clone()) else { return };
        let req = self.request(RevokeSessionRequest { id: id.clone(), wait_all: false }, None);
        let mut sessions = SessionServiceClient::new(self.channel(node));
        let invoke = self.rec.now();
        let outcome = grpc_outcome(true, sessions.revoke(req).await, |_| Value::Done);
        self.record(node.id, Kind::RevokeSession, id, invoke, outcome);
    }

    async fn read_session(&mut self, node: &Target) {
        let Some((id, _)) = self.pick(&self.sessions.clone()) else { return };
        let req = self.request(GetSessionRequest { id: id.clone() }, None);
        let mut sessions = SessionServiceClient::new(self.channel(node));
        let invoke = self.rec.now();
        let outcome = match grpc_outcome(false, sessions.get(req).await, |_| Value::Read(Seen::Active)) {
            Outcome::Ok(Value::NotFound) => Outcome::Ok(Value::Read(Seen::Absent)),
            o => o,
        };
        self.record(node.id, Kind::ReadSession, id, invoke, outcome);
    }

    async fn verify(&self, node: &Target, kind: Kind, target: String, req: reqwest::RequestBuilder) {
        let invoke = self.rec.now();
        let outcome = match req.send().await {
            Ok(r) => Outcome::Ok(Value::Status(r.status().as_u16())),
            Err(e) => Outcome::Fail(e.to_string()),
        };
        self.record(node.id, kind, target, invoke, outcome);
    }

    async fn verify_key(&mut self, node: &Target) {
        let Some((id, key)) = self.pick(&self.keys.clone()) else { return };
        if key.is_empty() {
            return;
        }
        let req = self.http.get(format!("http://{}/auth/verify", node.http)).bearer_auth(key);
        self.verify(node, Kind::VerifyKey, id, req).await;
    }

    async fn verify_session(&mut self, node: &Target) {
        let Some((id, cookie)) = self.pick(&self.sessions.clone()) else { return };
        let req = self.http.get(format!("http://{}/auth/verify", node.http)).header("cookie", cookie);
        self.verify(node, Kind::VerifySession, id, req).await;
    }
}

/// The key id in a retried create's `ALREADY_EXISTS` message
/// (`… already created key <id>; its secret …`).
fn key_id_in(msg: &str) -> String {
    msg.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_hexdigit()))
        .find(|w| w.len() == 16 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: u64) -> Target {
        Target { id, http: format!("h{id}"), grpc: format!("g{id}"), front: false }
    }

    #[test]
    fn a_retry_goes_to_the_next_node_wrapping() {
        let targets = vec![target(1), target(2), target(3)];
        assert_eq!(retry_target(&targets, 1).id, 2);
        assert_eq!(retry_target(&targets, 3).id, 1);
        // Three attempts from any node visit three different nodes.
        for first in 1..=3 {
            let second = retry_target(&targets, first).id;
            let third = retry_target(&targets, second).id;
            assert!(first != second && second != third && third != first);
        }
        assert_eq!(retry_target(&[target(7)], 7).id, 7);
    }

    #[test]
    fn the_key_id_is_read_from_the_servers_already_exists_message() {
        let msg = "this idempotency-key already created key 0123456789abcdef; its secret was shown once, to that call";
        assert_eq!(key_id_in(msg), "0123456789abcdef");
        assert_eq!(key_id_in("username \"c1-u3\" is taken"), "");
    }
}
