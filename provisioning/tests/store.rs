//! The state store's contract, run against both engines — the embedded SQLite database and a
//! real PostgreSQL server (Debian's, started by the harness) — and what only a shared store
//! does: TLS to the server with its CA, the password from a file, change notifications, and
//! several nodes' audit chains in one database.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::time::Duration;

use device_tests::postgres::Postgres;
use sitesign::audit::{AuditEvent, AuditLog, AuditPlace, AuditStats};
use sitesign::config::PgConfig;
use sitesign::keys::{KeyRecord, KeyRole};
use sitesign::store::postgres::PgEngine;
use sitesign::store::{
    BulkRecord, CertRecord, ChangeSet, CrlRecord, KeySchedule, NodeRecord, Orphan, Revocation, Store, StoreError,
};

fn key(id: &str, role: KeyRole, created: i64) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        backend: "hsm".into(),
        uri: format!("pkcs11:object={id}"),
        algorithm: "rsa-2048".into(),
        role,
        created,
        activates: Some(created),
        deactivates: None,
        retires: None,
        revoked: None,
        revoke_reason: None,
        not_after: 10_000,
        certificates: Vec::new(),
    }
}

fn cert(serial: &str, profile: &str, subject_key: Option<&str>, issued: i64) -> CertRecord {
    CertRecord {
        serial: serial.into(),
        profile: profile.into(),
        subject: format!("CN={serial}"),
        issuer_key: "root".into(),
        subject_key: subject_key.map(Into::into),
        not_before: 0,
        not_after: 10_000,
        sha256: "00".into(),
        der: serial.as_bytes().to_vec(),
        issued,
        requested_by: "test".into(),
        revoked: None,
        revoke_reason: None,
        revoked_by: None,
    }
}

fn bulk(guid: &str, created: i64) -> BulkRecord {
    BulkRecord {
        guid: guid.into(),
        lifetime: 60,
        created,
        expires: created + 3600,
        creator: "test".into(),
        key_id: "ts".into(),
        blocked: false,
        changed: None,
        changed_by: None,
    }
}

const GUID_A: &str = "0d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e";
const GUID_B: &str = "1d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e";

/// Two connections to one fresh store of the engine under test.
type Open<'a> = dyn Fn() -> Store + 'a;

