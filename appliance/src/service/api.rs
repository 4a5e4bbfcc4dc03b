//! The endpoints of SPEC §4, and [`ApiError`]: the one place where internal errors become an
//! HTTP status and a stable wire `code`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use der::{Decode, Encode};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{App, Caller};
use crate::audit::AuditError;
use crate::ops::tokens::token_event;
use crate::store::{KeyRole, KeyStatus};
use crate::token::issue::IssueError;
use crate::token::verify::{self, VerifyError};
use crate::token::{IssuedToken, Rejection, TokenKind, b64};

/// Largest JSON body on the single-item endpoints.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not the JSON the endpoint takes.
    #[error("{0}")]
    BadRequest(String),
    /// A field has a bad value (device id, thumbprint, lifetime).
    #[error(transparent)]
    Invalid(IssueError),
    /// The proof (bulk token, current client token) or presented token was refused.
    #[error("{0}")]
    ProofRejected(Rejection),
    /// The device failed.
    #[error("key device: {0}")]
    Backend(hsm_adapters::Error),
    /// The audit record could not be made durable: no signature is released.
    #[error(transparent)]
    Audit(AuditError),
    /// Too many requests from this management point.
    #[error("rate limit: retry in {0} s")]
    RateLimited(u64),
    /// The service is stopping or not ready.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (the message goes to the log, not the client).
    #[error("{0}")]
    Internal(String),
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Backend(b) => ApiError::Backend(b),
            IssueError::Lifetime(_) | IssueError::DeviceId(_) | IssueError::Thumbprint(_) => ApiError::Invalid(e),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl ApiError {
    /// The one mapping from an error to (HTTP status, stable code, client message).
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            ApiError::Invalid(e) => (StatusCode::BAD_REQUEST, e.code(), e.to_string()),
            ApiError::ProofRejected(r) => {
                (StatusCode::FORBIDDEN, "proof_rejected", format!("{}: {}", r.reason.code(), r.detail))
            }
            ApiError::Backend(e) => {
                let status = match e.code() {
                    "backend_busy" | "backend_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, "backend_error", "the key device could not sign; try again later".into())
            }
            ApiError::Audit(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit record could not be made durable, so no signature was released; try again later".into(),
            ),
            ApiError::RateLimited(s) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests from this management point; retry in {s} s"),
            ),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m.clone()),
            ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the service log".into())
            }
        }
    }

    /// The `{"error":{…}}` object for a batch line.
    pub fn to_json(&self) -> Value {
        let (_, code, message) = self.parts();
        json!({"error": {"code": code, "message": message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, "request failed");
        }
        let mut response = (status, Json(json!({"error": {"code": code, "message": message}}))).into_response();
        if let ApiError::RateLimited(s) = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*s));
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(5));
        }
        response
    }
}

/// The proof that a device may have a client token.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Proof {
    /// The MP vouches the device registered on the internal network.
    Internal,
    /// A bulk registration token.
    Bulk {
        /// The token.
        token: String,
    },
    /// The device's current client token.
    Renew {
        /// The token.
        token: String,
    },
}

/// `POST /v1/client-tokens` body (and one batch line).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTokenRequest {
    /// `GUID:<SMS client GUID>`.
    pub device_id: String,
    /// x5t#S256 of the client's certificate.
    pub client_cert_thumbprint: String,
    /// Why the device may have a token.
    pub proof: Proof,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessTokenRequest {
    token: String,
    client_cert_thumbprint: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    token: String,
    client_cert_thumbprint: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the body is not valid: {e}")))
}

fn verify_token(
    app: &App,
    token: &str,
    thumbprint: Option<&str>,
    expect: Option<TokenKind>,
) -> Result<crate::token::Verified, ApiError> {
    let keys = app.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let store = app.store();
    verify::verify(&app.policy, &keys, &*store, token, thumbprint, expect, crate::pki::now_unix()).map_err(
        |e| match e {
            VerifyError::Rejected(r) => ApiError::ProofRejected(r),
            VerifyError::Registry(e) => ApiError::Internal(e),
        },
    )
}

/// Signs a prepared token, timing the device, counting errors.
fn sign(app: &App, prepared: crate::token::issue::PreparedToken) -> Result<IssuedToken, ApiError> {
    app.metrics.sessions_in_use.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let result = app.signer.sign(prepared);
    app.metrics.sessions_in_use.fetch_sub(1, Ordering::Relaxed);
    app.metrics.sign_seconds.observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => app.note_backend(Ok(())),
        Err(IssueError::Backend(e)) => app.note_backend(Err(e)),
        Err(_) => {}
    }
    Ok(result?)
}

/// Makes the audit record durable, then counts the token: only then may it be released.
fn release(app: &App, token: IssuedToken, caller: &Caller, subject: &str) -> Result<IssuedToken, ApiError> {
    app.audit.append(vec![token_event(&token, &caller.subject, subject)]).map_err(ApiError::Audit)?;
    let kind = token.claims.kind() as usize;
    app.metrics.tokens_issued[kind].fetch_add(1, Ordering::Relaxed);
    Ok(token)
}

