//! `sitesignd` over real sockets: a quickstart appliance on SoftHSM, the real service binary,
//! and real clients — curl and openssl for TLS, PyJWT's JWKS client and jwcrypto for tokens,
//! prometheus_client's parser for /metrics, raw Unix sockets for the admin socket.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sitesign::token::b64;

mod common;
use common::{ok, quickstart, run, with_config};

/// Two free, consecutive loopback ports.
fn free_ports() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < 65_000 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

struct Service {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Service {
    /// A quickstart appliance with `extra` config appended, and sitesignd running on it.
    fn start(extra: &str) -> Service {
        Self::start_with(extra, &[])
    }

    /// [`Service::start`] with more quickstart arguments.
    fn start_with(extra: &str, quickstart_args: &[&str]) -> Service {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("appliance");
        let port = free_ports();
        let mut args = vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
        args.extend(quickstart_args.iter().map(|a| (*a).to_owned()));
        quickstart(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
        if !extra.is_empty() {
            let config = dir.join("sitesign.toml");
            let text = std::fs::read_to_string(&config).unwrap();
            // Keys for [service] go into the existing table; other tables are appended.
            let text = match extra.strip_prefix("[service]\n") {
                Some(keys) => text.replace("[service]\n", &format!("[service]\n{keys}\n")),
                None => format!("{text}\n{extra}\n"),
            };
            std::fs::write(&config, text).unwrap();
        }
        let mut s = Service { log: tmp.path().join("sitesignd.log"), dir, port, child: None, _tmp: tmp };
        s.spawn(&[]);
        s
    }

    fn spawn(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sitesignd"))
            .arg("--config")
            .arg(self.dir.join("sitesign.toml"))
            .arg("--allow-root")
            .env_remove("SOFTHSM2_CONF")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.ops("/readyz").0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sitesignd did not become ready: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn mtls(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "30", "--cacert"]).arg(self.dir.join("ca.pem"));
        c.arg("--cert").arg(self.dir.join("mp/mp.crt")).arg("--key").arg(self.dir.join("mp/mp.key"));
        c
    }

    /// (status, JSON body) of an mTLS request; `body` is sent as POST when given.
    fn call(&self, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut c = self.mtls();
        c.args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            c.args(["-X", "POST", "-H", "content-type: application/json", "--data-binary", b]);
        }
        let out = c.arg(self.url(path)).output().unwrap();
        parse_curl(&out)
    }

