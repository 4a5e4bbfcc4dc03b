//! criterion micro-benchmarks of the host-side work around each signature: token encoding (claims
//! and signing input, no device), strict verification of an RS256 client token, and an audit
//! append (one record per fsync, and a group of 64). The token-signing key is generated in a
//! private SoftHSM token (the bench re-runs itself with its SOFTHSM2_CONF); only its public key
//! is used by the verification bench.
//!
//! `cargo bench -p sitesign-benches --bench micro`

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark: a panic is a failure")]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use hsm_adapters::pkcs11::Pkcs11Backend;
use hsm_adapters::pkcs11::softhsm::SoftHsmDir;
use hsm_adapters::pkcs11::token::initialize_token;
use hsm_adapters::{KeyAlgorithm, KeyBackend, PinSource, Pkcs11Config, TokenSelector};
use secrecy::SecretString;
use sitesign::audit::{AuditEvent, AuditLog};
use sitesign::keys::{KeyRecord, KeyRole};
use sitesign::pki::{self, DAY, Issuer, ProfileKind, Request};
use sitesign::token::verify::{BulkRegistry, verify};
use sitesign::token::{Guid, KeyRing, Presented, Purpose, TokenKind, TokenSigner, Verifier, VerifyPolicy};

struct NoBulk;

impl BulkRegistry for NoBulk {
    fn bulk_blocked(&self, _guid: Guid) -> Result<Option<bool>, String> {
        Ok(None)
    }
}

const THUMBPRINT: &str = "q1MKE5hX1uWoOlxMqk1B7v4HnpnZz3jOhP1ZbpQ6sGA";
const DEVICE: &str = "GUID:8D2B7C6E-1F3A-4B5C-9D8E-7F6A5B4C3D2E";

fn main() {
    let dir = tempfile::Builder::new().prefix("sitesign-micro-").tempdir().unwrap();
    let root = std::env::var_os("SITESIGN_MICRO_DIR").map_or_else(|| dir.path().to_owned(), Into::into);
    let softhsm = SoftHsmDir::create(&root).unwrap();
    let wanted = [(hsm_adapters::pkcs11::softhsm::CONF_ENV.to_owned(), softhsm.conf_path().display().to_string())];
    if !sitesign::environment::missing(&wanted).is_empty() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env("SITESIGN_MICRO_DIR", softhsm.root())
            .env(hsm_adapters::pkcs11::softhsm::CONF_ENV, softhsm.conf_path())
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    let module = std::path::PathBuf::from(hsm_adapters::config::DEFAULT_PKCS11_MODULE);
    initialize_token(&module, "micro", &SecretString::from("so-0123456789"), &SecretString::from("user-0123456789"))
        .unwrap();
    let pin = root.join("user.pin");
    std::fs::write(&pin, "user-0123456789").unwrap();
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let backend = Pkcs11Backend::open(Pkcs11Config {
        module,
        token: TokenSelector::Label("micro".into()),
        pin: PinSource::File(pin),
        sessions: std::num::NonZeroUsize::new(1).unwrap(),
        environment: Vec::new(),
    })
    .unwrap();
    let key: Arc<dyn hsm_adapters::SigningKey> = backend.generate_key("ts", KeyAlgorithm::Rsa2048).unwrap();
    let request = Request {
        profile: ProfileKind::TokenSigning,
        subject: "CN=SMS Token Signing".parse().unwrap(),
        public_key: der::Decode::from_der(key.public_key().spki_der()).unwrap(),
        alt_names: Vec::new(),
        validity: DAY * 30,
    };
    let cert = pki::issue(&request, &Issuer { key: Arc::clone(&key), certificate: None }).unwrap().der;
    let hierarchy = Guid::random().unwrap();
    let signer = TokenSigner::new(Arc::clone(&key), "ts", &cert, i64::MAX, hierarchy).unwrap();
    let now = sitesign::time::now_unix();
    let token = signer.client(DEVICE, THUMBPRINT, now).unwrap().token;
    let record = KeyRecord {
        id: "ts".into(),
        backend: "micro".into(),
        uri: key.uri().to_string(),
        algorithm: "rsa-2048".into(),
        role: KeyRole::TokenSigning,
        created: now,
        activates: Some(now),
        deactivates: None,
        retires: None,
        revoked: None,
        revoke_reason: None,
        not_after: i64::MAX,
        certificates: vec![cert],
    };
    let ring = KeyRing::from_records(&[record]).unwrap();
    let policy = VerifyPolicy { hierarchy, skew: 300, high_s_before: None };
    let audit = AuditLog::open(&root.join("audit"), None).unwrap();
    let event = AuditEvent {
        time: now,
        caller: "CN=demo-mp.sitesign.local,O=sitesign quickstart".into(),
        kind: "client-token".into(),
        subject: DEVICE.into(),
        key_id: "ts".into(),
        sha256: "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8".into(),
        detail: Some("internal".into()),
    };

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("prepare_client (claims + signing input, no device)", |b| {
        b.iter(|| black_box(signer.prepare_client(black_box(DEVICE), THUMBPRINT, now).unwrap()))
    });
    g.bench_function("verify_client_rs256 (strict, full)", |b| {
        b.iter(|| {
            black_box(
                verify(
                    Verifier { policy: &policy, keys: &ring, registry: &NoBulk },
                    Presented {
                        token: black_box(&token),
                        thumbprint: Some(THUMBPRINT),
                        expect: Some(TokenKind::Client),
                        purpose: Purpose::Use,
                    },
                    now,
                )
                .unwrap(),
            )
        })
    });
    g.finish();
    let mut g = c.benchmark_group("audit");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1));
    g.bench_function("append_1 (one commit, fsync)", |b| b.iter(|| audit.append(vec![event.clone()]).unwrap()));
    g.throughput(Throughput::Elements(64));
    g.bench_function("append_64 (one group commit)", |b| b.iter(|| audit.append(vec![event.clone(); 64]).unwrap()));
    g.finish();
    c.final_summary();
}
