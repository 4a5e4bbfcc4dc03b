//! The endpoints of SPEC §4, and [`ApiError`]: the one place where internal errors become an
//! HTTP status and a stable wire `code`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

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
use crate::pipeline::PipelineError;
use crate::store::{KeyRole, KeyStatus};
use crate::token::issue::IssueError;
use crate::token::issue::PreparedToken;
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

/// The bulk-token registry, read from the store only when a bulk token is verified (so that
/// verifications of device tokens, the bulk of a renewal, never wait for the store's lock).
struct Registry<'a>(&'a App);

impl verify::BulkRegistry for Registry<'_> {
    fn bulk_blocked(&self, guid: crate::token::Guid) -> Result<Option<bool>, String> {
        verify::BulkRegistry::bulk_blocked(&*self.0.store(), guid)
    }
}

fn verify_token(
    app: &App,
    token: &str,
    thumbprint: Option<&str>,
    expect: Option<TokenKind>,
) -> Result<crate::token::Verified, ApiError> {
    let keys = app.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    verify::verify(&app.policy, &keys, &Registry(app), token, thumbprint, expect, crate::pki::now_unix()).map_err(|e| {
        match e {
            VerifyError::Rejected(r) => ApiError::ProofRejected(r),
            VerifyError::Registry(e) => ApiError::Internal(e),
        }
    })
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Issue(e) => e.into(),
            PipelineError::Audit(e) => ApiError::Audit(e),
            PipelineError::Busy => ApiError::Unavailable("the signing queue is full; retry shortly".into()),
            PipelineError::Stopped => ApiError::Unavailable("the service is stopping".into()),
        }
    }
}

/// Checks one client-token request and builds its token, ready for the device: the device id and
/// thumbprint, then the proof (a bulk token or the current client token, fully verified).
/// Blocking (a verification may read the registry): call from a blocking thread.
pub fn validate_client(app: &App, req: &ClientTokenRequest) -> Result<(PreparedToken, String), ApiError> {
    if app.stopping.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable("the service is stopping".into()));
    }
    let prepared = app.signer.prepare_client(&req.device_id, &req.client_cert_thumbprint, crate::pki::now_unix())?;
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
    let subject = prepared.claims().device_id().unwrap_or_default().to_owned();
    Ok((prepared, subject))
}

/// Signs through the pipeline (a single request: busy if the queue is full) and waits for the
/// token, released only once its audit record is durable.
async fn sign_one(
    app: &App,
    caller: &Caller,
    prepared: PreparedToken,
    subject: String,
) -> Result<IssuedToken, ApiError> {
    let ticket = app.pipeline.try_submit((prepared, subject), Arc::from(caller.subject.as_str()))?;
    let mut results = ticket.await.map_err(|_| ApiError::Unavailable("the service is stopping".into()))?;
    results.pop().ok_or_else(|| ApiError::Internal("no result".into()))?.map_err(ApiError::from)
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
    let a = Arc::clone(&app);
    let (prepared, subject) = blocking(move || validate_client(&a, &req)).await?;
    Ok(token_response(&sign_one(&app, &caller, prepared, subject).await?))
}

async fn post_access_token(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: AccessTokenRequest = parse(&body)?;
    let a = Arc::clone(&app);
    let (prepared, device) = blocking(move || {
        let current = verify_token(&a, &req.token, Some(&req.client_cert_thumbprint), Some(TokenKind::Client))?;
        let device = current.claims.device_id().unwrap_or_default().to_owned();
        Ok((a.signer.prepare_access(&device, &req.client_cert_thumbprint, crate::pki::now_unix())?, device))
    })
    .await?;
    Ok(token_response(&sign_one(&app, &caller, prepared, device).await?))
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

/// Most results a batch keeps in flight (signing or waiting for the audit commit) before it stops
/// reading its request: this and the line limit bound a batch's memory whatever its length.
pub const BATCH_IN_FLIGHT: usize = 4096;
/// Request chunks of one batch validated at the same time (more would only contend for the
/// same cores).
fn validating() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

/// Batch lines' results, in request order: a ticket for a group of consecutive lines queued for
/// signing, or an error found before signing.
enum Slot {
    Group(crate::pipeline::Ticket, usize),
    Failed(ApiError),
}

/// Splits complete lines off `pending`. A line longer than the limit is replaced by `None` (an
/// error for that item) and the rest of it skipped.
fn take_lines(pending: &mut Vec<u8>, skipping: &mut bool, end: bool) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    while let Some(at) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=at).collect();
        if std::mem::take(skipping) {
            out.push(None);
        } else {
            out.push(Some(line));
        }
    }
    if pending.len() > BODY_LIMIT {
        *skipping = true;
        pending.clear();
    }
    if end && (*skipping || !pending.is_empty()) {
        out.push(if std::mem::take(skipping) { None } else { Some(std::mem::take(pending)) });
    }
    out.retain(|l| l.as_ref().is_none_or(|l| !l.iter().all(u8::is_ascii_whitespace)));
    out
}