    fn ops(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port + 1))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Peak resident memory of the service, KiB (VmHWM).
    fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap()
    }

    /// curl streaming the file `body` to the batch endpoint (-T), the answer into `body`.out.
    fn batch_command(&self, body: &Path) -> Command {
        let mut c = self.mtls();
        c.args(["-X", "POST", "-H", "content-type: application/x-ndjson", "-T"])
            .arg(body)
            .arg("-o")
            .arg(body.with_extension("out"))
            .arg(self.url("/v1/client-tokens:batch"));
        c
    }

    /// POSTs the file `body` to the batch endpoint as a stream (curl -T), returning the lines.
    fn batch_file(&self, body: &Path) -> Vec<Value> {
        let out = self.batch_command(body).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(body.with_extension("out")).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn audit_records(&self) -> Vec<Value> {
        let out = run(&mut with_config(&self.dir, &["audit", "export"]));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "sitesignd did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn parse_curl(out: &Output) -> (u16, Value) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (code.trim().parse().unwrap_or(0), v)
}

/// A random x5t#S256 (as a client certificate's would be).
fn thumbprint(seed: u8) -> String {
    let mut h = [seed; 32];
    h[0] ^= 0x5a;
    b64::encode(&h)
}

fn device(n: u8) -> String {
    format!("GUID:{n:08X}-1F3A-4B5C-9D8E-7F6A5B4C3D2E")
}

fn register(s: &Service, n: u8, proof: Value) -> (u16, Value) {
    let body = json!({"device_id": device(n), "client_cert_thumbprint": thumbprint(n), "proof": proof});
    s.call("/v1/client-tokens", Some(&body.to_string()))
}

fn python(script: &str, args: &[&str]) -> Output {
    Command::new(device_tests::pytools::bin_dir().join("python")).arg("-c").arg(script).args(args).output().unwrap()
}

#[test]
fn every_endpoint_works_over_mtls_and_tokens_verify_independently() {
    let s = Service::start("[tokens]\nrenew_after_days = 0");
    // Register on the internal network, get an access token, verify both.
    let (status, client) = register(&s, 1, json!({"kind": "internal"}));
    assert_eq!(status, 200, "{client}");
    let token = client["token"].as_str().unwrap();
    assert!(client["expires"].as_i64().unwrap() > 0);
    let (status, access) = s
        .call("/v1/access-tokens", Some(&json!({"token": token, "client_cert_thumbprint": thumbprint(1)}).to_string()));
    assert_eq!(status, 200, "{access}");
    let (_, v) = s.call(
        "/v1/tokens:verify",
        Some(&json!({"token": access["token"], "client_cert_thumbprint": thumbprint(1)}).to_string()),
    );
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["kind"], "access");
    assert_eq!(v["claims"]["DeviceId"], device(1));

    // A bulk token made by the CLI through the admin socket registers a device.
    let made = ok(run(&mut with_config(&s.dir, &["bulk-token", "new", "--lifetime", "30"])));
    let (status, by_bulk) = register(&s, 2, json!({"kind": "bulk", "token": made["token"]}));
    assert_eq!(status, 200, "{by_bulk}");
    // Renewal with the current token.
    let (status, renewed) = register(&s, 1, json!({"kind": "renew", "token": token}));
    assert_eq!(status, 200, "{renewed}");
    assert_ne!(renewed["token"], client["token"]);
    // Renewal with another device's token is refused.
    let (status, e) = register(&s, 2, json!({"kind": "renew", "token": token}));
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("proof_rejected")), "{e}");

    // /v1/certificates: SMS Issuing and the token-signing certificate, PEM.
    let (status, certs) = s.call("/v1/certificates", None);
    assert_eq!(status, 200);
    let certs = certs["certificates"].as_array().unwrap();
    let root = certs.iter().find(|c| c["role"] == "sms-issuing").unwrap();
    assert_eq!(root["pem"].as_str().unwrap(), std::fs::read_to_string(s.dir.join("ca.pem")).unwrap());
    let ts = certs.iter().find(|c| c["role"] == "token-signing").unwrap();
    let ts_pem = s.dir.join("ts-from-api.pem");
    std::fs::write(&ts_pem, ts["pem"].as_str().unwrap()).unwrap();

    // An API token verified by PyJWT with the key from /v1/certificates, and by PyJWT's JWKS
    // client fetching /.well-known/jwks.json over mTLS (kid = x5t), then jwcrypto from the JWKS.
    let script = r#"
