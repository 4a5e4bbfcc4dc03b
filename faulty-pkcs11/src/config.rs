//! What to inject: the TOML file the module re-reads (its path in `FAULTY_PKCS11_CONFIG`). The
//! tests write it with these same types.
//!
//! ```toml
//! module = "/usr/lib/softhsm/libsofthsm2.so"  # the real module every call goes to
//! log = "/tmp/faults.log"                     # one JSON line per fault injected
//! drop_sessions = 1                           # raise it to close every open session once
//! flip_every = 1000                           # flip a bit in every 1000th signature
//! latency_ms = { C_Sign = 20 }                # a network HSM: each C_Sign takes 20 ms longer
//!
//! [[fail]]                                    # C_Sign calls 50, 100, 150 … fail
//! function = "C_Sign"
//! rv = "CKR_DEVICE_ERROR"
//! every = 50
//! ```
//!
//! Call counts start again from zero each time the file changes, so a test can say "fail the
//! 3rd C_Sign from now".

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// The real module. Default: `FAULTY_PKCS11_MODULE`, else Debian's SoftHSM2. Read once, when
    /// the application loads this module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<PathBuf>,
    /// Where each injected fault is recorded (appended, one JSON object per line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// Calls to fail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fail: Vec<Fail>,
    /// Flip one bit in every Nth signature `C_Sign` returns (0: never).
    #[serde(default)]
    pub flip_every: u64,
    /// Extra milliseconds per call, by function name (for `C_Sign`, only on the call that returns
    /// the signature, not on a length query: one round trip per signature).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latency_ms: BTreeMap<String, u64>,
    /// A generation: each time it grows, every open session of every slot is closed (as an HSM
    /// that restarted, or a network HSM that lost its connection, would).
    #[serde(default)]
    pub drop_sessions: u64,
}

impl Faults {
    /// Refuses rules that could never fire: a function this module does not wrap, a return
    /// value that is neither a known name nor a number, a rule with neither `nth` nor `every`.
    pub fn check(&self) -> Result<(), String> {
        for rule in &self.fail {
            if !crate::WRAPPED.contains(&rule.function.as_str()) {
                return Err(format!("{} is not wrapped (one of {:?})", rule.function, crate::WRAPPED));
            }
            if return_value(&rule.rv).is_none() {
                return Err(format!("{} is not a return value", rule.rv));
            }
            if rule.nth.is_none() && rule.every.is_none() {
                return Err(format!("the rule for {} has neither nth nor every", rule.function));
            }
        }
        for function in self.latency_ms.keys() {
            if !crate::WRAPPED.contains(&function.as_str()) {
                return Err(format!("{function} is not wrapped"));
            }
        }
        Ok(())
    }
}

/// A rule that fails calls of one function (every call counts, a `C_Sign` length query too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    /// `C_Sign`, `C_SignInit`, `C_OpenSession`, `C_Login`, `C_FindObjectsInit` … (one of
    /// [`WRAPPED`](crate::WRAPPED)).
    pub function: String,
    /// The return value: a name (`CKR_DEVICE_ERROR`, `CKR_SESSION_HANDLE_INVALID`,
    /// `CKR_TOKEN_NOT_PRESENT`, `CKR_DEVICE_MEMORY`, `CKR_PIN_INCORRECT` …) or a number (`0x30`).
    pub rv: String,
    /// Fail only the Nth call (1-based) since the file last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nth: Option<u64>,
    /// Fail every Nth call (N, 2N, 3N …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// Stop after this many failures (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
}

impl Fail {
    /// Whether call number `call` (1-based) of this rule's function fails, given how many this
    /// rule already failed.
    pub fn fires(&self, call: u64, fired: u64) -> bool {
        if self.times.is_some_and(|t| fired >= t) {
            return false;
        }
        let nth = self.nth.is_some_and(|n| n == call);
        let every = self.every.is_some_and(|n| n > 0 && call % n == 0);
        nth || every
    }
}

/// The value of a return code given by name or number; `None` if it is neither.
pub fn return_value(rv: &str) -> Option<u64> {
    use cryptoki_sys::*;
    let known = [
        ("CKR_DEVICE_ERROR", CKR_DEVICE_ERROR),
        ("CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY),
        ("CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED),
        ("CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID),
        ("CKR_SESSION_CLOSED", CKR_SESSION_CLOSED),
        ("CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT),
        ("CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED),
        ("CKR_PIN_INCORRECT", CKR_PIN_INCORRECT),
        ("CKR_PIN_LOCKED", CKR_PIN_LOCKED),
        ("CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN),
        ("CKR_GENERAL_ERROR", CKR_GENERAL_ERROR),
        ("CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED),
        ("CKR_FUNCTION_CANCELED", CKR_FUNCTION_CANCELED),
        ("CKR_HOST_MEMORY", CKR_HOST_MEMORY),
        ("CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE),
        ("CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED),
    ];
    if let Some((_, v)) = known.iter().find(|(name, _)| *name == rv) {
        return Some(*v);
    }
    match rv.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => rv.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_fire_on_the_calls_they_name() {
        let rule =
            |nth, every, times| Fail { function: "C_Sign".into(), rv: "CKR_DEVICE_ERROR".into(), nth, every, times };
        let fired = |r: &Fail| (1..=10).filter(|&c| r.fires(c, 0)).collect::<Vec<_>>();
        assert_eq!(fired(&rule(Some(3), None, None)), [3]);
        assert_eq!(fired(&rule(None, Some(4), None)), [4, 8]);
        assert!(!rule(None, Some(1), Some(2)).fires(5, 2), "a limit stops the rule");
        assert!(!rule(None, Some(0), None).fires(5, 0), "every 0 never fires");
    }

    #[test]
    fn return_values_by_name_or_number() {
        assert_eq!(return_value("CKR_DEVICE_ERROR"), Some(0x30));
        assert_eq!(return_value("0xB3"), Some(0xB3));
        assert_eq!(return_value("48"), Some(48));
        assert_eq!(return_value("CKR_NONSENSE"), None);
    }

    #[test]
    fn the_file_round_trips() {
        let f = Faults {
            fail: vec![Fail {
                function: "C_Sign".into(),
                rv: "CKR_DEVICE_ERROR".into(),
                nth: Some(2),
                every: None,
                times: None,
            }],
            flip_every: 7,
            latency_ms: [("C_Sign".to_owned(), 20)].into(),
            drop_sessions: 1,
            ..Faults::default()
        };
        let text = toml::to_string(&f).unwrap_or_default();
        assert_eq!(toml::from_str::<Faults>(&text).ok(), Some(f));
    }
}
