//! The connection to one PKCS#11 token: the shared `Pkcs11` context (initialised with OS locking),
//! pools of sessions — one session per worker thread, since a `Session` is `Send` but not
//! `Sync`; a [`Lane`] is the device seen through one pool, and a device may have several (work
//! that must never wait for another's sessions gets a lane of its own) — and recovery.
//!
//! Every device call runs under a read guard of [`Device::state`]; re-initialising the module takes
//! the write guard, so `C_Finalize` never runs while another thread is inside the library (PKCS#11
//! v2.40 §5.4) and every pooled session is idle at that moment and can be closed first.
//!
//! Recovery is bounded: a session error discards that session and opens a fresh, logged-in one; a
//! token error (removed, re-initialised, not present) re-initialises the module, finds the token
//! again by label or serial and logs in; both retry the operation at most [`MAX_ATTEMPTS`] times.
//! A wrong or locked PIN is fatal at once: never an authentication retry loop.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;
use tracing::{info, warn};

use crate::config::{Pkcs11Config, TokenSelector};
use crate::error::{Error, ErrorClass, Result};

/// Attempts per operation, the first included.
pub const MAX_ATTEMPTS: u32 = 4;

/// How long a caller waits for a free session before [`Error::Busy`].
const SESSION_WAIT: Duration = Duration::from_secs(30);

/// Which slot the token is in now, and how many times the module has been (re)initialised.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceState {
    pub slot: Slot,
    pub generation: u64,
}

#[derive(Debug, Default)]
struct PoolInner {
    idle: Vec<Session>,
    open: usize,
}

/// Sessions on a device, at most `capacity` open.
#[derive(Debug)]
pub(crate) struct Pool {
    inner: Mutex<PoolInner>,
    freed: Condvar,
    capacity: usize,
}

impl Pool {
    fn new(capacity: usize) -> Pool {
        Pool { inner: Mutex::default(), freed: Condvar::new(), capacity: capacity.max(1) }
    }
}

/// A device seen through one pool of sessions: what a backend and its keys hold.
#[derive(Debug, Clone)]
pub(crate) struct Lane {
    // Dropped first: the pool's sessions close while the device is still there.
    pool: Arc<Pool>,
    pub device: Arc<Device>,
}

impl std::ops::Deref for Lane {
    type Target = Device;
    fn deref(&self) -> &Device {
        &self.device
    }
}

impl Lane {
    /// Loads the module, initialises it, finds the token, and opens and logs in the first
    /// session of a pool of `config.sessions`.
    pub fn open(config: Pkcs11Config) -> Result<Lane> {
        let capacity = config.sessions.get();
        let device = Arc::new(Device::open(config)?);
        let lane = device.lane(capacity);
        // Open the first session now so that a wrong PIN or a broken token fails at start-up.
        {
            let state = device.read_state();
            let first = device.checkout(&lane.pool, &state)?;
            drop(first);
        }
        Ok(lane)
    }

    /// The same device through a new pool of `capacity` sessions.
    pub fn another(&self, capacity: usize) -> Lane {
        self.device.lane(capacity)
    }

    /// Sessions open in this lane's pool (at most its capacity).
    pub fn sessions_open(&self) -> usize {
        lock(&self.pool.inner).open
    }

    /// Sessions this lane may open.
    pub fn capacity(&self) -> usize {
        self.pool.capacity
    }

    /// [`Device::with_session`] on this lane's pool.
    pub fn with_session<T>(&self, op: impl FnMut(&Session, u64) -> Result<T>, on_key_error: impl Fn()) -> Result<T> {
        self.device.with_session(&self.pool, op, on_key_error)
    }
}

/// One PKCS#11 token reached through one module.
#[derive(Debug)]
pub(crate) struct Device {
    ctx: Pkcs11,
    pub config: Pkcs11Config,
    state: RwLock<DeviceState>,
    /// Every pool of this device, so that re-initialisation can close their idle sessions.
    pools: Mutex<Vec<Weak<Pool>>>,
    /// Serialises re-initialisation so that concurrent failures trigger it once.
    reinit: Mutex<()>,
    pub mechanisms: Vec<MechanismType>,
    pub token_description: String,
    /// What the module and token report of themselves (library, sessions, login, clock).
    pub module_facts: Vec<(String, String)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the pool lock leaves the pool consistent (it only moves sessions), so
    // keep going rather than poison every later caller.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `C_Initialize` with OS locking; "already initialised" is fine (another backend in this process
/// uses the same module).
fn initialize(ctx: &Pkcs11) -> Result<()> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(Error::from_cryptoki(e)),
    }
}