import json, ssl, sys, jwt
from cryptography import x509
from jwcrypto import jwk, jws
token, cert, url, ca, mp_crt, mp_key = sys.argv[1:7]
pub = x509.load_pem_x509_certificate(open(cert, "rb").read()).public_key()
a = jwt.decode(token, pub, algorithms=["RS256"], audience="urn:sccm:service")
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(mp_crt, mp_key)
client = jwt.PyJWKClient(url, ssl_context=ctx)
# sitesign's header names the key by x5t (as ConfigMgr's tokens do), not kid: match on it.
x5t = jwt.get_unverified_header(token)["x5t"]
key = next(k for k in client.get_signing_keys() if k._jwk_data.get("x5t") == x5t)
b = jwt.decode(token, key.key, algorithms=["RS256"], audience="urn:sccm:service")
keyset = jwk.JWKSet.from_json(json.dumps({"keys": [k._jwk_data for k in client.get_signing_keys()]}))
s = jws.JWS(); s.deserialize(token); s.verify(keyset)
assert a == b == json.loads(s.payload)
print(json.dumps(a))
"#;
    let d = |p: &str| s.dir.join(p).to_str().unwrap().to_owned();
    let out = python(
        script,
        &[
            token,
            ts_pem.to_str().unwrap(),
            &s.url("/.well-known/jwks.json"),
            &d("ca.pem"),
            &d("mp/mp.crt"),
            &d("mp/mp.key"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let claims: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["cnf"]["x5t#S256"], thumbprint(1));

    // The batch endpoint: NDJSON in and out, in order, per-item errors.
    let lines = [
        json!({"device_id": device(10), "client_cert_thumbprint": thumbprint(10), "proof": {"kind": "internal"}})
            .to_string(),
        "not json".to_owned(),
        json!({"device_id": "nonsense", "client_cert_thumbprint": thumbprint(11), "proof": {"kind": "internal"}})
            .to_string(),
        json!({"device_id": device(12), "client_cert_thumbprint": thumbprint(12), "proof": {"kind": "internal"}})
            .to_string(),
    ];
    let out = s
        .mtls()
        .args(["-X", "POST", "-H", "content-type: application/x-ndjson", "--data-binary"])
        .arg(lines.join("\n") + "\n")
        .arg(s.url("/v1/client-tokens:batch"))
        .output()
        .unwrap();
    let results: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(results.len(), 4, "{results:?}");
    assert!(results[0]["token"].is_string() && results[3]["token"].is_string());
    assert_eq!(results[1]["error"]["code"], "bad_request");
    assert_eq!(results[2]["error"]["code"], "invalid_device_id");

    // Ops endpoints on the plain-HTTP listener, and /metrics through Prometheus' own parser.
    assert_eq!(s.ops("/healthz").0, 200);
    let (status, metrics) = s.ops("/metrics");
    assert_eq!(status, 200);
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
issued = {s.labels["kind"]: s.value for s in fams["sitesign_tokens_issued"].samples if s.name.endswith("_total")}
print(issued["client"], issued["access"], fams["sitesign_audit_fsync_seconds"].type, fams["sitesign_sign_seconds"].type)
"#;
    let mut child = Command::new(device_tests::pytools::bin_dir().join("python"))
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let parsed = child.wait_with_output().unwrap();
    assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
    assert_eq!(String::from_utf8_lossy(&parsed.stdout).trim(), "5 1 histogram histogram");
    // The ops listener carries nothing else.
    assert_eq!(s.ops("/v1/certificates").0, 400);

    // Every token released has its audit record, and the chain is intact.
    let audit = ok(run(&mut with_config(&s.dir, &["audit", "verify"])));
    assert_eq!(audit["intact"], true);
    let export = run(&mut with_config(&s.dir, &["audit", "export"]));
    let records: Vec<Value> =
        String::from_utf8(export.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let client_records = records.iter().filter(|r| r["kind"] == "client-token").count();
    assert_eq!(client_records, 5);
    let mp = records.iter().find(|r| r["kind"] == "access-token").unwrap();
    let caller = mp["caller"].as_str().unwrap();
    assert!(caller.starts_with("CN=demo-mp.sitesign.local,O=sitesign quickstart (serial "), "{caller}");
    assert!(
        records.iter().any(|r| r["kind"] == "bulk-token" && r["caller"].as_str().unwrap().starts_with("admin:uid="))
    );
    assert!(
        !String::from_utf8_lossy(&std::fs::read(s.dir.join("state/audit.db")).unwrap())
            .contains(&token[token.len() - 40..])
    );
}

#[test]
fn tls_refuses_missing_foreign_and_old_clients() {
    let s = Service::start("");
    let url = s.url("/v1/certificates");
    let ca = s.dir.join("ca.pem");
    // No client certificate.
    let out = Command::new("curl").args(["-sS", "--max-time", "10", "--cacert"]).arg(&ca).arg(&url).output().unwrap();
    assert!(!out.status.success() || parse_curl(&out).0 == 0, "served without a client certificate");
    // A certificate from another CA (a self-signed one with clientAuth).
    let key = s.dir.join("rogue.key");
    let crt = s.dir.join("rogue.crt");
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=demo-mp.sitesign.local/O=sitesign quickstart", "-addext", "extendedKeyUsage=clientAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(made.status.success());
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .arg("--cert")
        .arg(&crt)
        .arg("--key")
        .arg(&key)
        .arg(&url)
        .output()
        .unwrap();
    assert!(!out.status.success(), "served a certificate not issued by SMS Issuing");
    // The appliance's own TLS certificate is serverAuth only: not an MP identity. (Its key is
    // in the device; a real MP certificate is enough for the next checks.)
    // TLS 1.2 offered: refused by curl and by openssl s_client.
    let out = s.mtls().args(["--tls-max", "1.2"]).arg(&url).output().unwrap();
    assert!(!out.status.success(), "TLS 1.2 accepted");
    let out = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect", &format!("127.0.0.1:{}", s.port)])
        .arg("-CAfile")
        .arg(&ca)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("alert") || text.contains("no protocols available") || text.contains("Cipher is (NONE)"),
        "{text}"
    );
    // TLS 1.3 with the MP certificate works.
    let out = s.mtls().args(["--tlsv1.3", "-w", "%{http_code}", "-o", "/dev/null"]).arg(&url).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

#[test]
fn bad_requests_get_stable_errors_and_nothing_is_signed() {
    let s = Service::start("");
    // Signatures recorded (transitions, such as a block, sign nothing).
    let records = || {
        let export = run(&mut with_config(&s.dir, &["audit", "export"]));
        String::from_utf8(export.stdout).unwrap().lines().filter(|l| !l.contains("\"sha256\":\"\"")).count()
    };
    let before = records();
    // Oversized body.
    let big = format!("{{\"device_id\":\"{}\",\"pad\":\"{}\"}}", device(1), "x".repeat(17 * 1024));
    assert_eq!(s.call("/v1/client-tokens", Some(&big)).0, 413);
    // Malformed JSON, unknown fields, unknown proof kind.
    let (status, e) = s.call("/v1/client-tokens", Some("{\"device_id\":"));
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("bad_request")), "{e}");
    let (status, e) = register(&s, 1, json!({"kind": "telepathy"}));
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("bad_request")), "{e}");
    let (status, e) = s.call("/v1/client-tokens", Some(&json!({"device_id": device(1), "client_cert_thumbprint": thumbprint(1), "proof": {"kind": "internal"}, "exp": 1}).to_string()));
    assert_eq!(status, 400, "{e}");
    // Bad values.
    let (status, e) = s.call(
        "/v1/client-tokens",
        Some(
            &json!({"device_id": "GUID:nope", "client_cert_thumbprint": thumbprint(1), "proof": {"kind": "internal"}})
                .to_string(),
        ),
    );
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("invalid_device_id")), "{e}");
    // A forged bulk token, a blocked one.
    let (status, e) = register(&s, 1, json!({"kind": "bulk", "token": "eyJ0eXAiOiJKV1QifQ.e30.AAAA"}));
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("proof_rejected")), "{e}");
    let made = ok(run(&mut with_config(&s.dir, &["bulk-token", "new"])));
    ok(run(&mut with_config(&s.dir, &["bulk-token", "block", made["guid"].as_str().unwrap()])));
    let (status, e) = register(&s, 1, json!({"kind": "bulk", "token": made["token"]}));
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("proof_rejected")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().starts_with("blocked"), "{e}");
    let (_, v) = s.call("/v1/tokens:verify", Some(&json!({"token": made["token"]}).to_string()));
    assert_eq!(v, json!({"valid": false, "reason": "blocked"}));
    // An expired token, validly signed by the token-signing key (with pkcs11-tool, outside
    // sitesign): refused as expired.
    let expired = expired_client_token(&s);
    let (_, v) = s.call(
        "/v1/tokens:verify",
        Some(&json!({"token": expired, "client_cert_thumbprint": thumbprint(1)}).to_string()),
    );
    assert_eq!(v, json!({"valid": false, "reason": "expired"}));
    let (status, e) = s.call(
        "/v1/access-tokens",
        Some(&json!({"token": expired, "client_cert_thumbprint": thumbprint(1)}).to_string()),
    );
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("proof_rejected")), "{e}");
    // An unknown endpoint.
    assert_eq!(s.call("/v1/sign-anything", Some("{}")).0, 400);
    // Only the bulk token made above was signed.
    assert_eq!(records(), before + 1);
}

