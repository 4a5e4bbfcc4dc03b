//! Typed errors of the key backends. Each keeps the device's own code and says which class of
//! failure it is, because recovery depends on the class: a transient error is retried as is, a
//! session error reopens sessions and logs in again, a key error re-resolves the key, a fatal error
//! stops and is reported.

use std::path::PathBuf;

use cryptoki::context::Function;
use cryptoki::error::RvError;
use tss_esapi::constants::{Tss2ResponseCode, Tss2ResponseCodeKind};
use tss_esapi::tss2_esys;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a failure should be handled by the caller and by the backend's own recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The device is busy or briefly unable to answer: retrying the same call may succeed.
    Transient,
    /// The session (or the whole connection to the device) is gone: reopen, log in, retry.
    Session,
    /// The key handle is stale: look the key up again.
    Key,
    /// Retrying cannot help: wrong PIN, locked token, bad request, misconfiguration.
    Fatal,
}

/// An error from a key backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A PKCS#11 call returned an error code.
    #[error("PKCS#11 {function} failed: {rv}{}", hint_for(*rv))]
    Pkcs11 {
        /// The device's return value.
        rv: RvError,
        /// The PKCS#11 function that returned it.
        function: Function,
    },
    /// A TPM command (or the TSS stack under it) returned an error code.
    #[error("TPM {operation} failed: {message} (TSS2_RC {rc:#x}){}", tpm_hint(*rc))]
    Tpm {
        /// The raw TSS2 response code (layer in bits 16–23; 0 is the TPM itself).
        rc: u32,
        /// The command or step that failed.
        operation: &'static str,
        /// The stack's description of the code.
        message: String,
    },
    /// The PKCS#11 module could not be loaded or used (not a PKCS#11 library, missing symbols…).
    #[error("PKCS#11 module {module}: {reason}")]
    Module {
        /// The module path from the configuration.
        module: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A file or folder the backend needs could not be used.
    #[error("{path}: {reason}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// No token with the configured label or serial is present.
    #[error(
        "no PKCS#11 token {selector} is present in {module} (tokens seen: {seen}); check the token label or serial in the configuration"
    )]
    TokenNotFound {
        /// `label "…"` or `serial "…"`.
        selector: String,
        /// The module searched.
        module: PathBuf,
        /// The labels that were present.
        seen: String,
    },
    /// The PIN was rejected by the device.
    #[error(
        "the device rejected the PIN from {source_desc} ({rv}); check the PIN file — the device may lock after repeated failures"
    )]
    PinIncorrect {
        /// Where the PIN came from (a path, never the PIN).
        source_desc: String,
        /// The device's return value.
        rv: RvError,
    },
    /// The PIN could not be read.
    #[error("cannot use PIN file {path}: {reason}")]
    PinFile {
        /// The PIN file's path.
        path: PathBuf,
        /// What is wrong with it (never its content).
        reason: String,
    },
    /// No key matches the URI.
    #[error("no key found for {uri}")]
    KeyNotFound {
        /// The URI searched for.
        uri: String,
    },
    /// A key that was found before is no longer in the token: the token may have been removed or
    /// re-initialised. Recovery re-initialises the module and looks again.
    #[error("key {uri} is no longer in the token (removed or re-initialised)")]
    KeyVanished {
        /// The key's URI.
        uri: String,
    },
    /// More than one key matches the URI, so it does not name one key.
    #[error("{uri} matches {count} keys; add id= or a more specific object= to the URI")]
    KeyAmbiguous {
        /// The URI searched for.
        uri: String,
        /// How many private keys matched.
        count: usize,
    },
    /// A key with this name already exists; sitesign never overwrites keys.
    #[error("a key named by {uri} already exists; choose another name or retire the old key first")]
    KeyExists {
        /// The URI of the existing key.
        uri: String,
    },
    /// A key URI could not be parsed.
    #[error("invalid key URI {uri:?}: {reason}")]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// The key's protection attributes differ from SPEC §2.
    #[error("key {key} is not protected as required: {}", problems.join("; "))]
    ProtectionMismatch {
        /// The key's URI.
        key: String,
        /// One line per attribute that differs.
        problems: Vec<String>,
    },
    /// The device or key cannot do what was asked.
    #[error("not supported: {what}")]
    Unsupported {
        /// What was asked.
        what: String,
    },
    /// Data from the device could not be encoded or decoded.
    #[error("encoding error: {what}")]
    Encoding {
        /// What went wrong.
        what: String,
    },
    /// Every device session stayed busy past the wait limit.
    #[error("all {sessions} device sessions stayed busy for {waited_ms} ms; reduce load or add sessions")]
    Busy {
        /// Sessions in the pool.
        sessions: usize,
        /// How long the caller waited.
        waited_ms: u64,
    },
    /// The device returned a signature that does not verify with the key's public half: it was
    /// discarded (a faulty RSA-CRT signature would give the private key away).
    #[error(
        "key {uri}: the device returned a signature that does not verify with the key's public key; it was discarded — check the device (a fault, or a key that is not the one reported)"
    )]
    FaultySignature {
        /// The key's URI.
        uri: String,
    },
    /// Recovery was attempted the allowed number of times and the device still fails.
    #[error("device still failing after {attempts} recovery attempts: {last}")]
    RecoveryExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last error seen.
        last: Box<Error>,
    },
}

