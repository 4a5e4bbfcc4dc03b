//! TLS for the signing API: rustls, TLS 1.3 only (this build of rustls has no TLS 1.2 at all),
//! the server key inside the device, and client certificates required and verified against SMS
//! Issuing for the `mp-client` purpose (clientAuth).

use std::sync::Arc;

use hsm_adapters::{KeyAlgorithm, SignatureScheme};
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{RootCertStore, ServerConfig, SignatureAlgorithm};

/// A device key as rustls' server signing key.
#[derive(Debug)]
struct DeviceKey {
    key: Arc<dyn hsm_adapters::SigningKey>,
}

#[derive(Debug)]
struct DeviceSigner {
    key: Arc<dyn hsm_adapters::SigningKey>,
    scheme: rustls::SignatureScheme,
}

impl SigningKey for DeviceKey {
    fn choose_scheme(&self, offered: &[rustls::SignatureScheme]) -> Option<Box<dyn Signer>> {
        // TLS 1.3 signs with ECDSA or RSA-PSS only.
        let wanted = match self.key.public_key().algorithm() {
            KeyAlgorithm::EcP256 => rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
            _ => rustls::SignatureScheme::RSA_PSS_SHA256,
        };
        offered
            .contains(&wanted)
            .then(|| Box::new(DeviceSigner { key: Arc::clone(&self.key), scheme: wanted }) as Box<dyn Signer>)
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
        let sign = || self.key.sign(scheme, message);
        let raw = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(sign),
            Err(_) => sign(),
        }
        .map_err(|e| rustls::Error::General(format!("TLS key: {e}")))?;
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

/// The server configuration: `chain` (leaf first) with `key` in the device; clients must present
/// a certificate that chains to `root` and allows clientAuth.
pub fn server_config(
    key: Arc<dyn hsm_adapters::SigningKey>,
    chain: Vec<Vec<u8>>,
    root: &[u8],
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let certified =
        CertifiedKey::new(chain.into_iter().map(CertificateDer::from).collect(), Arc::new(DeviceKey { key }));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(FixedCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
