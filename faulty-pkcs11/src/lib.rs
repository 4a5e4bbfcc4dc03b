//! A PKCS#11 module that makes a real one misbehave on demand, for tests.
//!
//! An application loads `libfaulty_pkcs11.so` as it would any vendor's module. Its
//! `C_GetFunctionList` loads the real module (SoftHSM2 by default), copies that module's function
//! list and replaces the functions in [`WRAPPED`] with wrappers; every other function is the real
//! module's own. Each wrapper first consults the configuration — a TOML file named by
//! `FAULTY_PKCS11_CONFIG` ([`config::Faults`]), re-read whenever it changes — and then:
//! - fails the call with a chosen `CKR_…` instead of forwarding it (the Nth call, or every Nth);
//! - sleeps a set latency before forwarding it (a network HSM);
//! - invalidates every open session once, when `drop_sessions` grows (an HSM that restarted):
//!   from then on each call on one of them answers `CKR_SESSION_HANDLE_INVALID`, and closing it
//!   closes the real session. (Closing the real sessions at once instead would pull them from
//!   under calls still running in other threads — SoftHSM2 crashes on that, a real HSM would
//!   not; the application sees the same either way.)
//! - for `C_Sign`, flips one bit of every Nth signature the real module returned (a device
//!   producing faulty signatures — what sitesign must catch before release).
//!
//! Without `FAULTY_PKCS11_CONFIG` it only forwards. Each injected fault is appended to the
//! configured log as one JSON line, so a test can count what it did.
//!
//! This crate is the one place in the workspace with `unsafe`: a PKCS#11 module is a C ABI. Each
//! block says why it is sound.

pub mod config;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use cryptoki_sys::*;

pub use config::{Fail, Faults};

/// The environment variable that names the configuration file.
pub const CONFIG_ENV: &str = "FAULTY_PKCS11_CONFIG";
/// The environment variable that names the real module when the configuration does not.
pub const MODULE_ENV: &str = "FAULTY_PKCS11_MODULE";
/// The real module when neither says.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// How often the configuration file is checked for changes, at most.
const RECHECK: Duration = Duration::from_millis(20);

/// The real module, loaded once, and the function list handed to the application.
struct Shim {
    /// Kept loaded for the life of the process: the function pointers point into it.
    _library: libloading::Library,
    real: CK_FUNCTION_LIST,
    ours: CK_FUNCTION_LIST,
}

// SAFETY: the function lists are tables of function pointers and a version, never mutated after
// `Shim` is built; PKCS#11 modules initialised with OS locking (as sitesign does) may be called
// from any thread.
unsafe impl Send for Shim {}
// SAFETY: as above — shared read-only access to immutable tables of function pointers.
unsafe impl Sync for Shim {}

static SHIM: OnceLock<Result<Shim, String>> = OnceLock::new();

/// The live configuration and the counters it drives.
#[derive(Default)]
struct Live {
    path: Option<PathBuf>,
    /// (inode, change time, modification time, length) of the file last read: a file replaced
    /// by a rename gets a new inode, so no rewrite is missed within one clock tick.
    stamp: Option<(u64, i64, i64, SystemTime, u64)>,
    checked: Option<Instant>,
    faults: Faults,
    calls: HashMap<&'static str, u64>,
    fired: Vec<u64>,
    signatures: u64,
    drops_done: u64,
    /// Sessions the application opened and has not closed.
    open: HashSet<CK_SESSION_HANDLE>,
    /// Of those, the ones a drop invalidated.
    dead: HashSet<CK_SESSION_HANDLE>,
    /// Set by a drop: the (emulated) restarted HSM forgot the login, so signing and finding keys
    /// answer `CKR_USER_NOT_LOGGED_IN` until the application logs in again.
    need_login: bool,
}

static LIVE: Mutex<Option<Live>> = Mutex::new(None);