/// A client token that expired an hour ago, signed by the token-signing key in the SoftHSM token
/// with pkcs11-tool (its PIN answered at the prompt).
fn expired_client_token(s: &Service) -> String {
    let (_, certs) = s.call("/v1/certificates", None);
    let ts = certs["certificates"].as_array().unwrap().iter().find(|c| c["role"] == "token-signing").unwrap().clone();
    let status = ok(run(&mut with_config(&s.dir, &["status"])));
    let h = status["hierarchy_id"].as_str().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let header = json!({"typ": "JWT", "alg": "RS256", "x5t": ts["x5t"]}).to_string();
    let claims = format!(
        r#"{{"SCCMTokenCategory":"SCCMClientToken","Authority":"SCCM","License":"SCCM","Type":"Device","TenantId":"{}","UniqueId":"0d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e","DeviceId":"{}","cnf":{{"x5t#S256":"{}"}},"iss":"urn:sccm:oauth2:{}","aud":"urn:sccm:service","iat":{},"nbf":{},"exp":{}}}"#,
        h.to_uppercase(),
        device(1),
        thumbprint(1),
        h.to_lowercase(),
        now - 90 * 86_400,
        now - 90 * 86_400,
        now - 3600
    );
    let input = format!("{}.{}", b64::encode(header.as_bytes()), b64::encode(claims.as_bytes()));
    // Signed by the token-signing key in the token, in a child process that has the token's
    // SOFTHSM2_CONF (SoftHSM reads it once per process): the `sign_with_token_signing_key` helper.
    let work = s.dir.join("forge");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("input"), &input).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "sign_with_token_signing_key", "--nocapture"])
        .env("SOFTHSM2_CONF", s.dir.join("softhsm/softhsm2.conf"))
        .env("FORGE_CONFIG", s.dir.join("sitesign.toml"))
        .env("FORGE_DIR", &work)
        .output()
        .unwrap();
    let sig = std::fs::read(work.join("sig")).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    format!("{input}.{}", b64::encode(&sig))
}

