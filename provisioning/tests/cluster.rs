//! Several appliances, one site (SPEC §10): two `sitesignd` nodes sharing a real PostgreSQL
//! store and one SoftHSM token directory (each its own process and sessions) — a block, a
//! rotation, a revocation made through one node honoured by the other within a second; a batch
//! split across both; each node's audit chain; and the database lost in the middle of a batch.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::appliance::{
    Appliance, Service, claims_of, header_of, internal_batch_file, register, sha256_hex, unlimited,
};
use device_tests::postgres::Postgres;
use serde_json::{Value, json};

/// Node a, made by quickstart on the shared store, and node b: a's configuration in a folder of
/// its own (its own state folder, admin socket, ports and node id; the same token directory,
/// PIN file and database).
fn two_nodes(pg: &Postgres) -> (Appliance, Appliance) {
    let pw = pg.password_file();
    let a = Appliance::with(&[
        "--store-url",
        &pg.url(),
        "--store-password-file",
        pw.to_str().unwrap(),
        "--node-id",
        "node-a",
    ]);
    a.edit_service(unlimited);
    let b_dir = a.dir.with_file_name("appliance-b");
    std::fs::create_dir_all(b_dir.join("mp")).unwrap();
    for f in ["sitesign.toml", "ca.pem", "mp/mp.crt", "mp/mp.key"] {
        std::fs::copy(a.dir.join(f), b_dir.join(f)).unwrap();
    }
    let b = Appliance::at(b_dir);
    b.edit(|f| f.node = Some(sitesign::config::NodeConfigFile { id: Some("node-b".into()), address: None }));
    (a, b)
}

fn bulk_registration(s: &Service, n: u32, token: &Value) -> (u16, Value) {
    register(s, n, json!({"kind": "bulk", "token": token}))
}

