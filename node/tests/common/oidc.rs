//! A real OpenID Connect provider for tests: `oidc_provider.py`, built on
//! Authlib's server side (Debian's `python3-authlib` and `python3-flask`,
//! which `scripts/deps.sh test` installs), started on port 0. Its
//! `/_test/` endpoints change users, keys and misbehaviours mid-test.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

/// The client Gatehouse is registered as.
pub const CLIENT_ID: &str = "gatehouse";
/// Its secret: characters that must be form-encoded in HTTP Basic.
pub const CLIENT_SECRET: &str = "s3cret/with+odd~chars:0123456789";

pub struct Provider {
    _child: tokio::process::Child,
    pub dir: tempfile::TempDir,
    pub issuer: String,
    http: reqwest::Client,
}

/// A user of the provider.
pub fn user(sub: &str, username: &str, email: &str, groups: &[&str]) -> Value {
    json!({
        "sub": sub, "username": username, "email": email, "email_verified": true,
        "groups": groups, "hd": email.rsplit_once('@').map(|(_, d)| d).unwrap_or(""), "name": username,
    })
}

impl Provider {
    /// Starts the provider with `users`; the client's redirect URI is the
    /// callback under `public_url` for provider id `id`.
    pub async fn start(users: Vec<Value>, public_url: &str, id: &str) -> Provider {
        let dir = tempfile::tempdir().unwrap();
        let config = json!({
            "clients": [{
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": [format!("{public_url}/login/sso/{id}/callback")],
            }],
            "users": users,
        });
        let path = dir.path().join("provider.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/oidc_provider.py");
        let mut child = tokio::process::Command::new("/usr/bin/python3")
            .arg(script)
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            // Its request log, for a failing test to read.
            .stderr(std::fs::File::create(dir.path().join("provider.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with authlib and flask (scripts/deps.sh test installs them)");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), tokio::io::BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("the OIDC provider starts")
            .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("the OIDC provider printed {line:?}"));
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Provider { _child: child, dir, issuer: format!("http://127.0.0.1:{port}"), http }
    }

    /// `[[sso.providers]]` for this provider, its secret written to a file.
    pub fn settings(&self, id: &str) -> gatehouse::config::ProviderSettings {
        let secret = self.dir.path().join("client-secret");
        std::fs::write(&secret, CLIENT_SECRET).unwrap();
        gatehouse::config::ProviderSettings {
            id: id.into(),
            name: "Example Corp".into(),
            issuer: self.issuer.clone(),
            client_id: CLIENT_ID.into(),
            client_secret_file: Some(secret),
            scopes: vec!["openid".into(), "email".into(), "profile".into(), "groups".into()],
            ca_file: None,
            userinfo: false,
            allowed_email_domains: vec!["example.com".into(), "example.test".into()],
            hosted_domain: None,
            allowed_groups: vec![],
            groups_claim: "groups".into(),
            username_claim: "email".into(),
            trust_unverified_email: false,
            create_users: true,
            allow_any_account: false,
            default_roles: vec![],
            roles: Default::default(),
            offboard: gatehouse::config::OffboardSetting::Disable,
            auth_params: Default::default(),
            timeout_secs: 5,
        }
    }

    /// POSTs `body` to a test control; its JSON answer.
    pub async fn control(&self, path: &str, body: Value) -> Value {
        let resp = self.http.post(format!("{}/_test/{path}", self.issuer)).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "/_test/{path}: {}", resp.status());
        resp.json().await.unwrap_or(Value::Null)
    }

    /// Sets how the next ID tokens misbehave (`normal` to stop).
    pub async fn mode(&self, mode: &str) {
        self.control("mode", json!({ "id_token": mode })).await;
    }

    /// The provider's session ids issued so far, oldest first.
    pub async fn sessions(&self) -> Vec<(String, String)> {
        let v: Value =
            self.http.get(format!("{}/_test/sessions", self.issuer)).send().await.unwrap().json().await.unwrap();
        let list = v.as_array().cloned().or_else(|| v["sessions"].as_array().cloned()).unwrap_or_default();
        list.iter().map(|s| (s["sub"].as_str().unwrap().to_string(), s["sid"].as_str().unwrap().to_string())).collect()
    }

    /// Calls per endpoint so far.
    pub async fn requests(&self) -> Value {
        self.http.get(format!("{}/_test/requests", self.issuer)).send().await.unwrap().json().await.unwrap()
    }

    /// A back-channel logout token (`kind`: normal, wrong_key, alg_none, with_nonce, no_events, expired, wrong_iss).
    pub async fn logout_token(&self, sub: Option<&str>, sid: Option<&str>, kind: &str) -> String {
        let mut body = json!({ "kind": kind });
        if let Some(s) = sub {
            body["sub"] = json!(s);
        }
        if let Some(s) = sid {
            body["sid"] = json!(s);
        }
        self.control("logout-token", body).await["logout_token"].as_str().unwrap().to_string()
    }

    /// Follows an authorization URL as `username` (`login_hint`: approved
    /// at once); the provider's redirect back (the callback URL).
    pub async fn authorize(&self, url: &str, username: &str) -> String {
        assert!(url.starts_with(&self.issuer), "to the provider: {url}");
        let resp = self.http.get(format!("{url}&login_hint={username}")).send().await.unwrap();
        assert_eq!(resp.status(), 302, "the provider approves: {}", resp.text().await.unwrap_or_default());
        resp.headers()["location"].to_str().unwrap().to_string()
    }
}