fn live() -> MutexGuard<'static, Option<Live>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Live {
    fn new() -> Live {
        let mut l = Live { path: std::env::var_os(CONFIG_ENV).map(PathBuf::from), ..Live::default() };
        l.reload();
        l
    }

    /// Re-reads the file if it changed (checked at most every [`RECHECK`]); counts restart.
    fn reload(&mut self) {
        if self.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return;
        }
        self.checked = Some(Instant::now());
        let Some(path) = &self.path else { return };
        let Ok(meta) = std::fs::metadata(path) else { return };
        use std::os::unix::fs::MetadataExt as _;
        let stamp = (
            meta.ino(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.stamp == Some(stamp) {
            return;
        }
        // A file being rewritten may be read half-way: keep the old rules until it parses.
        let read = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str::<Faults>(&t).map_err(|e| e.to_string()))
            .and_then(|f| f.check().map(|()| f));
        let faults = match read {
            Ok(f) => f,
            Err(e) => {
                // A rule that can never fire is a test that cannot fail: say so, keep the old rules.
                self.record(&format!(r#"{{"error":{:?}}}"#, e));
                return;
            }
        };
        if self.stamp.is_none() {
            // The first reading sets the baseline: a generation present at load is not a drop.
            self.drops_done = faults.drop_sessions;
        }
        self.stamp = Some(stamp);
        self.fired = vec![0; faults.fail.len()];
        self.faults = faults;
        self.calls.clear();
        self.signatures = 0;
    }

    fn record(&self, what: &str) {
        let Some(log) = &self.faults.log else { return };
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{what}");
        }
    }
}

/// What a wrapper does before forwarding call `name` (on `session`, if the call has one):
/// `Err(rv)` to fail it instead.
fn before(name: &'static str, session: Option<CK_SESSION_HANDLE>) -> Result<(), CK_RV> {
    before_with(name, session, true)
}

/// [`before`], with the configured latency only if `slow` (a call that only asks for a length
/// is answered by a network HSM's client library without a round trip).
fn before_with(name: &'static str, session: Option<CK_SESSION_HANDLE>, slow: bool) -> Result<(), CK_RV> {
    let latency = {
        let mut guard = live();
        let l = guard.get_or_insert_with(Live::new);
        l.reload();
        let call = {
            let c = l.calls.entry(name).or_insert(0);
            *c += 1;
            *c
        };
        if l.faults.drop_sessions > l.drops_done {
            l.drops_done = l.faults.drop_sessions;
            l.dead.extend(l.open.iter().copied());
            l.need_login = true;
            let line = format!(r#"{{"fault":"drop_sessions","function":"{name}","sessions":{}}}"#, l.open.len());
            l.record(&line);
        }
        if session.is_some_and(|s| l.dead.contains(&s)) {
            return Err(CKR_SESSION_HANDLE_INVALID);
        }
        if l.need_login && matches!(name, "C_SignInit" | "C_Sign" | "C_FindObjectsInit") {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        let rule = l.faults.fail.iter().enumerate().find(|(i, r)| r.function == name && r.fires(call, l.fired[*i]));
        if let Some((i, rule)) = rule {
            let rv = config::return_value(&rule.rv).unwrap_or(CKR_GENERAL_ERROR);
            let line = format!(r#"{{"fault":"rv","function":"{name}","rv":"{}","call":{call}}}"#, rule.rv);
            l.fired[i] += 1;
            l.record(&line);
            return Err(rv);
        }
        if slow { l.faults.latency_ms.get(name).copied().unwrap_or(0) } else { 0 }
    };
    if latency > 0 {
        std::thread::sleep(Duration::from_millis(latency));
    }
    Ok(())
}

/// Whether the signature `C_Sign` just produced is to be damaged.
fn flip_this_signature() -> bool {
    let mut guard = live();
    let l = guard.get_or_insert_with(Live::new);
    l.signatures += 1;
    let every = l.faults.flip_every;
    let flip = every > 0 && l.signatures % every == 0;
    if flip {
        l.record(&format!(r#"{{"fault":"flip","function":"C_Sign","signature":{}}}"#, l.signatures));
    }
    flip
}

fn shim() -> Result<&'static Shim, CK_RV> {
    SHIM.get_or_init(load).as_ref().map_err(|_| CKR_GENERAL_ERROR)
}

/// The real module's function list (only called once [`shim`] succeeded: every wrapper is
/// reachable only through the list it built).
fn real() -> &'static CK_FUNCTION_LIST {
    match SHIM.get() {
        Some(Ok(s)) => &s.real,
        _ => unreachable!("a wrapper is only reachable through the function list of a loaded shim"),
    }
}

fn load() -> Result<Shim, String> {
    let configured = Live::new().faults.module;
    let module = configured
        .or_else(|| std::env::var_os(MODULE_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODULE));
    // SAFETY: loading a PKCS#11 module runs its initialisers; that is what loading any module
    // means, and the module is the one the test chose.
    let library = unsafe { libloading::Library::new(&module) }.map_err(|e| format!("{}: {e}", module.display()))?;
    // SAFETY: `C_GetFunctionList` has this signature in every PKCS#11 module (v2.40 §5.2).
    let get: libloading::Symbol<'_, unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { library.get(b"C_GetFunctionList\0") }.map_err(|e| e.to_string())?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a valid place for the module to store its (static) list's address.
    let rv = unsafe { get(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!("C_GetFunctionList of {}: 0x{rv:x}", module.display()));
    }
    // SAFETY: the module returned a non-null pointer to its function list, valid while it is
    // loaded (it stays loaded: `_library` lives as long as the process).
    let real = unsafe { *list };
    let mut ours = real;
    install(&mut ours, &real);
    ours.C_GetFunctionList = Some(C_GetFunctionList);
    Ok(Shim { _library: library, real, ours })
}

/// The module's entry point.
///
/// # Safety
/// `list` must be valid for writing a pointer (PKCS#11 v2.40 §5.2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    match shim() {
        Ok(s) => {
            // SAFETY: `list` is non-null and the caller's to write; the table lives in a static
            // for the life of the process. PKCS#11 hands out `CK_FUNCTION_LIST_PTR` (not const);
            // applications only read it.
            unsafe { *list = (&raw const s.ours).cast_mut() };
            CKR_OK
        }
        Err(rv) => rv,
    }
}

/// Generates a wrapper per function: consult [`before`] (with the call's session, if it has
/// one), then forward the arguments unchanged.
macro_rules! wrap {
    ($($name:ident($($arg:ident: $ty:ty),*) => $session:expr;)*) => {
        /// The functions whose calls can be failed or delayed.
        pub const WRAPPED: &[&str] = &[$(stringify!($name), )* "C_OpenSession", "C_CloseSession", "C_Login", "C_Sign"];

        $(
            #[allow(non_snake_case, reason = "PKCS#11's own names")]
            unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                if let Err(rv) = before(stringify!($name), $session) {
                    return rv;
                }
                match real().$name {
                    // SAFETY: the caller's arguments, unchanged, to the real module's function of
                    // the same name and signature; the caller vouches for them under PKCS#11.
                    Some(f) => unsafe { f($($arg),*) },
                    None => CKR_FUNCTION_NOT_SUPPORTED,
                }
            }
        )*

        /// Puts the wrappers in `ours` where the real module has the function.
        fn install(ours: &mut CK_FUNCTION_LIST, real: &CK_FUNCTION_LIST) {
            $(
                if real.$name.is_some() {
                    ours.$name = Some($name);
                }
            )*
            if real.C_Sign.is_some() {
                ours.C_Sign = Some(C_Sign);
            }
            ours.C_OpenSession = real.C_OpenSession.and(Some(C_OpenSession));
            ours.C_Login = real.C_Login.and(Some(C_Login));
            ours.C_CloseSession = real.C_CloseSession.and(Some(C_CloseSession));
            ours.C_CloseAllSessions = real.C_CloseAllSessions.and(Some(C_CloseAllSessions));
            ours.C_Finalize = real.C_Finalize.and(Some(C_Finalize));
        }
    };
}

