//! The PKCS#11 backend (cryptoki). Keys are generated inside the token as token objects that are
//! private, sensitive, never extractable and sign-only; they are found by RFC 7512 URI; signing
//! hashes on the host and sends the `DigestInfo` (or the bare digest for PSS and ECDSA) where the
//! token offers the raw mechanisms.

mod device;
mod key;
#[cfg(feature = "softhsm-setup")]
pub mod softhsm;
#[cfg(feature = "softhsm-setup")]
pub mod token;

use std::sync::Arc;

use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, ObjectClass};

pub use device::MAX_ATTEMPTS;
use device::{Device, Lane};
pub use key::Pkcs11Key;

use crate::backend::{KeyBackend, SigningKey};
use crate::config::{Pkcs11Config, TokenSelector};
use crate::error::{Error, Result};
use crate::key::{Capabilities, KeyAlgorithm, SignatureScheme};
use crate::uri::{KeyUri, ObjectType, Pkcs11Uri};

/// Whether the token computes the hash itself (`CKM_SHA256_*`) or takes a host-computed digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hashing {
    Host,
    Device,
}

/// A PKCS#11 token as a [`KeyBackend`].
#[derive(Debug, Clone)]
pub struct Pkcs11Backend {
    device: Lane,
    capabilities: Capabilities,
}

impl Pkcs11Backend {
    /// Loads the module, finds the token, logs in (PIN read from its file and zeroized after use)
    /// and reads the token's mechanisms.
    ///
    /// Fails with [`Error::Module`] if the module cannot be loaded, [`Error::TokenNotFound`] if no
    /// token matches, [`Error::PinFile`] or [`Error::PinIncorrect`] for PIN problems.
    pub fn open(config: Pkcs11Config) -> Result<Self> {
        let device = Lane::open(config)?;
        let capabilities = capabilities(&device);
        Ok(Pkcs11Backend { device, capabilities })
    }

    /// The same token through `sessions` sessions of its own (same module, same login, same
    /// recovery): work that must never wait for this backend's sessions, nor hold them.
    pub fn another_lane(&self, sessions: usize) -> Pkcs11Backend {
        let device = self.device.another(sessions);
        let capabilities = capabilities(&device);
        Pkcs11Backend { device, capabilities }
    }

    /// The token label or serial this backend is bound to.
    pub fn token(&self) -> &TokenSelector {
        &self.device.config.token
    }

    /// Sessions currently open (at most the configured count).
    pub fn sessions_open(&self) -> usize {
        self.device.sessions_open()
    }

    /// How many times recovery has re-initialised the module since it was opened (for metrics).
    pub fn reinitialisations(&self) -> u64 {
        self.device.reinitialisations()
    }

    /// The mechanism this token uses for `scheme`.
    pub(crate) fn hashing(device: &Device, scheme: SignatureScheme) -> Option<Hashing> {
        let (raw, hashed) = match scheme {
            SignatureScheme::RsaPkcs1Sha256 => (MechanismType::RSA_PKCS, MechanismType::SHA256_RSA_PKCS),
            SignatureScheme::RsaPssSha256 => (MechanismType::RSA_PKCS_PSS, MechanismType::SHA256_RSA_PKCS_PSS),
            SignatureScheme::EcdsaP256Sha256 => (MechanismType::ECDSA, MechanismType::ECDSA_SHA256),
        };
        if device.mechanisms.contains(&raw) {
            Some(Hashing::Host)
        } else if device.mechanisms.contains(&hashed) {
            Some(Hashing::Device)
        } else {
            None
        }
    }

    /// Checks that a URI's token attributes (if any) name this backend's token.
    fn check_token(&self, uri: &Pkcs11Uri) -> Result<()> {
        let ours = match &self.device.config.token {
            TokenSelector::Label(l) => uri.token.as_deref().is_none_or(|t| t == l),
            TokenSelector::Serial(s) => uri.serial.as_deref().is_none_or(|t| t == s),
        };
        if ours {
            Ok(())
        } else {
            Err(Error::InvalidUri {
                uri: uri.to_string(),
                reason: format!("names another token than this backend's ({})", self.device.config.token),
            })
        }
    }

