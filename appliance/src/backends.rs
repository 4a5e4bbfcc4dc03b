//! The configured key backends, opened: each named `[backends.NAME]` table as a
//! [`KeyBackend`], and the way from an inventory record to its key in its device.

use std::collections::BTreeMap;
use std::sync::Arc;

use hsm_adapters::{KeyBackend, KeyUri, SigningKey};

use crate::config::Config;
use crate::keys::KeyRecord;

/// A backend failed, or is not configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The device failed.
    #[error("backend {backend:?}: {source}")]
    Device {
        /// The configured backend.
        backend: String,
        /// Its error.
        source: hsm_adapters::Error,
    },
    /// The inventory names a backend the configuration lacks.
    #[error("no backend named {0:?} is configured (see [backends] in the configuration)")]
    NotConfigured(String),
}

impl BackendError {
    /// A stable code: the device error's, or `config`.
    pub fn code(&self) -> &'static str {
        match self {
            BackendError::Device { source, .. } => source.code(),
            BackendError::NotConfigured(_) => "config",
        }
    }

    /// The device error, if it is one.
    pub fn device_error(&self) -> Option<&hsm_adapters::Error> {
        match self {
            BackendError::Device { source, .. } => Some(source),
            BackendError::NotConfigured(_) => None,
        }
    }
}

/// The configured backends, opened.
#[derive(Debug, Default)]
pub struct Backends {
    open: BTreeMap<String, Arc<dyn KeyBackend>>,
    /// Second instances of the PKCS#11 backends, with sessions of their own for the TLS key's
    /// handshake signatures (the service's; see [`Backends::open_handshake_lanes`]).
    handshake: BTreeMap<String, Arc<dyn KeyBackend>>,
}

impl Backends {
    /// Opens every backend the configuration names (each logs in / connects once).
    pub fn open(config: &Config) -> Result<Backends, BackendError> {
        let mut open = BTreeMap::new();
        for (name, backend) in &config.backends {
            let b =
                hsm_adapters::open(backend).map_err(|source| BackendError::Device { backend: name.clone(), source })?;
            open.insert(name.clone(), b);
        }
        Ok(Backends { open, handshake: BTreeMap::new() })
    }

    /// Sets apart, in every backend that can (PKCS#11), `sessions` device sessions of their own
    /// where the TLS key signs handshakes — same module, login and recovery: a flood of
    /// handshakes then waits for those sessions and never for the token-signing workers'. (A TPM
    /// has one connection; there the handshakes' share is kept by the service's handshake gate
    /// alone.)
    pub fn open_handshake_lanes(&mut self, sessions: usize) {
        for (name, backend) in &self.open {
            if let Some(lane) = backend.lane(sessions) {
                self.handshake.insert(name.clone(), lane);
            }
        }
    }

    /// The backend named `name`.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn KeyBackend>, BackendError> {
        self.open.get(name).ok_or_else(|| BackendError::NotConfigured(name.to_owned()))
    }

    /// Finds the key of an inventory record in its device — a TLS key in its backend's
    /// handshake lane, if it has one.
    pub fn key(&self, record: &KeyRecord) -> Result<Arc<dyn SigningKey>, BackendError> {
        let wrap = |source| BackendError::Device { backend: record.backend.clone(), source };
        let uri: KeyUri = record.uri.parse().map_err(wrap)?;
        let lane = match record.role {
            crate::keys::KeyRole::Tls => self.handshake.get(&record.backend),
            _ => None,
        };
        match lane {
            Some(b) => b.find_key(&uri).map_err(wrap),
            None => self.get(&record.backend)?.find_key(&uri).map_err(wrap),
        }
    }

    /// Every opened backend, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<dyn KeyBackend>)> {
        self.open.iter()
    }
}
