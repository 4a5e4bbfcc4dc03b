//! Strict verification, in the order of SPEC §3:
//!
//! 1. size, shape (three parts), canonical base64url of every part;
//! 2. the header: a JSON object without duplicate members, no `crit`/`jwk`/`jku`/`x5u`/`x5c`/`kid`,
//!    nothing but `typ` = `JWT`, `alg` and `x5t`;
//! 3. `x5t` names a token-signing certificate whose key is `active` or `verify-only` (for a
//!    renewal, [`Purpose::Renewal`], also `retired` or `revoked`: that is how a fleet moves off
//!    a withdrawn key — the caller decides what more such a token needs);
//! 4. `alg` equals the algorithm of *that key's record* — the header never chooses the algorithm,
//!    so `none`, `HS256` with the public key as secret, or RS/ES swaps fail here;
//! 5. the signature, with `ring` over the certificate's public key;
//! 6. the claims: strict JSON, exactly the members of their kind, of the right types;
//! 7. `nbf`/`exp` (and `iat`) with the configured skew, and a lifetime sitesign would issue;
//! 8. `iss`, `aud`, `TenantId` exactly this hierarchy's; category, type, authority, license;
//! 9. bulk tokens: the GUID is registered and not blocked; device tokens: the presented
//!    client-certificate thumbprint equals `cnf.x5t#S256`.

use std::collections::HashMap;

use hsm_adapters::{PublicKey, SignatureScheme};
use serde::Serialize;

use super::claims::{self, Claims, TokenKind};
use super::guid::Guid;
use super::json::{self, JsonProblem};
use super::{MAX_TOKEN_BYTES, Reason, Rejection, b64};
use crate::keys::{KeyRecord, KeyRole, KeyStatus};

/// A key tokens may be verified with.
#[derive(Debug, Clone)]
pub struct VerifyKey {
    /// The key's id.
    pub key_id: String,
    /// Its schedule: its state is read at verification time, so a scheduled activation or
    /// retirement takes effect at its second, not when the ring is next rebuilt.
    pub schedule: crate::keys::Schedule,
    /// The one scheme its tokens are signed with.
    pub scheme: SignatureScheme,
    /// The key's public key as `ring` takes it.
    public: Vec<u8>,
}

/// The token-signing keys by certificate thumbprint (`x5t`): every certificate of every key, so
/// that a key certified again under a new root still verifies the tokens that name its first
/// certificate.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    by_x5t: HashMap<String, VerifyKey>,
}

/// A key record that cannot be used for verification.
#[derive(Debug, thiserror::Error)]
#[error("token-signing key {key}: {reason}")]
pub struct KeyRingError {
    /// The key id.
    pub key: String,
    /// What is wrong with its record.
    pub reason: String,
}

impl KeyRing {
    /// The token-signing keys among `records` (every state is kept, so a retired key's tokens are
    /// refused as `key_not_usable`, not as unknown).
    pub fn from_records(records: &[KeyRecord]) -> Result<KeyRing, KeyRingError> {
        let mut by_x5t = HashMap::new();
        for r in records.iter().filter(|r| r.role == KeyRole::TokenSigning) {
            for der in &r.certificates {
                let bad = |reason: String| KeyRingError { key: r.id.clone(), reason };
                let cert = crate::pki::parse_certificate(der).map_err(|e| bad(e.to_string()))?;
                let spki = der::Encode::to_der(cert.tbs_certificate().subject_public_key_info())
                    .map_err(|e| bad(e.to_string()))?;
                let public = PublicKey::from_spki_der(&spki).map_err(|e| bad(e.to_string()))?;
                let scheme = public.algorithm().default_scheme();
                let public = public.subject_public_key_bytes().map_err(|e| bad(e.to_string()))?;
                let key = VerifyKey { key_id: r.id.clone(), schedule: r.schedule(), scheme, public };
                by_x5t.insert(crate::pki::x5t(der), key);
            }
        }
        Ok(KeyRing { by_x5t })
    }

    /// The key with certificate thumbprint `x5t`.
    pub fn get(&self, x5t: &str) -> Option<&VerifyKey> {
        self.by_x5t.get(x5t)
    }

