//! Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`), counted by Gatehouse's own limiter: each descriptor is
//! looked up among the Envoy policies of `[rate_limits]` (its domain and its
//! entry keys, in order); the entry values name the bucket.
//!
//! - `strict` policies are exact cluster-wide: every hit is a log write
//!   (for low rates: logins, password resets, expensive calls).
//! - `global` policies admit locally within this node's share of what is
//!   left and sync every `sync_interval_ms`, with the documented
//!   over-admission bound (docs/rate-limits-and-audit.md).
//! - A descriptor no policy names is not limited (`OK`, no limit), as in
//!   Envoy's reference service.
//! - A node that cannot prove it is current, or a strict hit the log cannot
//!   take, answers `OVER_LIMIT` (fail closed), unless the policy says
//!   `fail_open = true`: then `OK`, and the admission is audited
//!   (`ratelimit.failed_open`). Envoy's reference service counts in Redis
//!   and fails open; here failing open is each policy's explicit choice.
//!
//! A request is bounded: at most [`MAX_DESCRIPTORS`] descriptors of at most
//! eight entries with keys of at most 256 bytes (`INVALID_ARGUMENT` past
//! any: a broken request). Values are the client's (a path, an address):
//! any length within the message is counted, as a fixed-size digest, and an
//! IP address is counted by its /64 (IPv6) or itself (IPv4), as Gatehouse's
//! own per-IP limits are. Hits past [`MAX_HITS`], or more than one at once
//! on a strict policy, make that descriptor `OVER_LIMIT`, never an error.

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

use crate::http::front::Front;
use crate::rate_limit::policy::{Policy, MAX_DESCRIPTOR_ENTRIES, MAX_DESCRIPTOR_TEXT};
use crate::rate_limit::quota::Quota;
use crate::rate_limit::Limiter;
use crate::{ApiError, Node};

/// Most descriptors one request may carry.
pub const MAX_DESCRIPTORS: usize = 16;
/// Most hits one descriptor may add at once.
pub const MAX_HITS: u64 = 100;
/// Largest request decoded: 16 descriptors of 8 entries of 256-byte keys
/// and values of up to 1 KiB, with room for framing.
pub const MAX_REQUEST_BYTES: usize = 256 << 10;

pub struct Rls {
    node: Node,
    limits: Limiter,
}

/// The service over the HTTP front's node and limiter.
pub fn server(front: &Front) -> RateLimitServiceServer<Rls> {
    RateLimitServiceServer::new(Rls { node: front.node.clone(), limits: front.limits.clone() })
        .max_decoding_message_size(MAX_REQUEST_BYTES)
}

/// Refuses a request whose shape is broken (no domain, no descriptors or
/// too many, a descriptor without entries or with too many, a key that is
/// empty or long). Values and hits are the client's to choose (a long path,
/// say): they are never a reason to answer with an error, which Envoy
/// would let through by default (see [`over_bounds`]).
#[allow(clippy::result_large_err)]
fn check_request(r: &RateLimitRequest) -> Result<(), Status> {
    let text_ok = |t: &str| !t.is_empty() && t.len() <= MAX_DESCRIPTOR_TEXT;
    if !text_ok(&r.domain) {
        return Err(Status::invalid_argument("a domain of 1..=256 bytes is required"));
    }
    if r.descriptors.is_empty() || r.descriptors.len() > MAX_DESCRIPTORS {
        return Err(Status::invalid_argument(format!("1..={MAX_DESCRIPTORS} descriptors")));
    }
    for d in &r.descriptors {
        let entries_ok = !d.entries.is_empty()
            && d.entries.len() <= MAX_DESCRIPTOR_ENTRIES
            && d.entries.iter().all(|e| text_ok(&e.key));
        if !entries_ok {
            return Err(Status::invalid_argument(format!(
                "each descriptor has 1..={MAX_DESCRIPTOR_ENTRIES} entries with keys of 1..=256 bytes"
            )));
        }
    }
    Ok(())
}