    fn uri_for(&self, name: &str) -> Pkcs11Uri {
        let mut uri =
            Pkcs11Uri { object: Some(name.to_owned()), object_type: Some(ObjectType::Private), ..Default::default() };
        match &self.device.config.token {
            TokenSelector::Label(l) => uri.token = Some(l.clone()),
            TokenSelector::Serial(s) => uri.serial = Some(s.clone()),
        }
        uri
    }
}

fn capabilities(device: &Lane) -> Capabilities {
    let has = |m: MechanismType| device.mechanisms.contains(&m);
    let mut key_algorithms = Vec::new();
    if has(MechanismType::RSA_PKCS_KEY_PAIR_GEN) {
        key_algorithms.extend([KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa3072, KeyAlgorithm::Rsa4096]);
    }
    if has(MechanismType::ECC_KEY_PAIR_GEN) {
        key_algorithms.push(KeyAlgorithm::EcP256);
    }
    let all = [SignatureScheme::RsaPkcs1Sha256, SignatureScheme::RsaPssSha256, SignatureScheme::EcdsaP256Sha256];
    let schemes: Vec<SignatureScheme> =
        all.into_iter().filter(|s| Pkcs11Backend::hashing(device, *s).is_some()).collect();
    let host_side_hashing = schemes.iter().all(|s| Pkcs11Backend::hashing(device, *s) == Some(Hashing::Host));
    let mut facts = device.module_facts.clone();
    for scheme in all {
        let (raw, hashed) = match scheme {
            SignatureScheme::RsaPkcs1Sha256 => ("CKM_RSA_PKCS", "CKM_SHA256_RSA_PKCS"),
            SignatureScheme::RsaPssSha256 => ("CKM_RSA_PKCS_PSS", "CKM_SHA256_RSA_PKCS_PSS"),
            SignatureScheme::EcdsaP256Sha256 => ("CKM_ECDSA", "CKM_ECDSA_SHA256"),
        };
        let how = match Pkcs11Backend::hashing(device, scheme) {
            Some(Hashing::Host) => format!("{raw} (raw: SHA-256 on the host, the digest to the device)"),
            Some(Hashing::Device) => format!("{hashed} (the device hashes the whole message)"),
            None => format!("not offered (neither {raw} nor {hashed})"),
        };
        facts.push((format!("{} mechanism", scheme.jws_alg()), how));
    }
    Capabilities {
        device: device.token_description.clone(),
        key_algorithms,
        schemes,
        host_side_hashing,
        max_concurrency: device.capacity(),
        facts,
    }
}

impl KeyBackend for Pkcs11Backend {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn lane(&self, sessions: usize) -> Option<Arc<dyn KeyBackend>> {
        Some(Arc::new(self.another_lane(sessions)))
    }

    fn generate_key(&self, name: &str, algorithm: KeyAlgorithm) -> Result<Arc<dyn SigningKey>> {
        if name.is_empty() || name.len() > 128 {
            return Err(Error::Unsupported { what: "a key name must be 1 to 128 characters".into() });
        }
        if !self.capabilities.key_algorithms.contains(&algorithm) {
            return Err(Error::Unsupported { what: format!("this token cannot generate {algorithm} keys") });
        }
        let uri = self.uri_for(name);
        let key = key::generate(&self.device, uri, name, algorithm)?;
        Ok(Arc::new(key))
    }

    fn find_key(&self, uri: &KeyUri) -> Result<Arc<dyn SigningKey>> {
        let uri = match uri {
            KeyUri::Pkcs11(u) => u,
            other => {
                return Err(Error::InvalidUri {
                    uri: other.to_string(),
                    reason: "this backend is PKCS#11; the URI is for another backend".into(),
                });
            }
        };
        self.check_token(uri)?;
        if uri.object_type.is_some_and(|t| t != ObjectType::Private) {
            return Err(Error::InvalidUri {
                uri: uri.to_string(),
                reason: "a signing key URI has type=private".into(),
            });
        }
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(object) = &uri.object {
            template.push(Attribute::Label(object.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        Ok(Arc::new(key::find(&self.device, uri.clone(), template)?))
    }
}