/// Helper for [`expired_client_token`]: signs `$FORGE_DIR/input` with the active token-signing key
/// of the appliance `$FORGE_CONFIG`, RS256, into `$FORGE_DIR/sig`. Run only as a child process.
#[test]
#[ignore = "a helper, run by expired_client_token in its own process"]
fn sign_with_token_signing_key() {
    let config = sitesign::config::Config::load(Path::new(&std::env::var("FORGE_CONFIG").unwrap())).unwrap();
    let dir = PathBuf::from(std::env::var("FORGE_DIR").unwrap());
    let store = sitesign::store::Store::open(&config.state_dir).unwrap();
    let backends = sitesign::backends::Backends::open(&config).unwrap();
    let state = sitesign::state::State::load(&store, &config, sitesign::time::now_unix()).unwrap();
    let record = state.active(sitesign::keys::KeyRole::TokenSigning).unwrap();
    let key = backends.key(record).unwrap();
    let sig =
        key.sign(hsm_adapters::SignatureScheme::RsaPkcs1Sha256, &std::fs::read(dir.join("input")).unwrap()).unwrap();
    std::fs::write(dir.join("sig"), sig).unwrap();
}

#[test]
fn the_admin_socket_refuses_non_admin_peers() {
    let s = Service::start("");
    let socket = s.dir.join("admin.sock");
    // Let an unprivileged user reach the socket file, so the SO_PEERCRED check is what refuses.
    let mut p = s.dir.clone();
    while p.pop() {
        let _ = std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        if p == Path::new("/tmp") {
            break;
        }
    }
    std::fs::set_permissions(&s.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"op":"bulk-new","lifetime_minutes":60}\n')
print(s.makefile().readline().strip())
"#;
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["error"]["code"], "admin_forbidden", "{answer}");
    assert!(answer.get("ok").is_none());
    // The same request from an admin (root here, the service's own uid) is served.
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.write_all(b"{\"op\":\"bulk-list\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    let answer: Value = serde_json::from_str(&line).unwrap();
    assert!(answer["ok"]["bulk_tokens"].is_array(), "{answer}");
    // It is a Unix socket only: the TCP listeners do not speak the admin protocol.
    assert_eq!(s.call("/admin", Some("{\"op\":\"bulk-list\"}")).0, 400);
}

