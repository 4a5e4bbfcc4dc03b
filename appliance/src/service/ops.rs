//! The "ops" endpoints (SPEC §4): liveness, readiness and Prometheus metrics — on the mTLS
//! listener and on the plain-HTTP ops listener, which carries nothing else.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::app::App;

/// `GET /healthz`: the process answers.
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: ready to sign (devices answering, audit log writable, the state store
/// followed, not stopping), 503 otherwise, with what is wrong.
pub(super) async fn readyz(State(app): State<Arc<App>>) -> Response {
    let ready = app.ready();
    let body = Json(json!({
        "ready": ready,
        "devices_answering": !app.health.is_down(),
        "audit_writable": app.audit.healthy(),
        "state_fresh": app.state_fresh(),
        "state_current": app.state_current(),
        "node": app.config.node.id,
        "stopping": app.stopping.load(Ordering::Relaxed),
    }));
    if ready { body.into_response() } else { (StatusCode::SERVICE_UNAVAILABLE, body).into_response() }
}

/// `GET /metrics`: the Prometheus text format.
pub(super) async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics.ready.set(i64::from(app.ready()));
    app.metrics.queue_depth.set(i64::try_from(app.pipeline.queued()).unwrap_or(i64::MAX));
    app.metrics.set_keys(&app.signing.load().state);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], app.metrics.render()).into_response()
}