    /// Whether `signature` over `message` verifies with the token-signing key `key_id` (any
    /// state: a checkpoint stays verifiable after its key is retired), in that key's scheme.
    pub fn verifies(&self, key_id: &str, message: &[u8], signature: &[u8]) -> bool {
        self.by_x5t
            .values()
            .filter(|k| k.key_id == key_id)
            .any(|k| hsm_adapters::checked::verify_raw(k.scheme, &k.public, message, signature))
    }
}

/// What a token's signature check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// It verifies, and is in the form sitesign signs.
    Valid,
    /// An ES256 signature that verifies but is not low-S: the other encoding of a valid one,
    /// refused unless the token was issued before sitesign signed low-S only (SPEC §9).
    HighS,
    /// It does not verify.
    Invalid,
}

/// A token's signature check (step 5 of [`verify`]) on its own: `sig` over `message` with the
/// public key `public` (an RSAPublicKey, or an uncompressed P-256 point) in `scheme`. Wycheproof's
/// vectors run through it (`appliance/tests/wycheproof.rs`).
pub fn check_signature(scheme: SignatureScheme, public: &[u8], message: &[u8], sig: &[u8]) -> SignatureCheck {
    if !hsm_adapters::checked::verify_raw(scheme, public, message, sig) {
        SignatureCheck::Invalid
    } else if scheme == SignatureScheme::EcdsaP256Sha256 && !hsm_adapters::checked::ecdsa_is_low_s(sig) {
        SignatureCheck::HighS
    } else {
        SignatureCheck::Valid
    }
}

/// What a token is being verified for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// To be used as it is (verification, an access token, a bulk registration): its key must
    /// be `active` or `verify-only`.
    Use,
    /// To be renewed under the active key (SPEC §7): a token of a `retired` or `revoked` key is
    /// accepted too, its signature still checked; only a `pending` key (which signed nothing)
    /// is refused.
    Renewal,
}

/// Where bulk-token GUIDs are registered.
pub trait BulkRegistry {
    /// `Some(blocked)` for a registered GUID, `None` for an unknown one.
    fn bulk_blocked(&self, guid: Guid) -> Result<Option<bool>, String>;
}

/// The hierarchy's rules.
#[derive(Debug, Clone, Copy)]
pub struct VerifyPolicy {
    /// The hierarchy GUID (`TenantId`, `iss`).
    pub hierarchy: Guid,
    /// Allowed clock skew on `nbf`/`exp`/`iat`, seconds.
    pub skew: i64,
    /// ES256 tokens issued (`iat`) before this time may carry a high `s`: they were signed before
    /// sitesign made its signatures low-S, and stay valid until they expire. `None`: none may.
    pub high_s_before: Option<i64>,
}

/// A token that passed every check.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// Its kind.
    pub kind: TokenKind,
    /// Its claims, in wire order.
    pub claims: Claims,
    /// The key that signed it.
    #[serde(skip)]
    pub key_id: String,
    /// That key's state.
    #[serde(skip)]
    pub key_status: KeyStatus,
}

/// Verification did not reach a verdict, or refused the token.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The token is refused.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The bulk registry could not be read: no verdict (the caller answers "unavailable").
    #[error("bulk-token registry unavailable: {0}")]
    Registry(String),
}

fn reject(reason: Reason, detail: impl Into<String>) -> VerifyError {
    VerifyError::Rejected(Rejection::new(reason, detail))
}

const FORBIDDEN_HEADERS: [&str; 6] = ["crit", "jwk", "jku", "x5u", "x5c", "kid"];

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, VerifyError> {
    b64::decode(part)
        .ok_or_else(|| reject(Reason::NonCanonicalEncoding, format!("the {what} is not canonical base64url")))
}

fn parse_part(bytes: &[u8], what: &str) -> Result<Vec<(String, serde_json::Value)>, VerifyError> {
    json::parse_object(bytes).map_err(|p| match p {
        JsonProblem::DuplicateKey(name) => reject(Reason::DuplicateKey, format!("the {what} names {name:?} twice")),
        JsonProblem::Malformed(e) => reject(Reason::Malformed, format!("the {what} is not a JSON object: {e}")),
    })
}

/// What to verify a token against: the hierarchy's rules, the keys, the bulk registry.
#[derive(Clone, Copy)]
pub struct Verifier<'a> {
    /// The hierarchy and skew.
    pub policy: &'a VerifyPolicy,
    /// The token-signing keys.
    pub keys: &'a KeyRing,
    /// The bulk-token registry.
    pub registry: &'a dyn BulkRegistry,
}