/// The contract every engine keeps.
fn contract(open: &Open<'_>) {
    let mut store = open();
    assert_eq!(store.schema_version().unwrap(), sitesign::store::migrations::MIGRATIONS.len() as i64);
    // Opening again migrates nothing and loses nothing.
    drop(open());
    let g0 = store.generation().unwrap();

    // A change set is all or nothing: the second key reuses the first one's URI.
    let mut dup = key("b", KeyRole::TokenSigning, 2);
    dup.uri = "pkcs11:object=root".into();
    let bad = ChangeSet {
        meta: vec![("hierarchy_id".into(), "x".into())],
        new_keys: vec![key("root", KeyRole::Issuing, 1), dup],
        ..ChangeSet::default()
    };
    assert!(store.apply(&bad).is_err());
    assert!(store.keys().unwrap().is_empty());
    assert_eq!(store.meta("hierarchy_id").unwrap(), None);
    assert_eq!(store.generation().unwrap(), g0, "nothing changed, the counter did not move");

    store
        .apply(&ChangeSet {
            meta: vec![("hierarchy_id".into(), "h".into())],
            new_keys: vec![key("root", KeyRole::Issuing, 1), key("ts", KeyRole::TokenSigning, 2)],
            certificates: vec![
                cert("01", "sms-issuing", Some("root"), 1),
                cert("03", "token-signing", Some("ts"), 2),
                cert("02", "token-signing", Some("ts"), 2),
                cert("dd", "mp-client", None, 3),
            ],
            ..ChangeSet::default()
        })
        .unwrap();
    let g1 = store.generation().unwrap();
    assert!(g1 > g0);
    let keys = store.keys().unwrap();
    assert_eq!(keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["root", "ts"], "oldest first");
    assert_eq!(keys[1].role, KeyRole::TokenSigning);
    assert_eq!(keys[1].certificates, [b"03".to_vec(), b"02".to_vec()], "in the order issued");
    assert_eq!(store.meta("hierarchy_id").unwrap().as_deref(), Some("h"));
    assert_eq!(store.certificates().unwrap().len(), 4);
    assert_eq!(store.certificate("dd").unwrap().unwrap().profile, "mp-client");
    assert!(store.certificate("ee").unwrap().is_none());
    assert!(store.meta("low_s_since").unwrap().is_some(), "set by the migrations");

    // Optimistic concurrency: a change prepared against an older generation is refused, on this
    // connection or another.
    let mut other = open();
    let stale = ChangeSet { expect_generation: Some(g0), meta: vec![("m".into(), "v".into())], ..Default::default() };
    assert!(matches!(other.apply(&stale), Err(StoreError::Conflict)));
    let fresh = ChangeSet { expect_generation: Some(g1), meta: vec![("m".into(), "v".into())], ..Default::default() };
    other.apply(&fresh).unwrap();
    assert!(matches!(store.apply(&fresh), Err(StoreError::Conflict)), "the second of two racing admins loses");
    // A schedule of a key that does not exist, a second revocation: conflicts, nothing changed.
    let g2 = store.generation().unwrap();
    let mut ghost = KeySchedule::from(&key("ghost", KeyRole::TokenSigning, 1));
    ghost.retires = Some(5);
    assert!(matches!(
        store.apply(&ChangeSet { schedules: vec![ghost], ..Default::default() }),
        Err(StoreError::Conflict)
    ));
    let revoke = Revocation { serial: "dd".into(), at: 4, reason: "keyCompromise".into(), by: "test".into() };
    store.apply(&ChangeSet { revocations: vec![revoke.clone()], ..Default::default() }).unwrap();
    assert!(matches!(
        store.apply(&ChangeSet { revocations: vec![revoke], ..Default::default() }),
        Err(StoreError::Conflict)
    ));
    let dd = store.certificate("dd").unwrap().unwrap();
    assert_eq!((dd.revoked, dd.revoke_reason.as_deref()), (Some(4), Some("keyCompromise")));
    assert!(store.generation().unwrap() > g2);

    // A schedule moves the counter; so does every bulk-token change.
    let mut ts = KeySchedule::from(&keys[1]);
    ts.deactivates = Some(9);
    ts.retires = Some(99);
    let g3 = store.generation().unwrap();
    store.apply(&ChangeSet { schedules: vec![ts], ..Default::default() }).unwrap();
    let g4 = store.generation().unwrap();
    assert!(g4 > g3);
    assert_eq!(store.keys().unwrap()[1].retires, Some(99));
    store.record_bulk(&bulk(GUID_A, 10)).unwrap();
    store.record_bulk(&bulk(GUID_B, 11)).unwrap();
    assert!(store.record_bulk(&bulk(GUID_A, 12)).is_err(), "a GUID is registered once");
    let g5 = store.generation().unwrap();
    assert!(g5 > g4);
    // A statement that changes nothing moves nothing (no reload of every node for it).
    assert!(!store.set_bulk_blocked("2d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e", true, "admin", 20).unwrap());
    assert_eq!(store.generation().unwrap(), g5);
    assert!(store.set_bulk_blocked(GUID_A, true, "admin", 20).unwrap());
    assert!(store.generation().unwrap() > g5);
    let a = other.bulk_token(GUID_A).unwrap().unwrap();
    assert!(a.blocked, "seen on the other connection");
    assert_eq!((a.changed, a.changed_by.as_deref()), (Some(20), Some("admin")));
    assert_eq!(
        store.bulk_tokens().unwrap().iter().map(|b| b.guid.as_str()).collect::<Vec<_>>(),
        [GUID_B, GUID_A],
        "newest first"
    );
    let mut upper = bulk(GUID_A, 13);
    upper.guid = GUID_A.to_uppercase().replace('0', "1");
    assert!(store.record_bulk(&upper).is_err(), "GUIDs are stored lower case");

    // CRLs share one increasing number.
    assert_eq!(store.last_crl_number().unwrap(), 0);
    for n in 1..=2 {
        let crl = CrlRecord {
            issuer_key: "root".into(),
            number: n,
            this_update: n,
            next_update: n + 100,
            der: vec![n as u8],
        };
        store.apply(&ChangeSet { crls: vec![crl], ..Default::default() }).unwrap();
    }
    assert_eq!(store.last_crl_number().unwrap(), 2);
    assert_eq!(store.latest_crl("root").unwrap().unwrap().der, [2]);
    assert!(store.latest_crl("ts").unwrap().is_none());

    // Orphans: recorded, listed, forgotten.
    let orphan = Orphan { uri: "pkcs11:object=lost".into(), backend: "hsm".into(), created: 5, cause: "x".into() };
    store.record_orphans(&[orphan.clone(), orphan.clone()]).unwrap();
    assert_eq!(store.orphans().unwrap(), std::slice::from_ref(&orphan));
    store.apply(&ChangeSet { forget_orphans: vec![orphan.uri], ..Default::default() }).unwrap();
    assert!(store.orphans().unwrap().is_empty());

    // The audit witness never goes back, unless replaced on purpose.
    let cp = |seq: i64| sitesign::audit::Checkpoint {
        seq,
        hash: format!("{seq:064}"),
        time: seq,
        key_id: "ts".into(),
        signature: "s".into(),
    };
    assert!(store.audit_witness().unwrap().is_none());
    assert!(store.witness_audit_head(&cp(5)).unwrap());
    assert!(!store.witness_audit_head(&cp(4)).unwrap());
    assert_eq!(store.audit_witness().unwrap().unwrap().seq, 5);
    store.replace_audit_witness(&cp(3)).unwrap();
    assert_eq!(other.audit_witness().unwrap().unwrap().seq, 3);

    // The node registry: reported, updated, listed; not a change the service follows.
    let g6 = store.generation().unwrap();
    let mut node = NodeRecord {
        id: "a".into(),
        address: "10.0.0.1:8443".into(),
        version: "0.1.0".into(),
        started: 1,
        last_seen: 1,
    };
    store.register_node(&node).unwrap();
    node.last_seen = 7;
    store.register_node(&node).unwrap();
    assert_eq!(other.nodes().unwrap(), [node]);
    assert_eq!(store.generation().unwrap(), g6);

    // A read transaction sees one state, whatever commits meanwhile.
    let before = store.generation().unwrap();
    store
        .read(|s| {
            let first = s.generation()?;
            other.set_bulk_blocked(GUID_B, true, "admin", 30).unwrap();
            assert_eq!(s.generation()?, first, "one snapshot inside a read");
            assert!(!s.bulk_token(GUID_B)?.unwrap().blocked);
            Ok(())
        })
        .unwrap();
    assert!(store.generation().unwrap() > before, "and the next read sees the change");
    assert!(store.bulk_token(GUID_B).unwrap().unwrap().blocked);
}

