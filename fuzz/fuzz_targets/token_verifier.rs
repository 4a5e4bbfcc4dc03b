//! The token verifier, `sitesign::token::verify::verify` (SPEC §3): what every bulk, client and
//! access token presented to sitesign goes through.
//!
//! The verifier trusts three token-signing certificates (`fuzz/data`, made by `fuzz/seeds.py`):
//! two of the RFC 7520 RSA key (one revoked) and one of the RFC 7515 A.3 P-256 key. The input is
//!
//! ```text
//! flags (1 byte) ‖ time offset from NOW (i32, little-endian) ‖ body
//! ```
//!
//! flags: bit 0 forged, bit 1 `Purpose::Renewal`, bits 2–3 the kind expected (none, bulk,
//! client, access), bit 4 the client certificate thumbprint is presented, bit 5 high-S ES256
//! signatures are tolerated on tokens issued before NOW. Without bit 0 the body is the token. With
//! it the body is `header NUL claims`, and the target signs it with the P-256 key, as the token
//! `header.claims.low-S signature` and again with the high-S twin of that signature: forged tokens
//! get past the signature, so the header and claim checks behind it are fuzzed too.
//!
//! Checked: no panic (overflow included); a token that is accepted is at most `MAX_TOKEN_BYTES`,
//! three canonical base64url parts, of the kind expected, signed by a trusted key in a state that
//! may be used for the purpose, current within the skew, with a lifetime sitesign issues, of this
//! hierarchy and audience, registered and unblocked (bulk) or bound to the presented certificate
//! (client, access). A high-S twin is refused exactly where its low-S original is refused before
//! the signature check, and otherwise refused as `non_canonical_signature` (or, where tolerated,
//! judged as the original is).

#![no_main]

use std::sync::LazyLock;

use hsm_adapters::checked::ecdsa_normalize_s;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use sitesign::keys::{KeyRecord, KeyRole, KeyStatus};
use sitesign::token::claims::{AUDIENCE, issuer_for};
use sitesign::token::verify::{BulkRegistry, KeyRing, verify};
use sitesign::token::{
    Guid, MAX_TOKEN_BYTES, Presented, Purpose, Reason, TokenKind, Verified, Verifier, VerifyError, VerifyPolicy, b64,
};

// Shared with fuzz/seeds.py.
/// An hour after the docs sample's `nbf`: its claims are current.
const NOW: i64 = 1_580_160_000;
/// The docs sample's `TenantId`.
const HIERARCHY: &str = "CDCC5E91-0ADF-4A24-82D0-196667F1C081";
/// The `x5t#S256` presented with device tokens when flag bit 4 is set.
const CLIENT_CERT: &str = "q1MKE5hX1uWoOlxMqk1B7v4HnpnZz3jOhP1ZbpQ6sGA";
const DAY: i64 = 86_400;

/// RFC 7515 A.3: the ES256 example key (`d`, then the point `04‖x‖y`).
const EC_D: &str = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

/// The order `n` of P-256, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The bulk-token registry: the docs sample's GUID registered, the blog sample's blocked, the nil
/// GUID an unreadable registry.
struct Registry;

impl BulkRegistry for Registry {
    fn bulk_blocked(&self, guid: Guid) -> Result<Option<bool>, String> {
        match guid.lower().as_str() {
            "db591e33-06fd-4c5b-82f3-bf673e5bd0a2" => Ok(Some(false)),
            "ea2fc510-a3be-4cef-90b0-2a0515c4e40c" => Ok(Some(true)),
            "00000000-0000-0000-0000-000000000000" => Err("the registry is unavailable".into()),
            _ => Ok(None),
        }
    }
}

struct Fixture {
    ring: KeyRing,
    hierarchy: Guid,
    ec_key: EcdsaKeyPair,
    ec_x5t: String,
    rng: SystemRandom,
}

fn record(id: &str, cert: &[u8], schedule: [Option<i64>; 4]) -> KeyRecord {
    let [activates, deactivates, retires, revoked] = schedule;
    KeyRecord {
        id: id.into(),
        backend: "fuzz".into(),
        uri: format!("pkcs11:object={id}"),
        algorithm: "rsa-2048".into(),
        role: KeyRole::TokenSigning,
        created: 0,
        activates,
        deactivates,
        retires,
        revoked,
        revoke_reason: revoked.map(|_| "key-compromise".into()),
        not_after: i64::MAX,
        certificates: vec![cert.to_vec()],
    }
}

