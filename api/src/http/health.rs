//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;

use super::front::Front;

/// 200 while the process runs; says nothing about internals.
pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 while this node's last proof of being up to date is within `max_staleness`; else 503.
pub async fn readyz(State(front): State<Front>) -> impl IntoResponse {
    if front.node.is_fresh() {
        (StatusCode::OK, Json(serde_json::json!({ "status": "ready" })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "not_ready" })))
    }
}