wrap! {
    C_GetSlotList(present: CK_BBOOL, slots: *mut CK_SLOT_ID, count: *mut CK_ULONG) => None;
    C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) => None;
    C_GetSessionInfo(session: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) => Some(session);
    C_Logout(session: CK_SESSION_HANDLE) => Some(session);
    C_FindObjectsInit(session: CK_SESSION_HANDLE, template: *mut CK_ATTRIBUTE, count: CK_ULONG) => Some(session);
    C_FindObjects(session: CK_SESSION_HANDLE, objects: *mut CK_OBJECT_HANDLE, max: CK_ULONG, count: *mut CK_ULONG) => Some(session);
    C_FindObjectsFinal(session: CK_SESSION_HANDLE) => Some(session);
    C_GetAttributeValue(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, template: *mut CK_ATTRIBUTE, count: CK_ULONG) => Some(session);
    C_SignInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) => Some(session);
    C_SignUpdate(session: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG) => Some(session);
    C_SignFinal(session: CK_SESSION_HANDLE, signature: *mut CK_BYTE, len: *mut CK_ULONG) => Some(session);
    C_GenerateKeyPair(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, public: *mut CK_ATTRIBUTE, public_count: CK_ULONG, private: *mut CK_ATTRIBUTE, private_count: CK_ULONG, public_key: *mut CK_OBJECT_HANDLE, private_key: *mut CK_OBJECT_HANDLE) => Some(session);
    C_GenerateRandom(session: CK_SESSION_HANDLE, out: *mut CK_BYTE, len: CK_ULONG) => Some(session);
    C_DestroyObject(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) => Some(session);
}

