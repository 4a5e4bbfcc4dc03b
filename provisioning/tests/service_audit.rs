//! The audit log of a running service: edits, deletions, reordering and forged checkpoints made
//! with an SQLite editor outside sitesign are detected; a log that cannot be written stops
//! signing and readiness, with every released token recorded.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use serde_json::{Value, json};

mod common;
use common::appliance::{Appliance, python_tool, register, thumbprint};
use common::json as parse;

#[test]
fn audit_tampering_is_detected() {
    let a = Appliance::new();
    let mut s = a.start();
    for n in 1..=4 {
        assert_eq!(register(&s, n, json!({"kind": "internal"})).0, 200);
    }
    assert_eq!(s.stop().code(), Some(0), "graceful exit on SIGTERM");
    assert!(!a.dir.join("admin.sock").exists(), "the admin socket is removed on exit");
    let db = a.dir.join("state/audit.db");
    let sqlite = |sql: &str| {
        let out = python_tool("sqlite_exec.py", &[db.to_str().unwrap(), sql]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // Fold the write-ahead log into the database file, so one file holds every record.
    sqlite("PRAGMA wal_checkpoint(TRUNCATE);");
    let verify = || {
        let out = a.cli(&["audit", "verify"]);
        (out.status.success(), parse(&out))
    };
    let (intact, v) = verify();
    assert!(intact, "{v}");
    // On SIGTERM the service signed a checkpoint of the head with the token-signing key.
    assert_eq!(v["last_checkpoint"], v["records"], "{v}");
    let total: Value = v["records"].clone();
    let last = total.as_i64().unwrap();
    assert!(last >= 5, "four tokens and the start-up CRL: {v}");
    let backup = std::fs::read(&db).unwrap();
    for (what, sql) in [
        ("edit", "UPDATE audit SET subject = 'GUID:FORGED' WHERE seq = 3".to_owned()),
        ("deletion", "DELETE FROM audit WHERE seq = 2".to_owned()),
        (
            "reordering",
            "UPDATE audit SET seq = seq + 100 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 102".to_owned(),
        ),
        ("truncated hash", "UPDATE audit SET hash = substr(hash, 1, 10) WHERE seq = 4".to_owned()),
        // The last records deleted: the chain alone is intact, the signed checkpoint is not.
        ("deletion at the end", format!("DELETE FROM audit WHERE seq >= {}", last - 1)),
        ("forged checkpoint", "UPDATE checkpoints SET signature = 'AAAA' || substr(signature, 5)".to_owned()),
    ] {
        std::fs::write(&db, &backup).unwrap();
        let _ = std::fs::remove_file(a.dir.join("state/audit.db-wal"));
        assert_eq!(verify().1["records"], total, "restored");
        sqlite(&sql);
        let (intact, v) = verify();
        assert!(!intact, "{what} not detected: {v}");
        assert_eq!(v["intact"], false);
    }
}

#[test]
fn an_audit_log_that_cannot_be_written_stops_signing_and_readiness() {
    // A 64 KiB cap on the audit database: it fills as a full disk would.
    let a = Appliance::new();
    a.edit(|f| f.audit = Some(sitesign::config::AuditConfigFile { max_size_mb: Some(0.0625), ..Default::default() }));
    let s = a.start();
    let mut released = 0;
    let mut refused = None;
    for n in 0..2000u32 {
        let body = json!({"device_id": format!("GUID:{n:08X}-1F3A-4B5C-9D8E-7F6A5B4C3D2E"), "client_cert_thumbprint": thumbprint(n as u8), "proof": {"kind": "internal"}});
        let (status, v) = s.call("/v1/client-tokens", Some(&body.to_string()));
        if status == 200 {
            released += 1;
            continue;
        }
        refused = Some((status, v));
        break;
    }
    let (status, v) = refused.expect("the capped audit log fills up");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "audit_unavailable");
    assert!(v.get("token").is_none());
    let (ready, body) = s.ops("/readyz");
    assert_eq!(ready, 503, "{body}");
    assert!(body.contains("\"audit_writable\":false"), "{body}");
    // Every token released before has its record, and the chain is intact.
    assert!(a.audit_intact());
    let client_records = a.audit_records().iter().filter(|r| r["kind"] == "client-token").count();
    assert_eq!(client_records, released);
}

#[test]
fn a_log_cut_short_emptied_or_deleted_is_refused_never_silently_restarted() {
    let a = Appliance::new();
    let anchor_dir = tempfile::tempdir().unwrap();
    let anchor = anchor_dir.path().join("audit.anchor");
    a.edit(|f| f.audit.get_or_insert_with(Default::default).anchor_file = Some(anchor.clone()));
    let mut s = a.start();
    for n in 1..=4 {
        assert_eq!(register(&s, n, json!({"kind": "internal"})).0, 200);
    }
    // An admin change witnesses the head at once (and the service does every 10 s, and on exit).
    a.ok(&["bulk-token", "new"]);
    assert_eq!(s.stop().code(), Some(0));
    let state = a.dir.join("state");
    let db = state.join("audit.db");
    let sqlite = |db: &std::path::Path, sql: &str| {
        let out = python_tool("sqlite_exec.py", &[db.to_str().unwrap(), sql]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    sqlite(&db, "PRAGMA wal_checkpoint(TRUNCATE);");
    let verify = |extra: &[&str]| {
        let out = a.cli(&[&["audit", "verify"], extra].concat());
        (out.status.success(), parse(&out))
    };
    let (intact, v) = verify(&[]);
    assert!(intact, "{v}");
    let records = v["records"].as_i64().unwrap();
    assert_eq!(v["witnessed_seq"], records, "the head is witnessed in the state store: {v}");
    assert!(v["anchored"].as_u64().unwrap() >= 1, "and in the anchor file: {v}");
    let backup = std::fs::read(&db).unwrap();
    let restore = || {
        std::fs::write(&db, &backup).unwrap();
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(state.join(format!("audit.db{ext}")));
        }
    };
    let refused_start = |why: &str| {
        let (svc, ready) = a.spawn(&[], true);
        assert!(ready.is_err(), "sitesignd started on a log {why}");
        let log = svc.log_text();
        assert!(log.contains("audit_truncated") || log.contains("does not reach its witnessed head"), "{why}: {log}");
    };
    // 1. The end of the log cut, its checkpoints with it: the chain alone is intact.
    sqlite(&db, &format!("DELETE FROM checkpoints; DELETE FROM audit WHERE seq > {};", records - 3));
    let (intact, v) = verify(&[]);
    assert!(!intact, "{v}");
    assert!(v["break"]["problem"].as_str().unwrap().contains("witnesses"), "{v}");
    refused_start("cut short");
    assert!(!a.cli(&["bulk-token", "new"]).status.success(), "nothing is appended to a log cut short");
    // 1b. A record from the middle deleted, the witnessed one kept: the start-up check sees the
    // gap (the whole chain is `audit verify`'s job).
    restore();
    sqlite(&db, "DELETE FROM audit WHERE seq = 2;");
    refused_start("with a record deleted from its middle");
    // 2. The log deleted.
    restore();
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(state.join(format!("audit.db{ext}")));
    }
    let (intact, v) = verify(&[]);
    assert!(!intact, "an absent log is not intact: {v}");
    refused_start("deleted");
    // 3. The log cut and the state store's witness removed too: the anchor file still knows.
    restore();
    sqlite(&db, &format!("DELETE FROM checkpoints; DELETE FROM audit WHERE seq > {};", records - 3));
    sqlite(&state.join("state.db"), "DELETE FROM audit_witness;");
    let (intact, v) = verify(&[]);
    assert!(!intact, "the anchor file: {v}");
    let copy = anchor_dir.path().join("copy.anchor");
    std::fs::copy(&anchor, &copy).unwrap();
    let (intact, _) = verify(&["--anchor", copy.to_str().unwrap()]);
    assert!(!intact, "a copy of the anchor file held elsewhere");
    refused_start("cut, its witness removed");
    // Restored from the backup, it starts (the witness moves on with the next checkpoint).
    restore();
    let s = a.start();
    assert_eq!(register(&s, 9, json!({"kind": "internal"})).0, 200);
    drop(s);
    // 4. Lost for good: the administrator's explicit, recorded acknowledgement takes it up.
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(state.join(format!("audit.db{ext}")));
    }
    let ack = a.ok(&["audit", "acknowledge-loss", "--reason", "disk sdb failed, no backup (ticket 4711)", "--yes"]);
    assert_eq!(ack["done"], true, "{ack}");
    let (intact, v) = verify(&[]);
    assert!(intact, "{v}");
    let loss: Vec<Value> = a.audit_records().into_iter().filter(|r| r["kind"] == "audit-loss").collect();
    assert_eq!(loss.len(), 1);
    assert!(loss[0]["detail"].as_str().unwrap().contains("ticket 4711"), "{loss:?}");
    assert!(std::fs::read_to_string(&anchor).unwrap().contains("\"entry\":\"loss\""));
    let s = a.start();
    assert_eq!(register(&s, 10, json!({"kind": "internal"})).0, 200);
    // A log that reaches its head: nothing to acknowledge.
    drop(s);
    let out = a.cli(&["audit", "acknowledge-loss", "--reason", "x", "--yes"]);
    assert_eq!(parse(&out)["error"]["code"], "audit_intact");
}
