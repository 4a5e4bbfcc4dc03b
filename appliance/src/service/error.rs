//! [`ApiError`]: everything a request can fail with, and the one function ([`ApiError::parts`])
//! that maps it to an HTTP status and a stable wire `code`. Clients get the code and a message
//! that says what to do; internals go to the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::audit::AuditError;
use crate::pipeline::PipelineError;
use crate::policy::PolicyError;
use crate::token::issue::IssueError;
use crate::token::{Reason, Rejection};

/// Seconds a client is told to wait before retrying a 503.
pub const RETRY_AFTER: u64 = 5;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The body is not the JSON the endpoint takes.
    #[error("{0}")]
    BadRequest(String),
    /// A field has a bad value (device id, thumbprint, lifetime).
    #[error("{message}")]
    Invalid {
        /// The stable code (`invalid_device_id`, `invalid_thumbprint`, …).
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The proof (bulk token, current client token) or presented token was refused.
    #[error("{0}")]
    ProofRejected(Rejection),
    /// A renewal before `[tokens] renew_after_days`: the current token stays valid.
    #[error("{0}")]
    RenewalTooEarly(PolicyError),
    /// The device failed.
    #[error("key device: {0}")]
    Backend(hsm_adapters::Error),
    /// The audit record could not be made durable: no signature is released.
    #[error(transparent)]
    Audit(AuditError),
    /// The caller's certificate was revoked (or expired) since its connection was made.
    #[error("the client certificate is revoked or expired")]
    CallerRefused,
    /// No token-signing key is active now (an administrator must rotate or un-revoke).
    #[error("{0}")]
    NoActiveKey(String),
    /// Too many requests (or batch lines) from this management point.
    #[error("rate limit: retry in {0} s")]
    RateLimited(u64),
    /// This management point already streams as many batches as it may.
    #[error("{0} batches already streaming")]
    TooManyBatches(u32),
    /// The client did not send its body (or a batch's next line) in time.
    #[error("{0}")]
    Timeout(String),
    /// A body over its cap.
    #[error("{message}")]
    TooLarge {
        /// `body_too_large` or `batch_too_large`.
        code: &'static str,
        /// What the cap is.
        message: String,
    },
    /// No such endpoint (or no such thing at it).
    #[error("{0}")]
    NotFound(String),
    /// The endpoint exists, not with this method (the answer's `Allow` says which).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body's `Content-Type` is not what the endpoint takes.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The service is busy, stopping or not ready.
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
            IssueError::Lifetime(_) | IssueError::DeviceId(_) | IssueError::Thumbprint(_) => {
                ApiError::Invalid { code: e.code(), message: e.to_string() }
            }
            IssueError::KeyRetiring { .. } => ApiError::NoActiveKey(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::DeviceId(_) => ApiError::Invalid { code: "invalid_device_id", message: e.to_string() },
            PolicyError::Thumbprint(_) => ApiError::Invalid { code: "invalid_thumbprint", message: e.to_string() },
            PolicyError::Rejected(r) => ApiError::ProofRejected(r),
            PolicyError::RenewalTooEarly { .. } => ApiError::RenewalTooEarly(e),
            PolicyError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Issue(e) => e.into(),
            PipelineError::Audit(e) => ApiError::Audit(e),
            PipelineError::Busy => ApiError::Unavailable("the signing queue is full; retry shortly".into()),
            PipelineError::Stopped => ApiError::Unavailable("the service is stopping".into()),
            PipelineError::NoActiveKey => ApiError::NoActiveKey(e.to_string()),
            PipelineError::CallerRefused => ApiError::CallerRefused,
            PipelineError::StateUnconfirmed => ApiError::Unavailable(e.to_string()),
            PipelineError::NoLongerAuthorised(what) => ApiError::ProofRejected(Rejection::new(
                Reason::Blocked,
                format!("{what} was blocked while the request waited to be signed"),
            )),
        }
    }
}

impl ApiError {
    /// The one mapping from an error to (HTTP status, stable code, client message).
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            ApiError::Invalid { code, message } => (StatusCode::BAD_REQUEST, code, message.clone()),
            ApiError::ProofRejected(r) => {
                (StatusCode::FORBIDDEN, "proof_rejected", format!("{}: {}", r.reason.code(), r.detail))
            }
            ApiError::CallerRefused => (
                StatusCode::FORBIDDEN,
                "client_certificate_refused",
                "this management point's certificate was revoked or has expired; enrol it again".into(),
            ),
            ApiError::NoActiveKey(m) => (StatusCode::SERVICE_UNAVAILABLE, "no_active_key", m.clone()),
            ApiError::RenewalTooEarly(e) => (StatusCode::CONFLICT, "renewal_too_early", e.to_string()),
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
            ApiError::TooManyBatches(n) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_batches",
                format!(
                    "this management point already streams {n} batches, the most it may; send this one when one ends"
                ),
            ),
            ApiError::Timeout(m) => (StatusCode::REQUEST_TIMEOUT, "request_timeout", m.clone()),
            ApiError::TooLarge { code, message } => (StatusCode::PAYLOAD_TOO_LARGE, code, message.clone()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone()),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take this method; the Allow header lists those it takes".into(),
            ),
            ApiError::UnsupportedMediaType(m) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", m.clone())
            }
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m.clone()),
            ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the service log".into())
            }
        }
    }

    /// The `{"error":{…}}` object (a response body, or one batch line): a stable `code`, a
    /// `message`, and for a refused token its stable `reason` (`key_revoked`, `expired`, …).
    pub fn to_json(&self) -> Value {
        let (_, code, message) = self.parts();
        match self {
            ApiError::ProofRejected(r) => {
                json!({"error": {"code": code, "reason": r.reason.code(), "message": message}})
            }
            _ => json!({"error": {"code": code, "message": message}}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, _) = self.parts();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, "request failed");
        }
        let mut response = (status, Json(self.to_json())).into_response();
        if let ApiError::RateLimited(s) = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*s));
        } else if matches!(self, ApiError::Timeout(_) | ApiError::TooLarge { .. }) {
            // The rest of the body is not read: the connection cannot carry another request.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else if status == StatusCode::SERVICE_UNAVAILABLE || matches!(self, ApiError::TooManyBatches(_)) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER));
        }
        response
    }
}