fn tpm_hint(rc: u32) -> &'static str {
    match classify_tpm_rc(rc) {
        _ if is_tpm_auth_failure(rc) => {
            " (the auth value was rejected; check auth_file — the TPM locks out after repeated failures)"
        }
        _ if is_tpm_lockout(rc) => " (the TPM is in dictionary-attack lockout; wait or reset it with lockout auth)",
        ErrorClass::Session => " (the TPM is unreachable or was restarted)",
        _ => "",
    }
}

// The TSS2 response-code layers (TCG TSS 2.0 Overview, §6.1.2: `TSS2_RC_LAYER(n)`, a C macro with
// no binding); the codes within each layer come from tss-esapi's constants.
const TSS_LAYER_TPM: u32 = 0;
const TSS_LAYER_ESYS: u32 = 7;
const TSS_LAYER_SYS: u32 = 8;
const TSS_LAYER_MU: u32 = 9;
const TSS_LAYER_TCTI: u32 = 10;
const TSS_LAYER_RESMGR: u32 = 11;

/// The kind of a TPM-layer response code, as tss-esapi decodes it.
fn tpm_kind(rc: u32) -> Option<Tss2ResponseCodeKind> {
    if rc >> tss2_esys::TSS2_RC_LAYER_SHIFT != TSS_LAYER_TPM {
        return None;
    }
    Tss2ResponseCode::from(rc).kind()
}

/// Whether `rc` says an authorization failed (TPM_RC_AUTH_FAIL or TPM_RC_BAD_AUTH, any position).
pub fn is_tpm_auth_failure(rc: u32) -> bool {
    matches!(tpm_kind(rc), Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth))
}

/// Whether `rc` is TPM_RC_LOCKOUT (dictionary-attack lockout).
pub fn is_tpm_lockout(rc: u32) -> bool {
    matches!(tpm_kind(rc), Some(Tss2ResponseCodeKind::Lockout))
}