/// Why a descriptor of a policy is refused (`OVER_LIMIT`) before counting:
/// more hits at once than [`MAX_HITS`], or more than one on a strict policy
/// (each strict hit is a log write: one at a time, never half counted).
fn over_bounds(p: &Policy, hits: u64) -> Option<&'static str> {
    if hits > MAX_HITS {
        Some("more hits at once than a descriptor may add")
    } else if hits > 1 && p.mode == crate::rate_limit::policy::Mode::Strict {
        Some("a strict policy counts one hit at a time")
    } else {
        None
    }
}

/// The hits a descriptor adds: its own `hits_addend`, the request's, or one.
fn hits(
    r: &RateLimitRequest,
    d: &envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor,
) -> u64 {
    d.hits_addend.map(|h| h.value).unwrap_or(u64::from(r.hits_addend)).max(1)
}

fn unit(window_secs: u64) -> Unit {
    match window_secs {
        1 => Unit::Second,
        60 => Unit::Minute,
        3600 => Unit::Hour,
        86400 => Unit::Day,
        _ => Unit::Unknown,
    }
}

fn status(p: &Policy, code: Code, quota: Option<&Quota>) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: p.name.clone(),
            requests_per_unit: p.limit,
            unit: unit(p.window_secs) as i32,
        }),
        limit_remaining: quota.map_or(0, |q| u32::try_from(q.remaining).unwrap_or(u32::MAX)),
        duration_until_reset: quota.map(|q| envoy_types::pb::google::protobuf::Duration {
            seconds: i64::try_from(q.reset_secs).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        ..Default::default()
    }
}

