//! `[rate_limits]`: each policy says what it matches (path, forwarded path,
//! client network), what it counts per (client IP, key, user or the policy
//! as a whole), how (strict or global) and how much.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use gatehouse_domain::limits as rules;

use crate::http::forwarded;

/// Most policies (their matches are kept in a 64-bit mask per request).
pub const MAX_POLICIES: usize = 64;

/// How a policy counts across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Strict,
    Global,
}

/// What a policy's buckets are per.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    #[default]
    Ip,
    Key,
    User,
    /// One bucket for everything the policy matches.
    Policy,
    /// Per value of an Envoy rate-limit descriptor (policies with `envoy`).
    Descriptor,
}

/// What a policy counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// Every matching request.
    #[default]
    Request,
    /// Presented credentials that were refused (strict only).
    Failure,
}

/// One rate-limit policy (`[[rate_limits.policies]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    /// Gatehouse's own request path (segment prefix), e.g. `/api/v1/login`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// On `/auth/verify`: the protected request's `X-Forwarded-Uri` prefix.
    #[serde(default)]
    pub forwarded_path_prefix: Option<String>,
    /// On `/auth/verify`: the protected request's `X-Forwarded-Host`
    /// (normalised: lower case, no port).
    #[serde(default)]
    pub forwarded_host: Option<String>,
    /// Match `forwarded_path_prefix` in any letter case.
    #[serde(default)]
    pub forwarded_ignore_case: bool,
    /// Only this API key id.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Only this username.
    #[serde(default)]
    pub user: Option<String>,
    /// Only clients in this network.
    #[serde(default)]
    pub client_network: Option<IpNet>,
    #[serde(default)]
    pub by: By,
    #[serde(default)]
    pub on: On,
    pub limit: u32,
    pub window_secs: u64,
    pub mode: Mode,
    /// An Envoy rate-limit policy (`ShouldRateLimit`, docs/envoy.md): the
    /// descriptors it counts. Such a policy never applies to Gatehouse's
    /// own HTTP requests.
    #[serde(default)]
    pub envoy: Option<EnvoyDescriptor>,
    /// When this node cannot decide (it cannot prove it is current, or a
    /// strict hit cannot reach the log), admit instead of refusing. Off:
    /// Gatehouse fails closed. On: each admission so made is audited
    /// (`ratelimit.failed_open`). Envoy policies only.
    #[serde(default)]
    pub fail_open: bool,
}

/// The Envoy descriptors an Envoy policy counts: those of `domain` whose
/// entry keys are `keys`, in order; each set of values is a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyDescriptor {
    pub domain: String,
    pub keys: Vec<String>,
}

/// Most entries an Envoy descriptor may have; longest key, value and domain.
pub const MAX_DESCRIPTOR_ENTRIES: usize = 8;
pub const MAX_DESCRIPTOR_TEXT: usize = 256;

impl Policy {
    fn new(name: &str, path: Option<&str>, on: On, limit: u32, mode: Mode) -> Policy {
        Policy {
            name: name.into(),
            path_prefix: path.map(str::to_string),
            forwarded_path_prefix: None,
            forwarded_host: None,
            forwarded_ignore_case: false,
            key_id: None,
            user: None,
            client_network: None,
            by: By::Ip,
            on,
            limit,
            window_secs: 60,
            mode,
            envoy: None,
            fail_open: false,
        }
    }

    /// The defaults: logins 5/min per IP and credential failures 10/min per
    /// IP (both strict), Gatehouse's API 100/min per IP (global).
    pub fn defaults() -> Vec<Policy> {
        vec![
            Policy::new("login", Some("/api/v1/login"), On::Request, 5, Mode::Strict),
            Policy::new("credential_failures", None, On::Failure, 10, Mode::Strict),
            Policy::new("api", Some("/api/"), On::Request, 100, Mode::Global),
        ]
    }

    /// Whether the policy can only be decided once the caller is known.
    pub(super) fn needs_caller(&self) -> bool {
        self.key_id.is_some() || self.user.is_some() || matches!(self.by, By::Key | By::User)
    }

    pub(super) fn window_ms(&self) -> u64 {
        self.window_secs * 1000
    }
}

