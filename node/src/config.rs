//! One typed configuration: TOML file, then `GATEHOUSE_*` environment
//! overrides (nested keys with `__`, e.g. `GATEHOUSE_RAFT__HEARTBEAT_MS`),
//! and `*_file` variants for secrets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use gatehouse_cluster::peers::is_loopback_addr;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One node on loopback, self-initialising, plain cookies allowed.
    Dev,
    /// Refuses insecure settings.
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// A secret from the configuration: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

/// A member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    /// Where peers reach the member (its `advertise_addr`), `host:port`.
    pub addr: String,
    /// Where clients reach its admin API (its `advertise_client_addr`),
    /// when that is another address.
    #[serde(default)]
    pub client_addr: Option<String>,
}

impl Member {
    /// The member as the membership records it.
    pub fn member(&self) -> gatehouse_storage::Member {
        gatehouse_storage::Member::split(self.addr.clone(), self.client_addr.clone().unwrap_or_default())
    }
}

/// Raft timing and log compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// Leader heartbeat period. openraft 0.9 also uses it as the timeout of
    /// every AppendEntries (replication, heartbeats, read-index
    /// confirmations), so it must exceed the slowest round trip between nodes.
    pub heartbeat_ms: u64,
    /// A follower that heard nothing for `election_timeout_max_ms` (openraft's
    /// leader lease) plus a random time in [min, max] starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub keep_behind_snapshot: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        // A leader that dies is replaced about 450 ms after its last
        // heartbeat: the election pacer (gatehouse_cluster::election) campaigns
        // half a heartbeat after the 400 ms lease, once a majority has heard
        // nothing for that long; openraft's own timer (the lease plus
        // 200-400 ms) is the fallback. Failover stays well under a second and
        // inside the 2 s staleness bound. openraft sends heartbeats on a tick
        // of 1.5 intervals, so the lease spans two and a half of them; round
        // trips up to 100 ms between nodes are tolerated.
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            snapshot_every: 10_000,
            keep_behind_snapshot: 1_000,
        }
    }
}

/// A forward-auth route rule (`[[identity.routes]]`): the HTTP front's own type.
pub use gatehouse_api::http::RouteRule;

mod jwt;
mod mfa;
mod pages;
mod proxy;
mod sso;
pub use jwt::JwtSettings;
pub use mfa::{MfaSettings, PasskeySettings};
pub use pages::{MailSettings, MailTlsSetting, PagesSettings};
pub use proxy::{HeaderNames, ProxySettings, UpstreamSettings};
pub use sso::{KeySettings, OffboardSetting, ProviderSettings, SecretsSettings, SsoSettings};

/// Sessions, logins and forward-auth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The session cookie's base name; outside dev mode it is sent as
    /// `__Host-<name>`, or `__Secure-<name>` with `cookie_domain`.
    pub cookie_name: String,
    /// Share the session cookie with subdomains of this domain (a sign-in
    /// host serving several apps); unset, the cookie stays on its host.
    pub cookie_domain: Option<String>,
    /// Absolute session lifetime.
    pub session_ttl_secs: u64,
    /// A session unused this long ends (0 = never).
    pub session_idle_secs: u64,
    /// How often a node flushes the last-use times it saw (bounds the idle timeout's slack).
    pub touch_flush_ms: u64,
    /// Failed logins within `lockout_window_secs` from one client address
    /// (an IPv6 /64) that lock that address out of the account for
    /// `lockout_secs`, doubled for each lockout in a row (up to 64×).
    pub lockout_threshold: u32,
    /// Failed logins from all addresses together that lock the account
    /// itself (at least `lockout_threshold`).
    pub lockout_user_threshold: u32,
    pub lockout_window_secs: u64,
    pub lockout_secs: u64,
    /// argon2id hashes running at once (each takes ~19 MiB and one core for ~25 ms).
    pub password_workers: usize,
    /// Logins allowed to wait for a worker before new ones get 503 `busy`.
    pub password_queue: usize,
    pub routes: Vec<RouteRule>,
    /// Origins whose web apps may call the JSON API from a browser, with
    /// the session cookie (`https://app.example.com`); `*` in dev mode only.
    pub cors_origins: Vec<String>,
    /// Take a session only from the address bucket (an IPv4 address, an
    /// IPv6 /64) and the user agent it began with: a stolen cookie used
    /// elsewhere is refused (and so is a person whose address changed).
    pub bind_sessions: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            cookie_name: "gatehouse_session".into(),
            cookie_domain: None,
            session_ttl_secs: 12 * 3600,
            session_idle_secs: 3600,
            touch_flush_ms: 5_000,
            lockout_threshold: 5,
            lockout_user_threshold: 20,
            lockout_window_secs: 15 * 60,
            lockout_secs: 15 * 60,
            // Leave a core for verification on small machines.
            password_workers: std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
            password_queue: 64,
            routes: Vec::new(),
            cors_origins: Vec::new(),
            bind_sessions: false,
        }
    }
}

