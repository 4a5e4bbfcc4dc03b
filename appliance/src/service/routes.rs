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
        let refusal = if !app.state().admits(&caller.serial, crate::time::now_unix()) {
            tracing::warn!(subject = %caller.subject, serial = %caller.serial, "request refused: the client certificate was revoked or expired since the handshake");
            Some(ApiError::CallerRefused)
        } else {
            app.limiter.take(&caller.identity(), 1).err().map(ApiError::RateLimited)
        };
        if let Some(refusal) = refusal {
            discard(request.into_body(), app.config.service.body_timeout);
            let response = refusal.into_response();
            app.metrics.response(response.status().as_u16());
            return response;
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
    if let Err(e) = content_type(&parts.headers, &["application/json"]) {
        discard(body, app.config.service.body_timeout);
        return e.into_response();
    }
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
            tokio::spawn(batch::drain(
                stream,
                tokio::time::sleep(std::time::Duration::from_secs(1)),
                1 << 20,
                deadline,
            ));
            e.into_response()
        }
        Ok(Ok(buf)) => next.run(Request::from_parts(parts, Body::from(buf))).await,
    }
}

/// Reads and drops what a refused request still sends (1 MiB and a second at most), so that the
/// client reads the refusal: over HTTP/1.1 a close with unread data resets the connection; over
/// HTTP/2 a stream ended before its body arrived is reset, which some clients (curl 7.88) report
/// as an error instead of the answer.
pub(super) fn discard(body: Body, patience: std::time::Duration) {
    tokio::spawn(batch::drain(
        body.into_data_stream(),
        tokio::time::sleep(std::time::Duration::from_secs(1)),
        1 << 20,
        patience,
    ));
}

async fn not_found(body: Body) -> ApiError {
    discard(body, std::time::Duration::from_secs(1));
    ApiError::NotFound("no such endpoint; the API is described in docs/api.md and served at /v1/openapi.json".into())
}

/// The API's OpenAPI 3.1 description (`docs/openapi.json`, built in).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// `GET /v1/openapi.json`.
async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn method_not_allowed(body: Body) -> ApiError {
    discard(body, std::time::Duration::from_secs(1));
    ApiError::MethodNotAllowed
}

/// Checks that a request's `Content-Type` is one of `accepted` (parameters aside; a `charset`
/// must be UTF-8): the body is read only as what it says it is.
pub(super) fn content_type(headers: &axum::http::HeaderMap, accepted: &[&str]) -> Result<(), ApiError> {
    let refuse = |got: &str| {
        ApiError::UnsupportedMediaType(format!("{got}; this endpoint takes Content-Type: {}", accepted.join(" or ")))
    };
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE) else {
        return Err(refuse("the request has no Content-Type"));
    };
    let Ok(mime) = value.to_str().unwrap_or("").parse::<mime::Mime>() else {
        return Err(refuse("the request's Content-Type cannot be read"));
    };
    let essence = mime.essence_str();
    let utf8 = mime.get_param(mime::CHARSET).is_none_or(|c| c == mime::UTF_8);
    if accepted.iter().any(|a| a.eq_ignore_ascii_case(essence)) && utf8 {
        Ok(())
    } else {
        Err(refuse(&format!("Content-Type {value:?} is not taken")))
    }
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
        .route("/v1/openapi.json", get(openapi))
        .merge(ops_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), admit))
        .with_state(app)
}

/// The plain-HTTP ops listener: health, readiness, metrics — nothing else.
pub fn ops_router(app: Arc<App>) -> Router {
    ops_routes().fallback(not_found).method_not_allowed_fallback(method_not_allowed).with_state(app)
}