/// Classifies a TSS2 response code (TPM 2.0 Part 2 §6.6 for the TPM's own codes; the TSS layers
/// for the stack's).
pub fn classify_tpm_rc(rc: u32) -> ErrorClass {
    use Tss2ResponseCodeKind as K;
    let layer = (rc >> tss2_esys::TSS2_RC_LAYER_SHIFT) & 0xff;
    let base = rc & 0xffff;
    match layer {
        TSS_LAYER_TPM => match tpm_kind(rc) {
            // The TPM is busy or short of memory for a moment.
            Some(
                K::ObjectMemory
                | K::SessionMemory
                | K::Memory
                | K::SessionHandles
                | K::ObjectHandles
                | K::Yielded
                | K::Canceled
                | K::Testing
                | K::NvRate
                | K::Retry
                | K::NvUnavailable,
            ) => ErrorClass::Transient,
            // A handle the command referred to is not loaded: reload the key.
            Some(
                K::Handle
                | K::ReferenceH0
                | K::ReferenceH1
                | K::ReferenceH2
                | K::ReferenceH3
                | K::ReferenceH4
                | K::ReferenceH5
                | K::ReferenceH6,
            ) => ErrorClass::Key,
            // The TPM was restarted and needs TPM2_Startup.
            Some(K::Initialize) => ErrorClass::Session,
            _ => ErrorClass::Fatal,
        },
        TSS_LAYER_TCTI | TSS_LAYER_RESMGR => ErrorClass::Session,
        TSS_LAYER_ESYS | TSS_LAYER_SYS | TSS_LAYER_MU => match base {
            tss2_esys::TSS2_BASE_RC_NO_CONNECTION
            | tss2_esys::TSS2_BASE_RC_IO_ERROR
            | tss2_esys::TSS2_BASE_RC_MALFORMED_RESPONSE
            | tss2_esys::TSS2_BASE_RC_INSUFFICIENT_RESPONSE => ErrorClass::Session,
            tss2_esys::TSS2_BASE_RC_TRY_AGAIN => ErrorClass::Transient,
            // The ESYS handle is stale.
            tss2_esys::TSS2_BASE_RC_BAD_TR => ErrorClass::Key,
            _ => ErrorClass::Fatal,
        },
        _ => ErrorClass::Fatal,
    }
}

fn hint_for(rv: RvError) -> &'static str {
    match rv {
        RvError::TokenNotPresent | RvError::DeviceRemoved => " (the token was removed or re-initialised)",
        RvError::UserNotLoggedIn => " (the session is not logged in)",
        RvError::KeyFunctionNotPermitted => " (the key's attributes forbid this operation)",
        RvError::MechanismInvalid => " (the device does not offer this mechanism)",
        _ => "",
    }
}

impl Error {
    /// The class of this error; see [`ErrorClass`].
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Pkcs11 { rv, .. } => classify_rv(*rv),
            Error::Tpm { rc, .. } => classify_tpm_rc(*rc),
            Error::Busy { .. } => ErrorClass::Transient,
            Error::TokenNotFound { .. } | Error::KeyVanished { .. } => ErrorClass::Session,
            _ => ErrorClass::Fatal,
        }
    }

    /// The error under any recovery wrapper: what the device finally answered.
    pub fn root(&self) -> &Error {
        match self {
            Error::RecoveryExhausted { last, .. } => last.root(),
            other => other,
        }
    }

    /// The codes a device call can end in ([`Error::code`]), for metrics that show every one
    /// from the start (at 0), so that an alert on their increase sees the first error.
    pub const DEVICE_CODES: &'static [&'static str] = &[
        "backend_busy",
        "backend_unavailable",
        "backend_failure",
        "backend_module",
        "key_unavailable",
        "key_not_found",
        "faulty_signature",
        "pin_incorrect",
        "tpm_auth_failed",
        "tpm_lockout",
    ];

    /// A short, stable identifier of this error for logs, metrics and API error codes.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Pkcs11 { rv, .. } => match classify_rv(*rv) {
                ErrorClass::Transient => "backend_busy",
                ErrorClass::Session => "backend_unavailable",
                ErrorClass::Key => "key_unavailable",
                ErrorClass::Fatal => "backend_failure",
            },
            Error::Tpm { rc, .. } if is_tpm_auth_failure(*rc) => "tpm_auth_failed",
            Error::Tpm { rc, .. } if is_tpm_lockout(*rc) => "tpm_lockout",
            Error::Tpm { rc, .. } => match classify_tpm_rc(*rc) {
                ErrorClass::Transient => "backend_busy",
                ErrorClass::Session => "backend_unavailable",
                ErrorClass::Key => "key_unavailable",
                ErrorClass::Fatal => "backend_failure",
            },
            Error::Module { .. } => "backend_module",
            Error::Io { .. } => "io",
            Error::TokenNotFound { .. } => "token_not_found",
            Error::PinIncorrect { .. } => "pin_incorrect",
            Error::PinFile { .. } => "pin_file",
            Error::KeyNotFound { .. } | Error::KeyVanished { .. } => "key_not_found",
            Error::KeyAmbiguous { .. } => "key_ambiguous",
            Error::KeyExists { .. } => "key_exists",
            Error::InvalidUri { .. } => "invalid_key_uri",
            Error::ProtectionMismatch { .. } => "key_protection_mismatch",
            Error::Unsupported { .. } => "unsupported",
            Error::Encoding { .. } => "encoding",
            Error::Busy { .. } => "backend_busy",
            Error::FaultySignature { .. } => "faulty_signature",
            Error::RecoveryExhausted { .. } => "backend_unavailable",
        }
    }

    /// Wraps a tss-esapi error from `operation`, keeping the raw response code.
    pub(crate) fn from_tss(operation: &'static str, err: tss_esapi::Error) -> Self {
        match err {
            tss_esapi::Error::Tss2Error(code) => {
                let rc = match code {
                    Tss2ResponseCode::FormatZero(z) => z.0,
                    Tss2ResponseCode::FormatOne(o) => o.0,
                    Tss2ResponseCode::Success => 0,
                };
                Error::Tpm { rc, operation, message: code.to_string() }
            }
            tss_esapi::Error::WrapperError(kind) => Error::Encoding { what: format!("TPM {operation}: {kind}") },
        }
    }

    /// Wraps a cryptoki error, keeping the return value and function.
    pub(crate) fn from_cryptoki(err: cryptoki::error::Error) -> Self {
        match err {
            cryptoki::error::Error::Pkcs11(rv, function) => Error::Pkcs11 { rv, function },
            other => Error::Encoding { what: format!("PKCS#11 wrapper: {other}") },
        }
    }
}