impl Rls {
    /// A policy that could not decide: refused, or admitted and audited
    /// when it fails open.
    fn undecided(&self, p: &Policy, why: &str) -> Code {
        if p.fail_open {
            tracing::warn!(policy = %p.name, why, "rate limit failed open (fail_open = true)");
            self.node.audit_count("ratelimit.failed_open", format!("policy:{}", p.name), String::new());
            Code::Ok
        } else {
            Code::OverLimit
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    #[tracing::instrument(level = "debug", name = "envoy.should_rate_limit", skip_all, fields(domain = %req.get_ref().domain))]
    async fn should_rate_limit(&self, req: Request<RateLimitRequest>) -> Result<Response<RateLimitResponse>, Status> {
        let r = req.into_inner();
        check_request(&r)?;
        let fresh = self.node.ensure_fresh().await;
        let mut statuses = Vec::with_capacity(r.descriptors.len());
        let mut tightest: Option<Quota> = None;
        for d in &r.descriptors {
            let keys: Vec<&str> = d.entries.iter().map(|e| e.key.as_str()).collect();
            let Some((i, p)) = self.limits.envoy_policy(&r.domain, &keys).filter(|_| self.limits.enabled()) else {
                // Nothing here limits this descriptor.
                self.node.metrics().envoy_unknown_descriptors.inc();
                statuses.push(DescriptorStatus { code: Code::Ok as i32, ..Default::default() });
                continue;
            };
            if !fresh {
                statuses.push(status(p, self.undecided(p, "this node cannot prove it is current"), None));
                continue;
            }
            let n = hits(&r, d);
            if let Some(why) = over_bounds(p, n) {
                tracing::debug!(policy = %p.name, why, "descriptor refused");
                statuses.push(status(p, Code::OverLimit, None));
                continue;
            }
            let bucket = Limiter::descriptor_bucket(&d.entries);
            let mut code = Code::Ok;
            let mut quota = None;
            for _ in 0..n {
                match self.limits.descriptor_hit(i, bucket.clone()).await {
                    Ok(q) => quota = q,
                    Err(ApiError::RateLimited(q)) => {
                        self.node.audit_count("ratelimit.hit", format!("policy:{}", p.name), String::new());
                        code = Code::OverLimit;
                        quota = Some(q);
                        break;
                    }
                    Err(e) => {
                        code = self.undecided(p, &e.to_string());
                        break;
                    }
                }
            }
            if let Some(q) = &quota {
                tightest = Some(q.clone().tighter(tightest));
            }
            statuses.push(status(p, code, quota.as_ref()));
        }
        let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
        let headers = tightest.map(|q| {
            [
                ("x-ratelimit-limit", q.limit.to_string()),
                ("x-ratelimit-remaining", q.remaining.to_string()),
                ("x-ratelimit-reset", q.reset_secs.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| HeaderValue { key: k.into(), value: v, ..Default::default() })
            .collect()
        });
        Ok(Response::new(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add: headers.unwrap_or_default(),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        rate_limit_descriptor::Entry, RateLimitDescriptor,
    };

    fn request(entries: &[(&str, &str)], hits_addend: u32) -> RateLimitRequest {
        RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
                ..Default::default()
            }],
            hits_addend,
        }
    }

    #[test]
    fn requests_are_bounded() {
        assert!(check_request(&request(&[("remote_address", "192.0.2.1")], 0)).is_ok());
        assert!(check_request(&request(&[], 0)).is_err(), "no entries");
        assert!(check_request(&request(&[("", "x")], 0)).is_err(), "an empty key");
        let long = "v".repeat(MAX_DESCRIPTOR_TEXT * 4);
        assert!(check_request(&request(&[("k", &long)], 0)).is_ok(), "a long value is the client's, not an error");
        assert!(check_request(&request(&[(&long, "v")], 0)).is_err(), "a long key is Envoy's configuration");
        assert!(check_request(&request(&[("k", "v")], 1_000)).is_ok(), "hits are refused per descriptor");
        let nine: Vec<(String, String)> = (0..9).map(|i| (format!("k{i}"), "v".into())).collect();
        let nine: Vec<(&str, &str)> = nine.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(check_request(&request(&nine, 0)).is_err());
        let mut r = request(&[("k", "v")], 0);
        r.domain.clear();
        assert!(check_request(&r).is_err());
        r.domain = "edge".into();
        r.descriptors = vec![r.descriptors[0].clone(); MAX_DESCRIPTORS + 1];
        assert!(check_request(&r).is_err());
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
        pairs.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect()
    }

    #[test]
    fn buckets_are_fixed_size_digests_that_keep_values_apart() {
        let a = Limiter::descriptor_bucket(&entries(&[("k", "ab"), ("l", "c")]));
        let b = Limiter::descriptor_bucket(&entries(&[("k", "a"), ("l", "bc")]));
        assert_ne!(a, b);
        assert_eq!(a.len(), 34);
        assert_eq!(Limiter::descriptor_bucket(&entries(&[("k", &"x".repeat(4096))])).len(), 34);
    }

    #[test]
    fn an_address_counts_as_gatehouse_s_own_per_ip_limits_do() {
        let bucket = |ip: &str| Limiter::descriptor_bucket(&entries(&[("remote_address", ip)]));
        // One IPv6 /64 is one client; its addresses share a bucket.
        assert_eq!(bucket("2001:db8:1:2::1"), bucket("2001:db8:1:2:ffff::9"));
        assert_ne!(bucket("2001:db8:1:2::1"), bucket("2001:db8:1:3::1"));
        assert_ne!(bucket("192.0.2.1"), bucket("192.0.2.2"));
        // Not an address: counted as it is.
        assert_ne!(bucket("not-an-ip"), bucket("not-an-ip2"));
    }

    #[test]
    fn hits_a_descriptor_may_not_add_refuse_it_alone() {
        let strict = crate::rate_limit::policy::Policy::defaults().remove(0);
        assert_eq!(strict.mode, crate::rate_limit::policy::Mode::Strict);
        assert!(over_bounds(&strict, 1).is_none());
        assert!(over_bounds(&strict, 2).is_some());
        let global = crate::rate_limit::policy::Policy::defaults().remove(2);
        assert!(over_bounds(&global, 100).is_none());
        assert!(over_bounds(&global, 101).is_some());
    }
}
