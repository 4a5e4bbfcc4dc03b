//! The single-token endpoints: `POST /v1/client-tokens`, `POST /v1/access-tokens` and
//! `POST /v1/tokens:verify`. Each parses its body, asks the policy ([`crate::policy`]) on a
//! blocking thread (a verification is CPU work, a revoked key's renewal reads the audit log),
//! prepares the token and hands it to the signing pipeline.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::app::App;
use super::error::ApiError;
use super::tls::Caller;
use crate::pipeline::Item;
use crate::policy::{self, AccessTokenRequest, ClientTokenRequest, VerifyRequest};
use crate::time::now_unix;
use crate::token::IssuedToken;

/// Parses a JSON body into `T` (unknown fields refused). Public for the fuzz target
/// `ndjson_batch`, which feeds it batch lines as the batch reader does.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde's message quotes the offending value: clipped, like every echo of the input.
    serde_json::from_slice(body).map_err(|e| {
        let at = format!(" at line {} column {}", e.line(), e.column());
        let message = e.to_string();
        ApiError::BadRequest(format!(
            "the body is not valid: {}{at}",
            crate::policy::clip_to(message.trim_end_matches(&at), 200)
        ))
    })
}

/// Runs `f` on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(e.to_string()))?
}

/// Decides one client-token request and prepares its token for the device. Blocking.
pub(super) fn prepare_client(app: &App, req: &ClientTokenRequest) -> Result<Item, ApiError> {
    if app.stopping.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable("the service is stopping".into()));
    }
    app.require_current_state()?;
    let now = now_unix();
    let signing = app.signing.load();
    let authorization = policy::authorize_client(&signing.state, &app.issued, req, now)?;
    let signer =
        signing.signer_at(now).ok_or_else(|| ApiError::NoActiveKey("no token-signing key is active".into()))?;
    let prepared = signer.prepare_client(&req.device_id, &req.client_cert_thumbprint, now)?;
    let subject = prepared.claims().device_id().unwrap_or_default().to_owned();
    Ok(Item { prepared, subject, authorization })
}

/// Signs through the pipeline (a single request: busy if the queue is full) and waits for the
/// token, released only once its audit record is durable.
async fn sign(app: &App, caller: &Caller, item: Item) -> Result<IssuedToken, ApiError> {
    let ticket = app.pipeline.try_submit(item, caller.requester())?;
    let mut results = ticket.await.map_err(|_| ApiError::Unavailable("the service is stopping".into()))?;
    results.pop().ok_or_else(|| ApiError::Internal("no result".into()))?.map_err(ApiError::from)
}

fn token_response(t: &IssuedToken) -> Json<Value> {
    Json(json!({"token": t.token, "expires": t.expires}))
}

/// `POST /v1/client-tokens`.
pub(super) async fn post_client_token(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: ClientTokenRequest = parse(&body)?;
    let a = Arc::clone(&app);
    let item = blocking(move || prepare_client(&a, &req)).await?;
    Ok(token_response(&sign(&app, &caller, item).await?))
}

/// `POST /v1/access-tokens`.
pub(super) async fn post_access_token(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: AccessTokenRequest = parse(&body)?;
    let a = Arc::clone(&app);
    let item = blocking(move || {
        a.require_current_state()?;
        let now = now_unix();
        let signing = a.signing.load();
        let (authorization, device) = policy::authorize_access(&signing.state, &req, now)?;
        let signer =
            signing.signer_at(now).ok_or_else(|| ApiError::NoActiveKey("no token-signing key is active".into()))?;
        let prepared = signer.prepare_access(&device, &req.client_cert_thumbprint, now)?;
        Ok(Item { prepared, subject: device, authorization })
    })
    .await?;
    Ok(token_response(&sign(&app, &caller, item).await?))
}

/// `POST /v1/tokens:verify`.
pub(super) async fn post_verify(State(app): State<Arc<App>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: VerifyRequest = parse(&body)?;
    blocking(move || {
        app.require_current_state()?;
        match policy::verify(&app.state(), &req, None, now_unix()) {
            Ok(v) => Ok(Json(json!({"valid": true, "kind": v.kind, "claims": v.claims}))),
            Err(policy::PolicyError::Rejected(r)) => Ok(Json(json!({"valid": false, "reason": r.reason.code()}))),
            Err(e) => Err(e.into()),
        }
    })
    .await
}