/// Classifies a PKCS#11 return value (PKCS#11 v2.40 §5.1 and §11.1).
pub fn classify_rv(rv: RvError) -> ErrorClass {
    use RvError as R;
    match rv {
        R::DeviceMemory | R::HostMemory | R::FunctionCanceled | R::DeviceError | R::OperationActive => {
            ErrorClass::Transient
        }
        R::SessionHandleInvalid
        | R::SessionClosed
        | R::SessionCount
        | R::UserNotLoggedIn
        | R::DeviceRemoved
        | R::TokenNotPresent
        | R::TokenNotRecognized
        | R::SlotIdInvalid
        | R::CryptokiNotInitialized => ErrorClass::Session,
        R::ObjectHandleInvalid | R::KeyHandleInvalid => ErrorClass::Key,
        _ => ErrorClass::Fatal,
    }
}

impl From<der::Error> for Error {
    fn from(e: der::Error) -> Self {
        Error::Encoding { what: e.to_string() }
    }
}

impl From<spki::Error> for Error {
    fn from(e: spki::Error) -> Self {
        Error::Encoding { what: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm_codes_are_classified_as_the_spec_says() {
        assert_eq!(classify_tpm_rc(0x922), ErrorClass::Transient); // TPM_RC_RETRY
        assert_eq!(classify_tpm_rc(0x908), ErrorClass::Transient); // TPM_RC_YIELDED
        assert_eq!(classify_tpm_rc(0x90a), ErrorClass::Transient); // TPM_RC_TESTING
        assert_eq!(classify_tpm_rc(0x921), ErrorClass::Fatal); // TPM_RC_LOCKOUT
        assert_eq!(classify_tpm_rc(0x98e), ErrorClass::Fatal); // TPM_RC_AUTH_FAIL, session 1
        assert!(is_tpm_auth_failure(0x98e) && is_tpm_auth_failure(0x9a2));
        assert_eq!(classify_tpm_rc(0x18b), ErrorClass::Key); // TPM_RC_HANDLE, handle 1
        assert_eq!(classify_tpm_rc(0x100), ErrorClass::Session); // TPM_RC_INITIALIZE
        assert_eq!(classify_tpm_rc(0xa000a), ErrorClass::Session); // TCTI IO error
        assert_eq!(classify_tpm_rc(0x70018), ErrorClass::Key); // ESYS BAD_TR
        let e = Error::Tpm { rc: 0x921, operation: "sign", message: String::new() };
        assert_eq!(e.code(), "tpm_lockout");
        assert!(e.to_string().contains("lockout"));
    }
}
