//! The one key-backend abstraction. Shaped like rustls' `SigningKey`/`Signer`: a backend hands out
//! keys (generated inside it, or found by URI), and a key signs with a scheme it supports.

use std::fmt;
use std::sync::Arc;

use crate::error::Result;
use crate::key::{Capabilities, KeyAlgorithm, ProtectionReport, PublicKey, SignatureScheme};
use crate::uri::KeyUri;

/// A device that holds private keys: a PKCS#11 token or a TPM.
///
/// Implementations are shared between threads; blocking device calls happen on the caller's
/// thread, so async callers must call from a blocking worker (`spawn_blocking` or a dedicated
/// thread pool), never from the async runtime's own threads.
pub trait KeyBackend: Send + Sync + fmt::Debug {
    /// What the device can do. Read once when the backend was opened.
    fn capabilities(&self) -> &Capabilities;

    /// Generates a key pair inside the device, named `name`, with the protection attributes of
    /// SPEC §2 (never extractable, sign-only).
    ///
    /// Fails with [`Error::KeyExists`](crate::Error::KeyExists) if a key of that name exists
    /// (nothing is created), [`Error::Unsupported`](crate::Error::Unsupported) if the device cannot
    /// make that algorithm, or a device error. If generation fails half-way the device holds no
    /// usable key of that name: implementations remove what they created before returning.
    fn generate_key(&self, name: &str, algorithm: KeyAlgorithm) -> Result<Arc<dyn SigningKey>>;

    /// Finds an existing key by its URI.
    ///
    /// Fails with [`Error::KeyNotFound`](crate::Error::KeyNotFound) or
    /// [`Error::KeyAmbiguous`](crate::Error::KeyAmbiguous) if the URI names no key or several, and
    /// with [`Error::InvalidUri`](crate::Error::InvalidUri) if it is for another kind of backend.
    fn find_key(&self, uri: &KeyUri) -> Result<Arc<dyn SigningKey>>;

    /// The same device with `sessions` sessions of its own (same module, login and recovery),
    /// for work that must never wait for this backend's sessions nor hold them up; `None` where
    /// the device has no sessions to set apart (a TPM has one connection).
    fn lane(&self, sessions: usize) -> Option<Arc<dyn KeyBackend>> {
        let _ = sessions;
        None
    }
}

/// A private key inside a device, ready to sign.
pub trait SigningKey: Send + Sync + fmt::Debug {
    /// The URI that finds this key again.
    fn uri(&self) -> &KeyUri;

    /// The key's algorithm.
    fn algorithm(&self) -> KeyAlgorithm {
        self.public_key().algorithm()
    }

    /// The public half, read from the device when the key was found.
    fn public_key(&self) -> &PublicKey;

    /// Signs `message` with `scheme`. SHA-256 is computed on the host where the device's
    /// mechanisms allow, so only the digest crosses to the device.
    ///
    /// Returns PKCS#1 / PSS signature bytes for RSA and raw `r‖s` (64 bytes) for ECDSA.
    /// Fails with [`Error::Unsupported`](crate::Error::Unsupported) if the key cannot use
    /// `scheme`. Session and handle failures are recovered inside the backend (bounded retries);
    /// an error returned here means no signature was produced, and there is nothing to roll back.
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>>;

    /// Reads the key's protection attributes back from the device. The caller decides what to do
    /// with mismatches ([`ProtectionReport::require_ok`]); sitesignd refuses to start.
    fn check_protection(&self) -> Result<ProtectionReport>;
}
