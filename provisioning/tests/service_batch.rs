//! The batch endpoint: order, per-line errors, an audit record for every token streamed and none
//! without one; bounded memory on a long stream; a full queue answering single requests busy;
//! the 16 KiB line cap; and SIGTERM while a batch streams.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::appliance::{
    Appliance, Service, claims_of, client_request, device, internal_batch_file, register, sha256_hex, thumbprint,
};

/// A renewal proof forged from a real token: device `n`'s claims with another device's
/// signature spliced on (what a thief of one token would try).
fn forged_renewal(s: &Service, n: u32) -> String {
    let (_, real) = register(s, 900_000 + n, json!({"kind": "internal"}));
    let real = real["token"].as_str().unwrap();
    let mut claims = claims_of(real);
    claims["DeviceId"] = json!(device(n));
    claims["cnf"]["x5t#S256"] = json!(thumbprint((n % 251) as u8));
    let parts: Vec<&str> = real.split('.').collect();
    let payload = sitesign::token::b64::encode(serde_json::to_string(&claims).unwrap().as_bytes());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// Waits (at most 60 s) until the service has signed `n` client tokens: a batch under way.
fn signing(s: &Service, n: u32) -> bool {
    s.eventually(Duration::from_secs(60), || {
        s.metric("sitesign_tokens_issued_total", "{kind=\"client\"}").unwrap_or(0.0) >= f64::from(n)
    })
}

#[test]
fn batches_keep_order_report_per_item_errors_and_audit_every_token() {
    let a = Appliance::new();
    let s = a.start();
    // 300 items: every 7th malformed, every 11th a bad device id, every 13th a forged renewal.
    let mut lines = Vec::new();
    let mut expected = Vec::new();
    for i in 0..300u32 {
        let dev = format!("GUID:{i:08X}-0000-4000-8000-000000000000");
        if i % 7 == 3 {
            lines.push(format!("{{\"device_id\": \"{dev}\", broken"));
            expected.push(Err(("bad_request", "")));
        } else if i % 11 == 5 {
            lines.push(json!({"device_id": format!("GUID:{i}"), "client_cert_thumbprint": thumbprint(1), "proof": {"kind": "internal"}}).to_string());
            expected.push(Err(("invalid_device_id", "")));
        } else if i % 13 == 6 {
            let forged = forged_renewal(&s, i);
            lines.push(client_request(i, json!({"kind": "renew", "token": forged})).to_string());
            expected.push(Err(("proof_rejected", "bad_signature")));
        } else {
            lines.push(
                json!({"device_id": dev, "client_cert_thumbprint": thumbprint(1), "proof": {"kind": "internal"}})
                    .to_string(),
            );
            expected.push(Ok(dev));
        }
    }
    // A blank line is not an item; the last line has no newline.
    let body_path = s.dir.join("batch.ndjson");
    std::fs::write(&body_path, format!("{}\n\n{}", lines[..299].join("\n"), lines[299])).unwrap();
    let results = s.batch_file(&body_path);
    assert_eq!(results.len(), 300);
    let records = a.audit_records();
    let audited: HashSet<&str> =
        records.iter().filter(|r| r["kind"] == "client-token").map(|r| r["sha256"].as_str().unwrap()).collect();
    let mut tokens = 0;
    for (i, (got, want)) in results.iter().zip(&expected).enumerate() {
        match want {
            Ok(dev) => {
                let token = got["token"].as_str().unwrap_or_else(|| panic!("item {i}: {got}"));
                assert_eq!(claims_of(token)["DeviceId"], *dev, "item {i} out of order");
                assert!(audited.contains(sha256_hex(token.as_bytes()).as_str()), "item {i} has no audit record");
                tokens += 1;
            }
            Err((code, reason)) => {
                assert_eq!(got["error"]["code"], *code, "item {i}: {got}");
                assert!(got["error"]["message"].as_str().unwrap().starts_with(reason), "item {i}: {got}");
            }
        }
    }
    // The forgeries' source tokens (registered singly) plus the batch's.
    let forgeries = expected.iter().filter(|e| matches!(e, Err(("proof_rejected", _)))).count();
    assert_eq!(audited.len(), tokens + forgeries, "no record without a released token");
    assert!(a.audit_intact());
}

/// Sends a batch of `n` internal registrations (from `first`); returns (response bytes, tokens).
fn internal_batch(s: &Service, name: &str, first: u32, n: u32) -> (u64, u32) {
    let body_path = internal_batch_file(&s.dir, name, first, n);
    let out_path = body_path.with_extension("out");
    let out = s.batch_command(&body_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&out_path).unwrap();
    let mut count = 0u32;
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["token"].is_string(), "item {i}: {v}");
        count += 1;
    }
    (text.len() as u64, count)
}