/// `[https]`: the HTTP front over TLS (rustls; TLS 1.2 and 1.3 only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsConfig {
    /// The front's certificate chain (PEM, leaf first). Reloaded without a
    /// restart on SIGHUP and when the files change.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// Offer HTTP/2 by ALPN beside HTTP/1.1.
    #[serde(default = "HttpsConfig::default_http2")]
    pub http2: bool,
    /// `Strict-Transport-Security: max-age=…` on every response; 0 sends none.
    #[serde(default = "HttpsConfig::default_hsts")]
    pub hsts_max_age_secs: u64,
    /// Add `includeSubDomains` to it.
    #[serde(default)]
    pub hsts_include_subdomains: bool,
}

impl HttpsConfig {
    fn default_http2() -> bool {
        true
    }

    fn default_hsts() -> u64 {
        365 * 24 * 3600
    }

    /// The `Strict-Transport-Security` value, if any.
    pub fn hsts_header(&self) -> Option<axum::http::HeaderValue> {
        if self.hsts_max_age_secs == 0 {
            return None;
        }
        let sub = if self.hsts_include_subdomains { "; includeSubDomains" } else { "" };
        axum::http::HeaderValue::from_str(&format!("max-age={}{sub}", self.hsts_max_age_secs)).ok()
    }
}

/// `[cluster_tls]`: mutual TLS on the peer listener and on every
/// connection to a peer (see docs/tls.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// The cluster's CA bundle (PEM; old and new CA during a CA rotation).
    pub ca_file: PathBuf,
    /// This node's certificate: it must bind this node's id
    /// (`gatehouse-node-<node_id>`). Reloaded on change and SIGHUP.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Serial numbers (hex) refused even on valid certificates: a stolen
    /// node certificate is evicted before it expires.
    #[serde(default)]
    pub deny_serials: Vec<String>,
    /// More serials refused, one per line (`#` comments): re-read on change
    /// and SIGHUP, so a stolen certificate is evicted without a restart.
    #[serde(default)]
    pub deny_file: Option<PathBuf>,
}

/// `[admin_tls]`: the admin API (`grpc_addr`) over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsConfig {
    /// The certificate clients verify (the node's own will do: it names the
    /// node's host names). Reloaded on change and SIGHUP.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle for admin callers' client certificates; unset: none asked.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Refuse callers without a client certificate from `client_ca_file`
    /// (the API key is still required on every call).
    #[serde(default)]
    pub require_client_cert: bool,
}

