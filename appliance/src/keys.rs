//! The key inventory (SPEC §2, §7): what a key is for, where it is in its life, and the one place
//! that decides which keys sign, which verify and which certificates are published.
//!
//! A key's life is a schedule of times, not a stored state: `activates` (it starts signing),
//! `deactivates` (its successor took over: it only verifies), `retires` (nothing it signed is
//! valid any more) and `revoked` (the emergency exit). [`KeyRecord::status_at`] reads the state
//! off the schedule, so a rotation planned for tomorrow needs nobody to flip a flag tomorrow: every
//! reader — the running service, the CLI, another appliance on the same database — computes the
//! same state from the same record at the same time.

use serde::{Deserialize, Serialize};

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyRole {
    /// The SMS Issuing root: signs certificates and CRLs only.
    Issuing,
    /// An SMS Token Signing key: signs tokens (and audit checkpoints).
    TokenSigning,
    /// The appliance's own TLS server key.
    Tls,
}

impl KeyRole {
    /// Every role.
    pub const ALL: [KeyRole; 3] = [KeyRole::Issuing, KeyRole::TokenSigning, KeyRole::Tls];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Issuing => "issuing",
            KeyRole::TokenSigning => "token-signing",
            KeyRole::Tls => "tls",
        }
    }

    /// The role with the stored name `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Where a key is in its life at a given time (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStatus {
    /// Generated, certified and published; signs nothing yet.
    Pending,
    /// Signs (exactly one key per role at any time).
    Active,
    /// Replaced: what it signed still verifies.
    VerifyOnly,
    /// Nothing it signed is valid any more: neither signs nor verifies.
    Retired,
    /// Withdrawn in an emergency: its tokens are refused at once.
    Revoked,
}

impl KeyStatus {
    /// The name shown and serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Pending => "pending",
            KeyStatus::Active => "active",
            KeyStatus::VerifyOnly => "verify-only",
            KeyStatus::Retired => "retired",
            KeyStatus::Revoked => "revoked",
        }
    }

    /// Whether tokens (or certificates) this key signed are accepted.
    pub fn verifies(self) -> bool {
        matches!(self, KeyStatus::Active | KeyStatus::VerifyOnly)
    }
}

/// One key of the inventory, with its schedule and its certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// Short id (the key's name in its device).
    pub id: String,
    /// The configured backend it lives in.
    pub backend: String,
    /// Its URI (RFC 7512 `pkcs11:` or `tpm:`).
    pub uri: String,
    /// Its algorithm (`rsa-2048`, …).
    pub algorithm: String,
    /// What it is for.
    pub role: KeyRole,
    /// Unix time it was generated.
    pub created: i64,
    /// Unix time it starts (or started) signing; `None` while not scheduled.
    pub activates: Option<i64>,
    /// Unix time its successor took (or takes) over; from then it only verifies.
    pub deactivates: Option<i64>,
    /// Unix time from which nothing it signed is valid: it is retired.
    pub retires: Option<i64>,
    /// Unix time it was revoked.
    pub revoked: Option<i64>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// The `notAfter` of its current certificate: nothing it signs may outlive this.
    pub not_after: i64,
    /// DER of its certificates, oldest first; the last is the current one (a key certified
    /// again under a new root keeps the old certificate, which tokens already name by `x5t`).
    #[serde(skip)]
    pub certificates: Vec<Vec<u8>>,
}

/// A key's schedule: the times its state changes (see [`KeyRecord`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Schedule {
    /// See [`KeyRecord::activates`].
    pub activates: Option<i64>,
    /// See [`KeyRecord::deactivates`].
    pub deactivates: Option<i64>,
    /// See [`KeyRecord::retires`].
    pub retires: Option<i64>,
    /// See [`KeyRecord::revoked`].
    pub revoked: Option<i64>,
}

impl Schedule {
    /// The state at Unix time `t`.
    pub fn status_at(&self, t: i64) -> KeyStatus {
        let reached = |at: Option<i64>| at.is_some_and(|at| at <= t);
        if self.revoked.is_some() {
            KeyStatus::Revoked
        } else if reached(self.retires) {
            KeyStatus::Retired
        } else if reached(self.deactivates) {
            KeyStatus::VerifyOnly
        } else if reached(self.activates) {
            KeyStatus::Active
        } else {
            KeyStatus::Pending
        }
    }
}

impl KeyRecord {
    /// Its schedule.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            activates: self.activates,
            deactivates: self.deactivates,
            retires: self.retires,
            revoked: self.revoked,
        }
    }

    /// The key's state at Unix time `t`.
    pub fn status_at(&self, t: i64) -> KeyStatus {
        self.schedule().status_at(t)
    }

    /// The next time after `t` at which this key's state changes by its schedule.
    pub fn next_change_after(&self, t: i64) -> Option<i64> {
        if self.revoked.is_some() {
            return None;
        }
        [self.activates, self.deactivates, self.retires].into_iter().flatten().filter(|at| *at > t).min()
    }

    /// Its current certificate.
    pub fn certificate(&self) -> Option<&[u8]> {
        self.certificates.last().map(Vec::as_slice)
    }

    /// `x5t` of its current certificate.
    pub fn x5t(&self) -> Option<String> {
        self.certificate().map(crate::pki::x5t)
    }

    /// `x5t#S256` of its current certificate.
    pub fn x5t_s256(&self) -> Option<String> {
        self.certificate().map(crate::pki::x5t_s256)
    }
}

