//! Typed errors of the key backends. Each keeps the device's own code and says which class of
//! failure it is, because recovery depends on the class: a transient error is retried as is, a
//! session error reopens sessions and logs in again, a key error re-resolves the key, a fatal error
//! stops and is reported.

use std::path::PathBuf;

use cryptoki::context::Function;
use cryptoki::error::RvError;

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
    #[error(
        "all {sessions} device sessions stayed busy for {waited_ms} ms; reduce load or add sessions"
    )]
    Busy {
        /// Sessions in the pool.
        sessions: usize,
        /// How long the caller waited.
        waited_ms: u64,
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

fn hint_for(rv: RvError) -> &'static str {
    match rv {
        RvError::TokenNotPresent | RvError::DeviceRemoved => {
            " (the token was removed or re-initialised)"
        }
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
            Error::Busy { .. } => ErrorClass::Transient,
            Error::TokenNotFound { .. } | Error::KeyVanished { .. } => ErrorClass::Session,
            _ => ErrorClass::Fatal,
        }
    }

    /// A short, stable identifier of this error for logs, metrics and API error codes.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Pkcs11 { rv, .. } => match classify_rv(*rv) {
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
            Error::RecoveryExhausted { .. } => "backend_unavailable",
        }
    }

    /// Wraps a cryptoki error, keeping the return value and function.
    pub(crate) fn from_cryptoki(err: cryptoki::error::Error) -> Self {
        match err {
            cryptoki::error::Error::Pkcs11(rv, function) => Error::Pkcs11 { rv, function },
            other => Error::Encoding {
                what: format!("PKCS#11 wrapper: {other}"),
            },
        }
    }
}

/// Classifies a PKCS#11 return value (PKCS#11 v2.40 §5.1 and §11.1).
pub fn classify_rv(rv: RvError) -> ErrorClass {
    use RvError as R;
    match rv {
        R::DeviceMemory
        | R::HostMemory
        | R::FunctionCanceled
        | R::DeviceError
        | R::OperationActive => ErrorClass::Transient,
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
        Error::Encoding {
            what: e.to_string(),
        }
    }
}

impl From<spki::Error> for Error {
    fn from(e: spki::Error) -> Self {
        Error::Encoding {
            what: e.to_string(),
        }
    }
}