/// OpenTelemetry trace export. The standard variables win over the file:
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
/// `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; unset (and no
    /// variable set) = no export.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// Share of new traces sampled (0.0–1.0); a sampled parent is always followed.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp_endpoint: None, service_name: "gatehouse".into(), sample_ratio: 1.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node_id: u64,
    pub mode: Mode,
    pub data_dir: PathBuf,
    /// HTTP front listener.
    pub http_addr: SocketAddr,
    /// The client gRPC listener: the admin API (and Raft between nodes
    /// too, unless `peer_addr` gives peers a listener of their own).
    pub grpc_addr: SocketAddr,
    /// The peer listener: Raft and control RPCs between nodes, so a
    /// firewall can open it to the voters only.
    pub peer_addr: Option<SocketAddr>,
    /// A separate listener for `GET /metrics` (the way to expose metrics in
    /// production).
    pub metrics_addr: Option<SocketAddr>,
    /// Envoy's ext_authz (and rate-limit) gRPC services, on a listener of
    /// their own (docs/envoy.md). Unset: not served.
    pub ext_authz_addr: Option<SocketAddr>,
    /// The secret Envoy's calls must carry (`x-gatehouse-envoy-secret`, set
    /// with Envoy's `initial_metadata`), one per line during a rotation;
    /// re-read every 5 s and on SIGHUP. Required in production.
    pub ext_authz_secret_file: Option<PathBuf>,
    /// Serve `GET /metrics` on the HTTP front too. Unset: yes in dev mode,
    /// no in production (a public front should not show its internals).
    pub metrics_on_front: Option<bool>,
    /// `[http]`: the HTTP front listener's limits (header-read timeout,
    /// connection cap, HTTP/2 streams).
    pub http: gatehouse_api::http::serve::ServeLimits,
    /// `[https]`: serve the HTTP front over TLS.
    pub https: Option<HttpsConfig>,
    /// `[cluster_tls]`: mutual TLS between nodes (needs `peer_addr`).
    pub cluster_tls: Option<ClusterTlsConfig>,
    /// `[admin_tls]`: the admin API over TLS.
    pub admin_tls: Option<AdminTlsConfig>,
    /// Production: serve plain HTTP off loopback because a TLS-terminating
    /// proxy stands in front (and nothing else can reach `http_addr`).
    pub http_behind_tls_proxy: bool,
    /// The address other nodes use to reach this one; defaults to the bound
    /// `peer_addr`, or `grpc_addr` without one.
    pub advertise_addr: Option<String>,
    /// The address clients use for the admin API (the leader an
    /// `UNAVAILABLE` names, `cluster status`); defaults to the bound `grpc_addr`.
    pub advertise_client_addr: Option<String>,
    /// `[peer_routes]`: dial a peer's advertised gRPC address through another
    /// address (`"10.0.0.2:9090" = "127.0.0.1:7002"`): an SSH tunnel, a
    /// sidecar, or the chaos tests' fault proxy on each link.
    pub peer_routes: std::collections::BTreeMap<String, String>,
    /// Shared secret of the cluster's Raft RPCs (at least 32 characters).
    pub cluster_secret: Option<Secret>,
    pub cluster_secret_file: Option<PathBuf>,
    /// Initialise a new cluster with `initial_members` if this node's store is empty.
    /// Set on exactly one node.
    pub initialize: bool,
    pub initial_members: Vec<Member>,
    /// On the initialising node: write the first admin API key to this file
    /// (created with mode 0600, never overwritten, never logged).
    pub bootstrap_admin_key_file: Option<PathBuf>,
    /// Past this without proof of freshness, the node refuses credentials (503).
    pub max_staleness_ms: u64,
    pub log_format: LogFormat,
    pub telemetry: TelemetryConfig,
    pub raft: RaftTuning,
    pub identity: IdentityConfig,
    /// `[pages]`: the sign-in pages.
    pub pages: PagesSettings,
    /// `[mail]`: the SMTP server sign-in links go through (voters).
    pub mail: Option<MailSettings>,
    /// `[sso]`: signing in through upstream OIDC providers.
    pub sso: SsoSettings,
    /// `[secrets]`: the keys that seal secrets at rest (voters).
    pub secrets: SecretsSettings,
    /// `[mfa]`: second factors.
    pub mfa: MfaSettings,
    /// `[jwt]`: a signed token for the app with every allowed request.
    pub jwt: Option<JwtSettings>,
    /// `[proxy]`: reverse-proxy mode on a listener of its own.
    pub proxy: Option<ProxySettings>,
    /// `[rate_limits]`: cluster-wide limits (see docs/rate-limits-and-audit.md).
    pub rate_limits: gatehouse_api::rate_limit::LimitsConfig,
    /// `[audit]`: buffering and retention of the audit log.
    pub audit: gatehouse_api::audit::AuditConfig,
    /// On a voter: the stateless fronts it serves, one `<front id> <sha256
    /// of its secret>` per line (`gatehouse front secret` prints one);
    /// re-read every 5 s and on SIGHUP. Unset: no front is served.
    pub fronts_file: Option<PathBuf>,
    /// `[front]`: this process is a stateless front (`gatehouse front`).
    pub front: Option<FrontSection>,
}

/// `[front]`: what a stateless front needs to follow the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontSection {
    /// The voters' peer addresses, each `id@host:port` (the id is required
    /// with TLS: only that node's certificate is taken at that address) or
    /// `host:port`: the front follows one and moves on to the next when it fails.
    pub voters: Vec<String>,
    /// The front's own secret (at least 32 characters), or its file.
    #[serde(default)]
    pub secret: Option<Secret>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Mutual TLS to the voters (their peer listener with `[cluster_tls]`):
    /// this front's certificate (`gatehouse tls issue-front`, binding
    /// `gatehouse-front-<id>`), its key, and the cluster's CA bundle.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Voter certificates this front refuses, by serial, and a file of them
    /// (re-read every 5 s and on SIGHUP), as `[cluster_tls]` has them.
    #[serde(default)]
    pub deny_serials: Vec<String>,
    #[serde(default)]
    pub deny_file: Option<PathBuf>,
}