/// The key that signs for `role` at time `t`: the active one (at most one per role; if a faulty
/// schedule made two, the one activated last).
pub fn active(keys: &[KeyRecord], role: KeyRole, t: i64) -> Option<&KeyRecord> {
    keys.iter()
        .filter(|k| k.role == role && k.status_at(t) == KeyStatus::Active)
        .max_by_key(|k| (k.activates, k.created))
}

/// The key of `role` waiting to become active, if a rotation is scheduled.
pub fn pending(keys: &[KeyRecord], role: KeyRole, t: i64) -> Option<&KeyRecord> {
    keys.iter().filter(|k| k.role == role && k.status_at(t) == KeyStatus::Pending).max_by_key(|k| k.created)
}

/// The first time after `t` at which any key's state changes.
pub fn next_change_after(keys: &[KeyRecord], t: i64) -> Option<i64> {
    keys.iter().filter_map(|k| k.next_change_after(t)).min()
}

/// A certificate relying parties should have: SMS Issuing roots and token-signing certificates
/// that are neither retired nor revoked — pending ones included, so that they are cached before
/// they sign (SPEC §4). One entry per certificate (a key re-certified under a new root has two).
#[derive(Debug, Clone)]
pub struct Published<'a> {
    /// The key.
    pub key: &'a KeyRecord,
    /// Its state now.
    pub status: KeyStatus,
    /// The certificate's DER.
    pub der: &'a [u8],
    /// Whether this is the key's current certificate (the one new signatures name).
    pub current: bool,
}

/// Every certificate to publish at `t` (JWKS, `/v1/certificates`, `cert export`), in inventory
/// order: the one "non-retired certificates" query.
pub fn published(keys: &[KeyRecord], t: i64) -> Vec<Published<'_>> {
    let mut out = Vec::new();
    for key in keys.iter().filter(|k| matches!(k.role, KeyRole::Issuing | KeyRole::TokenSigning)) {
        let status = key.status_at(t);
        if matches!(status, KeyStatus::Retired | KeyStatus::Revoked) {
            continue;
        }
        let last = key.certificates.len().saturating_sub(1);
        for (i, der) in key.certificates.iter().enumerate() {
            out.push(Published { key, status, der, current: i == last });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: KeyRole) -> KeyRecord {
        KeyRecord {
            id: "k".into(),
            backend: "hsm".into(),
            uri: "pkcs11:object=k".into(),
            algorithm: "rsa-2048".into(),
            role,
            created: 0,
            activates: None,
            deactivates: None,
            retires: None,
            revoked: None,
            revoke_reason: None,
            not_after: 1_000,
            certificates: vec![vec![1], vec![2]],
        }
    }

    #[test]
    fn the_state_follows_the_schedule() {
        let mut k = key(KeyRole::TokenSigning);
        assert_eq!(k.status_at(5), KeyStatus::Pending, "never scheduled");
        k.activates = Some(10);
        k.deactivates = Some(20);
        k.retires = Some(30);
        let states: Vec<KeyStatus> = [9, 10, 19, 20, 29, 30].iter().map(|t| k.status_at(*t)).collect();
        use KeyStatus::*;
        assert_eq!(states, [Pending, Active, Active, VerifyOnly, VerifyOnly, Retired]);
        assert_eq!(k.next_change_after(9), Some(10));
        assert_eq!(k.next_change_after(20), Some(30));
        assert_eq!(k.next_change_after(30), None);
        k.revoked = Some(15);
        assert_eq!(k.status_at(0), Revoked, "revocation is final, whatever the schedule");
        assert_eq!(k.next_change_after(0), None);
    }

    #[test]
    fn one_active_key_per_role_and_what_is_published() {
        let mut old = key(KeyRole::TokenSigning);
        old.id = "old".into();
        old.activates = Some(0);
        old.deactivates = Some(100);
        old.retires = Some(200);
        let mut new = key(KeyRole::TokenSigning);
        new.id = "new".into();
        new.created = 50;
        new.activates = Some(100);
        let mut tls = key(KeyRole::Tls);
        tls.activates = Some(0);
        let keys = vec![old, new, tls];
        assert_eq!(active(&keys, KeyRole::TokenSigning, 99).map(|k| k.id.as_str()), Some("old"));
        assert_eq!(pending(&keys, KeyRole::TokenSigning, 99).map(|k| k.id.as_str()), Some("new"));
        assert_eq!(active(&keys, KeyRole::TokenSigning, 100).map(|k| k.id.as_str()), Some("new"));
        assert!(pending(&keys, KeyRole::TokenSigning, 100).is_none());
        assert_eq!(next_change_after(&keys, 99), Some(100));
        // Pending keys are published, TLS keys never, retired keys no more; every certificate of
        // a key is published, the last one marked current.
        let ids = |t| published(&keys, t).iter().map(|p| (p.key.id.clone(), p.current)).collect::<Vec<_>>();
        let both = |id: &str| vec![(id.to_owned(), false), (id.to_owned(), true)];
        assert_eq!(ids(99), [both("old"), both("new")].concat());
        assert_eq!(ids(200), both("new"));
    }
}
