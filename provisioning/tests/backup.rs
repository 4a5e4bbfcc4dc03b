//! `sitesign backup` and `sitesign restore` (issue 17): a backup taken while a batch is being
//! signed, the state lost, restored, the audit chain intact and the service serving again; the
//! refusals: a running service, an existing state, a damaged archive, and a forged one whose
//! checksums were recomputed (only the audit chain tells).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::process::Command;

use serde_json::json;

mod common;
use common::appliance::{Appliance, JwksChecker, client_request, internal_batch_file, python_tool, unlimited};

#[test]
fn a_backup_taken_during_a_batch_restores_onto_a_lost_state_with_its_audit_chain_intact() {
    let a = Appliance::new();
    a.edit_service(unlimited);
    let mut s = a.start();
    let body = internal_batch_file(&a.dir, "during", 1, 6000);
    let mut batch = s.batch_command(&body).spawn().unwrap();
    // Taken while the batch is signed (the audit log grows under the copy).
    assert!(s.eventually(std::time::Duration::from_secs(60), || a.audit_records().len() > 200));
    let archive = a.dir.join("appliance.backup");
    let made = a.ok(&["backup", "--out", archive.to_str().unwrap()]);
    assert!(batch.try_wait().unwrap().is_none(), "the batch ended before the backup did");
    assert!(batch.wait().unwrap().success());
    let answered = std::fs::read_to_string(body.with_extension("out")).unwrap();
    assert_eq!(answered.lines().filter(|l| l.contains("\"token\"")).count(), 6000);
    let records_at_end = a.audit_records().len();

    // Checked from outside: sha256sum and tar read it.
    let sum =
        Command::new("sha256sum").arg("-c").arg(archive.with_extension("backup.sha256")).current_dir(&a.dir).output();
    assert!(sum.unwrap().status.success());
    let listed = Command::new("tar").arg("tf").arg(&archive).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "manifest.json\nstate.db\naudit.db\n");
    assert!(made["manifest"]["audit"]["bytes"].as_u64().unwrap() > 0, "{made}");

    // Refused while the service runs.
    common::fails_with(a.cli(&["restore", archive.to_str().unwrap(), "--yes"]), "service_running");
    s.stop();
    // Refused onto an existing state without --force.
    common::fails_with(a.cli(&["restore", archive.to_str().unwrap(), "--yes"]), "state_exists");

    // The disk is lost: the state folder goes; the keys are still in the device.
    std::fs::rename(a.dir.join("state"), a.dir.join("state.lost")).unwrap();
    let restored = a.ok(&["restore", archive.to_str().unwrap(), "--yes"]);
    assert_eq!(restored["restored"], true, "{restored}");
    let records = restored["records"].as_u64().unwrap() as usize;
    assert!(records > 200 && records < records_at_end, "{records} of {records_at_end}");
    let verified = a.ok(&["audit", "verify"]);
    assert_eq!(verified["intact"], true, "{verified}");
    assert_eq!(verified["records"].as_u64().unwrap() as usize, records);

    // Serving again, with the same keys: a new token verifies against the JWKS, and so do the
    // tokens issued before the backup.
    let s = a.start();
    let (status, answer) =
        s.call("/v1/client-tokens", Some(&client_request(9, json!({"kind": "internal"})).to_string()));
    assert_eq!(status, 200, "{answer}");
    let checker = JwksChecker::fetch(&s);
    assert!(checker.verifies(answer["token"].as_str().unwrap()));
    let first: serde_json::Value = serde_json::from_str(answered.lines().next().unwrap()).unwrap();
    assert!(checker.verifies(first["token"].as_str().unwrap()));
}

#[test]
fn a_damaged_or_forged_backup_is_refused_and_nothing_is_replaced() {
    let a = Appliance::new();
    let s = a.start();
    for n in 0..5 {
        let (status, _) =
            s.call("/v1/client-tokens", Some(&client_request(n, json!({"kind": "internal"})).to_string()));
        assert_eq!(status, 200);
    }
    let archive = a.dir.join("b.tar");
    a.ok(&["backup", "--out", archive.to_str().unwrap()]);
    // Refused: the same name again.
    common::fails_with(a.cli(&["backup", "--out", archive.to_str().unwrap()]), "io");
    drop(s);
    let before = std::fs::read(a.dir.join("state/state.db")).unwrap();

    // A flipped byte: the archive's checksum no longer matches.
    let damaged = a.dir.join("damaged.tar");
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes.len() - 2048;
    bytes[at] ^= 0x40;
    std::fs::write(&damaged, &bytes).unwrap();
    std::fs::copy(archive.with_extension("tar.sha256"), a.dir.join("damaged.tar.sha256")).unwrap();
    let msg = common::fails_with(a.cli(&["restore", damaged.to_str().unwrap(), "--yes", "--force"]), "backup_damaged");
    assert!(msg.contains("SHA-256"), "{msg}");
    // Without the .sha256, the members' own checksums catch it.
    std::fs::remove_file(a.dir.join("damaged.tar.sha256")).unwrap();
    common::fails_with(a.cli(&["restore", damaged.to_str().unwrap(), "--yes", "--force"]), "backup_damaged");

    // Forged: a record edited and every checksum recomputed — the hash chain refuses it.
    let forged = a.dir.join("forged.tar");
    let forge = |mode: &str| {
        let out = python_tool("backup_tamper.py", &[mode, archive.to_str().unwrap(), forged.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        a.cli(&["restore", forged.to_str().unwrap(), "--yes", "--force"])
    };
    let msg = common::fails_with(forge("edit-record"), "backup_audit_broken");
    assert!(msg.contains("nothing restored"), "{msg}");
    // A trigger that would quietly forget every bulk token (the chain is intact): refused.
    let msg = common::fails_with(forge("add-trigger"), "backup_damaged");
    assert!(msg.contains("trigger") && msg.contains("bulk_forget"), "{msg}");
    // A member that is a link, not a file: refused.
    let msg = common::fails_with(forge("symlink"), "backup_damaged");
    assert!(msg.contains("not a regular file"), "{msg}");
    assert_eq!(std::fs::read(a.dir.join("state/state.db")).unwrap(), before, "the state was touched");

    // The genuine one, with --force: the current state set aside, not deleted.
    a.ok(&["restore", archive.to_str().unwrap(), "--yes", "--force"]);
    let aside = std::fs::read_dir(a.dir.join("state"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("set-aside"))
        .count();
    assert!(aside >= 2, "the replaced state and audit log are kept");
    assert!(a.audit_intact());
}