/// What the library and the token say of themselves, for an operator: the token information is
/// what [`find_slot`] read; a library that cannot describe itself is reported as such.
fn module_facts(ctx: &Pkcs11, t: &cryptoki::slot::TokenInfo, config: &Pkcs11Config) -> Vec<(String, String)> {
    use cryptoki::slot::Limit;
    let mut facts = Vec::new();
    match ctx.get_library_info() {
        Ok(i) => facts.push((
            "library".to_owned(),
            format!(
                "{} {} {}, PKCS#11 {}",
                i.manufacturer_id().trim_end(),
                i.library_description().trim_end(),
                i.library_version(),
                i.cryptoki_version()
            ),
        )),
        Err(e) => facts.push(("library".to_owned(), format!("C_GetInfo failed: {e}"))),
    }
    let limit = |l: Limit| match l {
        Limit::Max(n) => n.to_string(),
        Limit::Infinite => "no limit".to_owned(),
        Limit::Unavailable => "not reported".to_owned(),
    };
    let sessions = format!(
        "token allows {} ({} read-write); sitesign opens {} for signing, plus the service's tls_sessions for handshakes when the TLS key is here",
        limit(t.max_session_count()),
        limit(t.max_rw_session_count()),
        config.sessions
    );
    facts.push(("sessions".to_owned(), sessions));
    let login = if t.protected_authentication_path() {
        "PIN entered on the device (protected authentication path)"
    } else if t.login_required() {
        "user PIN; one login serves every session of the process (PKCS#11 v2.40 §5.6)"
    } else {
        "no login required"
    };
    facts.push(("login".to_owned(), login.to_owned()));
    let clock = match (t.clock_on_token(), t.utc_time()) {
        (false, _) => "none on the token (sitesign uses the host's clock)".to_owned(),
        (true, Some(u)) => format!(
            "on the token: {:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z (sitesign uses the host's clock)",
            u.year, u.month, u.day, u.hour, u.minute, u.second
        ),
        (true, None) => "on the token, unreadable (not digits); sitesign uses the host's clock".to_owned(),
    };
    facts.push(("clock".to_owned(), clock));
    facts
}

/// Finds the slot holding the configured token.
fn find_slot(ctx: &Pkcs11, config: &Pkcs11Config) -> Result<(Slot, String, cryptoki::slot::TokenInfo)> {
    let mut seen = Vec::new();
    for slot in ctx.get_slots_with_token().map_err(Error::from_cryptoki)? {
        let info = match ctx.get_token_info(slot) {
            Ok(i) => i,
            // A slot whose token vanished between the two calls is simply not a match; any other
            // failure is reported with the slot, never hidden (it may be the token wanted).
            Err(cryptoki::error::Error::Pkcs11(RvError::TokenNotPresent, _)) => continue,
            Err(e) => {
                seen.push(format!("slot {} (its token information cannot be read: {e})", slot.id()));
                continue;
            }
        };
        let label = info.label().trim_end().to_owned();
        let serial = info.serial_number().trim_end().to_owned();
        let matches = match &config.token {
            TokenSelector::Label(l) => label == l.trim_end(),
            TokenSelector::Serial(s) => serial == s.trim_end(),
        };
        if matches && info.token_initialized() {
            let description = format!(
                "{} {} token {label:?} (serial {serial}) in {}",
                info.manufacturer_id().trim_end(),
                info.model().trim_end(),
                config.module.display()
            );
            return Ok((slot, description, info));
        }
        seen.push(format!("{label:?}"));
    }
    Err(Error::TokenNotFound {
        selector: config.token.to_string(),
        module: config.module.clone(),
        seen: if seen.is_empty() { "none".into() } else { seen.join(", ") },
    })
}

/// Logs `session` in as the user with the PIN from `config`; the PIN is read now and dropped
/// (zeroized) when this returns.
fn login(session: &Session, config: &Pkcs11Config) -> Result<()> {
    let pin: SecretString = config.pin.read()?;
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(cryptoki::error::Error::Pkcs11(
            rv @ (RvError::PinIncorrect
            | RvError::PinInvalid
            | RvError::PinLenRange
            | RvError::PinLocked
            | RvError::PinExpired),
            _,
        )) => Err(Error::PinIncorrect { source_desc: config.pin.describe(), rv }),
        Err(e) => Err(Error::from_cryptoki(e)),
    }
}