/// `C_OpenSession`: faults and latency, then the new session is tracked (for drops).
#[allow(non_snake_case, reason = "PKCS#11's own name")]
unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    app: *mut std::ffi::c_void,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    if let Err(rv) = before("C_OpenSession", None) {
        return rv;
    }
    let Some(open) = real().C_OpenSession else { return CKR_FUNCTION_NOT_SUPPORTED };
    // SAFETY: the caller's arguments, unchanged, to the real function; the caller vouches for them.
    let rv = unsafe { open(slot, flags, app, notify, session) };
    if rv == CKR_OK && !session.is_null() {
        // SAFETY: on CKR_OK the module wrote the new handle to `*session`, the caller's place.
        let handle = unsafe { *session };
        let mut guard = live();
        let l = guard.get_or_insert_with(Live::new);
        l.open.insert(handle);
        l.dead.remove(&handle);
    }
    rv
}

/// `C_Login`: faults and latency as the others; a login that succeeds (or finds the user logged
/// in) ends the "login forgotten" state a drop leaves.
#[allow(non_snake_case, reason = "PKCS#11's own name")]
unsafe extern "C" fn C_Login(
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> CK_RV {
    if let Err(rv) = before("C_Login", Some(session)) {
        return rv;
    }
    let Some(login) = real().C_Login else { return CKR_FUNCTION_NOT_SUPPORTED };
    // SAFETY: the caller's arguments, unchanged, to the real function; the caller vouches for them.
    let rv = unsafe { login(session, user, pin, len) };
    if rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN {
        let mut guard = live();
        guard.get_or_insert_with(Live::new).need_login = false;
    }
    rv
}

/// `C_CloseSession`: a session a drop invalidated is closed for real (the application no longer
/// uses it) and reported invalid, as a restarted HSM would.
#[allow(non_snake_case, reason = "PKCS#11's own name")]
unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    let was_dead = {
        let mut guard = live();
        let l = guard.get_or_insert_with(Live::new);
        l.open.remove(&session);
        l.dead.remove(&session)
    };
    if !was_dead {
        if let Err(rv) = before("C_CloseSession", Some(session)) {
            return rv;
        }
    }
    let Some(close) = real().C_CloseSession else { return CKR_FUNCTION_NOT_SUPPORTED };
    // SAFETY: a handle the application passed; it no longer uses it once it closes it.
    let rv = unsafe { close(session) };
    if was_dead { CKR_SESSION_HANDLE_INVALID } else { rv }
}

/// `C_CloseAllSessions`: forwarded; the slot's sessions are no longer tracked.
#[allow(non_snake_case, reason = "PKCS#11's own name")]
unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    forget_sessions();
    let Some(close) = real().C_CloseAllSessions else { return CKR_FUNCTION_NOT_SUPPORTED };
    // SAFETY: the caller's argument, unchanged; no pointers.
    unsafe { close(slot) }
}

/// `C_Finalize`: forwarded; every session is gone with it.
#[allow(non_snake_case, reason = "PKCS#11's own name")]
unsafe extern "C" fn C_Finalize(reserved: *mut std::ffi::c_void) -> CK_RV {
    forget_sessions();
    let Some(finalize) = real().C_Finalize else { return CKR_FUNCTION_NOT_SUPPORTED };
    // SAFETY: the caller's argument, unchanged (PKCS#11 requires it to be null).
    unsafe { finalize(reserved) }
}

fn forget_sessions() {
    let mut guard = live();
    let l = guard.get_or_insert_with(Live::new);
    l.open.clear();
    l.dead.clear();
}

/// `C_Sign`: faults and latency as the others, then (for a call that produced a signature) the
/// bit flip.
#[allow(non_snake_case, reason = "PKCS#11's own name")]
unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    // The latency is one round trip per signature: not on the call that only asks for the length.
    if let Err(rv) = before_with("C_Sign", Some(session), !signature.is_null()) {
        return rv;
    }
    let Some(sign) = real().C_Sign else { return CKR_FUNCTION_NOT_SUPPORTED };
    // SAFETY: the caller's arguments, unchanged, to the real C_Sign; the caller vouches for them.
    let rv = unsafe { sign(session, data, data_len, signature, signature_len) };
    // A call with a null output only asks for the length: nothing was signed.
    if rv == CKR_OK && !signature.is_null() && !signature_len.is_null() && flip_this_signature() {
        // SAFETY: on CKR_OK the module wrote `*signature_len` bytes at `signature`, a buffer
        // the caller provided and still owns.
        unsafe {
            let len = *signature_len as usize;
            if len > 0 {
                *signature.add(len / 2) ^= 0x01;
            }
        }
    }
    rv
}