#[test]
fn the_sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    contract(&move || Store::open(&path).unwrap());
}

fn pg_config(url: &str, pg: &Postgres, ca: Option<std::path::PathBuf>) -> PgConfig {
    PgConfig {
        config: url.parse().unwrap(),
        password: Some(hsm_adapters::PinSource::File(pg.password_file())),
        ca_file: ca,
        describe: url.to_owned(),
    }
}

/// A fresh database on `pg`, owned by the `sitesign` role; its connection string.
fn fresh_database(pg: &Postgres, name: &str) -> String {
    pg.psql(&format!("CREATE DATABASE {name} OWNER sitesign"));
    pg.url().replace("dbname=sitesign", &format!("dbname={name}"))
}

#[test]
fn the_postgres_store_keeps_the_contract_and_what_only_a_shared_store_does() {
    let pg = Postgres::start();

    let url = fresh_database(&pg, "contract");
    let cfg = pg_config(&url, &pg, None);
    contract(&|| Store::from_engine(Box::new(PgEngine::open(cfg.clone(), "a").unwrap())));

    // Nodes starting together migrate once (an advisory lock), and all find the schema.
    let url = fresh_database(&pg, "together");
    let cfg = pg_config(&url, &pg, None);
    let opened: Vec<_> = (0..4)
        .map(|i| {
            let cfg = cfg.clone();
            std::thread::spawn(move || PgEngine::open(cfg, &format!("n{i}")).map(|_| ()))
        })
        .collect();
    for t in opened {
        t.join().unwrap().unwrap();
    }
    let store = Store::from_engine(Box::new(PgEngine::open(cfg.clone(), "n").unwrap()));
    assert_eq!(store.schema_version().unwrap(), sitesign::store::migrations::MIGRATIONS.len() as i64);
    assert_eq!(pg.psql_in("together", "SELECT count(*) FROM meta WHERE name = 'low_s_since'"), "1", "migrated once");
    drop(store);

    // The change counter's trigger announces each change at commit.
    let mut listener = sitesign::store::postgres::connect(&cfg).unwrap();
    listener.batch_execute("LISTEN sitesign_state").unwrap();
    let mut store = Store::from_engine(Box::new(PgEngine::open(cfg.clone(), "a").unwrap()));
    store.apply(&ChangeSet { new_keys: vec![key("ts", KeyRole::TokenSigning, 1)], ..Default::default() }).unwrap();
    store.record_bulk(&bulk(GUID_A, 1)).unwrap();
    let generation = store.generation().unwrap();
    use postgres::fallible_iterator::FallibleIterator as _;
    let mut seen = Vec::new();
    while let Some(n) = listener.notifications().timeout_iter(Duration::from_secs(5)).next().unwrap() {
        seen.push(n.payload().parse::<i64>().unwrap());
        if seen.last() == Some(&generation) {
            break;
        }
    }
    assert_eq!(seen.last(), Some(&generation), "notified at commit, the last notification with the counter's value");

    // A newer schema is refused, not overwritten.
    let url_new = fresh_database(&pg, "newer");
    let cfg_new = pg_config(&url_new, &pg, None);
    drop(PgEngine::open(cfg_new.clone(), "a").unwrap());
    pg.psql_in("newer", "UPDATE schema_version SET version = 99");
    assert!(matches!(PgEngine::open(cfg_new, "a"), Err(StoreError::TooNew { found: 99, .. })));
}

