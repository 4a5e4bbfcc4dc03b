//! Management points as they really are: clients that send a batch whole before reading
//! (Python `requests`), HTTP/2 (httpx, curl, and frame by frame), HTTP conventions, the OpenAPI
//! document checked against the running service — by our own conformance tool and by an
//! independent fuzzer (Schemathesis) — and the README's client examples run for real.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::{Value, json};

mod common;
use common::appliance::{Appliance, Service, claims_of, client_request, device, register, thumbprint};

fn python() -> PathBuf {
    device_tests::pytools::bin_dir().join("python")
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Runs `examples/NAME` against `s` with the demo MP's certificate: (output, seconds).
fn example(s: &Service, name: &str, args: &[&str]) -> (Output, f64) {
    let started = Instant::now();
    let out = Command::new(python())
        .arg(repo("examples").join(name))
        .args(["--api", &s.url(""), "--ca"])
        .arg(s.dir.join("ca.pem"))
        .arg("--cert")
        .arg(s.dir.join("mp/mp.crt"))
        .arg("--key")
        .arg(s.dir.join("mp/mp.key"))
        .args(args)
        .output()
        .unwrap();
    (out, started.elapsed().as_secs_f64())
}

/// Writes `n` lines made by `line` to DIR/NAME.ndjson.
fn write_lines(dir: &Path, name: &str, n: u32, line: impl Fn(u32) -> String) -> PathBuf {
    let path = dir.join(format!("{name}.ndjson"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..n {
        writeln!(f, "{}", line(i)).unwrap();
    }
    path
}

fn internal(i: u32) -> String {
    client_request(i, json!({"kind": "internal"})).to_string()
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// An ES256 appliance (fast signing) whose MP may sign as fast as the device goes.
fn fast_appliance(edit: impl FnOnce(&mut sitesign::config::ServiceConfigFile)) -> Appliance {
    let a = Appliance::with(&["--token-algorithm", "ec-p256"]);
    a.edit_service(|svc| {
        common::appliance::unlimited(svc);
        edit(svc);
    });
    a
}

#[test]
fn a_half_duplex_client_renews_10000_devices_in_one_batch_in_order() {
    let a = fast_appliance(|_| {});
    let s = a.start();
    // 10,000 devices get tokens (streamed by curl), then the key is rotated — the mass renewal
    // sitesign exists for: every device renews with its current token, whatever its age.
    let registrations = write_lines(&s.dir, "register", 10_000, internal);
    let tokens = s.batch_file(&registrations);
    assert_eq!(tokens.len(), 10_000);
    a.ok(&["rotate", "token-signing", "--activate-at", "now", "--yes"]);
    let renewals = write_lines(&s.dir, "renew", 10_000, |i| {
        let token = tokens[i as usize]["token"].as_str().unwrap();
        client_request(i, json!({"kind": "renew", "token": token})).to_string()
    });
    let before = s.peak_rss_kib();
    // Python `requests` sends the whole body, then reads the answer (half duplex).
    let answers = s.dir.join("renewed.ndjson");
    let (out, secs) = example(&s, "batch_requests.py", &[renewals.to_str().unwrap(), answers.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let renewed = read_lines(&answers);
    assert_eq!(renewed.len(), 10_000);
    for (i, answer) in renewed.iter().enumerate() {
        let token = answer["token"].as_str().unwrap_or_else(|| panic!("line {i}: {answer}"));
        assert_eq!(claims_of(token)["DeviceId"], json!(device(i as u32)), "line {i} answered out of order");
        assert_ne!(token, tokens[i]["token"].as_str().unwrap());
    }
    eprintln!(
        "10,000 renewals sent whole by Python requests: answered in {secs:.1} s; peak RSS {before} → {} KiB",
        s.peak_rss_kib()
    );
}

#[test]
fn a_half_duplex_batch_longer_than_the_window_is_cut_with_a_clear_error_within_seconds() {
    let a = fast_appliance(|svc| svc.max_batch_lines = Some(1_000));
    let s = a.start();
    let body = write_lines(&s.dir, "long", 60_000, internal);
    let answers = s.dir.join("long.answers");
    // One 60,000-line batch sent whole: the window holds 1,000 lines plus what the sockets hold.
    let (out, secs) = example(
        &s,
        "batch_requests.py",
        &["--lines-per-batch", "100000", body.to_str().unwrap(), answers.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'code': 'batch_too_long'") && stderr.contains("max_batch_lines"), "{stderr}");
    let answered: u64 = stderr.split("batch cut after ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((1_000..60_000).contains(&answered), "{answered} lines answered before the cut");
    assert!(secs < 60.0, "the cut took {secs:.1} s");
    // Every line answered was signed and audited, and nothing after the cut.
    let audited = a.audit_records().iter().filter(|r| r["kind"] == "client-token").count() as u64;
    assert_eq!(audited, answered);
    // The service goes on serving.
    assert_eq!(register(&s, 1, json!({"kind": "internal"})).0, 200);
    eprintln!("a 60,000-line half-duplex batch with a 1,000-line window: cut after {answered} lines in {secs:.1} s");
}

#[test]
fn http2_streams_100000_lines_with_bounded_memory() {
    let a = fast_appliance(|svc| svc.max_batch_lines = Some(1_000));
    let s = a.start();
    // A full-duplex client (curl reads while it sends over HTTP/2) streams far past the window
    // in one request.
    let streamed = write_lines(&s.dir, "stream", 30_000, |i| internal(1_000_000 + i));
    let mut c = s.batch_command(&streamed);
    c.arg("--http2");
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = read_lines(&streamed.with_extension("out"));
    assert_eq!(lines.len(), 30_000);
    assert!(lines.iter().all(|l| l["token"].is_string()));
    // httpx (which sends each request whole) streams 100,000 lines as batches of 1,000, four at
    // once on one HTTP/2 connection — after a first 20,000 have brought the service to its
    // working set (four batches' windows and buffers, allocator arenas).
    let warm = write_lines(&s.dir, "warm", 20_000, |i| internal(2_000_000 + i));
    let warm_answers = s.dir.join("warm.answers");
    let (out, _) = example(
        &s,
        "stream_httpx_h2.py",
        &["--lines-per-batch", "1000", warm.to_str().unwrap(), warm_answers.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body = write_lines(&s.dir, "h2", 100_000, internal);
    let answers = s.dir.join("h2.answers");
    let before = s.peak_rss_kib();
    let (out, secs) = example(
        &s,
        "stream_httpx_h2.py",
        &["--lines-per-batch", "1000", body.to_str().unwrap(), answers.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answered = read_lines(&answers);
    assert_eq!(answered.len(), 100_000);
    for (i, answer) in answered.iter().enumerate().step_by(997) {
        let token = answer["token"].as_str().unwrap_or_else(|| panic!("line {i}: {answer}"));
        assert_eq!(claims_of(token)["DeviceId"], json!(device(i as u32)), "line {i}");
    }
    let response_kib = std::fs::metadata(&answers).unwrap().len() / 1024;
    let growth = s.peak_rss_kib().saturating_sub(before);
    eprintln!(
        "100,000 lines over HTTP/2 (httpx, 4 × 1,000-line batches in flight): {secs:.1} s; peak RSS {before} KiB, grew {growth} KiB; answers {response_kib} KiB"
    );
    assert!(growth < 16 * 1024, "peak RSS grew {growth} KiB over a {response_kib} KiB stream");
}

fn h2probe(s: &Service, command: &str) -> Value {
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/h2probe.py"))
        .args([command, "127.0.0.1", s.url("").rsplit(':').next().unwrap()])
        .arg(s.dir.join("ca.pem"))
        .arg(s.dir.join("mp/mp.crt"))
        .arg(s.dir.join("mp/mp.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "h2probe {command}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(out.stdout.trim_ascii()).unwrap()
}

#[test]
fn http2_has_the_same_limits_as_http1() {
    let a = Appliance::new();
    a.edit_service(|svc| {
        svc.max_streams_per_connection = Some(8);
        svc.max_batch_lines = Some(100);
        common::appliance::unlimited(svc);
        svc.header_timeout_seconds = Some(2);
        svc.body_timeout_seconds = Some(2);
    });
    let s = a.start();
    let settings = h2probe(&s, "settings");
    assert_eq!(settings["alpn"], "h2");
    assert_eq!(settings["max_concurrent_streams"], 8);
    // Streams past the limit are refused by the server, not queued.
    let streams = h2probe(&s, "streams");
    assert_eq!((streams["limit"].as_u64(), streams["refused"].as_u64()), (Some(8), Some(4)), "{streams}");
    // A body that does not come: 408 at the body deadline.
    let stall = h2probe(&s, "stall");
    assert_eq!((stall["status"].as_u64(), stall["code"].as_str()), (Some(408), Some("request_timeout")), "{stall}");
    assert!(stall["after"].as_f64().unwrap() < 10.0, "{stall}");
    // A body over 16 KiB: 413.
    let large = h2probe(&s, "large");
    assert_eq!((large["status"].as_u64(), large["code"].as_str()), (Some(413), Some("body_too_large")), "{large}");
    // A connection that opens no stream is closed at the header deadline, with a GOAWAY.
    let idle = h2probe(&s, "idle");
    assert!(idle["goaway"].as_bool().unwrap() && idle["closed_after"].as_f64().unwrap() < 10.0, "{idle}");
    // A batch stream stalled on its client (answers not taken, body sent as far as flow control
    // lets it) does not hold up its connection's other streams: a single request on the same
    // connection is answered at once, not after the stall is cut. (With hyper's default windows
    // this holds too — the batch reads its body ahead of the stall; the 128 KiB stream window is
    // defence in depth.)
    let starve = h2probe(&s, "starve");
    eprintln!("a single request beside a stalled batch on one HTTP/2 connection: {starve}");
    assert_eq!(starve["status"], 200, "{starve}");
    assert!(
        starve["after"].as_f64().unwrap() < 1.0,
        "a stalled batch held up its connection's other streams: {starve}"
    );
    // A connection that never sends HTTP/2's preface, or that gives the server no window to
    // answer in, is dropped: after the header deadline it is asked to close, and dropped after
    // one more if it does not.
    for probe in ["nopreface", "zerowindow"] {
        let closed = h2probe(&s, probe);
        assert!(closed["closed_after"].as_f64().unwrap() < 20.0, "{probe}: {closed}");
    }
    // HTTP/1.1 is still offered.
    let out = s
        .mtls()
        .args(["--http1.1", "-o", "/dev/null", "-w", "%{http_version}"])
        .arg(s.url("/healthz"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.1");
}

#[test]
fn one_mp_holds_at_most_its_share_of_connections() {
    let a = Appliance::new();
    a.edit_service(|svc| svc.max_connections_per_mp = Some(3));
    let s = a.start();
    let held = s.hostile("hold", &["6"]);
    assert_eq!(held["answered"], 3, "{held}");
    let (_, metrics) = s.ops("/metrics");
    assert!(metrics.contains(r#"sitesign_connections_refused_total{reason="max_connections_per_mp"} 3"#), "{metrics}");
    // Once they are closed, the MP connects again.
    assert_eq!(s.call("/healthz", None).0, 200);
}

#[test]
fn a_client_that_never_reads_its_answer_is_dropped_and_its_batch_slot_freed() {
    let a = fast_appliance(|svc| {
        svc.max_batch_lines = Some(1_000);
        svc.max_batches_per_mp = Some(1);
        svc.body_timeout_seconds = Some(2);
    });
    let s = a.start();
    // A 20,000-line batch sent whole (the server drains what it does not read past the window),
    // its answer never read, the socket held open.
    let body = write_lines(&s.dir, "deaf", 20_000, internal);
    let mut deaf = s.hostile_command("deaf", &[body.to_str().unwrap(), "120"]).spawn().unwrap();
    let open = |s: &Service| s.metric("sitesign_connections_open", "").unwrap_or(-1.0);
    assert!(s.eventually(std::time::Duration::from_secs(20), || open(&s) >= 1.0), "the deaf client never connected");
    let started = Instant::now();
    // Stuck: an answer waiting, the peer sending nothing, for six body deadlines (12 s).
    assert!(
        s.eventually(std::time::Duration::from_secs(60), || open(&s) == 0.0),
        "the connection of a client that never reads was kept"
    );
    let secs = started.elapsed().as_secs_f64();
    // Its batch slot came back: the MP (allowed one batch at a time) streams another.
    assert_eq!(s.batch("after", &[internal(5_000_000)]).len(), 1);
    let _ = deaf.kill();
    let _ = deaf.wait();
    eprintln!("a client that never read its answer: dropped {secs:.1} s after it connected");
}

/// (status, headers, body) of a curl request.
fn raw(s: &Service, args: &[&str], path: &str) -> (u16, String, String) {
    let out = s.mtls().args(["-i", "-w", "\n%{http_code}"]).args(args).arg(s.url(path)).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap();
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (code.trim().parse().unwrap(), head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn http_conventions_404_405_with_allow_and_415() {
    let a = Appliance::new();
    let s = a.start();
    let (status, _, body) = raw(&s, &[], "/v1/nothing-here");
    assert_eq!(status, 404);
    assert!(body.contains(r#""code":"not_found""#), "{body}");
    let (status, head, body) = raw(&s, &[], "/v1/client-tokens");
    assert_eq!(status, 405);
    assert!(head.contains("allow: post"), "{head}");
    assert!(body.contains(r#""code":"method_not_allowed""#), "{body}");
    let (status, head, _) = raw(&s, &["-X", "DELETE"], "/.well-known/jwks.json");
    assert_eq!(status, 405);
    assert!(head.contains("allow: get,head"), "{head}");
    let request = client_request(7, json!({"kind": "internal"})).to_string();
    for (path, content_type) in [
        ("/v1/client-tokens", "text/plain"),
        ("/v1/client-tokens", "application/x-ndjson"),
        ("/v1/client-tokens", "application/json; charset=latin1"),
        ("/v1/client-tokens:batch", "application/json"),
        ("/v1/client-tokens:batch", "text/plain"),
    ] {
        let header = format!("content-type: {content_type}");
        let (status, _, body) = raw(&s, &["-H", &header, "--data-binary", &request], path);
        assert_eq!(status, 415, "{path} as {content_type}: {body}");
        assert!(body.contains(r#""code":"unsupported_media_type""#), "{body}");
    }
    // No Content-Type at all (curl -d would send a form's).
    let (status, _, _) = raw(&s, &["-H", "content-type:", "--data-binary", &request], "/v1/client-tokens");
    assert_eq!(status, 415);
    // What is taken: JSON (charset UTF-8 allowed), NDJSON under its names.
    let (status, _, body) = raw(
        &s,
        &["-H", "content-type: application/json; charset=utf-8", "--data-binary", &request],
        "/v1/client-tokens",
    );
    assert_eq!(status, 200, "{body}");
    for ndjson in ["application/x-ndjson", "application/jsonl"] {
        let header = format!("content-type: {ndjson}");
        let (status, _, body) = raw(&s, &["-H", &header, "--data-binary", &request], "/v1/client-tokens:batch");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""token""#), "{body}");
    }
}

#[test]
fn the_openapi_document_is_valid_served_and_true_to_the_service() {
    let doc = repo("docs/openapi.json");
    // An independent validator (openapi-spec-validator) checks the document.
    let out = Command::new(device_tests::pytools::bin_dir().join("openapi-spec-validator")).arg(&doc).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let a = Appliance::new();
    a.edit_service(|svc| {
        svc.rate_limit_per_second = Some(20);
        svc.rate_limit_burst = Some(200);
    });
    let s = a.start();
    let out = s.mtls().arg(s.url("/v1/openapi.json")).output().unwrap();
    assert_eq!(out.stdout, std::fs::read(&doc).unwrap(), "the served document is the repository's");
    // A young token (renewal too early), a bulk token, a blocked one.
    let (_, young) = register(&s, 1, json!({"kind": "internal"}));
    let young = young["token"].as_str().unwrap().to_owned();
    let bulk = a.ok(&["bulk-token", "new", "--lifetime", "60"]);
    let bulk_token = bulk["token"].as_str().unwrap().to_owned();
    let json_ct = "application/json";
    let mut requests = vec![
        json!({"method": "GET", "path": "/v1/certificates"}),
        json!({"method": "GET", "path": "/.well-known/jwks.json"}),
        json!({"method": "GET", "path": "/v1/crl"}),
        json!({"method": "GET", "path": "/v1/crl?issuer=nobody"}),
        json!({"method": "GET", "path": "/v1/openapi.json"}),
        json!({"method": "GET", "path": "/healthz"}),
        json!({"method": "GET", "path": "/readyz"}),
        json!({"method": "GET", "path": "/metrics"}),
        json!({"method": "GET", "path": "/v1/nothing"}),
        json!({"method": "GET", "path": "/v1/client-tokens"}),
        json!({"method": "PUT", "path": "/v1/certificates"}),
        json!({"method": "POST", "path": "/v1/client-tokens", "content_type": json_ct, "body": client_request(2, json!({"kind": "internal"})).to_string()}),
        json!({"method": "POST", "path": "/v1/client-tokens", "content_type": json_ct, "body": client_request(3, json!({"kind": "bulk", "token": bulk_token})).to_string()}),
        json!({"method": "POST", "path": "/v1/client-tokens", "content_type": json_ct, "body": client_request(1, json!({"kind": "renew", "token": young})).to_string()}),
        json!({"method": "POST", "path": "/v1/client-tokens", "content_type": json_ct, "body": client_request(4, json!({"kind": "bulk", "token": "not-a-token"})).to_string()}),
        json!({"method": "POST", "path": "/v1/client-tokens", "content_type": json_ct, "body": "{\"device_id\":\"GUID:nope\",\"client_cert_thumbprint\":\"x\",\"proof\":{\"kind\":\"internal\"}}"}),
        json!({"method": "POST", "path": "/v1/client-tokens", "content_type": json_ct, "body": "not json"}),
        json!({"method": "POST", "path": "/v1/client-tokens", "content_type": json_ct, "body": "x".repeat(20_000)}),
        json!({"method": "POST", "path": "/v1/client-tokens", "content_type": "text/plain", "body": "{}"}),
        json!({"method": "POST", "path": "/v1/access-tokens", "content_type": json_ct, "body": json!({"token": young, "client_cert_thumbprint": thumbprint(1)}).to_string()}),
        json!({"method": "POST", "path": "/v1/access-tokens", "content_type": json_ct, "body": json!({"token": young, "client_cert_thumbprint": thumbprint(9)}).to_string()}),
        json!({"method": "POST", "path": "/v1/tokens:verify", "content_type": json_ct, "body": json!({"token": young, "client_cert_thumbprint": thumbprint(1)}).to_string()}),
        json!({"method": "POST", "path": "/v1/tokens:verify", "content_type": json_ct, "body": json!({"token": bulk_token}).to_string()}),
        json!({"method": "POST", "path": "/v1/tokens:verify", "content_type": json_ct, "body": json!({"token": "a.b.c"}).to_string()}),
        json!({"method": "POST", "path": "/v1/client-tokens:batch", "content_type": "application/x-ndjson", "body": format!(
            "{}\n{}\nnot json\n{}\n",
            client_request(5, json!({"kind": "internal"})),
            client_request(1, json!({"kind": "renew", "token": young})),
            client_request(6, json!({"kind": "bulk", "token": "x"})),
        )}),
        // Past the burst: 429 with Retry-After.
        json!({"method": "GET", "path": "/v1/certificates", "repeat": 250}),
    ];
    let mut input = String::new();
    for r in requests.drain(..) {
        input.push_str(&r.to_string());
        input.push('\n');
    }
    let ca = s.dir.join("ca.pem");
    let (cert, key) = (s.dir.join("mp/mp.crt"), s.dir.join("mp/mp.key"));
    let out = common::appliance::python_tool_with_input(
        "openapi_conform.py",
        &[doc.to_str().unwrap(), &s.url(""), ca.to_str().unwrap(), cert.to_str().unwrap(), key.to_str().unwrap()],
        input.as_bytes(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(report["failures"], json!([]), "{report:#}");
    let seen: Vec<&str> = report["seen"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for expected in [
        "200",
        "400 bad_request",
        "400 invalid_device_id",
        "403 proof_rejected",
        "404 not_found",
        "405 method_not_allowed",
        "409 renewal_too_early",
        "413 body_too_large",
        "415 unsupported_media_type",
        "429 rate_limited",
    ] {
        assert!(seen.contains(&expected), "{expected} not exercised: {seen:?}");
    }
    eprintln!("{} answers checked against docs/openapi.json: {seen:?}", report["checked"]);
}

/// Examples per operation of the suite's Schemathesis run (`SITESIGN_FUZZ_EXAMPLES` for a
/// longer one before a release: docs/api.md).
fn fuzz_examples() -> String {
    std::env::var("SITESIGN_FUZZ_EXAMPLES").unwrap_or_else(|_| "150".into())
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let a = Appliance::new();
    a.edit_service(|svc| {
        common::appliance::unlimited(svc);
    });
    let s = a.start();
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools");
    let report = s.dir.join("schemathesis");
    let out = Command::new(device_tests::pytools::bin_dir().join("schemathesis"))
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", &tools)
        .env("SITESIGN_OPENAPI", repo("docs/openapi.json"))
        .arg("--config-file")
        .arg(tools.join("schemathesis.toml"))
        .args(["--no-color", "run"])
        .arg(repo("docs/openapi.json"))
        .args(["--url", &s.url(""), "--tls-verify"])
        .arg(s.dir.join("ca.pem"))
        .arg("--request-cert")
        .arg(s.dir.join("mp/mp.crt"))
        .arg("--request-cert-key")
        .arg(s.dir.join("mp/mp.key"))
        .args([
            "--seed",
            "20261127",
            "--max-examples",
            &fuzz_examples(),
            "--workers",
            "2",
            "--generation-database",
            "none",
        ])
        .arg("--report-dir")
        .arg(&report)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary =
        text.lines().filter(|l| l.contains("generated") || l.contains("Tested:")).collect::<Vec<_>>().join("; ");
    assert!(out.status.success(), "Schemathesis failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Tested: 11"), "{text}");
    eprintln!("Schemathesis: {summary}");
    // The service lived through it.
    assert_eq!(s.ops("/healthz").0, 200);
}

#[test]
fn the_curl_example_runs_against_a_real_service() {
    let a = Appliance::new();
    let s = a.start();
    let out =
        Command::new("bash").arg(repo("examples/curl.sh")).arg(&s.dir).env("SITESIGN_API", s.url("")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "certificates",
        "signing keys in the JWKS",
        "client token: ey",
        "verify: True client",
        "3 batch answers, 3 tokens",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}
