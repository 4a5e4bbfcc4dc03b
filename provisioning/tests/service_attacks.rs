//! A hostile network against a running `sitesignd` (SPEC §9), over real sockets on loopback,
//! each attack bounded in count and time: management points that trickle or stall their bodies,
//! oversized and concurrent batches, batches that would outrun the rate limit, floods of blank
//! lines; anonymous clients holding idle connections or making the device sign handshakes.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::appliance::{Appliance, client_request, register};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[test]
fn slow_and_stalled_bodies_are_cut_at_their_deadline() {
    let a = Appliance::new();
    a.edit_service(|svc| svc.body_timeout_seconds = Some(2));
    let s = a.start();
    // One byte a second: cut after the 2 s deadline, not after the 1000 declared bytes.
    let trickle = s.hostile("trickle", &["/v1/client-tokens", "30"]);
    assert_eq!(
        (trickle["status"].as_u64(), trickle["code"].as_str()),
        (Some(408), Some("request_timeout")),
        "{trickle}"
    );
    assert!(trickle["seconds"].as_f64().unwrap() < 10.0, "{trickle}");
    assert!(trickle["sent"].as_u64().unwrap() <= 10, "{trickle}");
    assert_eq!(trickle["closed"], true, "the connection is closed after the refusal: {trickle}");
    // A body that stops.
    let stall = s.hostile("stall", &["/v1/access-tokens"]);
    assert_eq!((stall["status"].as_u64(), stall["code"].as_str()), (Some(408), Some("request_timeout")), "{stall}");
    assert!(stall["seconds"].as_f64().unwrap() < 10.0 && stall["closed"] == true, "{stall}");
    // A batch whose next line never completes: the lines before it are answered, then the cut.
    let line = client_request(1, json!({"kind": "internal"})).to_string();
    let cut = s.hostile("batch-stall", &[&line]);
    let lines = cut["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{cut}");
    assert!(lines[0]["token"].is_string(), "{cut}");
    assert_eq!(code(&lines[1]), "request_timeout", "{cut}");
    assert!(cut["seconds"].as_f64().unwrap() < 12.0, "{cut}");
    // A batch trickled a byte a second never completes a line.
    let trickled = s.hostile("batch-trickle", &["30"]);
    let lines = trickled["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{trickled}");
    assert_eq!(code(&lines[0]), "request_timeout", "{trickled}");
    assert!(trickled["seconds"].as_f64().unwrap() < 12.0, "{trickled}");
    // The service is fine.
    assert_eq!(register(&s, 2, json!({"kind": "internal"})).0, 200);
}

#[test]
fn batch_lines_draw_on_the_rate_limit() {
    let a = Appliance::new();
    a.edit_service(|svc| {
        svc.rate_limit_per_second = Some(20);
        svc.rate_limit_burst = Some(20);
    });
    let s = a.start();
    let lines: Vec<String> = (0..100).map(|n| client_request(n, json!({"kind": "internal"})).to_string()).collect();
    let started = Instant::now();
    let results = std::thread::scope(|scope| {
        let batch = scope.spawn(|| s.batch("rate", &lines));
        // While the batch draws on the bucket, this MP's single requests find it empty.
        let mut refused = None;
        while refused.is_none() && !batch.is_finished() {
            std::thread::sleep(Duration::from_millis(200));
            let (status, e) = register(&s, 500, json!({"kind": "internal"}));
            if status != 200 {
                refused = Some((status, code(&e).to_owned()));
            }
        }
        assert_eq!(refused, Some((429, "rate_limited".to_owned())));
        batch.join().unwrap()
    });
    let took = started.elapsed();
    // Every line is signed — the batch slowed down to the rate, nothing failed — and 100 lines
    // at 20 a second after a burst of 20 take about 4 s.
    assert_eq!(results.iter().filter(|r| r["token"].is_string()).count(), 100, "{results:?}");
    assert!(took >= Duration::from_millis(3500), "100 lines at 20/s came back in {took:?}");
}