#[test]
fn a_network_database_is_reached_over_tls_checked_against_its_ca_and_a_wrong_password_is_a_clear_error() {
    let pg = Postgres::start();
    // TLS, the server's certificate chained to the configured CA and named localhost.
    let cfg = pg_config(&pg.tcp_url(), &pg, Some(pg.ca_file()));
    let store = Store::from_engine(Box::new(PgEngine::open(cfg, "a").unwrap()));
    assert!(store.generation().unwrap() > 0);
    let ssl = pg.psql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.usename = 'sitesign'",
    );
    assert_eq!(ssl, "1", "the connection is encrypted");
    drop(store);
    // Another CA: refused before a password is sent.
    let wrong_ca = pg_config(&pg.tcp_url(), &pg, Some(pg.other_ca_file()));
    let e = PgEngine::open(wrong_ca, "a").unwrap_err().to_string();
    assert!(e.contains("certificate") || e.contains("Certificate"), "{e}");
    // The address instead of the name the certificate carries: refused too.
    let by_ip = pg_config(&pg.tcp_url().replace("host=localhost", "host=127.0.0.1"), &pg, Some(pg.ca_file()));
    let e = PgEngine::open(by_ip, "a").unwrap_err().to_string();
    assert!(e.contains("not valid for name"), "{e}");
    // A wrong password: the server's reason, never the password.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("pw");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&wrong).unwrap();
        f.write_all(b"not-the-password-4711").unwrap();
    }
    let mut cfg = pg_config(&pg.url(), &pg, None);
    cfg.password = Some(hsm_adapters::PinSource::File(wrong));
    let e = PgEngine::open(cfg, "a").unwrap_err().to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("not-the-password-4711"), "{e}");
    let real = std::fs::read_to_string(pg.password_file()).unwrap();
    assert!(!e.contains(real.trim()), "{e}");
}

#[test]
fn several_nodes_write_their_own_audit_chains_into_one_database() {
    let pg = Postgres::start();
    let cfg = pg_config(&pg.url(), &pg, None);
    drop(PgEngine::open(cfg.clone(), "a").unwrap());
    let place = |node: &str| AuditPlace::Shared { db: Box::new(cfg.clone()), node: node.into() };
    let event = |i: i64| AuditEvent {
        time: 1_795_600_000 + i,
        caller: "CN=mp01".into(),
        kind: "client-token".into(),
        subject: format!("GUID:{i}"),
        key_id: "ts".into(),
        sha256: format!("{i:064x}"),
        detail: (i % 2 == 0).then(|| "internal".to_owned()),
    };
    // Node a's service and its CLI append to a's chain at once; node b to its own.
    let logs = [
        AuditLog::open_place(&place("a"), AuditStats::default()).unwrap(),
        AuditLog::open_place(&place("a"), AuditStats::default()).unwrap(),
        AuditLog::open_place(&place("b"), AuditStats::default()).unwrap(),
    ];
    let writers: Vec<_> = logs
        .iter()
        .enumerate()
        .flat_map(|(l, log)| {
            (0..3).map(move |t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        log.append(vec![event((l * 1000 + t * 100 + i) as i64)]).unwrap();
                    }
                })
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let chains = place("a").chains().unwrap();
    assert_eq!(chains.iter().map(|c| c.node().unwrap().to_owned()).collect::<Vec<_>>(), ["a", "b"]);
    let a = sitesign::audit::read_all(&place("a")).unwrap();
    let b = sitesign::audit::read_all(&place("b")).unwrap();
    assert_eq!(sitesign::audit::verify(&a), Ok(120), "two writers of one node: one intact chain");
    assert_eq!(sitesign::audit::verify(&b), Ok(60));
    // An edit in one node's chain is found there, and only there.
    pg.query("UPDATE audit SET subject = 'GUID:forged' WHERE node_id = 'b' AND seq = 7");
    assert_eq!(sitesign::audit::verify(&sitesign::audit::read_all(&place("b")).unwrap()).unwrap_err().seq, 7);
    assert_eq!(sitesign::audit::verify(&sitesign::audit::read_all(&place("a")).unwrap()), Ok(120));
    // A token another node issued is this site's.
    use sitesign::policy::IssuedTokens as _;
    let lookup = sitesign::audit::Lookup::new(&place("a"));
    assert!(lookup.issued(&format!("{:064x}", 2005)).unwrap(), "issued by b");
    assert!(!lookup.issued(&format!("{:064x}", 999_999)).unwrap());
}
