//! Issuance: [`TokenSigner`] holds the active token-signing key and writes tokens with it.
//!
//! A token is made in three steps so that the batch pipeline can overlap them: `TokenSigner::prepare`
//! builds the claims and the signing input on the host, the device signs the input, and
//! [`PreparedToken::finish`] appends the signature. [`TokenSigner::sign`] does all three.

use std::sync::Arc;

use hsm_adapters::{KeyAlgorithm, SignatureScheme, SigningKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::claims::{self, AccessClaims, BulkClaims, Claims, ClientClaims, Confirmation, TokenKind};
use super::guid::{Guid, NoRandomness};
use super::{ACCESS_LIFETIME, BULK_DEFAULT_LIFETIME_MINUTES, BULK_MAX_LIFETIME_MINUTES, CLIENT_LIFETIME, b64};

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// A bulk-token lifetime outside 1..=10080 minutes.
    #[error(
        "lifetime {0} minutes is out of range: give 1 to {BULK_MAX_LIFETIME_MINUTES} minutes (default {BULK_DEFAULT_LIFETIME_MINUTES}, 3 days); no token was created"
    )]
    Lifetime(i64),
    /// A device id that is not `GUID:<guid>`.
    #[error("device id {0:?} is not GUID:xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (the SMS client GUID)")]
    DeviceId(String),
    /// A thumbprint that is not base64url(SHA-256).
    #[error(
        "client certificate thumbprint {0:?} is not an x5t#S256 (43 base64url characters: SHA-256 of the certificate)"
    )]
    Thumbprint(String),
    /// The signing key retires too soon to issue anything useful.
    #[error(
        "token-signing key {key} retires at {retire_after}; rotate the token-signing key (`sitesign rotate token-signing`)"
    )]
    KeyRetiring {
        /// The key id.
        key: String,
        /// Its retire-after time, Unix seconds.
        retire_after: i64,
    },
    /// The key's algorithm has no JWS scheme sitesign issues with.
    #[error("token-signing key {key}: {reason}")]
    Key {
        /// The key id.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The device refused to sign.
    #[error("signing failed: {0}")]
    Backend(#[from] hsm_adapters::Error),
    /// No randomness for a GUID.
    #[error(transparent)]
    Random(#[from] NoRandomness),
}

impl IssueError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            IssueError::Lifetime(_) => "invalid_lifetime",
            IssueError::DeviceId(_) => "invalid_device_id",
            IssueError::Thumbprint(_) => "invalid_thumbprint",
            IssueError::KeyRetiring { .. } => "signing_key_retiring",
            IssueError::Key { .. } => "signing_key_unusable",
            IssueError::Backend(e) => e.code(),
            IssueError::Random(_) => "random",
        }
    }
}

/// A token, ready to hand out, with what the audit log records about it.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The JWS compact serialisation.
    pub token: String,
    /// Its claims.
    pub claims: Claims,
    /// `exp`.
    pub expires: i64,
    /// Id of the key that signed it.
    pub key_id: String,
    /// SHA-256 of the token, hex (what the audit log keeps instead of the token).
    pub sha256: String,
}

/// A token's claims and signing input, waiting for its signature.
#[derive(Debug, Clone)]
pub struct PreparedToken {
    signing_input: String,
    claims: Claims,
    /// The lifetime asked for, seconds (`exp` may be shorter: capped by the key's certificate).
    lifetime: i64,
    key_id: String,
    scheme: SignatureScheme,
}

impl PreparedToken {
    /// The bytes the device signs: `base64url(header) "." base64url(claims)`.
    pub fn signing_input(&self) -> &[u8] {
        self.signing_input.as_bytes()
    }

    /// The scheme to sign with.
    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    /// The claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The key it was prepared for (its header names that key's certificate).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Appends the device's signature.
    pub fn finish(self, signature: &[u8]) -> IssuedToken {
        let mut token = self.signing_input;
        token.push('.');
        token.push_str(&b64::encode(signature));
        let sha256 = hex::encode(Sha256::digest(token.as_bytes()));
        IssuedToken { expires: self.claims.window().1, token, claims: self.claims, key_id: self.key_id, sha256 }
    }
}

/// The JOSE header: exactly these members, in this order (SPEC §3).
#[derive(Serialize)]
struct Header<'a> {
    typ: &'static str,
    alg: &'static str,
    x5t: &'a str,
}

/// The encoded header: `base64url({"typ":"JWT","alg":ALG,"x5t":X5T})`.
pub fn encode_header(alg: &'static str, x5t: &str) -> Result<String, serde_json::Error> {
    Ok(b64::encode(&serde_json::to_vec(&Header { typ: "JWT", alg, x5t })?))
}

