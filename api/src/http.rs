//! The HTTP front (axum on hyper). So far: health and readiness; every
//! response carries the security headers.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::Cluster;

/// Largest request body accepted anywhere on the front.
pub const MAX_BODY: usize = 64 * 1024;

pub fn router(cluster: Cluster) -> Router {
    let headers = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(cluster)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    for (name, value) in headers {
        router = router.layer(SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value)));
    }
    router
}

/// 200 while the process runs; says nothing about internals.
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 when this node knows a leader and is within `max_staleness`; else 503.
async fn readyz(State(cluster): State<Cluster>) -> impl IntoResponse {
    if cluster.is_fresh() {
        (StatusCode::OK, Json(serde_json::json!({ "status": "ready" })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "not_ready" })))
    }
}