#[test]
fn oversized_batches_are_cut_and_a_management_point_streams_few_at_once() {
    let a = Appliance::new();
    a.edit_service(|svc| {
        svc.max_batch_mb = Some(1);
        svc.max_batches_per_mp = Some(1);
    });
    let s = a.start();
    // 3 MiB of 8 KiB lines (each one a bad request, answered at once).
    let path = s.dir.join("big.ndjson");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let junk = format!("{{\"x\": \"{}\"}}", "y".repeat(8 * 1024 - 12));
    for _ in 0..384 {
        writeln!(f, "{junk}").unwrap();
    }
    drop(f);
    let big = s.hostile("batch-file", &[path.to_str().unwrap()]);
    let lines = big["lines"].as_array().unwrap();
    assert_eq!(code(lines.last().unwrap()), "batch_too_large", "{:?}", lines.last());
    assert!(lines.len() <= 130, "{} lines answered past a 1 MiB cap", lines.len());
    assert!(lines[..lines.len() - 1].iter().all(|l| code(l) == "bad_request"));
    // One batch held open; a second from the same MP is refused until the first ends.
    let line = client_request(1, json!({"kind": "internal"})).to_string();
    let mut held =
        s.hostile_command("hold-batch", &[&line]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(held.stdout.as_mut().unwrap()), &mut first).unwrap();
    assert!(first.contains("200"), "{first}");
    let second = s.dir.join("second.ndjson");
    std::fs::write(&second, format!("{line}\n")).unwrap();
    assert!(s.batch_command(&second).output().unwrap().status.success());
    let answer = std::fs::read_to_string(second.with_extension("out")).unwrap();
    assert!(answer.contains("too_many_batches"), "{answer}");
    drop(held.stdin.take());
    held.wait().unwrap();
    assert!(
        s.eventually(Duration::from_secs(10), || s.batch("third", std::slice::from_ref(&line))[0]["token"].is_string())
    );
}

#[test]
fn a_flood_of_blank_lines_costs_little_and_stalls_no_one() {
    let a = Appliance::new();
    let s = a.start();
    let path = s.dir.join("newlines.ndjson");
    std::fs::write(&path, vec![b'\n'; 16 << 20]).unwrap();
    let cpu = s.cpu_seconds();
    let (flood, latencies) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| s.hostile("batch-file", &[path.to_str().unwrap()]));
        let mut latencies = Vec::new();
        for n in 0..20 {
            let t = Instant::now();
            assert_eq!(register(&s, n, json!({"kind": "internal"})).0, 200);
            latencies.push(t.elapsed());
        }
        (flood.join().unwrap(), latencies)
    });
    let used = s.cpu_seconds() - cpu;
    assert_eq!(flood["status"], 200, "{flood}");
    assert_eq!(flood["lines"].as_array().unwrap().len(), 0, "blank lines are not items");
    eprintln!("16 MiB of newlines: {used:.2} CPU-s in the service; single requests meanwhile: {latencies:?}");
}

/// Runs a prepared `hostile.py` command; its JSON answer.
fn run_json(mut c: std::process::Command) -> Value {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
}