/// The encoded claim set, members in wire order.
pub fn encode_claims(claims: &Claims) -> Result<String, serde_json::Error> {
    Ok(b64::encode(&serde_json::to_vec(claims)?))
}

/// Issues tokens with one token-signing key.
#[derive(Debug, Clone)]
pub struct TokenSigner {
    key: Arc<dyn SigningKey>,
    key_id: String,
    scheme: SignatureScheme,
    header_b64: String,
    not_after: i64,
    hierarchy: Guid,
}

impl TokenSigner {
    /// A signer for `key` (id `key_id`, current certificate `cert_der`; no token may outlive
    /// `not_after`, the certificate's end) in `hierarchy`. RSA keys sign RS256, P-256 keys ES256.
    pub fn new(
        key: Arc<dyn SigningKey>,
        key_id: &str,
        cert_der: &[u8],
        not_after: i64,
        hierarchy: Guid,
    ) -> Result<TokenSigner, IssueError> {
        let scheme = match key.public_key().algorithm() {
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => SignatureScheme::RsaPkcs1Sha256,
            KeyAlgorithm::EcP256 => SignatureScheme::EcdsaP256Sha256,
        };
        let header_b64 = encode_header(scheme.jws_alg(), &crate::pki::x5t(cert_der))
            .map_err(|e| IssueError::Key { key: key_id.to_owned(), reason: e.to_string() })?;
        Ok(TokenSigner { key, key_id: key_id.to_owned(), scheme, header_b64, not_after, hierarchy })
    }