#[test]
fn audit_tampering_is_detected() {
    let mut s = Service::start("");
    for n in 1..=4 {
        assert_eq!(register(&s, n, json!({"kind": "internal"})).0, 200);
    }
    assert_eq!(s.stop().code(), Some(0), "graceful exit on SIGTERM");
    assert!(!s.dir.join("admin.sock").exists(), "the admin socket is removed on exit");
    let db = s.dir.join("state/audit.db");
    let sqlite = |sql: &str| {
        let out = Command::new("python3")
            .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit(); c.close()"])
            .arg(&db)
            .arg(sql)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // Fold the write-ahead log into the database file, so one file holds every record.
    sqlite("PRAGMA wal_checkpoint(TRUNCATE);");
    let verify = || {
        let out = run(&mut with_config(&s.dir, &["audit", "verify"]));
        (out.status.success(), serde_json::from_slice::<Value>(&out.stdout).unwrap())
    };
    let (intact, v) = verify();
    assert!(intact, "{v}");
    // On SIGTERM the service signed a checkpoint of the head with the token-signing key.
    assert_eq!(v["last_checkpoint"], v["records"], "{v}");
    let total = v["records"].clone();
    let backup = std::fs::read(&db).unwrap();
    for (what, sql) in [
        ("edit", "UPDATE audit SET subject = 'GUID:FORGED' WHERE seq = 6"),
        ("deletion", "DELETE FROM audit WHERE seq = 5"),
        (
            "reordering",
            "UPDATE audit SET seq = seq + 100 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = 105",
        ),
        ("truncated hash", "UPDATE audit SET hash = substr(hash, 1, 10) WHERE seq = 7"),
        // The last records deleted: the chain alone is intact, the signed checkpoint is not.
        ("deletion at the end", "DELETE FROM audit WHERE seq >= 7"),
        ("forged checkpoint", "UPDATE checkpoints SET signature = 'AAAA' || substr(signature, 5)"),
    ] {
        std::fs::write(&db, &backup).unwrap();
        let _ = std::fs::remove_file(s.dir.join("state/audit.db-wal"));
        assert_eq!(verify().1["records"], total, "restored");
        sqlite(sql);
        let (intact, v) = verify();
        assert!(!intact, "{what} not detected: {v}");
        assert_eq!(v["intact"], false);
    }
}

#[test]
fn an_audit_log_that_cannot_be_written_stops_signing_and_readiness() {
    // A 64 KiB cap on the audit database: it fills as a full disk would.
    let s = Service::start("[audit]\nmax_size_mb = 0.0625");
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
    let audit = ok(run(&mut with_config(&s.dir, &["audit", "verify"])));
    let client_records = String::from_utf8(run(&mut with_config(&s.dir, &["audit", "export"])).stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"client-token\""))
        .count();
    assert_eq!(client_records, released, "{audit}");
}

#[test]
fn rate_limits_and_systemd_notification() {
    let tmp = tempfile::tempdir().unwrap();
    let notify = tmp.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut s = Service::start("");
    s.stop();
    let config = s.dir.join("sitesign.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[service]\n", "[service]\nrate_limit_per_second = 1\nrate_limit_burst = 3\n"),
    )
    .unwrap();
    s.spawn(&[("NOTIFY_SOCKET", notify.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"READY=1\n"), "{}", String::from_utf8_lossy(&buf[..n]));
    // Readiness polling used none of the MP's budget (ops listener): the burst of 3 passes, then
    // (one token a second coming back) a request is told to wait.
    let statuses: Vec<u16> = (0..6).map(|_| s.call("/v1/certificates", None).0).collect();
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|c| *c == 200 || *c == 429), "{statuses:?}");
    // A refused request says when to come back.
    let refused = (0..6)
        .map(|_| {
            let out = s.mtls().args(["-D", "-", "-o", "/dev/null"]).arg(s.url("/v1/certificates")).output().unwrap();
            String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
        })
        .find(|h| h.starts_with("http/1.1 429"))
        .expect("six quick requests at one a second: some are refused");
    assert!(refused.contains("retry-after: "), "{refused}");
    s.stop();
    let n = listener.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn the_systemd_unit_is_hardened() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/sitesignd.service");
    let out = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("→ Overall exposure level for sitesignd.service: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {text}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{text}");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for required in ["Type=notify", "User=sitesign", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n"] {
        assert!(unit_text.contains(required), "{required}");
    }
}