/// `POST /v1/client-tokens:batch`: NDJSON in, NDJSON out, in request order, a per-item
/// `{"error":…}` for a failing line (the batch goes on). The request is read as it arrives; each
/// received chunk of lines is validated on a blocking thread (proofs fully verified) and its
/// tokens queued for the signing workers while the next chunk is read; results stream back in
/// order as their audit records become durable.
async fn post_batch(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, body: Body) -> Response {
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let (slot_tx, mut slot_rx) = tokio::sync::mpsc::channel::<Slot>(BATCH_IN_FLIGHT / crate::pipeline::GROUP);
    // The writer: awaits each slot in order and streams its line.
    let writer_app = Arc::clone(&app);
    tokio::spawn(async move {
        let mut items = 0u64;
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(slot) = slot_rx.recv().await {
            let lines: Vec<Value> = match slot {
                Slot::Group(t, n) => match t.await {
                    Ok(results) => results
                        .into_iter()
                        .map(|r| match r {
                            Ok(token) => json!({"token": token.token, "expires": token.expires}),
                            Err(e) => ApiError::from(e).to_json(),
                        })
                        .collect(),
                    Err(_) => vec![ApiError::Unavailable("the service is stopping".into()).to_json(); n],
                },
                Slot::Failed(e) => vec![e.to_json()],
            };
            for line in lines {
                items += 1;
                serde_json::to_writer(&mut buf, &line).unwrap_or_default();
                buf.push(b'\n');
            }
            // Flush when nothing more is ready, or the buffer is large.
            if slot_rx.is_empty() || buf.len() > 48 * 1024 {
                if out_tx.send(Ok(Bytes::from(std::mem::take(&mut buf)))).await.is_err() {
                    break;
                }
                buf = Vec::with_capacity(64 * 1024);
            }
        }
        if !buf.is_empty() {
            let _ = out_tx.send(Ok(Bytes::from(buf))).await;
        }
        writer_app.metrics.batch_size.observe(items as f64);
    });
    // Validated chunks, in request order; up to VALIDATING chunks are checked at once (proof
    // verification is the costly part and spreads over the cores).
    type Checked = Vec<Result<(PreparedToken, String), ApiError>>;
    let (checked_tx, mut checked_rx) = tokio::sync::mpsc::channel::<tokio::task::JoinHandle<Checked>>(validating());
    // The submitter: validated items → pipeline (waiting for room: backpressure), in order.
    let submit_app = Arc::clone(&app);
    tokio::spawn(async move {
        let caller_id: Arc<str> = Arc::from(caller.subject.as_str());
        while let Some(handle) = checked_rx.recv().await {
            let checked = handle.await.unwrap_or_else(|e| vec![Err(ApiError::Internal(e.to_string()))]);
            // Consecutive good lines go to the workers in groups; a bad line keeps its place.
            let mut group: Vec<crate::pipeline::Item> = Vec::with_capacity(crate::pipeline::GROUP);
            let mut checked = checked.into_iter().peekable();
            while let Some(item) = checked.next() {
                let mut slots = Vec::with_capacity(2);
                match item {
                    Ok(ok) => group.push(ok),
                    Err(e) => slots.push(Slot::Failed(e)),
                }
                let flush = group.len() == crate::pipeline::GROUP
                    || !slots.is_empty()
                    || checked.peek().is_none_or(Result::is_err);
                if flush && !group.is_empty() {
                    let items = std::mem::replace(&mut group, Vec::with_capacity(crate::pipeline::GROUP));
                    let n = items.len();
                    match submit_app.pipeline.submit(items, Arc::clone(&caller_id)).await {
                        Ok(ticket) => slots.insert(0, Slot::Group(ticket, n)),
                        // Every line of the group gets its answer.
                        Err(e) => {
                            let failed = (0..n).map(|_| Slot::Failed(ApiError::from(PipelineError::Stopped)));
                            tracing::warn!(error = %e, "batch group not queued");
                            slots.splice(0..0, failed);
                        }
                    }
                }
                for slot in slots {
                    if slot_tx.send(slot).await.is_err() {
                        return; // the client went away
                    }
                }
            }
        }
    });
    // The reader: request chunks → lines → validation on the blocking pool.
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut pending: Vec<u8> = Vec::new();
        let mut skipping = false;
        loop {
            let chunk = stream.next().await;
            let end = !matches!(chunk, Some(Ok(_)));
            if let Some(Err(e)) = &chunk {
                let message = format!("request stream: {e}");
                let failed = tokio::spawn(async move { vec![Err(ApiError::BadRequest(message))] });
                let _ = checked_tx.send(failed).await;
            }
            if let Some(Ok(bytes)) = chunk {
                pending.extend_from_slice(&bytes);
            }
            let lines = take_lines(&mut pending, &mut skipping, end);
            if !lines.is_empty() {
                let a = Arc::clone(&app);
                let handle = tokio::task::spawn_blocking(move || {
                    lines
                        .into_iter()
                        .map(|line| match line {
                            None => Err(ApiError::BadRequest(format!("a line is longer than {BODY_LIMIT} bytes"))),
                            Some(l) => validate_client(&a, &parse::<ClientTokenRequest>(&l)?),
                        })
                        .collect::<Checked>()
                });
                if checked_tx.send(handle).await.is_err() {
                    return;
                }
            }
            if end {
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(out_rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
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