/// The fixture is the target's own constant data: failing to build it is a broken target, so
/// it panics (with what is wrong) rather than reporting a finding in sitesign.
static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let rsa = include_bytes!("../data/token-signing-rsa.der");
    let revoked = include_bytes!("../data/token-signing-rsa-revoked.der");
    let ec = include_bytes!("../data/token-signing-ec.der");
    // The RSA key's state moves with the time offset: pending, active, verify-only, retired.
    let records = [
        record("ts-rsa", rsa, [Some(NOW - 30 * DAY), Some(NOW + 100 * DAY), Some(NOW + 200 * DAY), None]),
        record("ts-revoked", revoked, [Some(NOW - 400 * DAY), Some(NOW - 30 * DAY), None, Some(NOW - DAY)]),
        record("ts-ec", ec, [Some(NOW - 30 * DAY), None, None, None]),
    ];
    let ring = KeyRing::from_records(&records).expect("the fixture's certificates make a key ring");
    let decode = |s: &str| b64::decode(s).expect("the RFC 7515 key is base64url");
    let point = [&[4u8][..], &decode(EC_X), &decode(EC_Y)].concat();
    let rng = SystemRandom::new();
    let ec_key =
        EcdsaKeyPair::from_private_key_and_public_key(&ECDSA_P256_SHA256_FIXED_SIGNING, &decode(EC_D), &point, &rng)
            .expect("the RFC 7515 A.3 key is a P-256 key pair");
    Fixture {
        ring,
        hierarchy: Guid::parse(HIERARCHY).expect("the hierarchy is a GUID"),
        ec_key,
        ec_x5t: sitesign::pki::x5t(ec),
        rng,
    }
});

/// What a verification came to, comparable across two tokens.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Accepted(TokenKind),
    Refused(Reason),
    NoVerdict,
}

struct Case<'a> {
    policy: VerifyPolicy,
    purpose: Purpose,
    expect: Option<TokenKind>,
    thumbprint: Option<&'a str>,
    now: i64,
}

impl Case<'_> {
    /// Verifies `token` and checks what an accepted token must be.
    fn run(&self, token: &str) -> Outcome {
        let f = &*FIXTURE;
        let with = Verifier { policy: &self.policy, keys: &f.ring, registry: &Registry };
        let presented = Presented { token, thumbprint: self.thumbprint, expect: self.expect, purpose: self.purpose };
        match verify(with, presented, self.now) {
            Ok(v) => {
                self.check_accepted(token, &v);
                Outcome::Accepted(v.kind)
            }
            Err(VerifyError::Rejected(r)) => Outcome::Refused(r.reason),
            Err(VerifyError::Registry(_)) => Outcome::NoVerdict,
        }
    }

    fn check_accepted(&self, token: &str, v: &Verified) {
        assert!(token.len() <= MAX_TOKEN_BYTES, "accepted a token of {} bytes", token.len());
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "accepted a token of {} parts", parts.len());
        for part in parts {
            let bytes = b64::decode(part).expect("an accepted token's parts are base64url");
            assert_eq!(b64::encode(&bytes), part, "accepted a non-canonical part");
        }
        if let Some(expected) = self.expect {
            assert_eq!(v.kind, expected, "accepted a {:?} token where {expected:?} was expected", v.kind);
        }
        assert!(["ts-rsa", "ts-revoked", "ts-ec"].contains(&v.key_id.as_str()), "key {}", v.key_id);
        let usable = match self.purpose {
            Purpose::Use => matches!(v.key_status, KeyStatus::Active | KeyStatus::VerifyOnly),
            Purpose::Renewal => v.key_status != KeyStatus::Pending,
        };
        assert!(usable, "accepted a token of a {:?} key for {:?}", v.key_status, self.purpose);
        let (nbf, exp) = v.claims.window();
        assert!(nbf < exp && exp - nbf <= v.kind.max_lifetime(), "accepted lifetime nbf {nbf}, exp {exp}");
        let skew = self.policy.skew;
        assert!(self.now <= exp.saturating_add(skew), "accepted an expired token (exp {exp}, now {})", self.now);
        assert!(self.now.saturating_add(skew) >= nbf, "accepted a token not yet valid (nbf {nbf}, now {})", self.now);
        assert_eq!(v.claims.issuer(), issuer_for(self.policy.hierarchy));
        assert_eq!(v.claims.audience(), AUDIENCE);
        match v.kind {
            TokenKind::Bulk => {
                let guid = Guid::parse(v.claims.unique_id()).expect("an accepted bulk token's UniqueId is a GUID");
                assert_eq!(Registry.bulk_blocked(guid), Ok(Some(false)), "accepted an unregistered or blocked GUID");
            }
            TokenKind::Client | TokenKind::Access => {
                assert_eq!(self.thumbprint, v.claims.binding(), "accepted a device token without its certificate");
            }
        }
    }
}

