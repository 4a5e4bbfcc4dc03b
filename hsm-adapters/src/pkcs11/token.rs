//! Token administration that happens before a backend exists: initialising a fresh token in the
//! module's free slot and setting its user PIN. Used by the quickstart and by the test harness;
//! production tokens are usually initialised with the vendor's tools.

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::session::UserType;
use secrecy::SecretString;

use crate::error::{Error, Result};

/// Initialises the first uninitialised token of `module` with `label`, sets its SO PIN and user
/// PIN, and finalises the module again.
///
/// Fails with [`Error::Module`] if the module cannot be loaded or is already in use in this
/// process (initialisation needs the module to itself), [`Error::KeyExists`]-style refusal is not
/// needed: a token with the same label is refused with [`Error::Unsupported`], and a module without
/// a free slot fails with [`Error::TokenNotFound`].
pub fn initialize_token(module: &Path, label: &str, so_pin: &SecretString, user_pin: &SecretString) -> Result<()> {
    if label.is_empty() || label.len() > 32 {
        return Err(Error::Unsupported { what: "a token label must be 1 to 32 characters".into() });
    }
    let ctx = Pkcs11::new(module).map_err(|e| Error::Module {
        module: module.to_owned(),
        reason: format!("cannot load it as a PKCS#11 library: {e}"),
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
            return Err(Error::Module {
                module: module.to_owned(),
                reason: "already initialised in this process; initialise tokens before opening a backend".into(),
            });
        }
        Err(e) => return Err(Error::from_cryptoki(e)),
    }
    let result = init_in(&ctx, module, label, so_pin, user_pin);
    let finalized = ctx.finalize().map_err(Error::from_cryptoki);
    result.and(finalized)
}

fn init_in(ctx: &Pkcs11, module: &Path, label: &str, so_pin: &SecretString, user_pin: &SecretString) -> Result<()> {
    let mut free = None;
    let mut seen = Vec::new();
    for slot in ctx.get_slots_with_token().map_err(Error::from_cryptoki)? {
        let info = ctx.get_token_info(slot).map_err(Error::from_cryptoki)?;
        if info.token_initialized() {
            if info.label().trim_end() == label {
                return Err(Error::Unsupported {
                    what: format!("a token labelled {label:?} already exists in {}", module.display()),
                });
            }
            seen.push(format!("{:?}", info.label().trim_end()));
        } else if free.is_none() {
            free = Some(slot);
        }
    }
    let slot = free.ok_or_else(|| Error::TokenNotFound {
        selector: "with a free (uninitialised) slot".into(),
        module: module.to_owned(),
        seen: if seen.is_empty() { "none".into() } else { seen.join(", ") },
    })?;
    ctx.init_token(slot, so_pin, label).map_err(Error::from_cryptoki)?;
    let session = ctx.open_rw_session(slot).map_err(Error::from_cryptoki)?;
    session.login(UserType::So, Some(so_pin)).map_err(Error::from_cryptoki)?;
    session.init_pin(user_pin).map_err(Error::from_cryptoki)?;
    session.logout().map_err(Error::from_cryptoki)?;
    Ok(())
}
