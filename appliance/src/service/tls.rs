//! TLS for the signing API: rustls, TLS 1.3 only (this build of rustls has no TLS 1.2 at all),
//! the server key inside the device, and client certificates required, verified against every
//! SMS Issuing root that still verifies, for the `mp-client` purpose (clientAuth), and refused
//! when revoked.
//!
//! A server configuration is a value built from one [`State`]: the active TLS key and its chain,
//! the trusted roots, the revoked serials. When the state changes, the service builds a new one
//! and swaps it in; the next handshake reads the new value, open connections keep theirs
//! (`rotate tls` and `cert revoke` never restart anything). Its session cache goes with it, so a
//! session made before a revocation cannot be resumed after it.

use std::collections::HashSet;
use std::sync::Arc;

use hsm_adapters::{KeyAlgorithm, SignatureScheme};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureAlgorithm};

use crate::keys::KeyRole;
use crate::state::State;

/// Who called: the verified client certificate's subject and serial (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// RFC 4514 subject.
    pub subject: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The certificate's `notAfter`, Unix time.
    pub not_after: i64,
}

impl Caller {
    /// The caller of a connection whose (verified) client certificate is `der`.
    pub fn of(der: &[u8]) -> Option<Caller> {
        let cert = crate::pki::parse_certificate(der).ok()?;
        let tbs = cert.tbs_certificate();
        Some(Caller {
            subject: tbs.subject().to_string(),
            serial: hex::encode(tbs.serial_number().as_bytes()),
            not_after: tbs.validity().not_after.to_unix_duration().as_secs() as i64,
        })
    }

    /// How audit records and rate limits name it: `<subject> (serial <hex>)`.
    pub fn identity(&self) -> String {
        format!("{} (serial {})", self.subject, self.serial)
    }

    /// The requester of its tokens in the signing pipeline (whose serial is checked again when
    /// each token is signed).
    pub fn requester(&self) -> crate::pipeline::Requester {
        crate::pipeline::Requester {
            identity: Arc::from(self.identity().as_str()),
            serial: Some(Arc::from(self.serial.as_str())),
        }
    }
}

/// What every handshake signature goes through: the gate that keeps handshakes to their share
/// of the device, and where the outcome is reported (readiness follows the device; signatures
/// are counted).
#[derive(Debug, Clone)]
pub struct Observer {
    /// Whether the devices answer.
    pub health: Arc<crate::pipeline::BackendHealth>,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The TLS key's signatures, a few at a time.
    pub gate: Arc<super::admission::HandshakeGate>,
}

/// A device key as rustls' server signing key.
#[derive(Debug)]
struct DeviceKey {
    key: Arc<dyn hsm_adapters::SigningKey>,
    observer: Observer,
}

#[derive(Debug)]
struct DeviceSigner {
    key: Arc<dyn hsm_adapters::SigningKey>,
    scheme: rustls::SignatureScheme,
    observer: Observer,
}