    /// A signer for the inventory key `record` (its current certificate) with `key`, its handle
    /// in the device.
    pub fn for_record(
        record: &crate::keys::KeyRecord,
        key: Arc<dyn SigningKey>,
        hierarchy: Guid,
    ) -> Result<TokenSigner, IssueError> {
        let cert = record
            .certificate()
            .ok_or_else(|| IssueError::Key { key: record.id.clone(), reason: "it has no certificate".into() })?;
        TokenSigner::new(key, &record.id, cert, record.not_after, hierarchy)
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The scheme tokens are signed with.
    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    /// The hierarchy this signer issues for.
    pub fn hierarchy(&self) -> Guid {
        self.hierarchy
    }

    /// `exp` for a token starting `now` that would last `lifetime` seconds: never past the end of
    /// the key's certificate; a key whose certificate ends within a minute issues nothing.
    fn expiry(&self, now: i64, lifetime: i64) -> Result<i64, IssueError> {
        let exp = (now + lifetime).min(self.not_after);
        if exp - now < 60 {
            return Err(IssueError::KeyRetiring { key: self.key_id.clone(), retire_after: self.not_after });
        }
        Ok(exp)
    }

    fn prepare(&self, claims: Claims, lifetime: i64) -> Result<PreparedToken, IssueError> {
        let payload =
            encode_claims(&claims).map_err(|e| IssueError::Key { key: self.key_id.clone(), reason: e.to_string() })?;
        let mut signing_input = String::with_capacity(self.header_b64.len() + 1 + payload.len());
        signing_input.push_str(&self.header_b64);
        signing_input.push('.');
        signing_input.push_str(&payload);
        Ok(PreparedToken { signing_input, claims, lifetime, key_id: self.key_id.clone(), scheme: self.scheme })
    }

    /// `prepared` as this signer would have prepared it: the same claims (a fresh `exp` within
    /// this key's certificate) under this key's header. A token prepared under a key that stopped
    /// being active before it was signed (a rotation, a revocation) is signed by the active key
    /// instead — never by the key it was prepared for.
    pub fn reprepare(&self, prepared: PreparedToken) -> Result<PreparedToken, IssueError> {
        if prepared.key_id == self.key_id {
            return Ok(prepared);
        }
        let (nbf, _) = prepared.claims.window();
        let exp = self.expiry(nbf, prepared.lifetime)?;
        let mut claims = prepared.claims;
        claims.set_expiry(exp);
        self.prepare(claims, prepared.lifetime)
    }

    /// Signs an audit checkpoint statement (built by [`crate::audit::Checkpoint::statement`],
    /// never caller-supplied bytes) with the token-signing key: (key id, signature).
    pub fn sign_checkpoint(&self, statement: &[u8]) -> Result<(String, Vec<u8>), IssueError> {
        if !statement.starts_with(b"sitesign audit checkpoint\n") {
            return Err(IssueError::Key { key: self.key_id.clone(), reason: "not an audit checkpoint".into() });
        }
        Ok((self.key_id.clone(), self.key.sign(self.scheme, statement)?))
    }

    /// Asks the device for one signature over a fixed probe message (released to nobody): whether
    /// the key answers again after a device failure.
    pub fn probe(&self) -> Result<(), hsm_adapters::Error> {
        self.key.sign(self.scheme, b"sitesign device probe").map(|_| ())
    }

    /// Signs a prepared token with the device key.
    pub fn sign(&self, prepared: PreparedToken) -> Result<IssuedToken, IssueError> {
        let signature = self.key.sign(prepared.scheme, prepared.signing_input())?;
        Ok(prepared.finish(&signature))
    }

    /// Claims of a bulk registration token `guid` valid `lifetime_minutes` from `now`.
    pub fn prepare_bulk(&self, guid: Guid, lifetime_minutes: i64, now: i64) -> Result<PreparedToken, IssueError> {
        if !(1..=BULK_MAX_LIFETIME_MINUTES).contains(&lifetime_minutes) {
            return Err(IssueError::Lifetime(lifetime_minutes));
        }
        let exp = self.expiry(now, lifetime_minutes * 60)?;
        let claims = Claims::Bulk(BulkClaims {
            category: TokenKind::Bulk.category().into(),
            authority: claims::SCCM.into(),
            license: claims::SCCM.into(),
            type_name: TokenKind::Bulk.type_name().into(),
            tenant_id: self.hierarchy.upper(),
            unique_id: guid.lower(),
            iss: claims::issuer_for(self.hierarchy),
            aud: claims::AUDIENCE.into(),
            exp,
            nbf: now,
        });
        self.prepare(claims, lifetime_minutes * 60)
    }

    /// Claims of a 90-day client token for `device_id`, bound to the certificate `thumbprint`.
    pub fn prepare_client(&self, device_id: &str, thumbprint: &str, now: i64) -> Result<PreparedToken, IssueError> {
        let (device_id, cnf) = device_binding(device_id, thumbprint)?;
        let exp = self.expiry(now, CLIENT_LIFETIME)?;
        let claims = Claims::Client(ClientClaims {
            category: TokenKind::Client.category().into(),
            authority: claims::SCCM.into(),
            license: claims::SCCM.into(),
            type_name: TokenKind::Client.type_name().into(),
            tenant_id: self.hierarchy.upper(),
            unique_id: Guid::random()?.lower(),
            device_id,
            cnf,
            iss: claims::issuer_for(self.hierarchy),
            aud: claims::AUDIENCE.into(),
            iat: now,
            nbf: now,
            exp,
        });
        self.prepare(claims, CLIENT_LIFETIME)
    }

    /// Claims of an 8-hour access token for `device_id`, bound to the certificate `thumbprint`.
    pub fn prepare_access(&self, device_id: &str, thumbprint: &str, now: i64) -> Result<PreparedToken, IssueError> {
        let (device_id, cnf) = device_binding(device_id, thumbprint)?;
        let exp = self.expiry(now, ACCESS_LIFETIME)?;
        let claims = Claims::Access(AccessClaims {
            category: TokenKind::Access.category().into(),
            type_name: TokenKind::Access.type_name().into(),
            device_id,
            cnf,
            unique_id: Guid::random()?.lower(),
            iss: claims::issuer_for(self.hierarchy),
            aud: claims::AUDIENCE.into(),
            iat: now,
            nbf: now,
            exp,
        });
        self.prepare(claims, ACCESS_LIFETIME)
    }

    /// A bulk registration token, signed.
    pub fn bulk(&self, guid: Guid, lifetime_minutes: i64, now: i64) -> Result<IssuedToken, IssueError> {
        self.sign(self.prepare_bulk(guid, lifetime_minutes, now)?)
    }

    /// A client token, signed.
    pub fn client(&self, device_id: &str, thumbprint: &str, now: i64) -> Result<IssuedToken, IssueError> {
        self.sign(self.prepare_client(device_id, thumbprint, now)?)
    }

    /// An access token, signed.
    pub fn access(&self, device_id: &str, thumbprint: &str, now: i64) -> Result<IssuedToken, IssueError> {
        self.sign(self.prepare_access(device_id, thumbprint, now)?)
    }
}

fn device_binding(device_id: &str, thumbprint: &str) -> Result<(String, Confirmation), IssueError> {
    let device_id = claims::device_id(device_id).ok_or_else(|| IssueError::DeviceId(crate::policy::clip(device_id)))?;
    if !claims::valid_thumbprint(thumbprint) {
        return Err(IssueError::Thumbprint(crate::policy::clip(thumbprint)));
    }
    Ok((device_id, Confirmation { x5t_s256: thumbprint.to_owned() }))
}