/// One client-token request, start to finish (blocking: call from a blocking thread).
pub fn client_token(app: &App, caller: &Caller, req: &ClientTokenRequest) -> Result<IssuedToken, ApiError> {
    if app.stopping.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable("the service is stopping".into()));
    }
    let now = crate::pki::now_unix();
    // Validate the request before checking any proof or touching the device.
    let prepared = app.signer.prepare_client(&req.device_id, &req.client_cert_thumbprint, now)?;
    match &req.proof {
        Proof::Internal => {}
        Proof::Bulk { token } => {
            verify_token(app, token, None, Some(TokenKind::Bulk))?;
        }
        Proof::Renew { token } => {
            let current = verify_token(app, token, Some(&req.client_cert_thumbprint), Some(TokenKind::Client))?;
            if current.claims.device_id() != prepared.claims().device_id() {
                return Err(ApiError::ProofRejected(Rejection::new(
                    crate::token::Reason::BindingMismatch,
                    "the token presented for renewal belongs to another device",
                )));
            }
        }
    }
    let token = sign(app, prepared)?;
    let subject = token.claims.device_id().unwrap_or_default().to_owned();
    release(app, token, caller, &subject)
}

fn token_response(t: &IssuedToken) -> Json<Value> {
    Json(json!({"token": t.token, "expires": t.expires}))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(e.to_string()))?
}

async fn post_client_token(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: ClientTokenRequest = parse(&body)?;
    let t = blocking(move || client_token(&app, &caller, &req)).await?;
    Ok(token_response(&t))
}

async fn post_access_token(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: AccessTokenRequest = parse(&body)?;
    let t = blocking(move || {
        let current = verify_token(&app, &req.token, Some(&req.client_cert_thumbprint), Some(TokenKind::Client))?;
        let device = current.claims.device_id().unwrap_or_default().to_owned();
        let prepared = app.signer.prepare_access(&device, &req.client_cert_thumbprint, crate::pki::now_unix())?;
        let token = sign(&app, prepared)?;
        release(&app, token, &caller, &device)
    })
    .await?;
    Ok(token_response(&t))
}

async fn post_verify(State(app): State<Arc<App>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: VerifyRequest = parse(&body)?;
    blocking(move || match verify_token(&app, &req.token, req.client_cert_thumbprint.as_deref(), None) {
        Ok(v) => Ok(Json(json!({"valid": true, "kind": v.kind, "claims": v.claims}))),
        Err(ApiError::ProofRejected(r)) => Ok(Json(json!({"valid": false, "reason": r.reason.code()}))),
        Err(e) => Err(e),
    })
    .await
}

/// `POST /v1/client-tokens:batch`: NDJSON in, NDJSON out, same order, a per-item error object
/// for a failing line. Lines are read from the request stream as they arrive, so memory stays
/// bounded whatever the length.
async fn post_batch(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, body: Body) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut pending: Vec<u8> = Vec::new();
        let mut items = 0u64;
        let mut overlong = false;
        loop {
            let chunk = stream.next().await;
            let done = chunk.is_none();
            match chunk {
                Some(Ok(bytes)) => pending.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    let _ = tx
                        .send(Ok(Bytes::from(format!(
                            "{}\n",
                            ApiError::BadRequest(format!("request stream: {e}")).to_json()
                        ))))
                        .await;
                    break;
                }
                None => {}
            }
            let mut lines: Vec<Vec<u8>> = Vec::new();
            while let Some(at) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=at).collect();
                if overlong {
                    overlong = false;
                    lines.push(b"\x00overlong".to_vec());
                } else {
                    lines.push(line);
                }
            }
            if pending.len() > BODY_LIMIT {
                overlong = true;
                pending.clear();
            }
            if done && (!pending.is_empty() || overlong) {
                lines.push(if overlong { b"\x00overlong".to_vec() } else { std::mem::take(&mut pending) });
            }
            for line in lines {
                let text = String::from_utf8_lossy(&line).trim().to_owned();
                if text.is_empty() {
                    continue;
                }
                items += 1;
                let (app, caller) = (Arc::clone(&app), caller.clone());
                let result = if text.starts_with('\0') {
                    Err(ApiError::BadRequest(format!("a line is longer than {BODY_LIMIT} bytes")))
                } else {
                    blocking(move || client_token(&app, &caller, &parse::<ClientTokenRequest>(text.as_bytes())?)).await
                };
                let out = match result {
                    Ok(t) => json!({"token": t.token, "expires": t.expires}),
                    Err(e) => e.to_json(),
                };
                if tx.send(Ok(Bytes::from(format!("{out}\n")))).await.is_err() {
                    return;
                }
            }
            if done {
                break;
            }
        }
        app.metrics.batch_size.observe(items as f64);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}

/// `x5t#S256`, `x5t` and the SPKI of a certificate.
fn cert_facts(der: &[u8]) -> Option<(x509_cert::Certificate, String, String)> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some((cert, crate::pki::x5t(der), crate::pki::x5t_s256(der)))
}

