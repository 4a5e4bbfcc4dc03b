//! Keys inside a PKCS#11 token: generation templates, lookup, signing and the protection check.

use std::sync::{Mutex, PoisonError};

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use der::Decode;
use der::asn1::OctetString;
use sha2::{Digest, Sha256};

use super::device::Lane;
use super::{Hashing, Pkcs11Backend};
use crate::backend::SigningKey;
use crate::error::{Error, Result};
use crate::key::{
    KeyAlgorithm, ProtectionCheck, ProtectionReport, PublicKey, SHA256_DIGEST_INFO_PREFIX, SignatureScheme,
};
use crate::uri::{KeyUri, Pkcs11Uri};

/// DER of the `prime256v1` OID, the `CKA_EC_PARAMS` of a P-256 key.
const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The boolean attributes every sitesign private key must have (SPEC §2), and their values.
const REQUIRED_FLAGS: [(AttributeType, &str, bool); 11] = [
    (AttributeType::Token, "CKA_TOKEN", true),
    (AttributeType::Private, "CKA_PRIVATE", true),
    (AttributeType::Sensitive, "CKA_SENSITIVE", true),
    (AttributeType::AlwaysSensitive, "CKA_ALWAYS_SENSITIVE", true),
    (AttributeType::Extractable, "CKA_EXTRACTABLE", false),
    (AttributeType::NeverExtractable, "CKA_NEVER_EXTRACTABLE", true),
    (AttributeType::Local, "CKA_LOCAL", true),
    (AttributeType::Sign, "CKA_SIGN", true),
    (AttributeType::Decrypt, "CKA_DECRYPT", false),
    (AttributeType::Unwrap, "CKA_UNWRAP", false),
    (AttributeType::Derive, "CKA_DERIVE", false),
];

fn ck<T>(r: cryptoki::error::Result<T>) -> Result<T> {
    r.map_err(Error::from_cryptoki)
}

/// A private key in a PKCS#11 token.
#[derive(Debug)]
pub struct Pkcs11Key {
    device: Lane,
    uri: KeyUri,
    /// The search template that finds this key again after recovery.
    template: Vec<Attribute>,
    public: PublicKey,
    /// The object handle and the module generation it is valid for.
    handle: Mutex<Option<(u64, ObjectHandle)>>,
}

/// Templates for `C_GenerateKeyPair`: token objects, private key sensitive, never extractable,
/// sign-only and unmodifiable; the public key verify-only.
fn generation_templates(
    algorithm: KeyAlgorithm,
    label: &[u8],
    id: &[u8],
) -> (Mechanism<'static>, Vec<Attribute>, Vec<Attribute>) {
    let mut public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(label.to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Label(label.to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Sign(true),
        Attribute::SignRecover(false),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Modifiable(false),
    ];
    let mechanism = match algorithm.rsa_bits() {
        Some(bits) => {
            public.push(Attribute::ModulusBits(u64::from(bits).into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        }
        None => {
            public.push(Attribute::EcParams(P256_EC_PARAMS.to_vec()));
            Mechanism::EccKeyPairGen
        }
    };
    (mechanism, public, private)
}

/// Reads the public key belonging to the private key `private`.
fn read_public_key(session: &Session, private: ObjectHandle) -> Result<PublicKey> {
    let attrs = ck(session.get_attributes(private, &[AttributeType::KeyType, AttributeType::Id]))?;
    let mut key_type = None;
    let mut id = None;
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Id(i) => id = Some(i),
            _ => {}
        }
    }
    match key_type {
        Some(KeyType::RSA) => {
            // RSA private key objects carry the modulus and public exponent themselves.
            let attrs = ck(session.get_attributes(private, &[AttributeType::Modulus, AttributeType::PublicExponent]))?;
            let (mut n, mut e) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Modulus(m) => n = Some(m),
                    Attribute::PublicExponent(x) => e = Some(x),
                    _ => {}
                }
            }
            match (n, e) {
                (Some(n), Some(e)) => PublicKey::from_rsa_components(&n, &e),
                _ => Err(Error::Encoding { what: "the token did not return the RSA modulus and exponent".into() }),
            }
        }
        Some(KeyType::EC) => {
            // EC private keys do not carry the point: read it from the public key with the same id.
            let id = id.ok_or_else(|| Error::Encoding {
                what: "EC private key has no CKA_ID to find its public key".into(),
            })?;
            let publics = ck(session.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(id)]))?;
            let public = *publics.first().ok_or_else(|| Error::Encoding {
                what: "the EC private key has no public key object with the same CKA_ID".into(),
            })?;
            let point = ck(session.get_attributes(public, &[AttributeType::EcPoint]))?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::EcPoint(p) => Some(p),
                    _ => None,
                })
                .ok_or_else(|| Error::Encoding { what: "the token did not return CKA_EC_POINT".into() })?;
            // PKCS#11 says CKA_EC_POINT is a DER OCTET STRING; some tokens return the bare point.
            if point.len() == 65 && point[0] == 0x04 {
                PublicKey::from_p256_point(&point)
            } else {
                PublicKey::from_p256_point(OctetString::from_der(&point)?.as_bytes())
            }
        }
        other => Err(Error::Unsupported { what: format!("key type {other:?} (sitesign uses RSA and EC P-256 keys)") }),
    }
}

