//! The routers: the mTLS API (SPEC §4) and the plain-HTTP ops listener. Every route goes through
//! the per-MP rate limit and is counted by status.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;

use super::app::App;
use super::batch::{self, LINE_LIMIT};
use super::error::ApiError;
use super::tls::Caller;
use super::{ops, publish, tokens};

/// Every request on the mTLS listener: the caller's certificate is still an MP identity now (not
/// revoked or expired since the connection's handshake — a keep-alive connection is checked per
/// request, not once), the per-MP rate limit, and response counting.
async fn admit(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(caller) = request.extensions().get::<Caller>() {
        if !app.state().admits(&caller.serial, crate::time::now_unix()) {
            app.metrics.response(403);
            tracing::warn!(subject = %caller.subject, serial = %caller.serial, "request refused: the client certificate was revoked or expired since the handshake");
            return ApiError::CallerRefused.into_response();
        }
        if let Err(wait) = app.limiter.take(&caller.identity(), 1) {
            app.metrics.response(429);
            return ApiError::RateLimited(wait).into_response();
        }
    }
    let response = next.run(request).await;
    app.metrics.response(response.status().as_u16());
    response
}

/// Reads a single-token request's body whole — at most [`LINE_LIMIT`] bytes, within the body
/// deadline — before its handler runs: a sender that trickles or stalls is cut off (SPEC §9),
/// with `request_timeout`, and the connection closed.
async fn read_body(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let deadline = app.config.service.body_timeout;
    let mut stream = body.into_data_stream();
    let read = async {
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("the request body could not be read: {e}")))?;
            if buf.len() + chunk.len() > LINE_LIMIT {
                return Err(ApiError::TooLarge {
                    code: "body_too_large",
                    message: format!("the body is over {LINE_LIMIT} bytes; one token request is far smaller"),
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    match tokio::time::timeout(deadline, read).await {
        Err(_) => ApiError::Timeout(format!("the request body did not arrive within {} s", deadline.as_secs()))
            .into_response(),
        Ok(Err(e)) => {
            // Let a client still sending read the refusal before the connection closes.
            tokio::spawn(batch::drain(stream, tokio::time::sleep(std::time::Duration::from_secs(1)), 1 << 20));
            e.into_response()
        }
        Ok(Ok(buf)) => next.run(Request::from_parts(parts, Body::from(buf))).await,
    }
}

async fn not_found() -> ApiError {
    ApiError::BadRequest("no such endpoint; the API is described in the README (docs/api.md)".into())
}

fn ops_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
}

/// The mTLS API.
pub fn router(app: Arc<App>) -> Router {
    let single = Router::new()
        .route("/v1/client-tokens", post(tokens::post_client_token))
        .route("/v1/access-tokens", post(tokens::post_access_token))
        .route("/v1/tokens:verify", post(tokens::post_verify))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), read_body))
        .layer(DefaultBodyLimit::max(LINE_LIMIT));
    Router::new()
        .merge(single)
        .route("/v1/client-tokens:batch", post(batch::post_batch).layer(DefaultBodyLimit::disable()))
        .route("/v1/certificates", get(publish::get_certificates))
        .route("/.well-known/jwks.json", get(publish::get_jwks))
        .route("/v1/crl", get(publish::get_crl))
        .merge(ops_routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), admit))
        .with_state(app)
}

/// The plain-HTTP ops listener: health, readiness, metrics — nothing else.
pub fn ops_router(app: Arc<App>) -> Router {
    ops_routes().fallback(not_found).with_state(app)
}
