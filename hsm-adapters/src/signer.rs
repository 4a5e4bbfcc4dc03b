//! An adapter from a device key to RustCrypto's `signature::Signer` + `Keypair`, so the x509-cert
//! builder (and anything else written against those traits) signs with a key that never leaves
//! the device.

use std::sync::Arc;

use der::Encode;
use der::asn1::{BitString, UintRef};
use spki::{AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey, SignatureBitStringEncoding};

use crate::backend::SigningKey;
use crate::error::{Error, Result};
use crate::key::{OID_ECDSA_WITH_SHA256, OID_SHA256_WITH_RSA, PublicKey, SignatureScheme};

/// A device key seen through RustCrypto's signing traits, with the X.509 encoding of signatures
/// (PKCS#1 v1.5 for RSA, DER `ECDSA-Sig-Value` for P-256).
#[derive(Clone, Debug)]
pub struct X509Signer {
    key: Arc<dyn SigningKey>,
}

impl X509Signer {
    /// Wraps `key`. RSA keys sign with `sha256WithRSAEncryption`, P-256 keys with
    /// `ecdsa-with-SHA256`.
    pub fn new(key: Arc<dyn SigningKey>) -> Self {
        X509Signer { key }
    }

    fn scheme(&self) -> SignatureScheme {
        match self.key.algorithm().rsa_bits() {
            Some(_) => SignatureScheme::RsaPkcs1Sha256,
            None => SignatureScheme::EcdsaP256Sha256,
        }
    }
}

/// The verifying half handed out by [`X509Signer`]'s `Keypair` implementation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey(pub PublicKey);

impl EncodePublicKey for VerifyingKey {
    fn to_public_key_der(&self) -> spki::Result<der::Document> {
        Ok(der::Document::try_from(self.0.spki_der())?)
    }
}

impl signature::Keypair for X509Signer {
    type VerifyingKey = VerifyingKey;
    fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.key.public_key().clone())
    }
}

impl DynSignatureAlgorithmIdentifier for X509Signer {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(match self.scheme() {
            // RFC 4055 §5: the parameters of sha256WithRSAEncryption are NULL.
            SignatureScheme::RsaPkcs1Sha256 => {
                AlgorithmIdentifierOwned { oid: OID_SHA256_WITH_RSA, parameters: Some(der::asn1::Null.into()) }
            }
            // RFC 5758 §3.2: the parameters of ecdsa-with-SHA256 are absent.
            _ => AlgorithmIdentifierOwned { oid: OID_ECDSA_WITH_SHA256, parameters: None },
        })
    }
}

/// A signature in its X.509 encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Signature(Vec<u8>);

impl X509Signature {
    /// The encoded signature bytes (the content of the certificate's `signatureValue`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for X509Signature {
    /// Wraps signature bytes already in their X.509 encoding (for signers outside this crate).
    fn from(bytes: Vec<u8>) -> Self {
        X509Signature(bytes)
    }
}

impl SignatureBitStringEncoding for X509Signature {
    fn to_bitstring(&self) -> der::Result<BitString> {
        BitString::from_bytes(&self.0)
    }
}

#[derive(der::Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// DER-encodes a raw `r‖s` P-256 signature as `ECDSA-Sig-Value` (RFC 5480 / SEC 1).
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>> {
    if raw.len() != 64 {
        return Err(Error::Encoding { what: format!("P-256 signature must be 64 bytes, got {}", raw.len()) });
    }
    let trim = |b: &[u8]| {
        let start = b.iter().position(|x| *x != 0).unwrap_or(b.len() - 1);
        b[start..].to_vec()
    };
    let (r, s) = (trim(&raw[..32]), trim(&raw[32..]));
    Ok(EcdsaSigValue { r: UintRef::new(&r)?, s: UintRef::new(&s)? }.to_der()?)
}

impl signature::Signer<X509Signature> for X509Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<X509Signature, signature::Error> {
        let scheme = self.scheme();
        let raw = self.key.sign(scheme, msg).map_err(signature::Error::from_source)?;
        let encoded = match scheme {
            SignatureScheme::EcdsaP256Sha256 => ecdsa_raw_to_der(&raw).map_err(signature::Error::from_source)?,
            _ => raw,
        };
        Ok(X509Signature(encoded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_encoding_trims_and_pads_integers() {
        let mut raw = [0u8; 64];
        raw[31] = 0x01; // r = 1
        raw[32] = 0x80; // s has its top bit set: needs a leading zero in DER
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 0x21, 0x00]);
        assert_eq!(der.len(), 0x28);
        assert!(ecdsa_raw_to_der(&raw[..63]).is_err());
    }
}