/// Generates a key pair named `name` in the token.
pub(super) fn generate(device: &Lane, uri: Pkcs11Uri, name: &str, algorithm: KeyAlgorithm) -> Result<Pkcs11Key> {
    let label = name.as_bytes().to_vec();
    let (public, handle, id) = device.with_session(
        |session, generation| {
            let existing = ck(session.find_objects(&[Attribute::Label(label.clone())]))?;
            if !existing.is_empty() {
                return Err(Error::KeyExists { uri: uri.to_string() });
            }
            let id = ck(session.generate_random_vec(16))?;
            let (mechanism, public_t, private_t) = generation_templates(algorithm, &label, &id);
            let (pub_h, priv_h) = ck(session.generate_key_pair(&mechanism, &public_t, &private_t))?;
            let checked = read_public_key(session, priv_h).and_then(|pk| {
                if pk.algorithm() == algorithm {
                    Ok(pk)
                } else {
                    Err(Error::Encoding {
                        what: format!("asked the token for {algorithm}, it made {}", pk.algorithm()),
                    })
                }
            });
            match checked {
                Ok(pk) => Ok((pk, (generation, priv_h), id)),
                Err(e) => {
                    // Leave no half-made key behind.
                    let _ = session.destroy_object(priv_h);
                    let _ = session.destroy_object(pub_h);
                    Err(e)
                }
            }
        },
        || {},
    )?;
    let template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(label), Attribute::Id(id)];
    Ok(Pkcs11Key {
        device: device.clone(),
        uri: KeyUri::Pkcs11(uri),
        template,
        public,
        handle: Mutex::new(Some(handle)),
    })
}

/// Finds exactly one private key matching `template`.
fn find_one(session: &Session, template: &[Attribute], uri: &KeyUri) -> Result<ObjectHandle> {
    let found = ck(session.find_objects(template))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::KeyNotFound { uri: uri.to_string() }),
        many => Err(Error::KeyAmbiguous { uri: uri.to_string(), count: many.len() }),
    }
}

/// Finds the key named by `uri` (whose search template is `template`).
pub(super) fn find(device: &Lane, uri: Pkcs11Uri, template: Vec<Attribute>) -> Result<Pkcs11Key> {
    let key_uri = KeyUri::Pkcs11(uri);
    let (public, handle) = device.with_session(
        |session, generation| {
            let h = find_one(session, &template, &key_uri)?;
            Ok((read_public_key(session, h)?, (generation, h)))
        },
        || {},
    )?;
    Ok(Pkcs11Key { device: device.clone(), uri: key_uri, template, public, handle: Mutex::new(Some(handle)) })
}

impl Pkcs11Key {
    /// The cached handle if it belongs to `generation`, else looks the key up again and checks it
    /// is still the same key (same public key): a different key under the same name is refused.
    fn handle(&self, session: &Session, generation: u64) -> Result<ObjectHandle> {
        let mut cached = self.handle.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((g, h)) = *cached
            && g == generation
        {
            return Ok(h);
        }
        let h = find_one(session, &self.template, &self.uri).map_err(|e| match e {
            Error::KeyNotFound { uri } => Error::KeyVanished { uri },
            other => other,
        })?;
        let public = read_public_key(session, h)?;
        if public != self.public {
            return Err(Error::ProtectionMismatch {
                key: self.uri.to_string(),
                problems: vec!["the token now holds a different key under this name; find the key again".into()],
            });
        }
        *cached = Some((generation, h));
        Ok(h)
    }