impl FrontSection {
    /// The voters as (node id, address) pairs; errors name the entry.
    pub fn voter_list(&self) -> Result<Vec<(Option<u64>, String)>, ConfigError> {
        self.voters
            .iter()
            .map(|v| match v.split_once('@') {
                Some((id, addr)) => match id.parse::<u64>() {
                    Ok(id) if id > 0 && !addr.is_empty() => Ok((Some(id), addr.to_string())),
                    _ => Err(ConfigError::Invalid(format!(
                        "front.voters: {v:?} is not `<node id>@host:port` with a positive id"
                    ))),
                },
                None => Ok((None, v.clone())),
            })
            .collect()
    }

    /// Whether the front dials its voters over mutual TLS.
    pub fn tls(&self) -> bool {
        self.cert_file.is_some()
    }

    /// The front's secret, from the config or its file.
    pub fn read_secret(&self) -> Result<String, ConfigError> {
        match (&self.secret, &self.secret_file) {
            (_, Some(path)) => read_secret_file(path).map(|s| s.trim().to_string()),
            (Some(s), None) => Ok(s.expose().trim().to_string()),
            (None, None) => Err(ConfigError::Invalid("set front.secret or front.secret_file".into())),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            mode: Mode::Production,
            data_dir: PathBuf::from("./gatehouse-data"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            peer_addr: None,
            metrics_addr: None,
            ext_authz_addr: None,
            ext_authz_secret_file: None,
            metrics_on_front: None,
            http: Default::default(),
            https: None,
            cluster_tls: None,
            admin_tls: None,
            http_behind_tls_proxy: false,
            advertise_addr: None,
            advertise_client_addr: None,
            peer_routes: Default::default(),
            cluster_secret: None,
            cluster_secret_file: None,
            initialize: false,
            initial_members: Vec::new(),
            bootstrap_admin_key_file: None,
            max_staleness_ms: 2_000,
            log_format: LogFormat::Human,
            telemetry: TelemetryConfig::default(),
            raft: RaftTuning::default(),
            identity: IdentityConfig::default(),
            pages: PagesSettings::default(),
            mail: None,
            sso: SsoSettings::default(),
            secrets: SecretsSettings::default(),
            mfa: MfaSettings::default(),
            jwt: None,
            proxy: None,
            rate_limits: Default::default(),
            audit: Default::default(),
            fronts_file: None,
            front: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Largest secret file read (a few secrets of a few hundred bytes each).
const MAX_SECRET_FILE: u64 = 64 << 10;

/// A secret file's text, read once and bounded: a wrong path to a large
/// file fails instead of filling memory, and only a regular file (or a link
/// to one) is opened (a FIFO would block the reload loop in `open`). Errors
/// name the file and the cause, never the content.
pub fn read_secret_file(path: &std::path::Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read = |source| ConfigError::Read { path: path.to_path_buf(), source };
    if !std::fs::metadata(path).map_err(read)?.is_file() {
        return Err(read(std::io::Error::other("not a regular file")));
    }
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    file.take(MAX_SECRET_FILE + 1).read_to_string(&mut text).map_err(read)?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(read(std::io::Error::other(format!("larger than {MAX_SECRET_FILE} bytes: not a secret file"))));
    }
    Ok(text)
}

/// The top-level keys, for filtering the environment.
const KEYS: [&str; 39] = [
    "identity",
    "mfa",
    "jwt",
    "proxy",
    "pages",
    "mail",
    "sso",
    "secrets",
    "rate_limits",
    "audit",
    "node_id",
    "mode",
    "data_dir",
    "http_addr",
    "grpc_addr",
    "peer_addr",
    "metrics_addr",
    "metrics_on_front",
    "http",
    "https",
    "cluster_tls",
    "admin_tls",
    "http_behind_tls_proxy",
    "advertise_addr",
    "advertise_client_addr",
    "peer_routes",
    "cluster_secret",
    "cluster_secret_file",
    "initialize",
    "initial_members",
    "bootstrap_admin_key_file",
    "max_staleness_ms",
    "log_format",
    "telemetry",
    "raft",
    "fronts_file",
    "front",
    "ext_authz_addr",
    "ext_authz_secret_file",
];

impl Config {
    /// Reads `file` (if any), then the `GATEHOUSE_*` environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_over(Config::default(), file)
    }

    /// The dev node's settings, with `GATEHOUSE_*` overrides (e.g. other ports).
    pub fn load_dev() -> Result<Config, ConfigError> {
        Self::load_over(Config::dev(), None)
    }

    fn load_over(base: Config, file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(base));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Invalid(format!("config file {} does not exist", f.display())));
            }
            fig = fig.merge(Toml::file(f));
        }
        // Only keys of this struct: the CLI's and scripts' GATEHOUSE_* variables
        // (GATEHOUSE_ENDPOINT, GATEHOUSE_TOKEN, …) share the prefix.
        let top = |k: &str| k.split("__").next().and_then(|k| k.split('.').next()).unwrap_or("").to_ascii_lowercase();
        let env = Env::prefixed("GATEHOUSE_").filter(move |k| KEYS.contains(&top(k.as_str()).as_str())).split("__");
        fig = fig.merge(env);
        let config: Config = fig.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// The dev node: one member, data in `./gatehouse-data`, self-initialising.
    pub fn dev() -> Config {
        Config { mode: Mode::Dev, initialize: true, ..Config::default() }
    }

    /// Whether the HTTP front serves `GET /metrics` (see `metrics_on_front`).
    pub fn metrics_on_front(&self) -> bool {
        self.metrics_addr.is_none() && self.metrics_on_front.unwrap_or(self.mode == Mode::Dev)
    }

    pub fn max_staleness(&self) -> Duration {
        Duration::from_millis(self.max_staleness_ms)
    }

    /// The cluster secret from the config, or its file: one secret per
    /// line, the first sent and each accepted (see `ClusterSecret`).
    pub fn read_cluster_secret(&self) -> Result<Option<String>, ConfigError> {
        if let Some(path) = &self.cluster_secret_file {
            return read_secret_file(path).map(Some);
        }
        Ok(self.cluster_secret.as_ref().map(|s| s.expose().to_string()))
    }

    /// The checks a voter's and a front's settings share: the HTTP front,
    /// identity, limits, audit buffering, telemetry.
    fn validate_serving(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        self.rate_limits.validate().map_err(ConfigError::Invalid)?;
        self.http.validate().map_err(ConfigError::Invalid)?;
        if let Some(h) = &self.https {
            if self.http_behind_tls_proxy {
                return bad("set [https] or http_behind_tls_proxy = true, not both");
            }
            if h.hsts_max_age_secs > 2 * 365 * 24 * 3600 {
                return bad("https.hsts_max_age_secs is at most two years");
            }
        }
        if self.metrics_on_front == Some(true) && self.metrics_addr.is_some() {
            return bad("set metrics_addr or metrics_on_front = true, not both");
        }
        self.audit.validate().map_err(ConfigError::Invalid)?;
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return bad("telemetry.sample_ratio must be between 0.0 and 1.0");
        }
        let id = &self.identity;
        if id.session_ttl_secs == 0 || id.lockout_threshold == 0 || id.lockout_window_secs == 0 || id.lockout_secs == 0
        {
            return bad("identity: session_ttl_secs and the lockout settings must be positive");
        }
        if id.lockout_user_threshold < id.lockout_threshold {
            return bad("identity.lockout_user_threshold must be at least lockout_threshold");
        }
        if id.cookie_name.is_empty()
            || !id.cookie_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return bad("identity.cookie_name must be letters, digits, '_' or '-'");
        }
        if let Some(d) = &id.cookie_domain {
            let host = gatehouse_api::http::forwarded::normalise_host(d);
            if host.as_deref() != Some(d.as_str()) || d.starts_with('[') || d.parse::<std::net::Ipv4Addr>().is_ok() {
                return bad("identity.cookie_domain must be a lower-case domain name without port");
            }
        }
        for r in &id.routes {
            r.validate().map_err(ConfigError::Invalid)?;
        }
        if self.mode == Mode::Production && self.ext_authz_addr.is_some() && self.ext_authz_secret_file.is_none() {
            // Any process on the machine could otherwise ask on a client's
            // behalf, as any address: fill its limits, forge its audit address.
            return bad("production mode requires ext_authz_secret_file with ext_authz_addr (docs/envoy.md)");
        }
        if self.mode == Mode::Production && self.ext_authz_addr.is_some_and(|a| !a.ip().is_loopback()) {
            // Envoy sends every request's credentials: in plaintext only to
            // a sidecar on this machine.
            return bad("production mode refuses ext_authz in plaintext off loopback (ext_authz_addr): run Envoy \
                 beside each node and bind ext_authz_addr to loopback");
        }
        if self.mode == Mode::Production {
            // Logins and bearer keys cross the front: in plaintext only on
            // this machine, or from a proxy that terminated TLS.
            if self.https.is_none() && !self.http_addr.ip().is_loopback() && !self.http_behind_tls_proxy {
                return Err(ConfigError::Invalid(format!(
                    "the HTTP front would take passwords and keys in plaintext on {}: configure [https], or set \
                     http_behind_tls_proxy = true when a TLS-terminating proxy is the only way in",
                    self.http_addr
                )));
            }
        }
        Ok(())
    }

    /// A front's settings (`gatehouse front`): `[front]`, and nothing of a voter's.
    fn validate_front(&self, front: &FrontSection) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if front.voters.is_empty() {
            return bad("front.voters must name at least one voter's peer address");
        }
        if front.voters.len() > 64 {
            return bad("front.voters lists at most 64 voters");
        }
        if front.secret.is_some() == front.secret_file.is_some() {
            return bad("set front.secret or front.secret_file (one of them)");
        }
        if self.initialize
            || !self.initial_members.is_empty()
            || self.cluster_secret.is_some()
            || self.cluster_secret_file.is_some()
            || self.fronts_file.is_some()
            || self.peer_addr.is_some()
        {
            return bad("a front is no voter: remove initialize, initial_members, cluster_secret(_file), \
                 fronts_file and peer_addr from its configuration");
        }
        if self.max_staleness_ms < 100 {
            return bad("max_staleness_ms must be at least 100");
        }
        let tls = [&front.cert_file, &front.key_file, &front.ca_file].map(Option::is_some);
        if tls.iter().any(|t| *t) && !tls.iter().all(|t| *t) {
            return bad("front.cert_file, front.key_file and front.ca_file go together");
        }
        let voters = front.voter_list()?;
        if front.tls() && voters.iter().any(|(id, _)| id.is_none()) {
            // Any node certificate of the CA would do at an address otherwise:
            // a removed node's, one that moved there.
            return bad("with front.cert_file, every voter is `<node id>@host:port`");
        }
        if !front.tls() && (!front.deny_serials.is_empty() || front.deny_file.is_some()) {
            return bad("front.deny_serials and front.deny_file need front.cert_file");
        }
        for s in &front.deny_serials {
            if gatehouse_tls::identity::normalize_serial(s).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "front.deny_serials: {s:?} is not a hexadecimal serial number"
                )));
            }
        }
        // The front's secret, passwords and tokens go to the voters: in
        // plaintext only on this machine.
        if self.mode == Mode::Production && !front.tls() && !voters.iter().all(|(_, v)| is_loopback_addr(v)) {
            return bad(
                "production mode refuses a front's traffic to voters in plaintext off loopback (front.voters): \
                 set front.cert_file, key_file and ca_file",
            );
        }
        Ok(())
    }

    /// Refuses settings that cannot work, and insecure ones in production.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.node_id == 0 {
            return bad("node_id must be a positive integer");
        }
        self.validate_serving()?;
        let pages = self.pages.load(self.mode == Mode::Dev)?;
        if let Some(mail) = &self.mail {
            mail.load(self.mode == Mode::Dev)?;
        }
        let links = pages.as_ref().is_some_and(|p| p.links.is_some());
        if links && self.front.is_none() {
            if self.mail.is_none() {
                return bad("pages.email_links on a voter needs [mail]: the voters send the links");
            }
            if self.pages.public_url.is_none() {
                return bad("pages.email_links needs pages.public_url: a mailed link must name where the pages are");
            }
        }
        let sso = self.sso.load(self.front.is_none(), self.mode == Mode::Dev)?;
        if !self.sso.password_sign_in && links {
            return bad("sso.password_sign_in = false (providers only) cannot offer pages.email_links: turn them off");
        }
        if sso.is_some() {
            if pages.is_none() || self.pages.public_url.is_none() {
                return bad("[sso] needs the pages with pages.public_url: the providers send browsers back there");
            }
            if self.front.is_none() && self.secrets.keys.is_empty() {
                return bad(
                    "[sso] on a voter needs [secrets] keys: the providers' refresh tokens are sealed with them",
                );
            }
        }
        self.secrets.load()?;
        self.mfa.load(None)?;
        if let Some(proxy) = &self.proxy {
            proxy.load()?;
        }
        if let Some(jwt) = &self.jwt {
            jwt.load()?;
            if self.front.is_none() && self.secrets.keys.is_empty() {
                return bad("[jwt] on a voter needs [secrets] keys: the signing keys are sealed with them");
            }
        }
        gatehouse_api::http::cors::Cors::new(&self.identity.cors_origins, self.mode == Mode::Dev)
            .map_err(ConfigError::Invalid)?;
        if let Some(front) = &self.front {
            return self.validate_front(front);
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0
            || r.election_timeout_min_ms <= r.heartbeat_ms
            || r.election_timeout_max_ms <= r.election_timeout_min_ms
        {
            return bad(
                "raft timings must satisfy 0 < heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms",
            );
        }
        if let Some(a) = &self.admin_tls {
            if a.require_client_cert && a.client_ca_file.is_none() {
                return bad("admin_tls.require_client_cert needs admin_tls.client_ca_file");
            }
            if self.peer_addr.is_none() {
                // Peers would dial this TLS port in plaintext.
                return bad(
                    "admin_tls needs peer_addr: peers need a listener of their own once the admin API speaks TLS",
                );
            }
        }
        if self.cluster_tls.is_some() && self.peer_addr.is_none() {
            return bad("cluster_tls needs peer_addr: mutual TLS is on the peer listener");
        }
        if let Some(t) = &self.cluster_tls {
            for s in &t.deny_serials {
                if gatehouse_tls::identity::normalize_serial(s).is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "cluster_tls.deny_serials: {s:?} is not a hexadecimal serial number"
                    )));
                }
            }
        }
        if self.max_staleness_ms < r.heartbeat_ms * 2 {
            return bad("max_staleness_ms must be at least twice raft.heartbeat_ms");
        }
        // Followers wait out the leader lease before they may elect a new
        // leader; a shorter bound would make every failover a refusal.
        if self.max_staleness_ms <= r.election_timeout_max_ms {
            return bad("max_staleness_ms must exceed raft.election_timeout_max_ms");
        }
        if self.initialize && self.mode == Mode::Production && self.initial_members.is_empty() {
            return bad("initialize = true needs initial_members");
        }
        // Without the file, the first admin key exists only in memory.
        if self.initialize && self.mode == Mode::Production && self.bootstrap_admin_key_file.is_none() {
            return bad("initialize = true needs bootstrap_admin_key_file in production");
        }
        if self.cluster_secret.is_some() && self.cluster_secret_file.is_some() {
            return bad("set cluster_secret or cluster_secret_file, not both");
        }
        if self.mode == Mode::Production {
            if self.cluster_secret.is_none() && self.cluster_secret_file.is_none() {
                return bad("production mode requires cluster_secret or cluster_secret_file");
            }
            // Raft traffic is plaintext gRPC authenticated by the secret; off
            // loopback it needs TLS, which this build does not offer yet.
            // Every address the secret would be sent to counts: our own, the
            // initial members', and the routes peers are dialled through.
            let advertised_loopback = self.advertise_addr.as_deref().is_none_or(is_loopback_addr);
            let members_loopback = self.initial_members.iter().all(|m| is_loopback_addr(&m.addr));
            let routes_loopback = self.peer_routes.iter().all(|(a, d)| is_loopback_addr(a) && is_loopback_addr(d));
            let peer_loopback = self.peer_addr.is_none_or(|a| a.ip().is_loopback());
            // With mutual TLS between nodes, peers may be anywhere.
            let peers_private = self.cluster_tls.is_some()
                || (peer_loopback && advertised_loopback && members_loopback && routes_loopback);
            if !peers_private {
                return bad("production mode refuses plaintext cluster traffic off loopback (peer_addr, \
                     advertise_addr, initial_members, peer_routes): configure [cluster_tls]");
            }
            if !self.grpc_addr.ip().is_loopback() && self.admin_tls.is_none() {
                return bad("production mode refuses the admin API in plaintext off loopback (grpc_addr): \
                     configure [admin_tls]");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn file_then_env_and_unknown_fields_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "node.toml",
                r#"
                node_id = 3
                cluster_secret = "0123456789abcdef0123456789abcdef"
                [raft]
                heartbeat_ms = 50
                "#,
            )?;
            jail.set_env("GATEHOUSE_MAX_STALENESS_MS", "1500");
            jail.set_env("GATEHOUSE_RAFT__SNAPSHOT_EVERY", "7");
            jail.set_env("GATEHOUSE_ENDPOINT", "http://127.0.0.1:1");
            let c = Config::load(Some(Path::new("node.toml"))).expect("valid");
            assert_eq!(c.node_id, 3);
            assert_eq!(c.raft.heartbeat_ms, 50);
            assert_eq!(c.raft.snapshot_every, 7);
            assert_eq!(c.max_staleness_ms, 1500);

            jail.create_file("bad.toml", "node_idd = 3\n")?;
            assert!(Config::load(Some(Path::new("bad.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn production_refuses_insecure_settings() {
        let mut c = Config::default();
        assert!(c.validate().is_err(), "no secret");
        c.cluster_secret = Some("x".repeat(32).into());
        assert!(!format!("{c:?}").contains(&"x".repeat(32)), "Debug never prints the secret");
        assert!(c.validate().is_ok());
        c.grpc_addr = "0.0.0.0:9090".parse().unwrap();
        assert!(c.validate().is_err(), "plaintext off loopback");
        c.grpc_addr = "127.0.0.1:9090".parse().unwrap();
        c.advertise_addr = Some("10.0.0.5:9090".into());
        assert!(c.validate().is_err(), "advertised off loopback");
        c.advertise_addr = None;
        assert!(c.validate().is_ok());
        // The secret goes to every member and route too: those count as well.
        c.initial_members = vec![
            Member { id: 1, addr: "127.0.0.1:9090".into(), client_addr: None },
            Member { id: 2, addr: "10.0.0.6:9090".into(), client_addr: None },
        ];
        assert!(c.validate().is_err(), "a member off loopback");
        c.initial_members.truncate(1);
        assert!(c.validate().is_ok());
        c.peer_routes.insert("127.0.0.1:9091".into(), "node-3.internal:9091".into());
        assert!(c.validate().is_err(), "a route off loopback");
        c.peer_routes.clear();
        // Mutual TLS between nodes lets peers leave the machine; the admin
        // API (plaintext) still may not.
        c.peer_addr = Some("10.0.0.5:9443".parse().unwrap());
        assert!(c.validate().unwrap_err().to_string().contains("[cluster_tls]"));
        let tls = ClusterTlsConfig {
            ca_file: "/etc/gatehouse/tls/ca.pem".into(),
            cert_file: "/etc/gatehouse/tls/node-1.pem".into(),
            key_file: "/etc/gatehouse/tls/node-1.key".into(),
            deny_serials: vec!["0A:1B".into()],
            deny_file: None,
        };
        c.cluster_tls = Some(tls.clone());
        c.advertise_addr = Some("10.0.0.5:9443".into());
        c.peer_routes.insert("10.0.0.6:9443".into(), "node-2.internal:9443".into());
        assert!(c.validate().is_ok());
        c.grpc_addr = "0.0.0.0:9090".parse().unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("admin API"));
        c.grpc_addr = "127.0.0.1:9090".parse().unwrap();
        c.cluster_tls = Some(ClusterTlsConfig { deny_serials: vec!["zz".into()], ..tls });
        assert!(c.validate().unwrap_err().to_string().contains("deny_serials"));
        c.peer_addr = None;
        assert!(c.validate().unwrap_err().to_string().contains("needs peer_addr"));
        c.cluster_tls = None;
        c.advertise_addr = None;
        c.peer_routes.clear();
        c.initialize = true;
        assert!(c.validate().is_err(), "initialising without a key file");
        c.bootstrap_admin_key_file = Some("/etc/gatehouse/admin.key".into());
        assert!(c.validate().is_ok());
        c.identity.cookie_domain = Some("Example.com".into());
        assert!(c.validate().is_err(), "cookie domains are lower case");
        c.identity.cookie_domain = Some("example.com".into());
        assert!(c.validate().is_ok());
        assert!(Config::dev().validate().is_ok());
        let mut c = Config::dev();
        c.raft.election_timeout_min_ms = 50;
        assert!(c.validate().is_err());
        let mut c = Config::dev();
        c.max_staleness_ms = c.raft.election_timeout_max_ms;
        assert!(c.validate().is_err(), "every failover would turn every node stale");
    }

    #[test]
    fn a_secret_file_is_read_bounded_and_never_from_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s".repeat(40) + "\n" + &"t".repeat(40) + "\n").unwrap();
        assert_eq!(read_secret_file(&file).unwrap().lines().count(), 2);
        std::fs::write(&file, "x".repeat(MAX_SECRET_FILE as usize + 1)).unwrap();
        let e = read_secret_file(&file).unwrap_err().to_string();
        assert!(e.contains("larger than") && !e.contains("xxxx"), "{e}");
        // A FIFO with no writer would block `open` (and the reload loop) for good.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_secret_file(&fifo).unwrap_err().to_string().contains("not a regular file"));
        assert!(read_secret_file(dir.path()).is_err(), "a directory");
    }
}