/// The DeviceId inside a token (its payload decoded, not verified: the tests above verify).
fn device_in(token: &str) -> String {
    let v: Value = serde_json::from_slice(&b64::decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    v["DeviceId"].as_str().unwrap().to_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn batches_keep_order_report_per_item_errors_and_audit_every_token() {
    let s = Service::start("");
    // 300 items: every 7th malformed, every 11th a bad device id, every 13th a forged renewal.
    let mut lines = Vec::new();
    let mut expected = Vec::new();
    for i in 0..300u32 {
        let dev = format!("GUID:{i:08X}-0000-4000-8000-000000000000");
        if i % 7 == 3 {
            lines.push(format!("{{\"device_id\": \"{dev}\", broken"));
            expected.push(Err("bad_request"));
        } else if i % 11 == 5 {
            lines.push(json!({"device_id": format!("GUID:{i}"), "client_cert_thumbprint": thumbprint(1), "proof": {"kind": "internal"}}).to_string());
            expected.push(Err("invalid_device_id"));
        } else if i % 13 == 6 {
            lines.push(json!({"device_id": dev, "client_cert_thumbprint": thumbprint(1), "proof": {"kind": "renew", "token": "e30.e30.e30"}}).to_string());
            expected.push(Err("proof_rejected"));
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
    let records = s.audit_records();
    let audited: std::collections::HashSet<&str> =
        records.iter().filter(|r| r["kind"] == "client-token").map(|r| r["sha256"].as_str().unwrap()).collect();
    let mut tokens = 0;
    for (i, (got, want)) in results.iter().zip(&expected).enumerate() {
        match want {
            Ok(dev) => {
                let token = got["token"].as_str().unwrap_or_else(|| panic!("item {i}: {got}"));
                assert_eq!(&device_in(token), dev, "item {i} out of order");
                assert!(audited.contains(sha256_hex(token.as_bytes()).as_str()), "item {i} has no audit record");
                tokens += 1;
            }
            Err(code) => assert_eq!(got["error"]["code"], *code, "item {i}: {got}"),
        }
    }
    assert_eq!(audited.len(), tokens, "no record without a released token");
    assert!(verify_chain(&s));
}

fn verify_chain(s: &Service) -> bool {
    ok(run(&mut with_config(&s.dir, &["audit", "verify"])))["intact"] == true
}

/// Sends a batch of `n` internal registrations (from `first`); returns (response bytes, tokens).
fn internal_batch(s: &Service, name: &str, first: u32, n: u32) -> (u64, u32) {
    let body_path = s.dir.join(format!("{name}.ndjson"));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&body_path).unwrap());
        for i in first..first + n {
            writeln!(
                f,
                "{{\"device_id\":\"GUID:{i:08X}-0000-4000-8000-000000000000\",\"client_cert_thumbprint\":\"{}\",\"proof\":{{\"kind\":\"internal\"}}}}",
                thumbprint((i % 251) as u8)
            )
            .unwrap();
        }
    }
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
    let s = Service::start_with("", &["--token-algorithm", "ec-p256"]);
    // A first batch brings the service to its working set (allocator arenas, the in-flight
    // window); a batch four times as long then needs at most a bounded amount more — what its
    // in-flight window holds (4,096 results, a few MiB) plus allocator noise — never anything
    // that grows with the batch's length (its response alone is 48 MB).
    let (_, short) = internal_batch(&s, "short", 0, 15_000);
    assert_eq!(short, 15_000);
    let after_short = s.peak_rss_kib();
    let (response_bytes, long) = internal_batch(&s, "long", 100_000, 60_000);
    assert_eq!(long, 60_000);
    let growth = s.peak_rss_kib().saturating_sub(after_short);
    eprintln!(
        "peak RSS {after_short} KiB after 15,000 lines; grew {growth} KiB more over 60,000 lines ({response_bytes}-byte response)"
    );
    assert!(
        growth < 16 * 1024 && growth * 1024 < response_bytes / 3,
        "peak RSS grew {growth} KiB over a 60,000-line batch after a 15,000-line one ({response_bytes}-byte response)"
    );
    let audited = s.audit_records().iter().filter(|r| r["kind"] == "client-token").count();
    assert_eq!(audited, 75_000);
}

#[test]
fn a_full_queue_answers_busy_and_signs_nothing_for_it() {
    // A queue of one job, kept full by a long batch (which waits for room: backpressure); single
    // requests arriving meanwhile find it full and are told to come back.
    let s = Service::start("[service]\nqueue_depth = 1\nrate_limit_per_second = 100000\nrate_limit_burst = 100000");
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&out_path).map_or(0, |m| m.len()) < 4096 {
        assert!(Instant::now() < deadline, "the batch never started answering");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut answers = Vec::new();
    for i in 0..20u8 {
        let body =
            json!({"device_id": device(i), "client_cert_thumbprint": thumbprint(i), "proof": {"kind": "internal"}});
        let out = s
            .mtls()
            .args(["-D", "-", "-H", "content-type: application/json", "--data-binary", &body.to_string()])
            .arg(s.url("/v1/client-tokens"))
            .output()
            .unwrap();
        answers.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    assert!(batch.wait().unwrap().success());
    let ok_count = answers.iter().filter(|a| a.starts_with("HTTP/1.1 200")).count();
    let busy: Vec<&String> = answers.iter().filter(|a| a.starts_with("HTTP/1.1 503")).collect();
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
    let audited = s.audit_records().iter().filter(|r| r["kind"] == "client-token").count();
    assert_eq!(audited, ok_count + batch_tokens, "a busy answer signed nothing");
}
