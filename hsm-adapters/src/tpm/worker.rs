//! The thread that owns the TPM. An ESAPI context takes `&mut self` for every command and a TPM
//! runs one command at a time, so one thread owns the context and takes work from a bounded
//! channel; callers block on the reply (never while holding a lock), and a full queue is
//! backpressure.
//!
//! The worker (re)connects lazily, makes sure the storage primary key exists at its persistent
//! handle, keeps at most [`MAX_LOADED`] wrapped keys loaded (swtpm has no resource manager and
//! only a few transient slots; evicted keys are flushed), and recovers: a lost connection or a
//! restarted TPM drops the context and reconnects, RETRY/YIELDED/TESTING wait and retry, a stale
//! handle reloads the key — each a bounded number of times. An authorization failure or lockout
//! is returned at once: never an auth retry loop (dictionary-attack protection counts failures).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use secrecy::ExposeSecret;
use tracing::{info, warn};
use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::CapabilityData;
use tss_esapi::structures::{
    Auth, Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, Private, Public, PublicBuffer, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyRsa, PublicParameters, PublicRsaParametersBuilder, RsaExponent, RsaScheme,
    Signature as TpmSignature, SignatureScheme as TpmScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use crate::config::TpmConfig;
use crate::error::{Error, ErrorClass, Result};
use crate::key::{KeyAlgorithm, PublicKey, SignatureScheme};
use crate::uri::TpmUri;

/// Attempts per request, the first included.
pub const MAX_ATTEMPTS: u32 = 4;

/// Wrapped keys kept loaded at once (swtpm offers 3 transient slots; one stays free for work).
const MAX_LOADED: usize = 2;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// The caller's side: sends work to the owner thread.
#[derive(Debug)]
pub(crate) struct WorkerHandle {
    tx: Option<SyncSender<Job>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub recoveries: Arc<AtomicU64>,
}

impl WorkerHandle {
    /// Starts the owner thread and connects once, so a misconfiguration fails at open time.
    pub fn start(config: TpmConfig) -> Result<Self> {
        let (tx, rx) = sync_channel::<Job>(config.queue_depth.get());
        let recoveries = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            config,
            ctx: None,
            srk: None,
            loaded: Vec::new(),
            recoveries: Arc::clone(&recoveries),
            needs_startup: false,
        };
        let thread = std::thread::Builder::new()
            .name("sitesign-tpm".into())
            .spawn(move || run(worker, rx))
            .map_err(|e| Error::Io { path: PathBuf::from("tpm worker thread"), reason: e.to_string() })?;
        let handle = WorkerHandle { tx: Some(tx), thread: Mutex::new(Some(thread)), recoveries };
        handle.call(|w| w.with_recovery(|_| Ok(())))?;
        Ok(handle)
    }

    /// Runs `f` on the owner thread and waits for its result.
    pub fn call<T: Send + 'static>(&self, f: impl FnOnce(&mut Worker) -> Result<T> + Send + 'static) -> Result<T> {
        let stopped =
            || Error::Io { path: PathBuf::from("tpm worker thread"), reason: "the TPM worker has stopped".into() };
        let (reply_tx, reply_rx) = sync_channel(1);
        let job: Job = Box::new(move |w| {
            let _ = reply_tx.send(f(w));
        });
        self.tx.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())?;
        reply_rx.recv().map_err(|_| stopped())?
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which drops the context (flushing loaded keys).
        self.tx = None;
        if let Some(t) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = t.join();
        }
    }
}

fn run(mut worker: Worker, rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        job(&mut worker);
    }
}

/// The owner thread's state.
pub(crate) struct Worker {
    pub config: TpmConfig,
    ctx: Option<Context>,
    srk: Option<KeyHandle>,
    /// Loaded keys, least recently used first.
    loaded: Vec<(TpmUri, KeyHandle)>,
    recoveries: Arc<AtomicU64>,
    /// Set when the TPM answered TPM_RC_INITIALIZE: it was reset and nobody sent TPM2_Startup.
    needs_startup: bool,
}

