//! Key algorithms, signature schemes, public keys and the protection report: the vocabulary every
//! backend speaks. Nothing here touches a device.

use std::fmt;

use der::asn1::{BitString, UintRef};
use der::{Decode, Encode, Sequence};
use serde::{Deserialize, Serialize};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};

use crate::error::{Error, Result};

/// `ecdsa-with-SHA256` (RFC 5758).
pub use const_oid::db::rfc5912::ECDSA_WITH_SHA_256 as OID_ECDSA_WITH_SHA256;
/// `id-ecPublicKey` (RFC 5480).
pub use const_oid::db::rfc5912::ID_EC_PUBLIC_KEY as OID_EC_PUBLIC_KEY;
/// `rsaEncryption` (RFC 8017), from const-oid's database.
pub use const_oid::db::rfc5912::RSA_ENCRYPTION as OID_RSA_ENCRYPTION;
/// `prime256v1` / `secp256r1` (RFC 5480).
pub use const_oid::db::rfc5912::SECP_256_R_1 as OID_P256;
/// `sha256WithRSAEncryption` (RFC 8017).
pub use const_oid::db::rfc5912::SHA_256_WITH_RSA_ENCRYPTION as OID_SHA256_WITH_RSA;

/// The DER prefix of a PKCS#1 v1.5 `DigestInfo` for SHA-256 (RFC 8017 §9.2, note 1). The digest's
/// 32 bytes follow it.
pub const SHA256_DIGEST_INFO_PREFIX: [u8; 19] =
    [0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];

/// The kinds of key pair sitesign generates inside a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// RSA with a 2048-bit modulus.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    /// ECDSA over NIST P-256.
    #[serde(rename = "ec-p256")]
    EcP256,
}

impl KeyAlgorithm {
    /// Every algorithm, in a stable order (for capability listings and test matrices).
    pub const ALL: [KeyAlgorithm; 4] = [Self::Rsa2048, Self::Rsa3072, Self::Rsa4096, Self::EcP256];

    /// The RSA modulus length in bits, or `None` for EC keys.
    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
            Self::EcP256 => None,
        }
    }

    /// The RSA algorithm with this modulus length, if sitesign supports it.
    ///
    /// ```
    /// use hsm_adapters::KeyAlgorithm;
    /// assert_eq!(KeyAlgorithm::from_rsa_bits(3072), Some(KeyAlgorithm::Rsa3072));
    /// assert_eq!(KeyAlgorithm::from_rsa_bits(1024), None);
    /// ```
    pub fn from_rsa_bits(bits: u32) -> Option<Self> {
        match bits {
            2048 => Some(Self::Rsa2048),
            3072 => Some(Self::Rsa3072),
            4096 => Some(Self::Rsa4096),
            _ => None,
        }
    }

    /// Whether `scheme` can be used with a key of this algorithm.
    pub fn supports(self, scheme: SignatureScheme) -> bool {
        match scheme {
            SignatureScheme::RsaPkcs1Sha256 | SignatureScheme::RsaPssSha256 => self.rsa_bits().is_some(),
            SignatureScheme::EcdsaP256Sha256 => self == Self::EcP256,
        }
    }

    /// The scheme used when the caller has no preference: RS256 for RSA, ES256 for P-256.
    pub fn default_scheme(self) -> SignatureScheme {
        match self {
            Self::EcP256 => SignatureScheme::EcdsaP256Sha256,
            _ => SignatureScheme::RsaPkcs1Sha256,
        }
    }

    /// Length in bytes of every signature this key produces (raw `r‖s` for ECDSA).
    pub fn signature_len(self) -> usize {
        match self.rsa_bits() {
            Some(bits) => bits as usize / 8,
            None => 64,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
            Self::EcP256 => "ec-p256",
        })
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|a| a.to_string() == s).ok_or_else(|| Error::Unsupported {
            what: format!("key algorithm {s:?} (expected one of rsa-2048, rsa-3072, rsa-4096, ec-p256)"),
        })
    }
}

