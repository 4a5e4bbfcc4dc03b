//! Every signature a device returns is checked on the host before anyone sees it (SPEC §9).
//!
//! A faulty RSA-CRT signature gives the private key away to whoever receives it (one bad
//! signature and the public key factor the modulus), and a device that signs with another key
//! than the one it reported would hand out signatures nobody can verify. So [`open`](crate::open)
//! wraps every backend in a [`CheckedBackend`]: each signature is verified with `ring` against
//! the key's public half, and one that does not verify is discarded and reported as
//! [`Error::FaultySignature`] — never returned. ECDSA signatures are first normalised to low-S
//! (`s ≤ n/2`), so sitesign releases exactly one of the two valid signatures of each message.
//!
//! The raw-rate benchmark opens backends directly (unwrapped), so the cost of the check shows in
//! the end-to-end ratio.

use std::fmt;
use std::sync::Arc;

use crate::backend::{KeyBackend, SigningKey};
use crate::error::{Error, Result};
use crate::key::{Capabilities, KeyAlgorithm, ProtectionReport, PublicKey, SignatureScheme};
use crate::uri::KeyUri;

/// A backend whose keys' signatures are checked before release.
#[derive(Debug)]
pub struct CheckedBackend {
    inner: Arc<dyn KeyBackend>,
}

impl CheckedBackend {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn KeyBackend>) -> Self {
        CheckedBackend { inner }
    }
}

impl KeyBackend for CheckedBackend {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    fn generate_key(&self, name: &str, algorithm: KeyAlgorithm) -> Result<Arc<dyn SigningKey>> {
        Ok(Arc::new(CheckedKey::new(self.inner.generate_key(name, algorithm)?)?))
    }

    fn find_key(&self, uri: &KeyUri) -> Result<Arc<dyn SigningKey>> {
        Ok(Arc::new(CheckedKey::new(self.inner.find_key(uri)?)?))
    }

    fn lane(&self, sessions: usize) -> Option<Arc<dyn KeyBackend>> {
        let lane = self.inner.lane(sessions)?;
        Some(Arc::new(CheckedBackend::new(lane)))
    }
}

/// A device key whose every signature is verified on the host (and, for ECDSA, made low-S)
/// before it is returned.
pub struct CheckedKey {
    inner: Arc<dyn SigningKey>,
    /// The `subjectPublicKey` bytes `ring` verifies with, read once.
    public: Vec<u8>,
}

impl fmt::Debug for CheckedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedKey").field("inner", &self.inner).finish()
    }
}

impl CheckedKey {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn SigningKey>) -> Result<Self> {
        let public = inner.public_key().subject_public_key_bytes()?;
        Ok(CheckedKey { inner, public })
    }
}

impl SigningKey for CheckedKey {
    fn uri(&self) -> &KeyUri {
        self.inner.uri()
    }

    fn public_key(&self) -> &PublicKey {
        self.inner.public_key()
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        let mut signature = self.inner.sign(scheme, message)?;
        if scheme == SignatureScheme::EcdsaP256Sha256 {
            ecdsa_normalize_s(&mut signature)?;
        }
        if !verify_raw(scheme, &self.public, message, &signature) {
            return Err(Error::FaultySignature { uri: self.inner.uri().to_string() });
        }
        Ok(signature)
    }

    fn check_protection(&self) -> Result<ProtectionReport> {
        self.inner.check_protection()
    }
}

/// Whether `signature` (PKCS#1 v1.5 / PSS bytes, or raw `r‖s` for ECDSA) over `message`
/// verifies with `public` (the `subjectPublicKey` bytes) under `scheme`, checked with `ring`.
pub fn verify_raw(scheme: SignatureScheme, public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use ring::signature::{
        ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256, UnparsedPublicKey,
        VerificationAlgorithm,
    };
    let algorithm: &dyn VerificationAlgorithm = match scheme {
        SignatureScheme::RsaPkcs1Sha256 => &RSA_PKCS1_2048_8192_SHA256,
        SignatureScheme::RsaPssSha256 => &RSA_PSS_2048_8192_SHA256,
        SignatureScheme::EcdsaP256Sha256 => &ECDSA_P256_SHA256_FIXED,
    };
    UnparsedPublicKey::new(algorithm, public).verify(message, signature).is_ok()
}

