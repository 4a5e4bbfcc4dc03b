//! Independent signature checks: `ring` (a second implementation, not the device) and the
//! `openssl` command line tool, which also checks sitesign's SubjectPublicKeyInfo encoding.

use std::path::Path;
use std::process::Command;

use hsm_adapters::signer::ecdsa_raw_to_der;
use hsm_adapters::{PublicKey, SignatureScheme};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256, UnparsedPublicKey,
};

/// Verifies `signature` over `message` with `ring`.
pub fn ring_verify(
    public: &PublicKey,
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let key_bytes = public.subject_public_key_bytes().map_err(|e| e.to_string())?;
    let alg: &dyn ring::signature::VerificationAlgorithm = match scheme {
        SignatureScheme::RsaPkcs1Sha256 => &RSA_PKCS1_2048_8192_SHA256,
        SignatureScheme::RsaPssSha256 => &RSA_PSS_2048_8192_SHA256,
        SignatureScheme::EcdsaP256Sha256 => &ECDSA_P256_SHA256_FIXED,
    };
    UnparsedPublicKey::new(alg, key_bytes)
        .verify(message, signature)
        .map_err(|_| format!("ring rejects the {scheme:?} signature"))
}

/// Verifies `signature` over `message` with `openssl pkeyutl`, from the DER SPKI. Files go to `dir`.
pub fn openssl_verify(
    dir: &Path,
    public: &PublicKey,
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let key = dir.join("verify-pub.der");
    let msg = dir.join("verify-msg.bin");
    let sig = dir.join("verify-sig.bin");
    std::fs::write(&key, public.spki_der()).map_err(|e| e.to_string())?;
    std::fs::write(&msg, message).map_err(|e| e.to_string())?;
    let sig_bytes = match scheme {
        SignatureScheme::EcdsaP256Sha256 => ecdsa_raw_to_der(signature).map_err(|e| e.to_string())?,
        _ => signature.to_vec(),
    };
    std::fs::write(&sig, sig_bytes).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("openssl");
    cmd.args(["dgst", "-sha256", "-keyform", "DER", "-verify"]).arg(&key);
    if scheme == SignatureScheme::RsaPssSha256 {
        cmd.args(["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32", "-sigopt", "rsa_mgf1_md:sha256"]);
    }
    let out = cmd.arg("-signature").arg(&sig).arg(&msg).output().map_err(|e| format!("cannot run openssl: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("Verified OK") {
        Ok(())
    } else {
        Err(format!("openssl rejects the {scheme:?} signature: {stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}