#[test]
fn a_long_batch_streams_in_bounded_memory() {
    // ES256 signs fast enough on SoftHSM to push a long stream through in seconds.
    let a = Appliance::with(&["--token-algorithm", "ec-p256"]);
    // Batch lines draw on the MP's rate limit; this test is about memory, not the limit. Its
    // bound is for a window of 4,096 lines (the default 10,000 holds about 20 MiB at most:
    // docs/api.md).
    a.edit_service(|svc| {
        common::appliance::unlimited(svc);
        svc.max_batch_lines = Some(4_096);
    });
    let s = a.start();
    // A first batch brings the service to its working set (allocator arenas, the window, the
    // HTTP/2 connection's buffers — curl speaks HTTP/2 to it); a batch four times as long then
    // needs at most a bounded amount more, and a second one as long nothing that adds up —
    // never anything that grows with a batch's length (each response alone is 48 MB).
    let (_, short) = internal_batch(&s, "short", 0, 15_000);
    assert_eq!(short, 15_000);
    let after_short = s.peak_rss_kib();
    let (response_bytes, long) = internal_batch(&s, "long", 100_000, 60_000);
    assert_eq!(long, 60_000);
    let after_long = s.peak_rss_kib();
    let (_, again) = internal_batch(&s, "again", 200_000, 60_000);
    assert_eq!(again, 60_000);
    let after_again = s.peak_rss_kib();
    let (growth, regrowth) = (after_long.saturating_sub(after_short), after_again.saturating_sub(after_long));
    eprintln!(
        "peak RSS {after_short} KiB after 15,000 lines; grew {growth} KiB over 60,000 lines ({response_bytes}-byte response), {regrowth} KiB over 60,000 more"
    );
    assert!(
        growth < 24 * 1024 && growth * 1024 < response_bytes / 2,
        "peak RSS grew {growth} KiB over a 60,000-line batch after a 15,000-line one ({response_bytes}-byte response)"
    );
    // What may still grow: SQLite's page caches of the audit writer and reader (2 MiB each)
    // filling as the log grows — bounded by their size, not by anything a batch does.
    assert!(regrowth < 8 * 1024, "peak RSS grew {regrowth} KiB more over a second 60,000-line batch");
    let audited = a.audit_records().iter().filter(|r| r["kind"] == "client-token").count();
    assert_eq!(audited, 135_000);
}