impl std::fmt::Debug for Verifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("policy", self.policy).finish_non_exhaustive()
    }
}

/// What is presented for verification.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The token.
    pub token: &'a str,
    /// The `x5t#S256` of the client certificate presented with a device token.
    pub thumbprint: Option<&'a str>,
    /// The only kind accepted, if any.
    pub expect: Option<TokenKind>,
    /// What it is for.
    pub purpose: Purpose,
}

/// Verifies a presented token at time `now`.
pub fn verify(with: Verifier<'_>, presented: Presented<'_>, now: i64) -> Result<Verified, VerifyError> {
    let Verifier { policy, keys, registry } = with;
    let Presented { token, thumbprint, expect, purpose } = presented;
    // 1. Size and shape.
    if token.len() > MAX_TOKEN_BYTES {
        return Err(reject(Reason::TooLarge, format!("{} bytes; at most {MAX_TOKEN_BYTES}", token.len())));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, sig] = parts[..] else {
        return Err(reject(Reason::Malformed, format!("{} parts; a JWS compact token has 3", parts.len())));
    };

    let (header_bytes, payload_bytes) = (decode_part(header, "header")?, decode_part(payload, "claim set")?);
    let sig = decode_part(sig, "signature")?;

    // 2. The header.
    let members = parse_part(&header_bytes, "header")?;
    if let Some((name, _)) = members.iter().find(|(n, _)| FORBIDDEN_HEADERS.contains(&n.as_str())) {
        return Err(reject(Reason::ForbiddenHeader, format!("header member {name:?} is never accepted")));
    }
    if let Some((name, _)) = members.iter().find(|(n, _)| !["typ", "alg", "x5t"].contains(&n.as_str())) {
        return Err(reject(Reason::UnknownHeader, format!("header member {name:?} is not one sitesign writes")));
    }
    let field = |name: &str| members.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_str());
    if field("typ") != Some("JWT") {
        return Err(reject(Reason::BadHeader, "typ must be \"JWT\""));
    }
    let x5t = field("x5t")
        .filter(|t| b64::decode(t).is_some_and(|b| b.len() == 20))
        .ok_or_else(|| reject(Reason::BadHeader, "x5t must be the base64url SHA-1 thumbprint of a certificate"))?;
    let alg = field("alg").ok_or_else(|| reject(Reason::BadHeader, "alg is missing or not a string"))?;

    // 3. The key, and 4. its algorithm.
    let key = keys
        .get(x5t)
        .ok_or_else(|| reject(Reason::UnknownKey, format!("no token-signing certificate has x5t {x5t}")))?;
    let status = key.schedule.status_at(now);
    match (status, purpose) {
        (KeyStatus::Active | KeyStatus::VerifyOnly, _) => {}
        (KeyStatus::Retired | KeyStatus::Revoked, Purpose::Renewal) => {}
        (KeyStatus::Revoked, Purpose::Use) => {
            return Err(reject(Reason::KeyRevoked, format!("key {} was revoked", key.key_id)));
        }
        (status, _) => {
            return Err(reject(Reason::KeyNotUsable, format!("key {} is {}", key.key_id, status.as_str())));
        }
    }
    if alg != key.scheme.jws_alg() {
        return Err(reject(
            Reason::AlgorithmMismatch,
            format!("alg {alg:?}; key {} signs {}", key.key_id, key.scheme.jws_alg()),
        ));
    }

    // 5. The signature: ES256 only in its low-S form (sitesign signs nothing else; n − s would
    // be a second valid encoding of the same token).
    let non_canonical =
        || reject(Reason::NonCanonicalSignature, String::from("the ES256 signature is not low-S (s > n/2)"));
    let signing_input = &token[..header.len() + 1 + payload.len()];
    let high_s = match check_signature(key.scheme, &key.public, signing_input.as_bytes(), &sig) {
        SignatureCheck::Valid => false,
        SignatureCheck::HighS if policy.high_s_before.is_none() => return Err(non_canonical()),
        SignatureCheck::HighS => true,
        SignatureCheck::Invalid => {
            return Err(reject(Reason::BadSignature, format!("the signature does not verify with key {}", key.key_id)));
        }
    };

    // 6. The claims.
    let claims = claims::read(parse_part(&payload_bytes, "claim set")?)?;
    let kind = claims.kind();
    // A high-S signature only on a token issued before sitesign's signatures were made low-S.
    let issued = claims.issued_at().unwrap_or(claims.window().0);
    if high_s && policy.high_s_before.is_none_or(|cutoff| issued >= cutoff) {
        return Err(non_canonical());
    }

    // 7. Time.
    let (nbf, exp) = claims.window();
    if exp <= nbf || exp - nbf > kind.max_lifetime() || claims.issued_at().is_some_and(|iat| iat > nbf) {
        return Err(reject(Reason::BadLifetime, format!("nbf {nbf}, exp {exp}: not a lifetime sitesign issues")));
    }
    // Saturating: a signed token's `exp` may be any non-negative i64.
    if now > exp.saturating_add(policy.skew) {
        return Err(reject(Reason::Expired, format!("expired at {exp}")));
    }
    if now + policy.skew < nbf || claims.issued_at().is_some_and(|iat| now + policy.skew < iat) {
        return Err(reject(Reason::NotYetValid, format!("not valid before {nbf}")));
    }

    // 8. Issuer, audience, tenant, category.
    if claims.issuer() != claims::issuer_for(policy.hierarchy) {
        return Err(reject(Reason::WrongIssuer, format!("iss {:?} is not this hierarchy's", claims.issuer())));
    }
    if claims.audience() != claims::AUDIENCE {
        return Err(reject(Reason::WrongAudience, format!("aud {:?}", claims.audience())));
    }
    if claims.tenant().is_some_and(|t| t != policy.hierarchy.upper()) {
        return Err(reject(Reason::WrongTenant, "TenantId is not this hierarchy's GUID"));
    }
    check_category(&claims)?;
    if let Some(expected) = expect
        && expected != kind
    {
        return Err(reject(
            Reason::WrongCategory,
            format!("a {} token where a {} token is needed", kind.as_str(), expected.as_str()),
        ));
    }

    // 9. Registry and binding.
    match &claims {
        Claims::Bulk(c) => {
            let guid = Guid::parse(&c.unique_id)
                .filter(|g| g.lower() == c.unique_id)
                .ok_or_else(|| reject(Reason::BadClaim, "UniqueId is not a lower-case GUID"))?;
            match registry.bulk_blocked(guid).map_err(VerifyError::Registry)? {
                None => return Err(reject(Reason::UnknownBulkToken, format!("bulk token {guid} is not registered"))),
                Some(true) => return Err(reject(Reason::Blocked, format!("bulk token {guid} is blocked"))),
                Some(false) => {}
            }
        }
        Claims::Client(_) | Claims::Access(_) => {
            let bound = claims.binding().unwrap_or_default();
            match thumbprint {
                None => {
                    return Err(reject(
                        Reason::BindingRequired,
                        "a device token needs the client certificate thumbprint",
                    ));
                }
                Some(t) if t != bound => {
                    return Err(reject(
                        Reason::BindingMismatch,
                        "the client certificate is not the one the token is bound to",
                    ));
                }
                Some(_) => {}
            }
            if claims.device_id().and_then(claims::device_id).as_deref() != claims.device_id() {
                return Err(reject(Reason::BadClaim, "DeviceId is not GUID:<upper-case GUID>"));
            }
        }
    }
    Ok(Verified { kind, claims, key_id: key.key_id.clone(), key_status: status })
}

fn check_category(claims: &Claims) -> Result<(), VerifyError> {
    let kind = claims.kind();
    let (type_name, authority) = match claims {
        Claims::Bulk(c) => (&c.type_name, Some((&c.authority, &c.license))),
        Claims::Client(c) => (&c.type_name, Some((&c.authority, &c.license))),
        Claims::Access(c) => (&c.type_name, None),
    };
    if type_name != kind.type_name() {
        return Err(reject(Reason::WrongCategory, format!("Type {type_name:?} with category {}", kind.category())));
    }
    if let Some((a, l)) = authority
        && (a != claims::SCCM || l != claims::SCCM)
    {
        return Err(reject(Reason::WrongCategory, "Authority and License must be \"SCCM\""));
    }
    Ok(())
}
