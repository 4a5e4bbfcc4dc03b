//! The state a decision is taken on: an immutable snapshot of the store — keys in their state at
//! a given time, the token-signing key ring, the bulk-token registry, revoked certificates, the
//! trusted roots — built in one read and never changed. The running service keeps the current
//! one behind a pointer and replaces it whenever the store's change counter moves or a scheduled
//! transition comes due; the CLI builds one for each command. Either way the store is the single
//! source of truth, and nobody holds a lock while deciding.

use std::collections::{HashMap, HashSet};

use crate::config::Config;
use crate::keys::{self, KeyRecord, KeyRole, KeyStatus};
use crate::store::{Store, StoreError};
use crate::token::verify::{self, KeyRingError};
use crate::token::{BulkRegistry, Guid, KeyRing, Presented, Verified, Verifier, VerifyError, VerifyPolicy};

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `sitesign init` has not run.
    #[error("not initialised: run `sitesign init` first")]
    NotInitialised,
    /// A stored value is unusable.
    #[error("{0}")]
    Corrupt(String),
    /// A token-signing key's certificate is unusable.
    #[error(transparent)]
    KeyRing(#[from] KeyRingError),
}

/// An immutable snapshot of the appliance's state at one time.
#[derive(Debug, Clone)]
pub struct State {
    /// The store's change counter when it was read.
    pub generation: i64,
    /// The Unix time the keys' states were computed for.
    pub at: i64,
    /// When a key's state changes next by its schedule: the snapshot must be rebuilt then.
    pub next_change: Option<i64>,
    /// The hierarchy every token carries, and the verifier's skew.
    pub policy: VerifyPolicy,
    /// Renewal is allowed from this age of a token signed by the active key, seconds.
    pub renew_after: i64,
    /// The key inventory.
    pub keys: Vec<KeyRecord>,
    /// The token-signing keys by certificate thumbprint.
    pub ring: KeyRing,
    /// Registered bulk tokens: GUID → blocked.
    pub bulk: HashMap<Guid, bool>,
    /// Serials (lower-case hex) of revoked certificates.
    pub revoked: HashSet<String>,
    /// The management points' client certificates that may connect: serial (lower-case hex) →
    /// `notAfter` of every `mp-client` certificate issued here and not revoked. An identity is a
    /// certificate sitesign issued for that purpose, not merely one that chains to a root.
    pub mp_clients: HashMap<String, i64>,
    /// Cross-certificates between SMS Issuing roots (`rotate issuing`): (issuing key, DER).
    pub cross_certificates: Vec<(String, Vec<u8>)>,
    /// Where a bulk token's block status is asked at each use instead of `bulk`: the shared
    /// store, when several appliances share one (another node may have blocked it a moment
    /// ago). Unreachable, it answers an error: the request is refused, never decided on a
    /// stale snapshot.
    pub bulk_live: Option<LiveBulk>,
}

/// A bulk-token registry asked at each use (see [`State::bulk_live`]).
#[derive(Clone)]
pub struct LiveBulk(pub std::sync::Arc<dyn BulkRegistry + Send + Sync>);

impl std::fmt::Debug for LiveBulk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveBulk")
    }
}

impl State {
    /// Reads the state from `store` as of Unix time `now`.
    pub fn load(store: &Store, config: &Config, now: i64) -> Result<State, StateError> {
        // One read transaction: every query sees the same committed state.
        let mut result = Err(StateError::NotInitialised);
        store.read(|store| {
            result = Self::load_consistent(store, config, now);
            Ok(())
        })?;
        result
    }

