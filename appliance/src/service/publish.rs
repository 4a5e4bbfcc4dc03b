//! What the service publishes to anyone with a valid client certificate: the certificates
//! (`GET /v1/certificates`), the token-signing keys as a JWKS (`GET /.well-known/jwks.json`) and
//! the CRL of the active SMS Issuing root (`GET /v1/crl`). All read the current state; the
//! certificates come from the one "what to publish" query, [`crate::keys::published`].

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hsm_adapters::{KeyComponents, PublicKey};
use serde_json::{Value, json};

use super::app::App;
use super::error::ApiError;
use super::tokens::blocking;
use crate::keys::{self, KeyRole};
use crate::pki;
use crate::time::now_unix;
use crate::token::b64;

fn public_key_of(der: &[u8]) -> Option<(x509_cert::Certificate, PublicKey)> {
    let cert = pki::parse_certificate(der).ok()?;
    let spki = der::Encode::to_der(cert.tbs_certificate().subject_public_key_info()).ok()?;
    Some((cert, PublicKey::from_spki_der(&spki).ok()?))
}

/// The JWK of a token-signing certificate's public key (RFC 7517/7518), with `x5c`, `x5t`,
/// `x5t#S256` and `kid` = `x5t`.
pub fn jwk(der: &[u8], status: &str, key_id: &str) -> Option<Value> {
    let (_, public) = public_key_of(der)?;
    let x5t = pki::x5t(der);
    let mut key = match public.components().ok()? {
        KeyComponents::EcP256 { x, y } => {
            json!({"kty": "EC", "crv": "P-256", "x": b64::encode(&x), "y": b64::encode(&y)})
        }
        KeyComponents::Rsa { modulus, exponent } => {
            json!({"kty": "RSA", "n": b64::encode(&modulus), "e": b64::encode(&exponent)})
        }
    };
    let extra = json!({
        "use": "sig",
        "alg": public.algorithm().default_scheme().jws_alg(),
        "kid": x5t,
        "x5t": x5t,
        "x5t#S256": pki::x5t_s256(der),
        "x5c": [base64::engine::general_purpose::STANDARD.encode(der)],
        "sitesign:key_id": key_id,
        "sitesign:status": status,
    });
    if let (Some(k), Some(e)) = (key.as_object_mut(), extra.as_object()) {
        k.extend(e.clone());
    }
    Some(key)
}

/// `GET /v1/certificates`: every SMS Issuing root and token-signing certificate that is neither
/// retired nor revoked (pending ones included), and the cross-certificates between roots.
pub(super) async fn get_certificates(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let state = app.state();
    let mut out = Vec::new();
    for p in keys::published(&state.keys, now_unix()) {
        let Some((cert, _)) = public_key_of(p.der) else { continue };
        out.push(json!({
            "role": if p.key.role == KeyRole::Issuing { "sms-issuing" } else { "token-signing" },
            "key_id": p.key.id,
            "status": p.status.as_str(),
            "current": p.current,
            "subject": cert.tbs_certificate().subject().to_string(),
            "not_after": pki_not_after(&cert),
            "x5t": pki::x5t(p.der),
            "x5t#S256": pki::x5t_s256(p.der),
            "pem": pki::pem("CERTIFICATE", p.der).map_err(|e| ApiError::Internal(e.to_string()))?,
        }));
    }
    for (issuer, der) in &state.cross_certificates {
        let Some((cert, _)) = public_key_of(der) else { continue };
        out.push(json!({
            "role": "cross-certificate",
            "key_id": issuer,
            "status": "active",
            "current": true,
            "subject": cert.tbs_certificate().subject().to_string(),
            "not_after": pki_not_after(&cert),
            "x5t": pki::x5t(der),
            "x5t#S256": pki::x5t_s256(der),
            "pem": pki::pem("CERTIFICATE", der).map_err(|e| ApiError::Internal(e.to_string()))?,
        }));
    }
    Ok(Json(json!({"certificates": out})))
}

fn pki_not_after(cert: &x509_cert::Certificate) -> i64 {
    cert.tbs_certificate().validity().not_after.to_unix_duration().as_secs() as i64
}

/// `GET /.well-known/jwks.json`: a JWKS of every token-signing certificate that verifies or will.
pub(super) async fn get_jwks(State(app): State<Arc<App>>) -> Response {
    let state = app.state();
    let jwks: Vec<Value> = keys::published(&state.keys, now_unix())
        .into_iter()
        .filter(|p| p.key.role == KeyRole::TokenSigning)
        .filter_map(|p| jwk(p.der, p.status.as_str(), &p.key.id))
        .collect();
    let mut r = Json(json!({"keys": jwks})).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    r
}

/// `GET /v1/crl` query.
#[derive(Debug, serde::Deserialize)]
pub(super) struct CrlQuery {
    issuer: Option<String>,
}

/// `GET /v1/crl[?issuer=KEY_ID]`: the newest CRL of the active SMS Issuing root, or of the root
/// `issuer` while it still verifies (DER, `application/pkix-crl`).
pub(super) async fn get_crl(
    State(app): State<Arc<App>>,
    query: Result<axum::extract::Query<CrlQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query.map_err(|e| ApiError::BadRequest(format!("the query is not valid: {}", e.body_text())))?;
    let state = app.state();
    let root = match &query.issuer {
        None => state
            .active(KeyRole::Issuing)
            .map(|k| k.id.clone())
            .ok_or_else(|| ApiError::Unavailable("not initialised".into()))?,
        Some(id) => keys::published(&state.keys, now_unix())
            .into_iter()
            .find(|p| p.key.role == KeyRole::Issuing && &p.key.id == id)
            .map(|p| p.key.id.clone())
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "{:?} is not an SMS Issuing key that still verifies",
                    crate::policy::clip(id)
                ))
            })?,
    };
    let crl = blocking(move || app.store().latest_crl(&root).map_err(|e| ApiError::Unavailable(e.to_string()))).await?;
    let crl = crl.ok_or_else(|| ApiError::Unavailable("no CRL has been signed yet; retry shortly".into()))?;
    let mut r = (StatusCode::OK, crl.der).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pkix-crl"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    Ok(r)
}
