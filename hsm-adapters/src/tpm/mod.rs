//! The TPM 2.0 backend (tss-esapi). Keys are created under a storage primary key kept at a
//! persistent handle, as TPM-wrapped blobs in a key folder (`tpm:object=NAME`) or used at their
//! own persistent handles (`tpm:handle=0x81…`). Every key is fixedTPM, fixedParent,
//! sensitiveDataOrigin, userWithAuth and sign-only. SHA-256 is computed on the host; the TPM signs
//! the digest. One thread owns the TPM (see `worker.rs`).

mod worker;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sha2::{Digest as _, Sha256};
use tss_esapi::structures::Public;

pub use worker::MAX_ATTEMPTS;
use worker::{WorkerHandle, public_key_of};

use crate::backend::{KeyBackend, SigningKey};
use crate::config::TpmConfig;
use crate::error::{Error, Result};
use crate::key::{Capabilities, KeyAlgorithm, ProtectionCheck, ProtectionReport, PublicKey, SignatureScheme};
use crate::uri::{KeyUri, TpmUri, valid_object_name};

/// A TPM 2.0 as a [`KeyBackend`].
#[derive(Debug, Clone)]
pub struct TpmBackend {
    worker: Arc<WorkerHandle>,
    capabilities: Capabilities,
}

impl TpmBackend {
    /// Connects to the TPM named by the configuration's TCTI, creates the storage primary key at
    /// its persistent handle if absent, and asks the TPM which key types it supports.
    ///
    /// Fails with [`Error::Tpm`] if the TPM cannot be reached or refuses.
    pub fn open(config: TpmConfig) -> Result<Self> {
        let tcti = std::ffi::CString::try_from(config.tcti.clone())
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{:?}", config.tcti));
        let worker = Arc::new(WorkerHandle::start(config)?);
        let (algorithms, vendor) = worker.call(|w| {
            w.with_recovery(|w| {
                let mut found = Vec::new();
                for alg in KeyAlgorithm::ALL {
                    if w.supports(alg)? {
                        found.push(alg);
                    }
                }
                Ok((found, w.vendor()))
            })
        })?;
        let mut schemes = Vec::new();
        if algorithms.iter().any(|a| a.rsa_bits().is_some()) {
            schemes.extend([SignatureScheme::RsaPkcs1Sha256, SignatureScheme::RsaPssSha256]);
        }
        if algorithms.contains(&KeyAlgorithm::EcP256) {
            schemes.push(SignatureScheme::EcdsaP256Sha256);
        }
        let capabilities = Capabilities {
            device: format!("TPM 2.0 ({}) via {tcti}", vendor.split_whitespace().collect::<Vec<_>>().join(" ")),
            key_algorithms: algorithms,
            schemes,
            host_side_hashing: true,
            max_concurrency: 1,
            facts: vec![
                ("vendor".to_owned(), vendor.split_whitespace().collect::<Vec<_>>().join(" ")),
                ("commands".to_owned(), "one at a time, from one owner thread (queue_depth callers wait)".to_owned()),
                (
                    "mechanisms".to_owned(),
                    "TPM2_Sign of a host-computed SHA-256 digest (RS256, PS256, ES256)".to_owned(),
                ),
            ],
        };
        Ok(TpmBackend { worker, capabilities })
    }

    /// How many recovery steps (reconnect, reload, wait-and-retry) the backend has taken since it
    /// was opened (for metrics).
    pub fn recoveries(&self) -> u64 {
        self.worker.recoveries.load(Ordering::Relaxed)
    }

    fn key(&self, uri: TpmUri, public: &Public) -> Result<TpmKey> {
        Ok(TpmKey {
            worker: Arc::clone(&self.worker),
            public: public_key_of(public)?,
            key_uri: KeyUri::Tpm(uri.clone()),
            uri,
        })
    }
}

impl KeyBackend for TpmBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn generate_key(&self, name: &str, algorithm: KeyAlgorithm) -> Result<Arc<dyn SigningKey>> {
        if !valid_object_name(name) {
            return Err(Error::Unsupported {
                what: "a TPM key name uses letters, digits, '-', '_' and '.' (not first), up to 128".into(),
            });
        }
        if !self.capabilities.key_algorithms.contains(&algorithm) {
            return Err(Error::Unsupported { what: format!("this TPM cannot create {algorithm} keys") });
        }
        let owned = name.to_owned();
        let public = self.worker.call(move |w| w.with_recovery(|w| w.create_key(&owned, algorithm)))?;
        Ok(Arc::new(self.key(TpmUri::Object(name.to_owned()), &public)?))
    }

    fn find_key(&self, uri: &KeyUri) -> Result<Arc<dyn SigningKey>> {
        let KeyUri::Tpm(tpm_uri) = uri else {
            return Err(Error::InvalidUri {
                uri: uri.to_string(),
                reason: "this backend is a TPM; the URI is for another backend".into(),
            });
        };
        let lookup = tpm_uri.clone();
        let public = self.worker.call(move |w| w.with_recovery(|w| w.read_public(&lookup)))?;
        Ok(Arc::new(self.key(tpm_uri.clone(), &public)?))
    }
}

/// A key in the TPM.
#[derive(Debug)]
pub struct TpmKey {
    worker: Arc<WorkerHandle>,
    uri: TpmUri,
    key_uri: KeyUri,
    public: PublicKey,
}

impl SigningKey for TpmKey {
    fn uri(&self) -> &KeyUri {
        &self.key_uri
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        if !self.algorithm().supports(scheme) {
            return Err(Error::Unsupported { what: format!("{scheme:?} with a {} key", self.algorithm()) });
        }
        let digest = Sha256::digest(message).to_vec();
        let (uri, expected) = (self.uri.clone(), self.public.clone());
        let signature = self.worker.call(move |w| w.with_recovery(|w| w.sign(&uri, &expected, scheme, &digest)))?;
        if signature.len() != self.algorithm().signature_len() {
            return Err(Error::Encoding {
                what: format!(
                    "the TPM returned a {}-byte signature, expected {}",
                    signature.len(),
                    self.algorithm().signature_len()
                ),
            });
        }
        Ok(signature)
    }

    fn check_protection(&self) -> Result<ProtectionReport> {
        let uri = self.uri.clone();
        let public = self.worker.call(move |w| w.with_recovery(|w| w.read_public(&uri)))?;
        let a = public.object_attributes();
        let check = |name, expected, actual| ProtectionCheck { name, expected, actual: Some(actual) };
        Ok(ProtectionReport {
            checks: vec![
                check("fixedTPM", true, a.fixed_tpm()),
                check("fixedParent", true, a.fixed_parent()),
                check("sensitiveDataOrigin", true, a.sensitive_data_origin()),
                check("userWithAuth", true, a.user_with_auth()),
                check("sign", true, a.sign_encrypt()),
                check("decrypt", false, a.decrypt()),
                check("restricted", false, a.restricted()),
            ],
        })
    }
}