impl SigningKey for DeviceKey {
    fn choose_scheme(&self, offered: &[rustls::SignatureScheme]) -> Option<Box<dyn Signer>> {
        // TLS 1.3 signs with ECDSA or RSA-PSS only.
        let wanted = match self.key.public_key().algorithm() {
            KeyAlgorithm::EcP256 => rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
            _ => rustls::SignatureScheme::RSA_PSS_SHA256,
        };
        offered.contains(&wanted).then(|| {
            Box::new(DeviceSigner { key: Arc::clone(&self.key), scheme: wanted, observer: self.observer.clone() })
                as Box<dyn Signer>
        })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        // Lets rustls check that the certificate is this key's (`CertifiedKey::keys_match`).
        Some(SubjectPublicKeyInfoDer::from(self.key.public_key().spki_der()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.key.public_key().algorithm() {
            KeyAlgorithm::EcP256 => SignatureAlgorithm::ECDSA,
            _ => SignatureAlgorithm::RSA,
        }
    }
}

impl Signer for DeviceSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let (scheme, der) = match self.scheme {
            rustls::SignatureScheme::ECDSA_NISTP256_SHA256 => (SignatureScheme::EcdsaP256Sha256, true),
            _ => (SignatureScheme::RsaPssSha256, false),
        };
        // The handshake runs on the async runtime; the device call blocks, so tell the runtime.
        // It waits for its turn at the device: handshakes never take the token workers' share.
        let sign = || {
            let _turn = self.observer.gate.turn()?;
            Some(self.key.sign(scheme, message))
        };
        let result = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(sign),
            Err(_) => sign(),
        };
        let Some(result) = result else {
            return Err(rustls::Error::General("no turn at the TLS key's device came in time".into()));
        };
        self.observer.health.note(&self.observer.metrics, result.as_ref().map(|_| ()));
        self.observer.metrics.handshake_signatures.inc();
        let raw = result.map_err(|e| rustls::Error::General(format!("TLS key: {e}")))?;
        if der {
            hsm_adapters::signer::ecdsa_raw_to_der(&raw).map_err(|e| rustls::Error::General(e.to_string()))
        } else {
            Ok(raw)
        }
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        self.scheme
    }
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// Management points' client certificates: WebPKI verification directly under a trusted root
/// (validity, signature, clientAuth) — intermediates a client sends are ignored, since every MP
/// certificate is issued by a root itself, so no cross-certificate can lend trust to a root
/// that is retired or revoked — and then the certificate must be one sitesign issued under the
/// `mp-client` profile and not revoked: a token-signing certificate (which has no extended key
/// usage at all) or anything else that merely chains to a root is not an identity.
#[derive(Debug)]
struct MpClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: HashSet<String>,
    revoked: HashSet<String>,
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for MpClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, &[], now)?;
        let caller =
            Caller::of(end_entity).ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        if self.revoked.contains(&caller.serial) {
            tracing::warn!(subject = %caller.subject, serial = %caller.serial, "refused a revoked client certificate");
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        if !self.allowed.contains(&caller.serial) {
            tracing::warn!(subject = %caller.subject, serial = %caller.serial, "refused a client certificate that is not an MP identity issued here");
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::InvalidPurpose));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The state has no active TLS key or no trusted root.
    #[error("{0}")]
    State(String),
    /// rustls refused the configuration (the certificate is not the key's, a root is invalid).
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What a TLS configuration is built from, to tell whether a new state needs a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInputs {
    /// The active TLS key and the DER of its chain.
    pub chain: Vec<Vec<u8>>,
    /// The TLS key's id.
    pub key_id: String,
    /// Trusted roots.
    pub roots: Vec<Vec<u8>>,
    /// Serials of the MP certificates that may connect, sorted.
    pub allowed: Vec<String>,
    /// Revoked serials, sorted.
    pub revoked: Vec<String>,
    /// Protocols offered by ALPN.
    pub alpn: Vec<Vec<u8>>,
}

impl TlsInputs {
    /// The inputs in `state`: the TLS key's certificate, followed — when it was issued by a root
    /// that replaced another — by the cross-certificate the old root made for the new one, so
    /// that a management point that trusts only the old root still builds a path.
    pub fn of(state: &State, cross_certificates: &[Vec<u8>], alpn: Vec<Vec<u8>>) -> Result<TlsInputs, TlsError> {
        let tls = state.active(KeyRole::Tls).ok_or_else(|| TlsError::State("no TLS key is active".into()))?;
        let leaf =
            tls.certificate().ok_or_else(|| TlsError::State(format!("TLS key {} has no certificate", tls.id)))?;
        let mut chain = vec![leaf.to_vec()];
        chain.extend(cross_certificates.iter().cloned());
        let roots: Vec<Vec<u8>> = state.trusted_roots().into_iter().map(<[u8]>::to_vec).collect();
        if roots.is_empty() {
            return Err(TlsError::State("no SMS Issuing root is trusted".into()));
        }
        let mut revoked: Vec<String> = state.revoked.iter().cloned().collect();
        revoked.sort();
        let mut allowed: Vec<String> = state.mp_clients.keys().cloned().collect();
        allowed.sort();
        Ok(TlsInputs { chain, key_id: tls.id.clone(), roots, allowed, revoked, alpn })
    }
}

/// The server configuration for `inputs`, with `key` (the TLS key in its device), reporting each
/// handshake signature to `observer`.
pub fn server_config(
    inputs: &TlsInputs,
    key: Arc<dyn hsm_adapters::SigningKey>,
    observer: Observer,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for root in &inputs.roots {
        roots.add(CertificateDer::from(root.clone()))?;
    }
    let hints = roots.subjects();
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let verifier = MpClientVerifier {
        inner,
        allowed: inputs.allowed.iter().cloned().collect(),
        revoked: inputs.revoked.iter().cloned().collect(),
        hints,
    };
    let certified = CertifiedKey::new(
        inputs.chain.iter().cloned().map(CertificateDer::from).collect(),
        Arc::new(DeviceKey { key, observer }),
    );
    certified.keys_match()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(FixedCert(Arc::new(certified))));
    config.alpn_protocols = inputs.alpn.clone();
    // No resumption: every connection is a full handshake, so the client certificate is checked
    // (validity, revocation) on every connection, never skipped by a resumed session.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}
