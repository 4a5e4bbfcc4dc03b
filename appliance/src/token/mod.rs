//! Site tokens (SPEC §3): JWS compact tokens that sitesign builds entirely itself — header,
//! claims and signature — and verifies strictly.
//!
//! - [`claims`]: the three claim sets, their wire order and the strict reader;
//! - [`issue`]: [`TokenSigner`] turns a device key into bulk, client and access tokens;
//! - [`verify`]: the verifier, in the order of SPEC §3, with a stable [`Reason`] per refusal;
//! - [`b64`], [`json`], [`guid`]: the strict encodings underneath.
//!
//! Nothing from a request ever reaches a header, and no caller-supplied bytes are signed: the
//! callers give a device id, a thumbprint or a lifetime, and sitesign writes every byte.

pub mod b64;
pub mod claims;
pub mod guid;
pub mod issue;
pub mod json;
pub mod verify;

#[cfg(test)]
mod tests;

use serde::Serialize;

pub use claims::{Claims, TokenKind};
pub use guid::Guid;
pub use issue::{IssuedToken, TokenSigner};
pub use verify::{BulkRegistry, KeyRing, Presented, Purpose, Verified, Verifier, VerifyError, VerifyPolicy};

/// Default bulk-token lifetime, minutes (3 days), as ConfigMgr's tool.
pub const BULK_DEFAULT_LIFETIME_MINUTES: i64 = 4320;
/// Longest bulk-token lifetime, minutes (7 days).
pub const BULK_MAX_LIFETIME_MINUTES: i64 = 10080;
/// Client-token lifetime, seconds (90 days).
pub const CLIENT_LIFETIME: i64 = 90 * 86_400;
/// A client token may be renewed once it is this old, days (default of `[tokens] renew_after_days`).
pub const DEFAULT_RENEW_AFTER_DAYS: i64 = 30;
/// The longest lifetime of any token sitesign signs, seconds: a key that stops signing can
/// retire this long (plus the skew) after its last signature.
pub const LONGEST_LIFETIME: i64 = CLIENT_LIFETIME;
/// Access-token lifetime, seconds (8 hours).
pub const ACCESS_LIFETIME: i64 = 8 * 3600;
/// Largest token accepted for verification, bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Default clock skew allowed on `nbf`/`exp`, seconds.
pub const DEFAULT_SKEW: i64 = 300;

/// Why a token was refused: a stable code for clients and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// Larger than [`MAX_TOKEN_BYTES`].
    TooLarge,
    /// Not three base64url parts of JSON objects.
    Malformed,
    /// A part is not canonical unpadded base64url.
    NonCanonicalEncoding,
    /// A JSON object names a member twice.
    DuplicateKey,
    /// `crit`, `jwk`, `jku`, `x5u`, `x5c` or `kid` in the header.
    ForbiddenHeader,
    /// A header member sitesign does not write.
    UnknownHeader,
    /// `typ` is not `JWT`, or `x5t` is missing or not a SHA-1 thumbprint.
    BadHeader,
    /// `alg` is not the algorithm of the key `x5t` names (this is where `none` and HS256 land).
    AlgorithmMismatch,
    /// `x5t` names no token-signing certificate sitesign knows.
    UnknownKey,
    /// `x5t` names a key that is pending or retired.
    KeyNotUsable,
    /// `x5t` names a key that was revoked: its tokens are refused at once.
    KeyRevoked,
    /// The signature does not verify.
    BadSignature,
    /// An ES256 signature with a high `s` (the malleable twin of a valid one): sitesign signs
    /// low-S only.
    NonCanonicalSignature,
    /// `exp` has passed (beyond the skew).
    Expired,
    /// `nbf` is in the future (beyond the skew).
    NotYetValid,
    /// `exp`/`nbf`/`iat` are inconsistent, or the lifetime is longer than sitesign issues.
    BadLifetime,
    /// `iss` is not this hierarchy's.
    WrongIssuer,
    /// `aud` is not `urn:sccm:service`.
    WrongAudience,
    /// `TenantId` is not this hierarchy's.
    WrongTenant,
    /// `SCCMTokenCategory`, `Type`, `Authority` or `License` is wrong, or not the kind expected.
    WrongCategory,
    /// A claim this kind does not have.
    UnknownClaim,
    /// A claim this kind must have.
    MissingClaim,
    /// A claim of the wrong type or form.
    BadClaim,
    /// A bulk token whose GUID the registry does not know.
    UnknownBulkToken,
    /// A bulk token that has been blocked.
    Blocked,
    /// A device token presented without the client certificate thumbprint it is bound to.
    BindingRequired,
    /// The presented client certificate is not the one the token is bound to.
    BindingMismatch,
}

impl Reason {
    /// The stable wire code (`too_large`, `bad_signature`, …).
    pub fn code(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::NonCanonicalEncoding => "non_canonical_encoding",
            Reason::DuplicateKey => "duplicate_key",
            Reason::ForbiddenHeader => "forbidden_header",
            Reason::UnknownHeader => "unknown_header",
            Reason::BadHeader => "bad_header",
            Reason::AlgorithmMismatch => "algorithm_mismatch",
            Reason::UnknownKey => "unknown_key",
            Reason::KeyNotUsable => "key_not_usable",
            Reason::KeyRevoked => "key_revoked",
            Reason::BadSignature => "bad_signature",
            Reason::NonCanonicalSignature => "non_canonical_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::BadLifetime => "bad_lifetime",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::WrongTenant => "wrong_tenant",
            Reason::WrongCategory => "wrong_category",
            Reason::UnknownClaim => "unknown_claim",
            Reason::MissingClaim => "missing_claim",
            Reason::BadClaim => "bad_claim",
            Reason::UnknownBulkToken => "unknown_bulk_token",
            Reason::Blocked => "blocked",
            Reason::BindingRequired => "binding_required",
            Reason::BindingMismatch => "binding_mismatch",
        }
    }
}

/// A refused token: the stable reason and a detail for logs and admins.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.code())]
pub struct Rejection {
    /// The stable reason.
    pub reason: Reason,
    /// What exactly was wrong (never contains the token or key material).
    pub detail: String,
}

impl Rejection {
    /// A rejection for `reason`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Rejection {
        Rejection { reason, detail: detail.into() }
    }
}