/// The JWK of a token-signing certificate's public key (RFC 7517/7518, with x5c/x5t/x5t#S256).
fn jwk(der: &[u8], status: KeyStatus, key_id: &str) -> Option<Value> {
    #[derive(der::Sequence)]
    struct RsaPublicKey<'a> {
        n: der::asn1::UintRef<'a>,
        e: der::asn1::UintRef<'a>,
    }
    let (cert, x5t, x5t_s256) = cert_facts(der)?;
    let spki = cert.tbs_certificate().subject_public_key_info();
    let bits = spki.subject_public_key.as_bytes()?;
    let x5c = base64_std(der);
    let mut key = if spki.algorithm.oid == hsm_adapters::key::OID_EC_PUBLIC_KEY {
        if bits.len() != 65 || bits[0] != 4 {
            return None;
        }
        json!({"kty": "EC", "crv": "P-256", "x": b64::encode(&bits[1..33]), "y": b64::encode(&bits[33..])})
    } else {
        let rsa = RsaPublicKey::from_der(bits).ok()?;
        json!({"kty": "RSA", "n": b64::encode(rsa.n.as_bytes()), "e": b64::encode(rsa.e.as_bytes())})
    };
    let alg = if key["kty"] == "EC" { "ES256" } else { "RS256" };
    let extra = json!({
        "use": "sig", "alg": alg, "kid": x5t, "x5t": x5t, "x5t#S256": x5t_s256, "x5c": [x5c],
        "sitesign:key_id": key_id, "sitesign:status": status.as_str(),
    });
    if let (Some(k), Some(e)) = (key.as_object_mut(), extra.as_object()) {
        k.extend(e.clone());
    }
    Some(key)
}

fn base64_std(der: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(der)
}

async fn get_certificates(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let keys = app.store().keys().map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut out = Vec::new();
        for k in keys
            .iter()
            .filter(|k| matches!(k.role, KeyRole::Issuing | KeyRole::TokenSigning) && k.status != KeyStatus::Retired)
        {
            let Some(der) = &k.certificate else { continue };
            let Some((cert, x5t, x5t_s256)) = cert_facts(der) else { continue };
            out.push(json!({
                "role": if k.role == KeyRole::Issuing { "sms-issuing" } else { "token-signing" },
                "key_id": k.id,
                "status": k.status.as_str(),
                "subject": cert.tbs_certificate().subject().to_string(),
                "not_after": k.retire_after,
                "x5t": x5t,
                "x5t#S256": x5t_s256,
                "pem": crate::pki::pem("CERTIFICATE", &cert.to_der().unwrap_or_default()).unwrap_or_default(),
            }));
        }
        Ok(Json(json!({"certificates": out})))
    })
    .await
}

async fn get_jwks(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    blocking(move || {
        let keys = app.store().keys().map_err(|e| ApiError::Internal(e.to_string()))?;
        let jwks: Vec<Value> = keys
            .iter()
            .filter(|k| k.role == KeyRole::TokenSigning && k.status != KeyStatus::Retired)
            .filter_map(|k| jwk(k.certificate.as_deref()?, k.status, &k.id))
            .collect();
        let mut r = Json(json!({"keys": jwks})).into_response();
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
        Ok(r)
    })
    .await
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let ready = app.ready();
    let body = Json(json!({
        "ready": ready,
        "audit_writable": app.audit.healthy(),
        "stopping": app.stopping.load(Ordering::Relaxed),
    }));
    if ready { body.into_response() } else { (StatusCode::SERVICE_UNAVAILABLE, body).into_response() }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let stats = app.audit.stats();
    let text = app.metrics.render(&stats.commit_seconds, stats.failures.load(Ordering::Relaxed), app.ready());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Per-MP rate limit and response counting.
async fn limit(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(caller) = request.extensions().get::<Caller>()
        && let Err(wait) = app.limiter.take(&caller.subject)
    {
        app.metrics.response(429);
        return ApiError::RateLimited(wait).into_response();
    }
    let response = next.run(request).await;
    app.metrics.response(response.status().as_u16());
    response
}

async fn not_found() -> ApiError {
    ApiError::BadRequest("no such endpoint; see SPEC §4".into())
}

fn ops_routes() -> Router<Arc<App>> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

/// The mTLS API.
pub fn router(app: Arc<App>) -> Router {
    let single = Router::new()
        .route("/v1/client-tokens", post(post_client_token))
        .route("/v1/access-tokens", post(post_access_token))
        .route("/v1/tokens:verify", post(post_verify))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    Router::new()
        .merge(single)
        .route("/v1/client-tokens:batch", post(post_batch).layer(DefaultBodyLimit::disable()))
        .route("/v1/certificates", get(get_certificates))
        .route("/.well-known/jwks.json", get(get_jwks))
        .merge(ops_routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), limit))
        .with_state(app)
}

/// The plain-HTTP ops listener: health, readiness, metrics — nothing else.
pub fn ops_router(app: Arc<App>) -> Router {
    ops_routes().fallback(not_found).with_state(app)
}