#[test]
fn a_full_queue_answers_busy_and_signs_nothing_for_it() {
    // A queue of one job, kept full by a long batch (which waits for room: backpressure); single
    // requests arriving meanwhile find it full and are told to come back.
    let a = Appliance::new();
    a.edit_service(|svc| {
        svc.queue_depth = Some(1);
        svc.rate_limit_per_second = Some(100_000);
        svc.rate_limit_burst = Some(100_000);
    });
    let s = a.start();
    let n = 4000u32;
    let body_path = s.dir.join("filler.ndjson");
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({"device_id": format!("GUID:{i:08X}-0000-4000-8000-000000000000"), "client_cert_thumbprint": thumbprint(7), "proof": {"kind": "internal"}})
                .to_string()
        })
        .collect();
    std::fs::write(&body_path, lines.join("\n") + "\n").unwrap();
    let out_path = body_path.with_extension("out");
    let mut batch = s.batch_command(&body_path).spawn().unwrap();
    // Wait until the batch is flowing (its output has started), then send single requests.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&out_path).map_or(0, |m| m.len()) < 4096 {
        assert!(Instant::now() < deadline, "the batch never started answering");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut answers = Vec::new();
    for i in 0..20u32 {
        let out = s
            .mtls()
            .args(["-D", "-", "-H", "content-type: application/json", "--data-binary"])
            .arg(client_request(i, json!({"kind": "internal"})).to_string())
            .arg(s.url("/v1/client-tokens"))
            .output()
            .unwrap();
        answers.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    assert!(batch.wait().unwrap().success());
    // curl speaks HTTP/2 to the service (ALPN): "HTTP/2 200", "HTTP/1.1 200" alike.
    let status = |a: &str| a.split_whitespace().nth(1).map(str::to_owned);
    let ok_count = answers.iter().filter(|a| status(a).as_deref() == Some("200")).count();
    let busy: Vec<&String> = answers.iter().filter(|a| status(a).as_deref() == Some("503")).collect();
    assert_eq!(ok_count + busy.len(), answers.len(), "{answers:?}");
    assert!(!busy.is_empty(), "no single request found the queue full while a batch kept it so");
    for b in &busy {
        let lower = b.to_ascii_lowercase();
        assert!(lower.contains("retry-after: ") && lower.contains("\"unavailable\""), "{b}");
    }
    // The batch itself was slowed, never refused: every line has its token.
    let batch_tokens =
        std::fs::read_to_string(&out_path).unwrap().lines().filter(|l| l.starts_with("{\"token\"")).count();
    assert_eq!(batch_tokens, n as usize);
    let audited = a.audit_records().iter().filter(|r| r["kind"] == "client-token").count();
    assert_eq!(audited, ok_count + batch_tokens, "a busy answer signed nothing");
}

#[test]
fn a_line_over_16_kib_gets_its_own_error_and_the_batch_goes_on() {
    let a = Appliance::new();
    let s = a.start();
    let mut long = client_request(2, json!({"kind": "internal"}));
    long["device_id"] = json!("x".repeat(17 * 1024));
    let lines = vec![
        client_request(1, json!({"kind": "internal"})).to_string(),
        long.to_string(),
        client_request(3, json!({"kind": "internal"})).to_string(),
    ];
    let results = s.batch("long-line", &lines);
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(claims_of(results[0]["token"].as_str().unwrap())["DeviceId"], device(1));
    assert_eq!(results[1]["error"]["code"], "bad_request");
    assert!(results[1]["error"]["message"].as_str().unwrap().contains("longer than 16384 bytes"), "{results:?}");
    assert_eq!(claims_of(results[2]["token"].as_str().unwrap())["DeviceId"], device(3));
}

#[test]
fn sigterm_while_a_batch_streams_answers_every_line_and_exits_cleanly() {
    let a = Appliance::new();
    let mut s = a.start();
    let n = 3000u32;
    let body_path = s.dir.join("during-stop.ndjson");
    let lines: Vec<String> = (0..n).map(|i| client_request(i, json!({"kind": "internal"})).to_string()).collect();
    std::fs::write(&body_path, lines.join("\n") + "\n").unwrap();
    let out_path = body_path.with_extension("out");
    let mut batch = s.batch_command(&body_path).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&out_path).map_or(0, |m| m.len()) < 4096 {
        assert!(Instant::now() < deadline, "the batch never started answering");
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = s.stop();
    assert_eq!(status.code(), Some(0), "graceful exit on SIGTERM:\n{}", s.log_text());
    assert!(batch.wait().unwrap().success(), "the batch in flight was finished, not cut");
    let answers: Vec<Value> =
        std::fs::read_to_string(&out_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), n as usize, "every line has an answer");
    let tokens: Vec<&str> = answers.iter().filter_map(|v| v["token"].as_str()).collect();
    assert!(!tokens.is_empty());
    for v in answers.iter().filter(|v| v.get("token").is_none()) {
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
    }
    // Every token released has its record; the chain and its shutdown checkpoint are intact.
    let audited: HashSet<String> = a
        .audit_records()
        .iter()
        .filter(|r| r["kind"] == "client-token")
        .map(|r| r["sha256"].as_str().unwrap().to_owned())
        .collect();
    assert!(tokens.iter().all(|t| audited.contains(&sha256_hex(t.as_bytes()))));
    assert_eq!(audited.len(), tokens.len());
    assert!(a.audit_intact());
}