/// Whether `e` means the token itself is gone or replaced, so that only re-initialising the
/// module (which rescans slots) can recover. A login or session opening that fails for any reason
/// but the PIN counts too: SoftHSM answers CKR_GENERAL_ERROR when its token vanished.
fn needs_reinit(e: &Error) -> bool {
    matches!(
        e,
        Error::TokenNotFound { .. }
            | Error::Pkcs11 { function: Function::Login | Function::OpenSession, .. }
            | Error::Pkcs11 {
                rv: RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::TokenNotRecognized
                    | RvError::SlotIdInvalid
                    | RvError::CryptokiNotInitialized
                    | RvError::DeviceError,
                ..
            }
    )
}

/// A session checked out of a pool; returned to it on drop unless discarded.
pub(crate) struct PooledSession<'a> {
    pool: &'a Pool,
    session: Option<Session>,
}

impl PooledSession<'_> {
    pub fn session(&self) -> &Session {
        // The Option is only emptied by `discard` (which consumes self) and by `drop`.
        self.session.as_ref().unwrap_or_else(|| unreachable!("pooled session used after discard"))
    }

    /// Closes this session instead of returning it to the pool.
    fn discard(mut self) {
        if let Some(s) = self.session.take() {
            drop(s);
            lock(&self.pool.inner).open -= 1;
            self.pool.freed.notify_one();
        }
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            lock(&self.pool.inner).idle.push(s);
            self.pool.freed.notify_one();
        }
    }
}

/// Every module context this process loaded, kept so that no module is ever unloaded: some
/// (opencryptoki 3.8.1) leave handlers behind — run when a thread exits, or at exit — that crash
/// the process once the module's code is unmapped. A module is loaded once per backend; keeping
/// it costs nothing.
static LOADED: Mutex<Vec<Pkcs11>> = Mutex::new(Vec::new());

impl Device {
    /// Loads the module, initialises it and finds the token.
    fn open(config: Pkcs11Config) -> Result<Self> {
        // The module runs inside this process with the PIN: nobody else may be able to swap it.
        if let Some(reason) = crate::trust::untrusted(&config.module) {
            return Err(Error::Module { module: config.module.clone(), reason: format!("refused: {reason}") });
        }
        let ctx = Pkcs11::new(&config.module).map_err(|e| Error::Module {
            module: config.module.clone(),
            reason: format!("cannot load it as a PKCS#11 library: {e}"),
        })?;
        LOADED.lock().unwrap_or_else(PoisonError::into_inner).push(ctx.clone());
        initialize(&ctx)?;
        let (slot, token_description, token_info) = find_slot(&ctx, &config)?;
        let mechanisms = ctx.get_mechanism_list(slot).map_err(Error::from_cryptoki)?;
        let module_facts = module_facts(&ctx, &token_info, &config);
        Ok(Device {
            ctx,
            config,
            state: RwLock::new(DeviceState { slot, generation: 0 }),
            pools: Mutex::default(),
            reinit: Mutex::new(()),
            mechanisms,
            token_description,
            module_facts,
        })
    }