/// The order `n` of P-256, big-endian (SEC 2 §2.4.2).
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `⌊n/2⌋` of P-256, big-endian: the largest low `s`.
const P256_HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xde, 0x73, 0x7d,
    0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Whether the raw P-256 signature `r‖s` has a low `s` (`s ≤ n/2`, as BIP 62 and most
/// strict verifiers require). Not 64 bytes: false.
pub fn ecdsa_is_low_s(raw: &[u8]) -> bool {
    // Big-endian byte strings of equal length compare as the numbers they encode.
    raw.len() == 64 && raw[32..] <= P256_HALF_N[..]
}

/// Replaces a high `s` in the raw P-256 signature `r‖s` by `n − s` — the other valid
/// signature of the same message — so the signature is low-S. Hand-written because it is a
/// 32-byte subtraction; a curve crate would add a second big-integer stack for it.
pub fn ecdsa_normalize_s(raw: &mut [u8]) -> Result<()> {
    if raw.len() != 64 {
        return Err(Error::Encoding { what: format!("P-256 signature must be 64 bytes, got {}", raw.len()) });
    }
    if ecdsa_is_low_s(raw) {
        return Ok(());
    }
    let s = &mut raw[32..];
    if s[..] >= P256_N[..] {
        return Err(Error::Encoding { what: "P-256 signature with s ≥ n".into() });
    }
    let mut borrow = 0u16;
    for i in (0..32).rev() {
        let (n, v) = (u16::from(P256_N[i]), u16::from(s[i]) + borrow);
        let (digit, next) = if n >= v { (n - v, 0) } else { (n + 256 - v, 1) };
        // `digit` < 256 by construction.
        s[i] = digit as u8;
        borrow = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a − b` over 32-byte big-endian numbers (a ≥ b), for the tests.
    fn sub(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let mut d = i16::from(a[i]) - i16::from(b[i]) - borrow;
            borrow = i16::from(d < 0);
            if d < 0 {
                d += 256;
            }
            out[i] = d as u8;
        }
        out
    }

    #[test]
    fn half_n_is_n_shifted_right() {
        let mut half = [0u8; 32];
        let mut carry = 0u8;
        for i in 0..32 {
            half[i] = (P256_N[i] >> 1) | carry;
            carry = (P256_N[i] & 1) << 7;
        }
        assert_eq!(half, P256_HALF_N);
    }

    #[test]
    fn high_s_becomes_n_minus_s_and_low_s_is_kept() {
        let mut high = [0u8; 32];
        high.copy_from_slice(&sub(&P256_N, &[[0u8; 31].as_slice(), &[5]].concat().try_into().unwrap()));
        let mut raw = [[7u8; 32], high].concat();
        assert!(!ecdsa_is_low_s(&raw));
        ecdsa_normalize_s(&mut raw).unwrap();
        assert_eq!(&raw[..32], &[7u8; 32], "r untouched");
        let mut five = [0u8; 32];
        five[31] = 5;
        assert_eq!(&raw[32..], &five, "n − (n − 5) = 5");
        assert!(ecdsa_is_low_s(&raw));
        // Exactly n/2 is low; n/2 + 1 is high and becomes n − (n/2 + 1) = n/2.
        let mut raw = [[1u8; 32], P256_HALF_N].concat();
        assert!(ecdsa_is_low_s(&raw));
        raw[63] += 1;
        assert!(!ecdsa_is_low_s(&raw));
        ecdsa_normalize_s(&mut raw).unwrap();
        assert_eq!(&raw[32..], &P256_HALF_N);
        // s ≥ n and wrong lengths are refused.
        assert!(ecdsa_normalize_s(&mut [[1u8; 32], P256_N].concat()).is_err());
        assert!(ecdsa_normalize_s(&mut [0u8; 63]).is_err());
        assert!(!ecdsa_is_low_s(&[0u8; 63]));
    }

    #[test]
    fn both_forms_verify_with_ring_and_normalising_keeps_the_signature_valid() {
        use ring::rand::SystemRandom;
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let public = key.public_key().as_ref().to_vec();
        let (mut seen_high, mut seen_low) = (false, false);
        for i in 0..64u8 {
            let message = [i; 40];
            let mut raw = key.sign(&rng, &message).unwrap().as_ref().to_vec();
            let was_low = ecdsa_is_low_s(&raw);
            seen_low |= was_low;
            seen_high |= !was_low;
            assert!(verify_raw(SignatureScheme::EcdsaP256Sha256, &public, &message, &raw));
            ecdsa_normalize_s(&mut raw).unwrap();
            assert!(ecdsa_is_low_s(&raw));
            assert!(verify_raw(SignatureScheme::EcdsaP256Sha256, &public, &message, &raw), "n − s verifies too");
            let mut wrong = raw.clone();
            wrong[10] ^= 1;
            assert!(!verify_raw(SignatureScheme::EcdsaP256Sha256, &public, &message, &wrong));
        }
        assert!(seen_high && seen_low, "64 random signatures include both forms");
    }
}