#[test]
fn a_bulk_token_blocked_mid_batch_stops_the_lines_not_yet_signed() {
    let a = Appliance::new();
    // 200 lines a second: a 2,000-line batch takes about ten seconds, far more than it takes to
    // read and validate it — most lines are validated long before they are signed.
    a.edit_service(|svc| {
        svc.rate_limit_per_second = Some(200);
        svc.rate_limit_burst = Some(200);
    });
    let s = a.start();
    let made = a.ok(&["bulk-token", "new"]);
    let (guid, bulk) = (made["guid"].as_str().unwrap().to_owned(), made["token"].as_str().unwrap().to_owned());
    let lines: Vec<String> =
        (0..2000).map(|n| client_request(n, json!({"kind": "bulk", "token": bulk})).to_string()).collect();
    let results = std::thread::scope(|scope| {
        let batch = scope.spawn(|| s.batch("bulk", &lines));
        // 600 lines in: the burst of 200 and two seconds at the rate, so that the records below
        // span whole seconds.
        assert!(signing(&s, 600), "the batch never got going");
        a.ok(&["bulk-token", "block", &guid]);
        batch.join().unwrap()
    });
    let signed = results.iter().take_while(|r| r["token"].is_string()).count();
    assert!(signed > 0 && signed < 2000, "{signed} lines signed");
    // Every line after the block: refused, none signed (the block is checked again at signing).
    for (i, r) in results.iter().enumerate().skip(signed) {
        assert_eq!(r["error"]["reason"], "blocked", "line {i}: {r}");
    }
    // Every token's audit record carries the bulk GUID it was authorised by, and the time of its
    // signature: later lines, later records.
    let all = a.audit_records();
    let blocked_at = all.iter().find(|r| r["kind"] == "bulk-token-blocked").expect("the block's record")["seq"].clone();
    let records: Vec<Value> = all.into_iter().filter(|r| r["kind"] == "client-token").collect();
    assert_eq!(records.len(), signed);
    // Lines validated before the block but not yet signed were stopped too: no token signed
    // after the block was recorded.
    let last_seq = records.last().unwrap()["seq"].as_i64().unwrap();
    assert!(
        last_seq < blocked_at.as_i64().unwrap(),
        "a token was signed after the block (seq {last_seq} > {blocked_at})"
    );
    assert!(records.iter().all(|r| r["detail"] == format!("bulk:{guid}")), "{:?}", records[0]);
    let (first, last) = (records[0]["time"].as_i64().unwrap(), records[signed - 1]["time"].as_i64().unwrap());
    assert!(last - first >= 1, "records are timed at signing ({first}..{last})");
}

#[test]
fn an_mp_certificate_revoked_mid_batch_gets_no_token_signed_after_its_revocation() {
    let a = Appliance::new();
    a.edit_service(|svc| {
        svc.rate_limit_per_second = Some(200);
        svc.rate_limit_burst = Some(200);
    });
    let s = a.start();
    let serial = a.ok(&["cert", "list"])["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["profile"] == "mp-client")
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    let lines: Vec<String> = (0..1000).map(|n| client_request(n, json!({"kind": "internal"})).to_string()).collect();
    let results = std::thread::scope(|scope| {
        let batch = scope.spawn(|| s.batch("revoked", &lines));
        assert!(signing(&s, 200), "the batch never got going");
        a.ok(&["cert", "revoke", &serial, "--reason", "key-compromise", "--yes"]);
        batch.join().unwrap()
    });
    let signed = results.iter().take_while(|r| r["token"].is_string()).count();
    assert!(signed > 0 && signed < 1000, "{signed} lines signed");
    for (i, r) in results.iter().enumerate().skip(signed) {
        assert_eq!(r["error"]["code"], "client_certificate_refused", "line {i}: {r}");
    }
    let all = a.audit_records();
    let revoked_at = all.iter().find(|r| r["kind"] == "certificate-revoked").expect("the revocation's record")["seq"]
        .as_i64()
        .unwrap();
    let last_token = all.iter().filter(|r| r["kind"] == "client-token").map(|r| r["seq"].as_i64().unwrap()).max();
    assert!(last_token.unwrap() < revoked_at, "a token was signed for the revoked MP after its revocation");
}