    fn forget_handle(&self) {
        *self.handle.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl SigningKey for Pkcs11Key {
    fn uri(&self) -> &KeyUri {
        &self.uri
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        if !self.algorithm().supports(scheme) {
            return Err(Error::Unsupported { what: format!("{scheme:?} with a {} key", self.algorithm()) });
        }
        let hashing = Pkcs11Backend::hashing(&self.device, scheme)
            .ok_or_else(|| Error::Unsupported { what: format!("this token offers no mechanism for {scheme:?}") })?;
        let pss = PkcsPssParams { hash_alg: MechanismType::SHA256, mgf: PkcsMgfType::MGF1_SHA256, s_len: 32u64.into() };
        let digest = Sha256::digest(message);
        let (mechanism, data): (Mechanism<'_>, Vec<u8>) = match (scheme, hashing) {
            (SignatureScheme::RsaPkcs1Sha256, Hashing::Host) => {
                (Mechanism::RsaPkcs, [&SHA256_DIGEST_INFO_PREFIX[..], &digest[..]].concat())
            }
            (SignatureScheme::RsaPkcs1Sha256, Hashing::Device) => (Mechanism::Sha256RsaPkcs, message.to_vec()),
            (SignatureScheme::RsaPssSha256, Hashing::Host) => (Mechanism::RsaPkcsPss(pss), digest.to_vec()),
            (SignatureScheme::RsaPssSha256, Hashing::Device) => (Mechanism::Sha256RsaPkcsPss(pss), message.to_vec()),
            (SignatureScheme::EcdsaP256Sha256, Hashing::Host) => (Mechanism::Ecdsa, digest.to_vec()),
            (SignatureScheme::EcdsaP256Sha256, Hashing::Device) => (Mechanism::EcdsaSha256, message.to_vec()),
        };
        let signature = self.device.with_session(
            |session, generation| {
                let h = self.handle(session, generation)?;
                ck(session.sign(&mechanism, h, &data))
            },
            || self.forget_handle(),
        )?;
        if signature.len() != self.algorithm().signature_len() {
            return Err(Error::Encoding {
                what: format!(
                    "the token returned a {}-byte signature, expected {}",
                    signature.len(),
                    self.algorithm().signature_len()
                ),
            });
        }
        Ok(signature)
    }

    fn check_protection(&self) -> Result<ProtectionReport> {
        let material = match self.algorithm().rsa_bits() {
            Some(_) => (AttributeType::PrivateExponent, "CKA_PRIVATE_EXPONENT readable"),
            None => (AttributeType::Value, "CKA_VALUE readable"),
        };
        self.device.with_session(
            |session, generation| {
                let h = self.handle(session, generation)?;
                let types: Vec<AttributeType> = REQUIRED_FLAGS.iter().map(|(t, _, _)| *t).collect();
                let values = ck(session.get_attributes(h, &types))?;
                let mut checks: Vec<ProtectionCheck> = REQUIRED_FLAGS
                    .iter()
                    .map(|(t, name, expected)| ProtectionCheck {
                        name,
                        expected: *expected,
                        actual: values.iter().find(|a| a.attribute_type() == *t).and_then(bool_value),
                    })
                    .collect();
                let info = ck(session.get_attribute_info(h, &[material.0]))?;
                checks.push(ProtectionCheck {
                    name: material.1,
                    expected: false,
                    actual: Some(!matches!(info.first(), Some(AttributeInfo::Sensitive | AttributeInfo::Unavailable))),
                });
                Ok(ProtectionReport { checks })
            },
            || self.forget_handle(),
        )
    }
}

fn bool_value(a: &Attribute) -> Option<bool> {
    match a {
        Attribute::Token(b)
        | Attribute::Private(b)
        | Attribute::Sensitive(b)
        | Attribute::AlwaysSensitive(b)
        | Attribute::Extractable(b)
        | Attribute::NeverExtractable(b)
        | Attribute::Local(b)
        | Attribute::Sign(b)
        | Attribute::Decrypt(b)
        | Attribute::Unwrap(b)
        | Attribute::Derive(b) => Some(*b),
        _ => None,
    }
}
