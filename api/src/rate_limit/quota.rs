//! What a response says of the tightest policy (`X-RateLimit-*`), and the
//! 429 a refusal is.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// What the response's `X-RateLimit-*` headers say: the tightest policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub policy: Arc<str>,
    pub limit: u32,
    pub remaining: u64,
    /// Seconds until the count next goes down.
    pub reset_secs: u64,
}

impl Quota {
    /// The one of `self` and `other` with less left (or resetting later).
    pub fn tighter(self, other: Option<Quota>) -> Quota {
        match other {
            Some(o)
                if (o.remaining, std::cmp::Reverse(o.reset_secs))
                    < (self.remaining, std::cmp::Reverse(self.reset_secs)) =>
            {
                o
            }
            _ => self,
        }
    }

    /// Adds the headers to a response.
    pub fn write(&self, h: &mut HeaderMap) {
        h.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(self.reset_secs));
    }
}

/// A refusal ([`ApiError::RateLimited`]): 429 with the quota headers,
/// `Retry-After` and the policy named. The quota also goes into the
/// response's extensions, for the layer to audit.
pub(crate) fn limited_response(q: Quota) -> Response {
    let body = serde_json::json!({ "error": {
        "code": "rate_limited",
        "message": format!("rate limit {} reached; retry in {} s", q.policy, q.reset_secs.max(1)),
        "policy": &*q.policy,
    }});
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    q.write(resp.headers_mut());
    resp.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(q.reset_secs.max(1)));
    resp.extensions_mut().insert(q);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tightest_quota_wins() {
        let q = |remaining, reset_secs| Quota { policy: "p".into(), limit: 10, remaining, reset_secs };
        assert_eq!(q(5, 10).tighter(Some(q(3, 1))), q(3, 1));
        assert_eq!(q(3, 10).tighter(Some(q(3, 1))), q(3, 10));
        assert_eq!(q(3, 10).tighter(None), q(3, 10));
    }
}