/// How a signature is computed. Every scheme hashes with SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignatureScheme {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (JWS `RS256`, X.509 `sha256WithRSAEncryption`).
    #[serde(rename = "RS256")]
    RsaPkcs1Sha256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt (JWS `PS256`).
    #[serde(rename = "PS256")]
    RsaPssSha256,
    /// ECDSA over P-256 with SHA-256; the signature is raw `r‖s`, 64 bytes (JWS `ES256`).
    #[serde(rename = "ES256")]
    EcdsaP256Sha256,
}

impl SignatureScheme {
    /// The JWS `alg` name of this scheme (RFC 7518 §3.1).
    pub fn jws_alg(self) -> &'static str {
        match self {
            Self::RsaPkcs1Sha256 => "RS256",
            Self::RsaPssSha256 => "PS256",
            Self::EcdsaP256Sha256 => "ES256",
        }
    }
}

/// A public key as a DER `SubjectPublicKeyInfo`, checked to be one of the [`KeyAlgorithm`]s.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: KeyAlgorithm,
    spki_der: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .field("spki_der_len", &self.spki_der.len())
            .finish()
    }
}

#[derive(Sequence)]
struct RsaPublicKeyDer<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

impl PublicKey {
    /// Builds an RSA public key from its big-endian modulus and public exponent.
    ///
    /// Fails with [`Error::Unsupported`] if the modulus is not 2048, 3072 or 4096 bits long.
    pub fn from_rsa_components(modulus: &[u8], public_exponent: &[u8]) -> Result<Self> {
        let modulus = strip_leading_zeros(modulus);
        let bits = u32::try_from(modulus.len() * 8)
            .ok()
            .map(|b| b - modulus.first().map_or(8, |m| m.leading_zeros()))
            .unwrap_or(0);
        let algorithm = KeyAlgorithm::from_rsa_bits(bits)
            .ok_or_else(|| Error::Unsupported { what: format!("RSA key with a {bits}-bit modulus") })?;
        let inner = RsaPublicKeyDer {
            modulus: UintRef::new(modulus)?,
            public_exponent: UintRef::new(strip_leading_zeros(public_exponent))?,
        }
        .to_der()?;
        let spki = SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned { oid: OID_RSA_ENCRYPTION, parameters: Some(der::asn1::Null.into()) },
            subject_public_key: BitString::from_bytes(&inner)?,
        };
        Ok(Self { algorithm, spki_der: spki.to_der()? })
    }

    /// Builds a P-256 public key from its uncompressed SEC1 point (`04‖X‖Y`, 65 bytes).
    pub fn from_p256_point(point: &[u8]) -> Result<Self> {
        if point.len() != 65 || point[0] != 0x04 {
            return Err(Error::Encoding {
                what: format!("P-256 public point must be 65 bytes starting 0x04, got {} bytes", point.len()),
            });
        }
        let spki = SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned { oid: OID_EC_PUBLIC_KEY, parameters: Some(der::Any::from(&OID_P256)) },
            subject_public_key: BitString::from_bytes(point)?,
        };
        Ok(Self { algorithm: KeyAlgorithm::EcP256, spki_der: spki.to_der()? })
    }

    /// Parses a DER `SubjectPublicKeyInfo` and checks that it is a supported algorithm.
    pub fn from_spki_der(der_bytes: &[u8]) -> Result<Self> {
        let spki = SubjectPublicKeyInfoOwned::from_der(der_bytes)?;
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| Error::Encoding { what: "public key bit string has unused bits".into() })?;
        if spki.algorithm.oid == OID_RSA_ENCRYPTION {
            let inner = RsaPublicKeyDer::from_der(bits)?;
            Self::from_rsa_components(inner.modulus.as_bytes(), inner.public_exponent.as_bytes())
        } else if spki.algorithm.oid == OID_EC_PUBLIC_KEY {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            if curve != Some(OID_P256) {
                return Err(Error::Unsupported { what: "EC key on a curve other than P-256".into() });
            }
            Self::from_p256_point(bits)
        } else {
            Err(Error::Unsupported { what: format!("public key algorithm {}", spki.algorithm.oid) })
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The DER `SubjectPublicKeyInfo`.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The contents of the `subjectPublicKey` BIT STRING: PKCS#1 `RSAPublicKey` DER for RSA, the
    /// uncompressed point for EC. This is what `ring`'s and most verifiers' raw APIs take.
    pub fn subject_public_key_bytes(&self) -> Result<Vec<u8>> {
        let spki = SubjectPublicKeyInfoOwned::from_der(&self.spki_der)?;
        Ok(spki.subject_public_key.raw_bytes().to_vec())
    }

    /// The key's parameters as JWK (RFC 7518 §6) and most APIs want them: an RSA key's modulus and
    /// exponent, or a P-256 key's affine coordinates, each big-endian without leading zeros
    /// (coordinates are 32 bytes each).
    pub fn components(&self) -> Result<KeyComponents> {
        let bits = self.subject_public_key_bytes()?;
        match self.algorithm {
            KeyAlgorithm::EcP256 => Ok(KeyComponents::EcP256 { x: bits[1..33].to_vec(), y: bits[33..65].to_vec() }),
            _ => {
                let rsa = RsaPublicKeyDer::from_der(&bits)?;
                Ok(KeyComponents::Rsa {
                    modulus: rsa.modulus.as_bytes().to_vec(),
                    exponent: rsa.public_exponent.as_bytes().to_vec(),
                })
            }
        }
    }
}