#[test]
fn idle_connections_from_one_source_hold_few_slots_and_management_points_are_served() {
    let a = Appliance::new();
    a.edit_service(|svc| svc.handshake_timeout_seconds = Some(5));
    let s = a.start();
    let (cpu, log) = (s.cpu_seconds(), s.log_text().len());
    let (idle, statuses) = std::thread::scope(|scope| {
        let attack = scope.spawn(|| {
            let mut c = s.hostile_command("idle", &["300", "6"]);
            c.env("HOSTILE_SOURCES", "127.0.0.2");
            run_json(c)
        });
        // The MP's requests go while the attack holds its connections.
        let under_way =
            s.eventually(Duration::from_secs(20), || s.metric("sitesign_connections_open", "").unwrap_or(0.0) >= 50.0);
        assert!(under_way, "the idle connections never arrived");
        let statuses: Vec<u16> = (0..10).map(|n| register(&s, n, json!({"kind": "internal"})).0).collect();
        (attack.join().unwrap(), statuses)
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let opened = idle["opened"].as_u64().unwrap();
    assert!(opened >= 250, "{idle}");
    // All but one source's share of the handshake slots (8 of 64) were closed at once, and
    // those 8 within 3 s, since they never sent a ClientHello.
    assert_eq!(idle["closed_by_server"].as_u64().unwrap(), opened, "{idle}");
    assert!(
        s.metric("sitesign_connections_refused_total", "{reason=\"handshakes_in_progress\"}").unwrap_or(0.0) >= 200.0
    );
    let (cpu, log) = (s.cpu_seconds() - cpu, s.log_text().len() - log);
    assert!(log < 8 * 1024, "{log} bytes of log for one attack (refusals are logged as a rate)");
    eprintln!("300 idle connections: {cpu:.2} CPU-s, {log} bytes of log");
}

#[test]
fn a_full_descriptor_table_makes_the_accept_loop_back_off_not_spin() {
    let a = Appliance::new();
    a.edit_service(|svc| svc.handshake_timeout_seconds = Some(3));
    let s = a.start();
    // Leave the service a few descriptors: eight sources of idle connections fill them.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", s.pid())).unwrap().count();
    let limit = format!("--nofile={}:{}", fds + 6, fds + 6);
    let set = std::process::Command::new("prlimit").args(["--pid", &s.pid().to_string(), &limit]).status().unwrap();
    assert!(set.success());
    let (cpu, log) = (s.cpu_seconds(), s.log_text().len());
    let mut c = s.hostile_command("idle", &["200", "5"]);
    c.env("HOSTILE_SOURCES", (2..10).map(|i| format!("127.0.0.{i}")).collect::<Vec<_>>().join(","));
    let idle = run_json(c);
    assert!(idle["opened"].as_u64().unwrap() >= 100, "{idle}");
    let (cpu, log) = (s.cpu_seconds() - cpu, s.log_text().len() - log);
    eprintln!("descriptor table full for 5 s: {cpu:.2} CPU-s, {log} bytes of log");
    assert!(cpu < 2.5, "the accept loop spun: {cpu:.2} CPU-s in 5 s");
    assert!(log < 8 * 1024, "{log} bytes of log: accept errors must be logged as a rate");
    assert!(
        s.metric("sitesign_connections_refused_total", "").unwrap_or(0.0) > 0.0
            || s.log_text().contains("accept_errors")
    );
    // Once the attacker is gone the service answers again, without a restart.
    assert!(s.eventually(Duration::from_secs(30), || register(&s, 1, json!({"kind": "internal"})).0 == 200));
}

#[test]
fn anonymous_handshakes_get_few_device_signatures_and_token_signing_goes_on() {
    let a = Appliance::new();
    let s = a.start();
    let lines: Vec<String> = (0..300).map(|n| client_request(n, json!({"kind": "internal"})).to_string()).collect();
    let before = s.metric("sitesign_tls_handshake_signatures_total", "").unwrap_or(0.0);
    let seconds = 8.0;
    let (flood, results) = std::thread::scope(|scope| {
        let attack = scope.spawn(|| {
            let mut c = s.hostile_command("anonymous", &[&seconds.to_string(), "6"]);
            c.env("HOSTILE_SOURCES", "127.0.0.2");
            run_json(c)
        });
        // The batch goes while the flood is under way.
        let under_way = s.eventually(Duration::from_secs(20), || {
            s.metric("sitesign_tls_handshake_signatures_total", "").unwrap_or(0.0) >= before + 20.0
        });
        assert!(under_way, "the anonymous flood never got going");
        let results = s.batch("during", &lines);
        (attack.join().unwrap(), results)
    });
    let granted = s.metric("sitesign_tls_handshake_signatures_total", "").unwrap_or(0.0) - before;
    eprintln!("anonymous flood: {flood}; the device signed {granted} handshakes in {seconds} s");
    // One source: a burst of 100, then 20 a second (plus this test's own few handshakes).
    assert!(granted <= 100.0 + 20.0 * seconds + 20.0, "{granted} handshake signatures for one anonymous source");
    assert!(flood["handshakes"].as_f64().unwrap() <= granted, "{flood}");
    assert_eq!(results.iter().filter(|r| r["token"].is_string()).count(), 300, "token signing went on");
}