fn tss<T>(operation: &'static str, r: tss_esapi::Result<T>) -> Result<T> {
    r.map_err(|e| Error::from_tss(operation, e))
}

/// The template of the storage primary key: TCG's RSA-2048 SRK (TCG TPM v2.0 Provisioning
/// Guidance §7.5.1: fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA, restricted,
/// decrypt; AES-128-CFB; empty auth). `noDA` matters: without it a TPM in dictionary-attack
/// lockout (after a few unclean shutdowns) refuses to load any key under it.
fn srk_template() -> Result<Public> {
    let attributes = tss(
        "build SRK attributes",
        ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .with_decrypt(true)
            .with_sign_encrypt(false)
            .with_restricted(true)
            .build(),
    )?;
    let params = tss(
        "build SRK parameters",
        PublicRsaParametersBuilder::new_restricted_decryption_key(
            SymmetricDefinitionObject::AES_128_CFB,
            RsaKeyBits::Rsa2048,
            RsaExponent::default(),
        )
        .build(),
    )?;
    tss(
        "build SRK template",
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_rsa_parameters(params)
            .with_rsa_unique_identifier(PublicKeyRsa::default())
            .build(),
    )
}

/// Whether a key auth value is one `sitesign init` generates — 128 random bits as 32 lowercase
/// hex characters — which cannot be guessed, so keys using it are exempt from dictionary-attack
/// protection (`noDA`). An operator's own value (a passphrase, however long) keeps it.
pub fn is_generated_auth(value: &[u8]) -> bool {
    value.len() == 32 && value.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The template of a signing key: fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth,
/// sign, no decrypt, not restricted; `noDA` if `no_da`. RSA keys have a null scheme so that each
/// signature names its own (RS256 or PS256).
///
/// Why `noDA` for keys with a generated (or no) auth value: a TPM that loses power while a
/// DA-protected key is in use counts a failed authorization at its next start-up (TPM 2.0 Part 1
/// §19.8.6), so a host that crashes a few times locks its own signing keys out for the TPM's
/// recovery time — an outage that protects nothing when the auth value is 128 random bits. A
/// short, operator-chosen auth value keeps the protection.
pub(crate) fn signing_template(algorithm: KeyAlgorithm, no_da: bool) -> Result<Public> {
    let attributes = tss(
        "build key attributes",
        ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_no_da(no_da)
            .with_sign_encrypt(true)
            .with_decrypt(false)
            .with_restricted(false)
            .build(),
    )?;
    let builder =
        PublicBuilder::new().with_name_hashing_algorithm(HashingAlgorithm::Sha256).with_object_attributes(attributes);
    let public = match algorithm.rsa_bits() {
        Some(bits) => {
            let key_bits = match bits {
                2048 => RsaKeyBits::Rsa2048,
                3072 => RsaKeyBits::Rsa3072,
                _ => RsaKeyBits::Rsa4096,
            };
            let params = tss(
                "build RSA parameters",
                PublicRsaParametersBuilder::new_unrestricted_signing_key(
                    RsaScheme::Null,
                    key_bits,
                    RsaExponent::default(),
                )
                .build(),
            )?;
            builder
                .with_public_algorithm(PublicAlgorithm::Rsa)
                .with_rsa_parameters(params)
                .with_rsa_unique_identifier(PublicKeyRsa::default())
                .build()
        }
        None => {
            let params = tss(
                "build ECC parameters",
                PublicEccParametersBuilder::new_unrestricted_signing_key(
                    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                    EccCurve::NistP256,
                )
                .build(),
            )?;
            builder
                .with_public_algorithm(PublicAlgorithm::Ecc)
                .with_ecc_parameters(params)
                .with_ecc_unique_identifier(EccPoint::default())
                .build()
        }
    };
    tss("build key template", public)
}

/// A TPM2B: big-endian u16 size, then the bytes (tpm2-tools' file format for .pub and .priv).
fn tpm2b(bytes: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(bytes.len()).map_err(|_| Error::Encoding { what: "TPM2B over 65535 bytes".into() })?;
    Ok([&len.to_be_bytes()[..], bytes].concat())
}

fn untpm2b(bytes: &[u8], what: &str) -> Result<Vec<u8>> {
    let bad = || Error::Encoding { what: format!("{what} is not a TPM2B structure") };
    let (len, rest) = bytes.split_first_chunk::<2>().ok_or_else(bad)?;
    if usize::from(u16::from_be_bytes(*len)) != rest.len() {
        return Err(bad());
    }
    Ok(rest.to_vec())
}

impl Worker {
    /// The files holding wrapped key `name`.
    pub fn blob_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.config.key_dir.join(format!("{name}.pub")), self.config.key_dir.join(format!("{name}.priv")))
    }

    fn auth(&self) -> Result<Option<Auth>> {
        match &self.config.auth {
            None => Ok(None),
            Some(source) => {
                let secret = source.read()?;
                let path = source.path()?;
                let auth = Auth::try_from(secret.expose_secret().as_bytes().to_vec())
                    .map_err(|_| Error::PinFile { path, reason: "a TPM auth value is at most 64 bytes".into() })?;
                Ok(Some(auth))
            }
        }
    }

    fn connect(&mut self) -> Result<()> {
        let mut ctx = tss("connect", Context::new(self.config.tcti.clone()))?;
        if std::mem::take(&mut self.needs_startup) {
            // Usually the platform or the kernel starts the TPM; after a bare reset nobody has.
            // TPM_RC_INITIALIZE here means it is started already, which is fine.
            let _ = ctx.startup(tss_esapi::constants::StartupType::Clear);
        }
        let persistent = tss("parent handle", PersistentTpmHandle::new(self.config.parent_handle))?;
        let srk = if persistent_exists(&mut ctx, self.config.parent_handle)? {
            KeyHandle::from(tss("find storage key", ctx.tr_from_tpm_public(TpmHandle::Persistent(persistent)))?)
        } else {
            info!(handle = format!("{:#010x}", self.config.parent_handle), "creating the storage primary key");
            let template = srk_template()?;
            let primary = tss(
                "create storage primary key",
                ctx.execute_with_session(Some(AuthSession::Password), |c| {
                    c.create_primary(Hierarchy::Owner, template, None, None, None, None)
                }),
            )?
            .key_handle;
            let kept = ctx.execute_with_session(Some(AuthSession::Password), |c| {
                c.evict_control(Provision::Owner, primary.into(), Persistent::Persistent(persistent))
            });
            let flushed = ctx.flush_context(primary.into());
            let kept = tss("persist storage primary key", kept)?;
            tss("flush storage primary key", flushed)?;
            KeyHandle::from(kept)
        };
        self.ctx = Some(ctx);
        self.srk = Some(srk);
        Ok(())
    }

    fn disconnect(&mut self) {
        self.loaded.clear();
        self.srk = None;
        // Dropping the context flushes what it loaded if the TPM still answers.
        self.ctx = None;
    }

    fn ctx(&mut self) -> Result<&mut Context> {
        self.ctx.as_mut().ok_or_else(|| Error::Tpm { rc: 0xa0008, operation: "use", message: "not connected".into() })
    }

    /// Runs `op`, connecting first if needed, recovering as the module docs say.
    pub fn with_recovery<T>(&mut self, mut op: impl FnMut(&mut Worker) -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = if self.ctx.is_none() { self.connect() } else { Ok(()) }.and_then(|()| op(self));
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let class = err.class();
            if class == ErrorClass::Fatal || attempt >= MAX_ATTEMPTS {
                return Err(if attempt > 1 && class != ErrorClass::Fatal {
                    Error::RecoveryExhausted { attempts: attempt - 1, last: Box::new(err) }
                } else {
                    err
                });
            }
            warn!(code = err.code(), error = %err, attempt, "TPM operation failed; recovering");
            self.recoveries.fetch_add(1, Ordering::Relaxed);
            match class {
                ErrorClass::Session => {
                    self.needs_startup =
                        matches!(err, Error::Tpm { rc, .. } if rc == tss_esapi::constants::tss::TPM2_RC_INITIALIZE);
                    self.disconnect();
                    std::thread::sleep(Duration::from_millis(50 << attempt));
                }
                ErrorClass::Transient => {
                    // Out of object or session memory: free our transient slots first.
                    self.flush_loaded();
                    std::thread::sleep(Duration::from_millis(20 << attempt));
                }
                ErrorClass::Key => self.flush_loaded(),
                ErrorClass::Fatal => {}
            }
        }
    }

    fn flush_loaded(&mut self) {
        for (uri, handle) in std::mem::take(&mut self.loaded) {
            self.release(&uri, handle);
        }
    }

    /// The handle of key `uri`, loading it (and evicting the least recently used) if needed. When
    /// `expected` is given, a freshly loaded key must have that public key: a different key under
    /// the same name is refused.
    pub fn key_handle(&mut self, uri: &TpmUri, expected: Option<&PublicKey>) -> Result<KeyHandle> {
        if let Some(i) = self.loaded.iter().position(|(u, _)| u == uri) {
            let entry = self.loaded.remove(i);
            let handle = entry.1;
            self.loaded.push(entry);
            return Ok(handle);
        }
        if matches!(uri, TpmUri::Object(_))
            && self.loaded.iter().filter(|(u, _)| matches!(u, TpmUri::Object(_))).count() >= MAX_LOADED
        {
            if let Some(i) = self.loaded.iter().position(|(u, _)| matches!(u, TpmUri::Object(_))) {
                let (_, old) = self.loaded.remove(i);
                tss("flush key", self.ctx()?.flush_context(old.into()))?;
            }
        }
        let auth = self.auth()?;
        let handle = match uri {
            TpmUri::Handle(h) => {
                let persistent = tss("key handle", PersistentTpmHandle::new(*h))?;
                let ctx = self.ctx()?;
                if !persistent_exists(ctx, *h)? {
                    return Err(Error::KeyNotFound { uri: crate::uri::KeyUri::Tpm(uri.clone()).to_string() });
                }
                KeyHandle::from(tss("find persistent key", ctx.tr_from_tpm_public(TpmHandle::Persistent(persistent)))?)
            }
            TpmUri::Object(name) => {
                let (public, private) = self.read_blob(name, uri)?;
                let srk = self.srk.ok_or_else(|| Error::Tpm {
                    rc: 0xa0008,
                    operation: "load",
                    message: "no storage key".into(),
                })?;
                let ctx = self.ctx()?;
                tss(
                    "load key",
                    ctx.execute_with_session(Some(AuthSession::Password), |c| c.load(srk, private, public)),
                )?
            }
        };
        // Nothing enters the cache before it is checked: a key that fails is let go at once.
        let checked = (|| {
            if let Some(auth) = auth {
                tss("set key auth", self.ctx()?.tr_set_auth(handle.into(), auth))?;
            }
            if let Some(expected) = expected {
                let public = tss("read public", self.ctx()?.read_public(handle))?.0;
                if public_key_of(&public)? != *expected {
                    return Err(Error::ProtectionMismatch {
                        key: crate::uri::KeyUri::Tpm(uri.clone()).to_string(),
                        problems: vec!["the TPM now holds a different key under this name; find the key again".into()],
                    });
                }
            }
            Ok(())
        })();
        if let Err(e) = checked {
            self.release(uri, handle);
            return Err(e);
        }
        self.loaded.push((uri.clone(), handle));
        Ok(handle)
    }

    /// Lets go of a handle: a loaded transient key is flushed, a persistent key's ESYS handle
    /// closed.
    fn release(&mut self, uri: &TpmUri, handle: KeyHandle) {
        if let Some(ctx) = self.ctx.as_mut() {
            if let TpmUri::Object(_) = uri {
                let _ = ctx.flush_context(handle.into());
            } else {
                let mut h: ObjectHandle = handle.into();
                let _ = ctx.tr_close(&mut h);
            }
        }
    }

    fn read_blob(&self, name: &str, uri: &TpmUri) -> Result<(Public, Private)> {
        let (pub_path, priv_path) = self.blob_paths(name);
        let read = |p: &PathBuf| -> Result<Vec<u8>> {
            fs::read(p).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    Error::KeyNotFound { uri: crate::uri::KeyUri::Tpm(uri.clone()).to_string() }
                }
                _ => Error::Io { path: p.clone(), reason: e.to_string() },
            })
        };
        let public_buffer = tss("read public blob", PublicBuffer::unmarshall(&read(&pub_path)?))?;
        let public = tss("decode public blob", Public::try_from(public_buffer))?;
        let private = tss("decode private blob", Private::try_from(untpm2b(&read(&priv_path)?, "the private blob")?))?;
        Ok((public, private))
    }

    /// Creates a wrapped key `name` under the SRK and stores its blobs (never overwriting).
    pub fn create_key(&mut self, name: &str, algorithm: KeyAlgorithm) -> Result<Public> {
        let (pub_path, priv_path) = self.blob_paths(name);
        if pub_path.exists() || priv_path.exists() {
            return Err(Error::KeyExists { uri: format!("tpm:object={name}") });
        }
        fs::create_dir_all(&self.config.key_dir)
            .map_err(|e| Error::Io { path: self.config.key_dir.clone(), reason: format!("cannot create: {e}") })?;
        let auth = self.auth()?;
        let no_da = auth.as_ref().is_none_or(|a| is_generated_auth(a.value()));
        let template = signing_template(algorithm, no_da)?;
        // Creation needs the parent and the new object in transient slots: free ours first
        // (creating keys is rare; they are reloaded when next used).
        self.flush_loaded();
        let srk = self.srk.ok_or_else(|| Error::Tpm {
            rc: 0xa0008,
            operation: "create",
            message: "no storage key".into(),
        })?;
        let created = tss(
            "create key",
            self.ctx()?
                .execute_with_session(Some(AuthSession::Password), |c| c.create(srk, template, auth, None, None, None)),
        )?;
        let public_bytes =
            tss("encode public blob", PublicBuffer::try_from(created.out_public.clone()).and_then(|b| b.marshall()))?;
        let private_bytes = tpm2b(created.out_private.value())?;
        // Private first, public last: a key is only visible once both files exist.
        write_new(&priv_path, &private_bytes)?;
        if let Err(e) = write_new(&pub_path, &public_bytes) {
            let _ = fs::remove_file(&priv_path);
            return Err(e);
        }
        Ok(created.out_public)
    }

    /// The public area of key `uri` as the TPM reports it.
    pub fn read_public(&mut self, uri: &TpmUri) -> Result<Public> {
        let handle = self.key_handle(uri, None)?;
        Ok(tss("read public", self.ctx()?.read_public(handle))?.0)
    }

    /// Signs `digest` (SHA-256) with key `uri`.
    pub fn sign(
        &mut self,
        uri: &TpmUri,
        expected: &PublicKey,
        scheme: SignatureScheme,
        digest: &[u8],
    ) -> Result<Vec<u8>> {
        let handle = self.key_handle(uri, Some(expected))?;
        let hash = HashScheme::new(HashingAlgorithm::Sha256);
        let tpm_scheme = match scheme {
            SignatureScheme::RsaPkcs1Sha256 => TpmScheme::RsaSsa { hash_scheme: hash },
            SignatureScheme::RsaPssSha256 => TpmScheme::RsaPss { hash_scheme: hash },
            SignatureScheme::EcdsaP256Sha256 => TpmScheme::EcDsa { hash_scheme: hash },
        };
        let digest = tss("digest", Digest::try_from(digest.to_vec()))?;
        // An unrestricted key needs no proof that the TPM computed the digest: a null ticket.
        let ticket = tss(
            "null ticket",
            HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
                tag: TPM2_ST_HASHCHECK,
                hierarchy: TPM2_RH_NULL,
                digest: Default::default(),
            }),
        )?;
        let ctx = self.ctx()?;
        let signature = tss(
            "sign",
            ctx.execute_with_session(Some(AuthSession::Password), |c| c.sign(handle, digest, tpm_scheme, ticket)),
        )?;
        match signature {
            TpmSignature::RsaSsa(s) | TpmSignature::RsaPss(s) => Ok(s.signature().value().to_vec()),
            TpmSignature::EcDsa(s) => {
                let mut out = vec![0u8; 64];
                for (i, part) in [s.signature_r().value(), s.signature_s().value()].into_iter().enumerate() {
                    if part.len() > 32 {
                        return Err(Error::Encoding { what: "ECDSA signature part over 32 bytes".into() });
                    }
                    out[i * 32 + 32 - part.len()..(i + 1) * 32].copy_from_slice(part);
                }
                Ok(out)
            }
            other => Err(Error::Encoding { what: format!("the TPM returned a {:?} signature", other.algorithm()) }),
        }
    }

    /// The TPM's manufacturer, as it reports it.
    pub fn vendor(&mut self) -> String {
        match self.ctx() {
            Ok(ctx) => tss_esapi::utils::get_tpm_vendor(ctx).unwrap_or_else(|_| "unknown vendor".into()),
            Err(_) => "unknown vendor".into(),
        }
    }

    /// Whether the TPM accepts key parameters for `algorithm` (TPM2_TestParms).
    pub fn supports(&mut self, algorithm: KeyAlgorithm) -> Result<bool> {
        let params = match signing_template(algorithm, true)? {
            Public::Rsa { parameters, .. } => PublicParameters::Rsa(parameters),
            Public::Ecc { parameters, .. } => PublicParameters::Ecc(parameters),
            _ => return Ok(false),
        };
        match self.ctx()?.test_parms(params) {
            Ok(()) => Ok(true),
            Err(e) => {
                let err = Error::from_tss("test parameters", e);
                if err.class() == ErrorClass::Session { Err(err) } else { Ok(false) }
            }
        }
    }
}

