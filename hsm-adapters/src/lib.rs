//! sitesign's key backends.
//!
//! One small abstraction — [`KeyBackend`] hands out [`SigningKey`]s, which sign — and its two
//! implementations: PKCS#11 tokens ([`pkcs11::Pkcs11Backend`], through `cryptoki`) and TPM 2.0
//! ([`tpm::TpmBackend`], through `tss-esapi`). Private keys
//! are generated inside the device and never leave it. [`X509Signer`] adapts a device key to
//! RustCrypto's `signature::Signer` + `Keypair` so the x509-cert builder can sign with it.
//!
//! This crate knows nothing of tokens (JWS), HTTP or policy: it signs bytes it is given, for the
//! appliance that decided they should be signed.

pub mod backend;
pub mod checked;
pub mod config;
pub mod error;
pub mod key;
pub mod pin;
pub mod pkcs11;
pub mod signer;
pub mod tpm;
pub mod trust;
pub mod uri;

use std::sync::Arc;

pub use backend::{KeyBackend, SigningKey};
pub use config::{BackendConfig, BackendConfigFile, ConfigProblem, Pkcs11Config, TokenSelector, TpmConfig};
pub use error::{Error, ErrorClass, Result};
pub use key::{
    Capabilities, KeyAlgorithm, KeyComponents, ProtectionCheck, ProtectionReport, PublicKey, SignatureScheme,
};
pub use pin::{PinSource, random_secret};
pub use signer::{X509Signature, X509Signer};
pub use uri::{KeyUri, Pkcs11Uri, TpmUri};

/// Opens the backend a validated configuration describes, its keys' signatures checked on the
/// host before release ([`checked`]).
///
/// Fails as the backend's own `open` does: module not loadable, token not found, PIN problems.
pub fn open(config: &BackendConfig) -> Result<Arc<dyn KeyBackend>> {
    let device: Arc<dyn KeyBackend> = match config {
        BackendConfig::Pkcs11(c) => Arc::new(pkcs11::Pkcs11Backend::open(c.clone())?),
        BackendConfig::Tpm(c) => Arc::new(tpm::TpmBackend::open(c.clone())?),
    };
    Ok(Arc::new(checked::CheckedBackend::new(device)))
}