/// `[rate_limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// On by default; off only by saying so.
    pub enabled: bool,
    /// How often a node syncs its global-limit admissions.
    pub sync_interval_ms: u64,
    /// Peers whose `X-Forwarded-For` is believed (default: loopback).
    pub trusted_proxies: Vec<IpNet>,
    /// Failed admin-API authentications per client address per minute
    /// before that address is refused (`RESOURCE_EXHAUSTED`) on this node.
    pub admin_auth_failures_per_minute: u32,
    pub policies: Vec<Policy>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            enabled: true,
            sync_interval_ms: 50,
            trusted_proxies: vec!["127.0.0.0/8".parse().expect("valid"), "::1/128".parse().expect("valid")],
            admin_auth_failures_per_minute: 30,
            policies: Policy::defaults(),
        }
    }
}

impl LimitsConfig {
    /// Refuses policies that could not work as written.
    pub fn validate(&self) -> Result<(), String> {
        if !(10..=10_000).contains(&self.sync_interval_ms) {
            return Err("rate_limits.sync_interval_ms must be 10..=10000".into());
        }
        if !(1..=100_000).contains(&self.admin_auth_failures_per_minute) {
            return Err("rate_limits.admin_auth_failures_per_minute must be 1..=100000".into());
        }
        if self.policies.len() > MAX_POLICIES {
            return Err(format!("at most {MAX_POLICIES} rate-limit policies"));
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.policies {
            let name_ok = !p.name.is_empty()
                && p.name.len() <= rules::MAX_NAME
                && p.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(format!("rate-limit policy name {:?}: use a-z, 0-9, _ and -", p.name));
            }
            if !names.insert(&p.name) {
                return Err(format!("rate-limit policy {} is defined twice", p.name));
            }
            let max = if p.mode == Mode::Strict { rules::MAX_STRICT_LIMIT } else { rules::MAX_LIMIT };
            if p.limit == 0 || p.limit > max {
                return Err(format!("rate-limit policy {}: limit must be 1..={max}", p.name));
            }
            if !(rules::MIN_WINDOW_MS..=rules::MAX_WINDOW_MS).contains(&p.window_ms()) {
                return Err(format!("rate-limit policy {}: window_secs must be 1..=86400", p.name));
            }
            if p.on == On::Failure && (p.mode != Mode::Strict || p.needs_caller()) {
                return Err(format!("rate-limit policy {}: failures are counted strictly, per IP or policy", p.name));
            }
            for prefix in [&p.path_prefix, &p.forwarded_path_prefix].into_iter().flatten() {
                if forwarded::plain_path(prefix).as_deref() != Some(prefix.as_str()) {
                    return Err(format!("rate-limit policy {}: path prefixes are plain absolute paths", p.name));
                }
            }
            if let Some(e) = &p.envoy {
                let http_fields = p.path_prefix.is_some()
                    || p.forwarded_path_prefix.is_some()
                    || p.forwarded_host.is_some()
                    || p.key_id.is_some()
                    || p.user.is_some()
                    || p.client_network.is_some();
                let text_ok = |t: &str| !t.is_empty() && t.len() <= MAX_DESCRIPTOR_TEXT;
                if http_fields || p.by != By::Descriptor || p.on != On::Request {
                    return Err(format!(
                        "rate-limit policy {}: an Envoy policy counts requests by descriptor (by = \"descriptor\") \
                         and matches nothing of Gatehouse's own requests",
                        p.name
                    ));
                }
                if !text_ok(&e.domain)
                    || e.keys.is_empty()
                    || e.keys.len() > MAX_DESCRIPTOR_ENTRIES
                    || !e.keys.iter().all(|k| text_ok(k))
                {
                    return Err(format!(
                        "rate-limit policy {}: envoy needs a domain and 1..={MAX_DESCRIPTOR_ENTRIES} keys",
                        p.name
                    ));
                }
                let twin = self.policies.iter().take_while(|q| !std::ptr::eq(*q, p)).any(|q| q.envoy == p.envoy);
                if twin {
                    return Err(format!(
                        "rate-limit policy {}: another policy counts the same Envoy domain and keys",
                        p.name
                    ));
                }
            } else if p.by == By::Descriptor || p.fail_open {
                return Err(format!("rate-limit policy {}: by = \"descriptor\" and fail_open need envoy", p.name));
            }
            if let Some(h) = &p.forwarded_host {
                if forwarded::normalise_host(h).as_deref() != Some(h.as_str()) || h.contains(':') {
                    return Err(format!(
                        "rate-limit policy {}: forwarded_host is a lower-case host without port",
                        p.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A request as policies see it.
pub struct Subject<'a> {
    pub ip: IpAddr,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// The mask of policies whose request-side filters match.
///
/// Policies keyed by the forwarded request read it with the route
/// rules' parser ([`forwarded`]); one they cannot read one way is
/// refused, never matched as `/` or `""` (a limit must not be dodged by
/// spelling).
pub(super) fn matching(policies: &[Policy], s: &Subject<'_>) -> Result<u64, forwarded::Ambiguous> {
    let on_verify = s.path == "/auth/verify";
    let mut mask = 0;
    for (i, p) in policies.iter().enumerate() {
        // Envoy's policies are asked for by descriptor, never matched here.
        if p.envoy.is_some() {
            continue;
        }
        let path_ok = p.path_prefix.as_deref().is_none_or(|pre| forwarded::under(s.path, pre, false));
        let fwd_ok = if p.forwarded_path_prefix.is_none() && p.forwarded_host.is_none() {
            true
        } else if !on_verify {
            false
        } else {
            let path_ok = match &p.forwarded_path_prefix {
                Some(pre) => forwarded::under(&forwarded::path(s.headers)?, pre, p.forwarded_ignore_case),
                None => true,
            };
            let host_ok = match &p.forwarded_host {
                Some(h) => forwarded::host(s.headers)? == *h,
                None => true,
            };
            path_ok && host_ok
        };
        let net_ok = p.client_network.is_none_or(|n| n.contains(&s.ip));
        if path_ok && fwd_ok && net_ok {
            mask |= 1 << i;
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn forwarded_policies_read_the_request_as_route_rules_do() {
        let mut p = Policy::new("deploy", None, On::Request, 5, Mode::Strict);
        p.forwarded_path_prefix = Some("/deploy".into());
        p.forwarded_host = Some("ci.example".into());
        let mut other = Policy::new("login", Some("/api/v1/login"), On::Request, 5, Mode::Strict);
        other.forwarded_ignore_case = true;
        let policies = [p, other];
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let check = |host: &[u8], uri: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-host", HeaderValue::from_bytes(host).unwrap());
            h.insert("x-forwarded-uri", HeaderValue::from_bytes(uri).unwrap());
            matching(&policies, &Subject { ip, path: "/auth/verify", headers: &h })
        };
        assert_eq!(check(b"ci.example", b"/deploy/x"), Ok(0b01));
        assert_eq!(check(b"CI.example.:443", b"/deploy?x"), Ok(0b01), "hosts are normalised");
        assert_eq!(check(b"ci.example", b"/deployx"), Ok(0));
        assert_eq!(check(b"ci.example", b"/DEPLOY"), Ok(0), "case-sensitive unless asked");
        // Spellings that would dodge the limit are refused, not let through as `/`.
        for (host, uri) in [
            (&b"ci.example"[..], &b"/deploy/x?\xff"[..]),
            (b"ci.example", b"/deploy;x/run"),
            (b"ci.example", b"//deploy"),
            (b"ci.example,app.example", b"/deploy"),
            (b"c\xc3\xaf.example", b"/deploy"),
        ] {
            assert_eq!(check(host, uri), Err(forwarded::Ambiguous), "{}", String::from_utf8_lossy(uri));
        }
        // Off `/auth/verify` forwarded policies do not apply, and the headers are not read.
        let h = HeaderMap::new();
        assert_eq!(matching(&policies, &Subject { ip, path: "/api/v1/login", headers: &h }), Ok(0b10));
        let mut ignoring = policies[0].clone();
        ignoring.forwarded_ignore_case = true;
        ignoring.forwarded_host = None;
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-uri", HeaderValue::from_static("/DePloy/x"));
        assert_eq!(matching(&[ignoring], &Subject { ip, path: "/auth/verify", headers: &h }), Ok(1));
    }

    #[test]
    fn policies_that_cannot_work_are_refused() {
        assert!(LimitsConfig::default().validate().is_ok());
        let bad = |f: fn(&mut Policy)| {
            let mut c = LimitsConfig::default();
            f(&mut c.policies[0]);
            c.validate().unwrap_err()
        };
        assert!(bad(|p| p.name = "Bad Name".into()).contains("name"));
        assert!(bad(|p| p.name = "api".into()).contains("twice"));
        assert!(bad(|p| p.limit = 0).contains("limit"));
        assert!(bad(|p| p.window_secs = 0).contains("window"));
        assert!(bad(|p| p.path_prefix = Some("api".into())).contains("plain absolute paths"));
        assert!(bad(|p| p.forwarded_path_prefix = Some("/ops;x".into())).contains("plain absolute paths"));
        assert!(bad(|p| p.forwarded_host = Some("Admin.example:443".into())).contains("forwarded_host"));
        assert!(bad(|p| {
            p.on = On::Failure;
            p.by = By::Key;
        })
        .contains("failures"));
    }
}