/// A public key's parameters (see [`PublicKey::components`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyComponents {
    /// RSA: modulus `n` and public exponent `e`.
    Rsa {
        /// `n`, big-endian.
        modulus: Vec<u8>,
        /// `e`, big-endian.
        exponent: Vec<u8>,
    },
    /// P-256: the point's coordinates.
    EcP256 {
        /// `x`, 32 bytes.
        x: Vec<u8>,
        /// `y`, 32 bytes.
        y: Vec<u8>,
    },
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len().saturating_sub(1));
    &bytes[start..]
}

/// One protection property of a stored key, as the device reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProtectionCheck {
    /// The property's name in the device's own vocabulary (`CKA_SENSITIVE`, `fixedTPM`, …).
    pub name: &'static str,
    /// What sitesign requires.
    pub expected: bool,
    /// What the device reported; `None` if it would not say.
    pub actual: Option<bool>,
}

impl ProtectionCheck {
    /// Whether the device reported exactly the required value.
    pub fn ok(&self) -> bool {
        self.actual == Some(self.expected)
    }
}

/// The result of reading a key's protection properties back from the device (SPEC §2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProtectionReport {
    /// Every property checked, in a stable order.
    pub checks: Vec<ProtectionCheck>,
}

impl ProtectionReport {
    /// The properties that differ from what sitesign requires.
    pub fn mismatches(&self) -> Vec<&ProtectionCheck> {
        self.checks.iter().filter(|c| !c.ok()).collect()
    }

    /// Ok if every property is as required, else [`Error::ProtectionMismatch`] naming each one.
    pub fn require_ok(&self, key: &str) -> Result<()> {
        let bad: Vec<String> = self
            .mismatches()
            .iter()
            .map(|c| match c.actual {
                Some(v) => format!("{} is {v}, must be {}", c.name, c.expected),
                None => format!("{} could not be read, must be {}", c.name, c.expected),
            })
            .collect();
        if bad.is_empty() { Ok(()) } else { Err(Error::ProtectionMismatch { key: key.to_owned(), problems: bad }) }
    }
}

/// What a backend can do, read from the device when it is opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// A human-readable description of the device (module and token, or TPM vendor).
    pub device: String,
    /// Key algorithms the device can generate.
    pub key_algorithms: Vec<KeyAlgorithm>,
    /// Signature schemes the device can compute.
    pub schemes: Vec<SignatureScheme>,
    /// Whether SHA-256 is computed on the host and only the digest is sent to the device.
    pub host_side_hashing: bool,
    /// How many signing operations the device can run at once (sessions, or 1 for a TPM).
    pub max_concurrency: usize,
    /// What an operator should know before going live, as (name, value): the library and its
    /// version, the mechanism of each scheme and whether it hashes on the host, session limits,
    /// the login model, the clock. `sitesign status` prints them.
    pub facts: Vec<(String, String)>,
}