/// `n − s` of a low-S signature `r‖s`: the other valid signature of the same message.
fn high_s_twin(low: &[u8]) -> Vec<u8> {
    let mut sig = low.to_vec();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(P256_N[i]) - i16::from(low[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        sig[32 + i] = d.rem_euclid(256) as u8;
    }
    sig
}

/// Whether a refusal was decided before the signature is checked (steps 1–4), where a token's
/// signature cannot change it. `malformed` and `duplicate_key` are either the header's (step 2)
/// or the claim set's (step 6, after the signature).
fn before_signature(reason: Reason, header: &[u8]) -> bool {
    use Reason::*;
    match reason {
        Malformed | DuplicateKey => sitesign::token::json::parse_object(header).is_err(),
        TooLarge | NonCanonicalEncoding | ForbiddenHeader | UnknownHeader | BadHeader | UnknownKey | KeyNotUsable
        | KeyRevoked | AlgorithmMismatch => true,
        _ => false,
    }
}

fn forged(case: &Case<'_>, body: &[u8]) {
    let f = &*FIXTURE;
    let Some(nul) = body.iter().position(|b| *b == 0) else { return };
    let (header, claims) = (&body[..nul], &body[nul + 1..]);
    let input = format!("{}.{}", b64::encode(header), b64::encode(claims));
    let Ok(sig) = f.ec_key.sign(&f.rng, input.as_bytes()) else { return };
    let mut low = sig.as_ref().to_vec();
    ecdsa_normalize_s(&mut low).expect("ring's P-256 signatures are 64 bytes with s < n");
    let high = high_s_twin(&low);
    let original = case.run(&format!("{input}.{}", b64::encode(&low)));
    let twin = case.run(&format!("{input}.{}", b64::encode(&high)));
    match original {
        Outcome::Refused(r) if before_signature(r, header) => {
            assert_eq!(twin, original, "a high-S twin judged differently")
        }
        Outcome::Refused(Reason::BadSignature) => {
            // Only possible if the header named another key than the one that signed.
            let named = serde_json::from_slice::<serde_json::Value>(header)
                .ok()
                .and_then(|h| h.get("x5t").and_then(|t| t.as_str()).map(str::to_owned));
            assert_ne!(named.as_deref(), Some(f.ec_x5t.as_str()), "a valid ES256 signature did not verify");
            assert_eq!(twin, original, "a high-S twin judged differently");
        }
        _ => {
            let canonical = Outcome::Refused(Reason::NonCanonicalSignature);
            if case.policy.high_s_before.is_none() {
                assert_eq!(twin, canonical, "a high-S twin was not refused (original: {original:?})");
            } else {
                assert!(twin == canonical || twin == original, "high-S twin {twin:?}, original {original:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, a, b, c, d], body)) = data.split_first_chunk::<5>() else { return };
    let now = NOW + i64::from(i32::from_le_bytes([a, b, c, d]));
    let case = Case {
        policy: VerifyPolicy {
            hierarchy: FIXTURE.hierarchy,
            skew: sitesign::token::DEFAULT_SKEW,
            high_s_before: (flags & 32 != 0).then_some(NOW),
        },
        purpose: if flags & 2 != 0 { Purpose::Renewal } else { Purpose::Use },
        expect: [None, Some(TokenKind::Bulk), Some(TokenKind::Client), Some(TokenKind::Access)]
            [usize::from(flags >> 2 & 3)],
        thumbprint: (flags & 16 != 0).then_some(CLIENT_CERT),
        now,
    };
    if flags & 1 != 0 {
        forged(&case, body);
    } else if let Ok(token) = std::str::from_utf8(body) {
        case.run(token);
    }
});