/// Whether persistent handle `handle` is in use (TPM2_GetCapability, so that an absent handle is
/// an answer rather than an error the TSS logs).
fn persistent_exists(ctx: &mut Context, handle: u32) -> Result<bool> {
    let (data, _more) = tss("list persistent handles", ctx.get_capability(CapabilityType::Handles, handle, 1))?;
    Ok(match data {
        CapabilityData::Handles(list) => list.iter().any(|h| u32::from(*h) == handle),
        _ => false,
    })
}

/// The public key in a TPM public area.
pub(crate) fn public_key_of(public: &Public) -> Result<PublicKey> {
    match public {
        Public::Rsa { parameters, unique, .. } => {
            // An exponent of 0 means the default, 65537 (TPM 2.0 Part 2 §12.2.3.5).
            let e = match parameters.exponent().value() {
                0 => 65537,
                v => v,
            };
            PublicKey::from_rsa_components(unique.value(), &e.to_be_bytes())
        }
        Public::Ecc { unique, .. } => {
            let (x, y) = (unique.x().value(), unique.y().value());
            if x.len() > 32 || y.len() > 32 {
                return Err(Error::Encoding { what: "EC point coordinate over 32 bytes".into() });
            }
            let mut point = vec![0u8; 65];
            point[0] = 0x04;
            point[33 - x.len()..33].copy_from_slice(x);
            point[65 - y.len()..].copy_from_slice(y);
            PublicKey::from_p256_point(&point)
        }
        _ => Err(Error::Unsupported { what: "a TPM object that is neither RSA nor ECC".into() }),
    }
}

fn write_new(path: &PathBuf, bytes: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| Error::Io { path: path.clone(), reason: e.to_string() };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_generated_auth_value_exempts_keys_from_dictionary_attack_protection() {
        use secrecy::ExposeSecret;
        let generated = crate::random_secret().unwrap_or_else(|e| panic!("{e}"));
        assert!(is_generated_auth(generated.expose_secret().as_bytes()));
        for operator in
            [&b"correct horse battery staple and more words"[..], b"0123456789ABCDEF0123456789ABCDEF", b"short"]
        {
            assert!(!is_generated_auth(operator), "{}", String::from_utf8_lossy(operator));
        }
    }
}
