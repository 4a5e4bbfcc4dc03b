//! The known-good check run before a key is trusted: its protection attributes are as SPEC §2
//! requires, it signs a fresh probe message, and the signature verifies under an implementation
//! independent of the device (`ring`). The CLI runs it after creating keys; sitesignd runs it
//! for every active key before it reports ready.

use std::time::{Duration, Instant};

use hsm_adapters::{ProtectionReport, SignatureScheme, SigningKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;

/// What the self-test found for one key.
#[derive(Debug, Clone, Serialize)]
pub struct SelfTestReport {
    /// The key's URI.
    pub key: String,
    /// The key's algorithm (`rsa-2048`, `ec-p256`, …).
    pub algorithm: String,
    /// The JWS name of the scheme tested (`RS256`, …).
    pub scheme: &'static str,
    /// The protection attributes read back from the device.
    pub protection: ProtectionReport,
    /// Signatures made and verified.
    pub signatures: usize,
    /// Wall time of the signing part, in microseconds.
    pub sign_micros: u128,
}

/// Why a key failed its self-test.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelfTestError {
    /// The backend failed (including protection mismatches).
    #[error(transparent)]
    Backend(#[from] hsm_adapters::Error),
    /// The device returned a signature that does not verify.
    #[error(
        "key {key}: the device's {scheme} signature does not verify under an independent implementation; do not use this key"
    )]
    BadSignature {
        /// The key's URI.
        key: String,
        /// The scheme.
        scheme: &'static str,
    },
    /// No randomness for the probe message.
    #[error("the system random generator failed")]
    Random,
}

impl SelfTestError {
    /// A stable identifier for logs and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            SelfTestError::Backend(e) => e.code(),
            SelfTestError::BadSignature { .. } => "selftest_bad_signature",
            SelfTestError::Random => "selftest_random",
        }
    }
}

/// Verifies `signature` over `message` by the key `public` with `ring`.
pub fn verify_independently(
    public: &hsm_adapters::PublicKey,
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> bool {
    public
        .subject_public_key_bytes()
        .is_ok_and(|bytes| hsm_adapters::checked::verify_raw(scheme, &bytes, message, signature))
}

/// Checks `key`: protection attributes, then `rounds` signatures with `scheme` over fresh probe
/// messages, each verified independently.
pub fn check_key(
    key: &dyn SigningKey,
    scheme: SignatureScheme,
    rounds: usize,
) -> Result<SelfTestReport, SelfTestError> {
    let uri = key.uri().to_string();
    let protection = key.check_protection()?;
    protection.require_ok(&uri)?;
    let rng = SystemRandom::new();
    let mut signing = Duration::ZERO;
    for _ in 0..rounds.max(1) {
        let mut nonce = [0u8; 16];
        rng.fill(&mut nonce).map_err(|_| SelfTestError::Random)?;
        let message = [b"sitesign self-test ".as_slice(), &nonce].concat();
        let started = Instant::now();
        let signature = key.sign(scheme, &message)?;
        signing += started.elapsed();
        if !verify_independently(key.public_key(), scheme, &message, &signature) {
            return Err(SelfTestError::BadSignature { key: uri, scheme: scheme.jws_alg() });
        }
    }
    Ok(SelfTestReport {
        key: uri,
        algorithm: key.algorithm().to_string(),
        scheme: scheme.jws_alg(),
        protection,
        signatures: rounds.max(1),
        sign_micros: signing.as_micros(),
    })
}