    /// A new pool of `capacity` sessions on this device.
    fn lane(self: &Arc<Self>, capacity: usize) -> Lane {
        let pool = Arc::new(Pool::new(capacity));
        let mut pools = lock(&self.pools);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(&pool));
        Lane { pool, device: Arc::clone(self) }
    }

    fn read_state(&self) -> RwLockReadGuard<'_, DeviceState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many times the module has been re-initialised by recovery.
    pub fn reinitialisations(&self) -> u64 {
        self.read_state().generation
    }

    /// Takes an idle session of `pool`, opens a new one (up to its capacity), or waits.
    fn checkout<'a>(&self, pool: &'a Pool, state: &DeviceState) -> Result<PooledSession<'a>> {
        let capacity = pool.capacity;
        let started = Instant::now();
        let mut inner = lock(&pool.inner);
        loop {
            if let Some(session) = inner.idle.pop() {
                return Ok(PooledSession { pool, session: Some(session) });
            }
            if inner.open < capacity {
                inner.open += 1;
                drop(inner);
                let opened = self.ctx.open_rw_session(state.slot).map_err(Error::from_cryptoki).and_then(|s| {
                    login(&s, &self.config)?;
                    Ok(s)
                });
                return match opened {
                    Ok(session) => Ok(PooledSession { pool, session: Some(session) }),
                    Err(e) => {
                        lock(&pool.inner).open -= 1;
                        pool.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let waited = started.elapsed();
            if waited >= SESSION_WAIT {
                return Err(Error::Busy { sessions: capacity, waited_ms: waited.as_millis() as u64 });
            }
            inner = pool.freed.wait_timeout(inner, SESSION_WAIT - waited).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Runs `op` with a pooled session, recovering from session, token and stale-handle errors.
    ///
    /// `op` gets the session and the module generation (for handle caches); `on_key_error` is
    /// called when a handle turned out stale, before the retry.
    fn with_session<T>(
        &self,
        pool: &Pool,
        mut op: impl FnMut(&Session, u64) -> Result<T>,
        on_key_error: impl Fn(),
    ) -> Result<T> {
        let mut attempt = 0;
        // After a first session-level failure the retry logs in again explicitly (the login state
        // is shared by all sessions and may have been lost); a second one re-initialises.
        let mut relogin = false;
        loop {
            attempt += 1;
            let (generation, err) = {
                let state = self.read_state();
                let generation = state.generation;
                let result = self.checkout(pool, &state).and_then(|pooled| {
                    let r = if relogin { login(pooled.session(), &self.config) } else { Ok(()) }
                        .and_then(|()| op(pooled.session(), generation));
                    match &r {
                        Err(e) if e.class() != ErrorClass::Key && e.class() != ErrorClass::Fatal => pooled.discard(),
                        Err(Error::Pkcs11 { .. }) => pooled.discard(),
                        _ => drop(pooled),
                    }
                    r
                });
                match result {
                    Ok(v) => return Ok(v),
                    Err(e) => (generation, e),
                }
            };
            let reinit_now = needs_reinit(&err) || (relogin && err.class() == ErrorClass::Session);
            if attempt >= MAX_ATTEMPTS || (err.class() == ErrorClass::Fatal && !reinit_now) {
                // A definitive answer (key not found, wrong PIN…) is returned as it is, even after
                // a recovery; only an error that is still retryable is reported as exhausted.
                return Err(if attempt > 1 && err.class() != ErrorClass::Fatal {
                    Error::RecoveryExhausted { attempts: attempt - 1, last: Box::new(err) }
                } else {
                    err
                });
            }
            warn!(code = err.code(), error = %err, attempt, "PKCS#11 operation failed; recovering");
            match err.class() {
                _ if reinit_now => {
                    // A failing re-initialisation is retried on the next attempt; only a fatal
                    // error from it (wrong PIN, module gone) ends recovery at once.
                    if let Err(e) = self.reinitialise(generation) {
                        if e.class() == ErrorClass::Fatal || attempt + 1 >= MAX_ATTEMPTS {
                            return Err(Error::RecoveryExhausted { attempts: attempt, last: Box::new(e) });
                        }
                        warn!(code = e.code(), error = %e, "re-initialising the PKCS#11 module failed");
                        std::thread::sleep(Duration::from_millis(50 << attempt));
                    }
                    relogin = false;
                }
                ErrorClass::Key => on_key_error(),
                ErrorClass::Transient => std::thread::sleep(Duration::from_millis(10 << attempt)),
                // The failed session was discarded above; the retry logs in on a fresh one.
                ErrorClass::Session => relogin = true,
                ErrorClass::Fatal => {}
            }
        }
    }

    /// Finalises and re-initialises the module, finds the token again and logs in — unless
    /// another thread already did so since generation `seen`.
    fn reinitialise(&self, seen: u64) -> Result<()> {
        let _one_at_a_time = lock(&self.reinit);
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if state.generation != seen {
            return Ok(());
        }
        // No thread is inside the library now (they all hold read guards while calling), so every
        // session of every pool is idle: close them while the module can still do so.
        for pool in lock(&self.pools).iter().filter_map(Weak::upgrade) {
            let mut inner = lock(&pool.inner);
            let idle = std::mem::take(&mut inner.idle);
            inner.open -= idle.len();
            drop(idle);
        }
        if let Err(e) = self.ctx.clone().finalize() {
            warn!(error = %e, "C_Finalize failed during recovery; initialising anyway");
        }
        state.generation += 1;
        initialize(&self.ctx)?;
        let (slot, description, _) = find_slot(&self.ctx, &self.config)?;
        state.slot = slot;
        info!(generation = state.generation, token = %description, "PKCS#11 module re-initialised");
        Ok(())
    }
}

// Dropping a device closes nothing by itself: its pools' sessions close with the pools (the
// token logs the application out with the last one). The module stays initialised: it is
// process-wide state that another backend in this process may be using, and finalising it under
// that backend would break its sessions.