/// Whether a request with the MP certificate `crt` gets through `s` (and curl's error if not).
fn admitted(s: &Service, crt: &Path, key: &Path) -> (bool, String) {
    let out = s
        .mtls_as(crt, key)
        .args(["-w", "%{http_code}", "-o", "/dev/null"])
        .arg(s.url("/v1/certificates"))
        .output()
        .unwrap();
    (String::from_utf8_lossy(&out.stdout) == "200", String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Polls `check` until it holds; how long after `since` the first attempt that held started.
fn first_success_after(since: Instant, within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    while since.elapsed() < within {
        let started = since.elapsed();
        if check() {
            return Some(started);
        }
    }
    None
}

fn tokens_of(lines: &[Value]) -> Vec<String> {
    lines.iter().filter_map(|l| l["token"].as_str().map(str::to_owned)).collect()
}

#[test]
fn two_nodes_on_one_database_share_blocks_rotations_revocations_a_batch_and_keep_their_own_audit_chains() {
    let pg = Postgres::start();
    let (a, b) = two_nodes(&pg);
    let (sa, sb) = (a.start(), b.start());

    // The node registry knows both.
    let status = a.ok(&["status"]);
    let nodes: Vec<&str> = status["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["node-a", "node-b"], "{status}");

    // A bulk token made through node a registers a device on node b; blocked through a, it is
    // refused by b at the next request.
    let made = a.ok(&["bulk-token", "new"]);
    let (code, ok) = bulk_registration(&sb, 1, &made["token"]);
    assert_eq!(code, 200, "{ok}");
    a.ok(&["bulk-token", "block", made["guid"].as_str().unwrap()]);
    let (code, e) = bulk_registration(&sb, 2, &made["token"]);
    assert_eq!((code, e["error"]["code"].as_str()), (403, Some("proof_rejected")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().starts_with("blocked"), "{e}");
    let (code, _) = bulk_registration(&sa, 3, &made["token"]);
    assert_eq!(code, 403);
    // And unblocked through b, it works on a again.
    b.ok(&["bulk-token", "unblock", made["guid"].as_str().unwrap()]);
    assert_eq!(bulk_registration(&sa, 4, &made["token"]).0, 200);
    // A change made by the CLI straight against the database — an administrator's host with the
    // configuration and no service of its own — is honoured by both nodes too.
    let admin_dir = a.dir.with_file_name("admin-host");
    std::fs::create_dir_all(&admin_dir).unwrap();
    std::fs::copy(a.config_path(), admin_dir.join("sitesign.toml")).unwrap();
    let admin = Appliance::at(admin_dir);
    admin.edit(|f| f.node = Some(sitesign::config::NodeConfigFile { id: Some("admin-host".into()), address: None }));
    admin.ok(&["bulk-token", "block", made["guid"].as_str().unwrap()]);
    for s in [&sa, &sb] {
        assert_eq!(bulk_registration(s, 5, &made["token"]).0, 403);
    }
    admin.ok(&["bulk-token", "unblock", made["guid"].as_str().unwrap()]);
    assert_eq!(bulk_registration(&sb, 6, &made["token"]).0, 200);

    // A token-signing rotation activated through node a is used by node b within a second: the
    // new key is found by its URI in b's own sessions of the same token.
    let before = register(&sb, 10, json!({"kind": "internal"})).1["token"].as_str().unwrap().to_owned();
    let rotated = a.ok(&["rotate", "token-signing", "--activate-at", "now", "--yes"]);
    let returned = Instant::now();
    assert_eq!(rotated["done"], true, "{rotated}");
    let new_x5t = a.ok(&["keys", "list"])["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "token-signing" && k["status"] == "active")
        .unwrap()["x5t"]
        .clone();
    assert_ne!(header_of(&before)["x5t"], new_x5t);
    let mut n = 100;
    let took = first_success_after(returned, Duration::from_secs(20), || {
        n += 1;
        let (_, t) = register(&sb, n, json!({"kind": "internal"}));
        t["token"].as_str().is_some_and(|t| header_of(t)["x5t"] == new_x5t)
    })
    .expect("node b never signed with the new key");
    eprintln!("node b signed with the key rotated through node a {} ms after the command returned", took.as_millis());
    assert!(took < Duration::from_secs(1), "node b took {took:?} to take up the rotation");
    // The old key's token still verifies on both nodes, and renews on b with the new key.
    for s in [&sa, &sb] {
        let (_, v) = s.call(
            "/v1/tokens:verify",
            Some(&json!({"token": before, "client_cert_thumbprint": common::appliance::thumbprint(10)}).to_string()),
        );
        assert_eq!(v["valid"], true, "{v}");
    }

    // An MP certificate issued through a works on both; revoked through a, both refuse it within
    // a second.
    let (mp_crt, mp_key, serial) = a.enrol_mp("mp07");
    for s in [&sa, &sb] {
        assert!(
            first_success_after(Instant::now(), Duration::from_secs(10), || admitted(s, &mp_crt, &mp_key).0).is_some()
        );
    }
    a.ok(&["cert", "revoke", &serial, "--reason", "key-compromise", "--yes"]);
    let revoked = Instant::now();
    for (name, s) in [("a", &sa), ("b", &sb)] {
        let took = first_success_after(revoked, Duration::from_secs(20), || !admitted(s, &mp_crt, &mp_key).0)
            .unwrap_or_else(|| panic!("node {name} still admits the revoked certificate"));
        assert!(took < Duration::from_secs(1), "node {name} took {took:?}");
        let (ok, err) = admitted(s, &mp_crt, &mp_key);
        assert!(!ok && err.contains("certificate revoked"), "node {name}: {err}");
    }

    // A batch split across both nodes: every line renewed, each token's record in the chain of
    // the node that signed it.
    let (fa, fb) = (internal_batch_file(&a.dir, "half-a", 1000, 400), internal_batch_file(&b.dir, "half-b", 1400, 400));
    let batch_started = Instant::now();
    let (ta, tb) = std::thread::scope(|scope| {
        let ha = scope.spawn(|| sa.batch_file(&fa));
        let hb = scope.spawn(|| sb.batch_file(&fb));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    eprintln!("800 lines split across both nodes (debug build, 2 cores): {} ms", batch_started.elapsed().as_millis());
    let (ta, tb) = (tokens_of(&ta), tokens_of(&tb));
    assert_eq!((ta.len(), tb.len()), (400, 400), "every line of both halves signed");
    let devices: std::collections::HashSet<String> =
        ta.iter().chain(&tb).map(|t| claims_of(t)["DeviceId"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(devices.len(), 800, "800 different devices");
    let records = a.audit_records();
    let by_node = |node: &str| -> std::collections::HashSet<String> {
        records.iter().filter(|r| r["node"] == node).map(|r| r["sha256"].as_str().unwrap().to_owned()).collect()
    };
    let (ra, rb) = (by_node("node-a"), by_node("node-b"));
    assert!(ta.iter().all(|t| ra.contains(&sha256_hex(t.as_bytes()))), "a's tokens in a's chain");
    assert!(tb.iter().all(|t| rb.contains(&sha256_hex(t.as_bytes()))), "b's tokens in b's chain");

    // Both chains verify, each named; checkpoints are signed and witnessed per node.
    let verified = b.ok(&["audit", "verify"]);
    assert_eq!(verified["intact"], true, "{verified}");
    let chains = verified["chains"].as_array().unwrap();
    assert_eq!(
        chains.iter().map(|c| c["node"].as_str().unwrap()).collect::<Vec<_>>(),
        ["admin-host", "node-a", "node-b"],
        "the administrator's host records its changes in a chain of its own"
    );
    assert!(chains.iter().all(|c| c["intact"] == true), "{verified}");
    assert!(chains[1..].iter().all(|c| c["records"].as_u64().unwrap() > 400), "{verified}");
    // An edit in b's chain is reported in b's, not a's.
    pg.query("UPDATE audit SET subject = 'GUID:forged' WHERE node_id = 'node-b' AND seq = 3");
    let broken = b.cli(&["audit", "verify"]);
    assert!(!broken.status.success());
    let broken: Value = serde_json::from_slice(&broken.stdout).unwrap();
    let chains = broken["chains"].as_array().unwrap();
    assert_eq!((chains[1]["node"].as_str(), chains[1]["intact"].as_bool()), (Some("node-a"), Some(true)));
    assert_eq!((chains[2]["node"].as_str(), chains[2]["intact"].as_bool()), (Some("node-b"), Some(false)));
    assert_eq!(chains[2]["break"]["seq"], 3, "{broken}");
}

fn ready(s: &Service) -> bool {
    s.ops("/readyz").0 == 200
}

#[test]
fn the_database_lost_mid_batch_releases_no_token_without_its_record_and_both_nodes_recover() {
    let pg = Postgres::start();
    let (a, b) = two_nodes(&pg);
    let (sa, sb) = (a.start(), b.start());
    let made = a.ok(&["bulk-token", "new"]);
    let guid = made["guid"].as_str().unwrap().to_owned();

    // First a database that answers but cannot confirm the state (the change counter locked, as
    // a hung connection would leave it) while the audit chain can still be written: both nodes
    // stop deciding within the staleness bound, not at the next TCP timeout.
    let lock = pg.session("BEGIN; LOCK TABLE generation IN ACCESS EXCLUSIVE MODE;");
    assert!(Postgres::eventually(Duration::from_secs(10), || {
        pg
        .query("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'generation' AND l.mode = 'AccessExclusiveLock' AND l.granted")
        == "1"
    }));
    let locked = Instant::now();
    for (name, s) in [("a", &sa), ("b", &sb)] {
        assert!(Postgres::eventually(Duration::from_secs(10), || !ready(s)), "node {name} stays ready");
        // The staleness bound (1 s), not the statement or TCP timeouts (10 s), ends its decisions.
        assert!(locked.elapsed() < Duration::from_secs(3), "node {name} took {:?}", locked.elapsed());
        let (code, e) = register(s, 99_990, json!({"kind": "internal"}));
        assert_eq!((code, e["error"]["code"].as_str()), (503, Some("unavailable")), "node {name}: {e}");
        assert_eq!(bulk_registration(s, 99_991, &made["token"]).0, 503, "node {name}");
    }
    eprintln!("both nodes refusing {} ms after the state could no longer be confirmed", locked.elapsed().as_millis());
    drop(lock);
    for (name, s) in [("a", &sa), ("b", &sb)] {
        assert!(Postgres::eventually(Duration::from_secs(30), || ready(s)), "node {name} did not recover");
    }

    let (fa, fb) = (internal_batch_file(&a.dir, "big-a", 0, 6000), internal_batch_file(&b.dir, "big-b", 6000, 6000));
    let (mut ca, mut cb) = (sa.batch_command(&fa).spawn().unwrap(), sb.batch_command(&fb).spawn().unwrap());
    // Stopped (as by a crash) once both nodes have signed some of their halves.
    let signed = |node: &str| -> u64 {
        pg.query(&format!("SELECT count(*) FROM audit WHERE node_id = '{node}' AND kind = 'client-token'"))
            .parse()
            .unwrap_or(0)
    };
    assert!(
        Postgres::eventually(Duration::from_secs(120), || signed("node-a") > 200 && signed("node-b") > 200),
        "the batches did not start"
    );
    pg.stop();
    let stopped = Instant::now();
    // Both nodes turn not-ready and refuse to sign.
    for (name, s) in [("a", &sa), ("b", &sb)] {
        assert!(
            Postgres::eventually(Duration::from_secs(10), || !ready(s)),
            "node {name} stays ready without its database"
        );
        eprintln!("node {name} not ready {} ms after the database stopped", stopped.elapsed().as_millis());
        let (code, e) = register(s, 99_999, json!({"kind": "internal"}));
        assert_eq!(code, 503, "node {name}: {e}");
        assert_eq!(e["error"]["code"], "unavailable", "node {name}: {e}");
        // What needs no fresh state still works: the process answers, and the published keys,
        // certificates and CRL are served from the last state taken up.
        assert_eq!(s.ops("/healthz").0, 200);
        assert_eq!(s.call("/.well-known/jwks.json", None).0, 200, "node {name}");
        assert_eq!(s.call("/v1/certificates", None).0, 200, "node {name}");
    }
    eprintln!("both nodes not ready {} ms after the database stopped", stopped.elapsed().as_millis());
    // An administrator's change during the outage is refused, and leaves the node able to
    // recover (it holds signing until it can follow the store again).
    let refused = a.cli(&["bulk-token", "block", &guid]);
    assert!(!refused.status.success(), "{}", String::from_utf8_lossy(&refused.stdout));
    let (oa, ob) = (ca.wait().unwrap(), cb.wait().unwrap());
    eprintln!("batch clients ended: {oa} {ob}");
    // The database comes back: both nodes recover by themselves.
    pg.start_again();
    let back = Instant::now();
    for (name, s) in [("a", &sa), ("b", &sb)] {
        assert!(Postgres::eventually(Duration::from_secs(30), || ready(s)), "node {name} did not recover");
        assert_eq!(register(s, 99_998, json!({"kind": "internal"})).0, 200, "node {name} signs again");
    }
    eprintln!("both nodes ready {} ms after the database came back", back.elapsed().as_millis());
    // The change can be made now, and is honoured by the other node at once.
    assert_eq!(bulk_registration(&sb, 99_997, &made["token"]).0, 200);
    a.ok(&["bulk-token", "block", &guid]);
    assert_eq!(bulk_registration(&sb, 99_996, &made["token"]).0, 403);
    // Every token released — in whatever either client got — has its audit record.
    let recorded: std::collections::HashSet<String> =
        pg.query("SELECT sha256 FROM audit").lines().map(str::to_owned).collect();
    let mut released = 0;
    let mut refused = 0;
    for file in [&fa, &fb] {
        let text = std::fs::read_to_string(file.with_extension("out")).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
            match v["token"].as_str() {
                Some(t) => {
                    released += 1;
                    assert!(recorded.contains(&sha256_hex(t.as_bytes())), "a token without its audit record: {line}");
                }
                None => refused += 1,
            }
        }
    }
    eprintln!("released {released} tokens (each with its record), {refused} lines refused");
    assert!(released >= 400, "{released}");
    assert!(released < 12_000, "the database was stopped before the batches ended");
    assert!(a.audit_intact(), "both chains intact after the outage");
}

#[test]
fn two_appliances_initialising_one_store_at_once_make_one_hierarchy() {
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let pw = pg.password_file();
    let quickstarts: Vec<_> = ["one", "two"]
        .iter()
        .map(|name| {
            let mut cmd = common::sitesign();
            cmd.args(["quickstart", "--json", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--dir"])
                .arg(tmp.path().join(name))
                .args(["--store-url", &pg.url(), "--store-password-file", pw.to_str().unwrap(), "--node-id", name]);
            cmd.spawn().unwrap()
        })
        .collect();
    let outcomes: Vec<_> = quickstarts.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let succeeded = outcomes.iter().filter(|o| o.status.success()).count();
    for o in &outcomes {
        eprintln!("quickstart: {} {}", o.status, String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default());
    }
    assert_eq!(succeeded, 1, "exactly one initialised the shared store");
    assert_eq!(pg.query("SELECT count(*) FROM keys WHERE role = 'issuing'"), "1", "one SMS Issuing root");
    assert_eq!(pg.query("SELECT count(*) FROM keys WHERE role = 'token-signing'"), "1");
}