    fn load_consistent(store: &Store, config: &Config, now: i64) -> Result<State, StateError> {
        let generation = store.generation()?;
        let text = store.meta("hierarchy_id")?.ok_or(StateError::NotInitialised)?;
        let hierarchy = Guid::parse(&text)
            .ok_or_else(|| StateError::Corrupt(format!("the state's hierarchy_id {text:?} is not a GUID")))?;
        let keys = store.keys()?;
        let ring = KeyRing::from_records(&keys)?;
        let mut bulk = HashMap::new();
        for b in store.bulk_tokens()? {
            let guid = Guid::parse(&b.guid)
                .ok_or_else(|| StateError::Corrupt(format!("bulk token {:?} is not a GUID", b.guid)))?;
            bulk.insert(guid, b.blocked);
        }
        let certificates = store.certificates()?;
        let revoked = certificates.iter().filter(|c| c.revoked.is_some()).map(|c| c.serial.clone()).collect();
        let mp_clients = certificates
            .iter()
            .filter(|c| c.profile == crate::pki::ProfileKind::MpClient.as_str() && c.revoked.is_none())
            .map(|c| (c.serial.clone(), c.not_after))
            .collect();
        let cross_certificates = certificates
            .into_iter()
            .filter(|c| {
                c.profile == crate::pki::ProfileKind::CrossCertificate.as_str()
                    && c.revoked.is_none()
                    && c.not_after > now
            })
            .map(|c| (c.issuer_key, c.der))
            .collect();
        Ok(State {
            generation,
            at: now,
            next_change: keys::next_change_after(&keys, now),
            policy: VerifyPolicy {
                hierarchy,
                skew: config.tokens.clock_skew_seconds,
                high_s_before: store.meta("low_s_since")?.and_then(|t| t.parse().ok()),
            },
            renew_after: config.tokens.renew_after_days * 86_400,
            keys,
            ring,
            bulk,
            revoked,
            mp_clients,
            cross_certificates,
            bulk_live: None,
        })
    }

    /// The cross-certificates that vouch for the active SMS Issuing root's key by a root that
    /// still verifies: what a TLS chain adds so that a client trusting only an older root still
    /// builds a path.
    pub fn cross_certificates_for_active_root(&self) -> Vec<Vec<u8>> {
        let Some(active) = self.active(KeyRole::Issuing) else { return Vec::new() };
        // From the active root back through every older root that still verifies: a client that
        // trusts a root two rotations old builds its path through both cross-certificates.
        let mut chain = Vec::new();
        let mut reached = vec![active.id.clone()];
        let mut frontier = vec![active];
        while let Some(root) = frontier.pop() {
            let Some(spki) = root.certificate().and_then(spki_of) else { continue };
            for (issuer, der) in &self.cross_certificates {
                let usable = self.status(issuer).is_some_and(KeyStatus::verifies) && !reached.contains(issuer);
                if usable && spki_of(der).as_deref() == Some(&spki) {
                    chain.push(der.clone());
                    reached.push(issuer.clone());
                    frontier.extend(self.key(issuer));
                }
            }
        }
        chain
    }

    /// Whether the client certificate with `serial` may call the API at `now`: an `mp-client`
    /// certificate issued here, not revoked, not expired.
    pub fn admits(&self, serial: &str, now: i64) -> bool {
        self.mp_clients.get(serial).is_some_and(|not_after| now < *not_after)
    }

    /// Whether this snapshot still describes Unix time `now` (no scheduled change in between).
    pub fn current_at(&self, now: i64) -> bool {
        self.next_change.is_none_or(|t| now < t)
    }

    /// The key signing for `role` now.
    pub fn active(&self, role: KeyRole) -> Option<&KeyRecord> {
        keys::active(&self.keys, role, self.at)
    }

    /// The key with `id`.
    pub fn key(&self, id: &str) -> Option<&KeyRecord> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The state of the key `id` in this snapshot.
    pub fn status(&self, id: &str) -> Option<KeyStatus> {
        self.key(id).map(|k| k.status_at(self.at))
    }

    /// Verifies `presented` against this state at Unix time `now`.
    pub fn verify(&self, presented: Presented<'_>, now: i64) -> Result<Verified, VerifyError> {
        verify::verify(Verifier { policy: &self.policy, keys: &self.ring, registry: self }, presented, now)
    }

    /// The trust anchors for client certificates: every SMS Issuing root that is neither
    /// retired nor revoked (after `rotate issuing`, certificates from the old root keep working
    /// until they expire).
    pub fn trusted_roots(&self) -> Vec<&[u8]> {
        self.keys
            .iter()
            .filter(|k| k.role == KeyRole::Issuing && k.status_at(self.at).verifies())
            .flat_map(|k| k.certificate())
            .collect()
    }
}

/// The DER of a certificate's subject public key info.
fn spki_of(der: &[u8]) -> Option<Vec<u8>> {
    let cert = crate::pki::parse_certificate(der).ok()?;
    der::Encode::to_der(cert.tbs_certificate().subject_public_key_info()).ok()
}

impl BulkRegistry for State {
    fn bulk_blocked(&self, guid: Guid) -> Result<Option<bool>, String> {
        match &self.bulk_live {
            Some(live) => live.0.bulk_blocked(guid),
            None => Ok(self.bulk.get(&guid).copied()),
        }
    }
}
