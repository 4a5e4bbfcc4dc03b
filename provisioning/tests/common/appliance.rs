//! The appliance fixture of the service tests: a quickstart appliance on its own SoftHSM token
//! (or swtpm) in a temporary folder, its configuration changed through typed edits, and the real
//! `sitesignd` started on it — on ports the kernel picks, reported back (and readiness signalled)
//! through `sd_notify`, as systemd would see it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sitesign::config::ConfigFile;

use super::{json, ok, run, sitesign};

/// How long a request of a test may take: generous, since debug builds on a loaded 2-core
/// machine are slow, and a hung request must still end the test.
pub const REQUEST_TIMEOUT: &str = "120";

/// Lifts a `[service]` table's per-MP rate limit (inside an [`Appliance::edit_service`]): for
/// tests about something else than the limit.
pub fn unlimited(svc: &mut sitesign::config::ServiceConfigFile) {
    svc.rate_limit_per_second = Some(1_000_000);
    svc.rate_limit_burst = Some(1_000_000);
}

/// A quickstart appliance in a temporary folder.
pub struct Appliance {
    _tmp: Option<tempfile::TempDir>,
    /// The appliance's folder (`sitesign.toml`, `ca.pem`, `mp/`, `state/` …).
    pub dir: PathBuf,
    /// What quickstart reported.
    pub made: Value,
}

impl Appliance {
    /// A SoftHSM appliance with an RS256 token-signing key.
    pub fn new() -> Appliance {
        Appliance::with(&[])
    }

    /// An appliance made with these extra quickstart arguments.
    pub fn with(args: &[&str]) -> Appliance {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("appliance");
        let mut cmd = sitesign();
        cmd.args(["quickstart", "--json", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--dir"])
            .arg(&dir)
            .args(args);
        let made = ok(run(&mut cmd));
        Appliance { _tmp: Some(tmp), dir, made }
    }

    /// An appliance made otherwise (`sitesign setup`, a restore) in `dir`: its configuration
    /// `dir/sitesign.toml`, the SMS Issuing certificate `dir/ca.pem` and a management point's
    /// `dir/mp/mp.{crt,key}`, as [`Service::mtls`] expects them.
    pub fn at(dir: PathBuf) -> Appliance {
        Appliance { _tmp: None, dir, made: Value::Null }
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("sitesign.toml")
    }

    /// Changes the configuration through its typed form.
    pub fn edit(&self, change: impl FnOnce(&mut ConfigFile)) {
        let path = self.config_path();
        let mut file: ConfigFile = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        change(&mut file);
        std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    }

    /// Changes the `[service]` table.
    pub fn edit_service(&self, change: impl FnOnce(&mut sitesign::config::ServiceConfigFile)) {
        self.edit(|f| change(f.service.get_or_insert_with(Default::default)));
    }

    /// Changes the `[tokens]` table.
    pub fn edit_tokens(&self, change: impl FnOnce(&mut sitesign::config::TokensConfigFile)) {
        self.edit(|f| change(f.tokens.get_or_insert_with(Default::default)));
    }

    /// `sitesign --json --config … ARGS` (not checked).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = sitesign();
        cmd.arg("--json").arg("--config").arg(self.config_path()).args(args);
        run(&mut cmd)
    }

    /// `sitesign --json … ARGS`, which must succeed; its JSON answer.
    pub fn ok(&self, args: &[&str]) -> Value {
        ok(self.cli(args))
    }

    /// A new management point: an openssl key, a PKCS#10 request, a certificate issued by
    /// sitesign; (certificate, key, serial).
    pub fn enrol_mp(&self, name: &str) -> (PathBuf, PathBuf, String) {
        let (key, csr) = super::key_and_csr(&self.dir, name, &format!("{name}.contoso.test"), None);
        let crt = self.dir.join(format!("{name}.crt"));
        let issued = self.ok(&[
            "cert",
            "issue",
            "--profile",
            "mp-client",
            "--csr",
            csr.to_str().unwrap(),
            "--out",
            crt.to_str().unwrap(),
        ]);
        (crt, key, issued["certificate"]["serial"].as_str().unwrap().to_owned())
    }

    /// The audit records, as `audit export` writes them.
    pub fn audit_records(&self) -> Vec<Value> {
        let out = self.cli(&["audit", "export"]);
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Whether `audit verify` finds the chain intact.
    pub fn audit_intact(&self) -> bool {
        let out = self.cli(&["audit", "verify"]);
        out.status.success() && json(&out)["intact"] == true
    }

    /// Starts `sitesignd` on this appliance and waits until it says it is ready.
    pub fn start(&self) -> Service {
        self.start_with(&[])
    }

    /// [`Appliance::start`] with extra environment.
    pub fn start_with(&self, env: &[(&str, &str)]) -> Service {
        let (service, ready) = self.spawn(env, true);
        if let Err(e) = ready {
            panic!("sitesignd did not become ready: {e}\n{}", service.log_text());
        }
        service
    }

    /// Starts `sitesignd` (with `--allow-root` if `allow_root`: the tests run as root) and returns
    /// it with whether it became ready (or why not).
    pub fn spawn(&self, env: &[(&str, &str)], allow_root: bool) -> (Service, Result<(), String>) {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let notify_path = self.dir.join(format!("notify-{n}.sock"));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let log = self.dir.join(format!("sitesignd-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_sitesignd"))
            .arg("--config")
            .arg(self.config_path())
            .args(if allow_root { &["--allow-root"][..] } else { &[] })
            .env_remove("SOFTHSM2_CONF")
            .env("NOTIFY_SOCKET", &notify_path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut service = Service {
            dir: self.dir.clone(),
            child: Some(child),
            api: "0.0.0.0:0".parse().unwrap(),
            ops: None,
            log,
            notify,
        };
        let ready = service.wait_ready();
        (service, ready)
    }
}

/// A running `sitesignd`.
pub struct Service {
    /// The appliance's folder.
    pub dir: PathBuf,
    child: Option<Child>,
    /// Where the mTLS API listens.
    pub api: SocketAddr,
    /// Where the ops listener listens.
    pub ops: Option<SocketAddr>,
    log: PathBuf,
    notify: UnixDatagram,
}

impl Service {
    /// Waits for `READY=1` on the notify socket and reads the addresses from `STATUS=`.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("it exited with {status}"));
            }
            let Ok(n) = self.notify.recv(&mut buf) else { continue };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !text.lines().any(|l| l == "READY=1") {
                continue;
            }
            let status = text.lines().find_map(|l| l.strip_prefix("STATUS=")).ok_or("READY without STATUS")?;
            for word in status.split_whitespace() {
                if let Some(a) = word.strip_prefix("api=") {
                    self.api = a.parse().map_err(|e| format!("{a}: {e}"))?;
                }
                if let Some(a) = word.strip_prefix("ops=") {
                    self.ops = a.parse().ok();
                }
            }
            return Ok(());
        }
        Err("no READY=1 within 120 s".into())
    }

    /// The next `sd_notify` message, if one arrives within `wait`.
    pub fn notification(&self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// The service's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `https://127.0.0.1:PORT/PATH` on the API listener.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api.port())
    }

    /// curl with the demo MP's certificate, trusting `ca.pem`.
    pub fn mtls(&self) -> Command {
        self.mtls_as(&self.dir.join("mp/mp.crt"), &self.dir.join("mp/mp.key"))
    }

    /// curl with another client certificate.
    pub fn mtls_as(&self, cert: &Path, key: &Path) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", REQUEST_TIMEOUT, "--cacert"]).arg(self.dir.join("ca.pem"));
        c.arg("--cert").arg(cert).arg("--key").arg(key);
        c
    }

    /// (status, JSON body) of an mTLS request; `body` is sent as a JSON POST when given.
    pub fn call(&self, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut c = self.mtls();
        self.call_with(&mut c, path, body)
    }

    /// [`Service::call`] with a prepared curl command.
    pub fn call_with(&self, c: &mut Command, path: &str, body: Option<&str>) -> (u16, Value) {
        c.args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            c.args(["-X", "POST", "-H", "content-type: application/json", "--data-binary", b]);
        }
        let out = c.arg(self.url(path)).output().unwrap();
        parse_curl(&out)
    }

    /// The `x5t#S256` (SHA-256 of the DER, base64url) of the certificate a new TLS connection
    /// is served, read by OpenSSL's client.
    pub fn served_certificate_x5t(&self) -> Option<String> {
        let script = format!(
            "openssl s_client -connect 127.0.0.1:{} -cert '{}' -key '{}' </dev/null 2>/dev/null | openssl x509 -outform DER | openssl dgst -sha256 -binary | basenc --base64url",
            self.api.port(),
            self.dir.join("mp/mp.crt").display(),
            self.dir.join("mp/mp.key").display()
        );
        let out = Command::new("bash").args(["-o", "pipefail", "-c", &script]).output().unwrap();
        let x5t = String::from_utf8_lossy(&out.stdout).trim().trim_end_matches('=').to_owned();
        (out.status.success() && !x5t.is_empty()).then_some(x5t)
    }

    /// (status, body) of a plain-HTTP request to the ops listener.
    pub fn ops(&self, path: &str) -> (u16, String) {
        let ops = self.ops.expect("the ops listener is on");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", REQUEST_TIMEOUT, "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{}{path}", ops.port()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Peak resident memory of the service, KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
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
    pub fn batch_command(&self, body: &Path) -> Command {
        let mut c = self.mtls();
        c.args(["-X", "POST", "-H", "content-type: application/x-ndjson", "-T"])
            .arg(body)
            .arg("-o")
            .arg(body.with_extension("out"))
            .arg(self.url("/v1/client-tokens:batch"));
        c
    }

    /// POSTs the file `body` to the batch endpoint as a stream; the answer's lines.
    pub fn batch_file(&self, body: &Path) -> Vec<Value> {
        let out = self.batch_command(body).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(body.with_extension("out")).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Writes `lines` (NDJSON) to a file in the appliance folder and POSTs it as a batch.
    pub fn batch(&self, name: &str, lines: &[String]) -> Vec<Value> {
        let path = self.dir.join(format!("{name}.ndjson"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        drop(f);
        self.batch_file(&path)
    }

    /// Runs `tools/hostile.py COMMAND` against the API listener with the demo MP's certificate
    /// (anonymous commands do not present it); its JSON answer.
    pub fn hostile(&self, command: &str, args: &[&str]) -> Value {
        let out = self.hostile_command(command, args).output().unwrap();
        assert!(out.status.success(), "hostile.py {command}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("hostile.py {command}: {e}: {text}"))
    }

    /// The command line of [`Service::hostile`], to spawn it.
    pub fn hostile_command(&self, command: &str, args: &[&str]) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/hostile.py");
        let mut c = Command::new(device_tests::pytools::bin_dir().join("python"));
        c.arg(script).arg(command).arg("127.0.0.1").arg(self.api.port().to_string());
        c.arg(self.dir.join("ca.pem")).arg(self.dir.join("mp/mp.crt")).arg(self.dir.join("mp/mp.key"));
        c.args(args);
        c
    }

    /// Whether the process is still running (not exited, not a zombie waiting to be reaped).
    pub fn running(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    }

    /// CPU time the service has used so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces) : utime is the 14th field, stime the 15th.
        let rest = stat.rsplit_once(')').unwrap().1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / rustix::param::clock_ticks_per_second() as f64
    }

    /// Sends SIGTERM and waits (at most 60 s) for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.wait_exit(Duration::from_secs(60)).expect("sitesignd did not stop on SIGTERM")
    }

    /// Sends `signal` to the service.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits for the service to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child.take();
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A counter or gauge from the ops listener's `/metrics`: the sample `NAME LABELS`, or with
    /// `labels` empty the sum over all of the family's samples; `None` if there is none.
    pub fn metric(&self, name: &str, labels: &str) -> Option<f64> {
        let (_, text) = self.ops("/metrics");
        let (exact, family) = (format!("{name}{labels}"), format!("{name}{{"));
        let values: Vec<f64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(k, _)| *k == exact || (labels.is_empty() && k.starts_with(&family)))
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Polls `check` every 50 ms for at most `within`; whether it came true.
    pub fn eventually(&self, within: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        check()
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

/// (status, body as JSON or as a string) of a curl run with `-w "\n%{http_code}"`; status 0 when
/// curl got no HTTP answer.
pub fn parse_curl(out: &Output) -> (u16, Value) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (code.trim().parse().unwrap_or(0), v)
}

/// A deterministic x5t#S256 (as a client certificate's would be).
pub fn thumbprint(seed: u8) -> String {
    let mut h = [seed; 32];
    h[0] ^= 0x5a;
    sitesign::token::b64::encode(&h)
}

/// A device id.
pub fn device(n: u32) -> String {
    format!("GUID:{n:08X}-1F3A-4B5C-9D8E-7F6A5B4C3D2E")
}

/// The JSON of a client-token request.
pub fn client_request(n: u32, proof: Value) -> Value {
    serde_json::json!({"device_id": device(n), "client_cert_thumbprint": thumbprint((n % 251) as u8), "proof": proof})
}

/// Registers device `n` with `proof`.
pub fn register(s: &Service, n: u32, proof: Value) -> (u16, Value) {
    s.call("/v1/client-tokens", Some(&client_request(n, proof).to_string()))
}

/// The claims of a token (its payload decoded, not verified: the tests verify separately).
pub fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&sitesign::token::b64::decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// The header of a token.
pub fn header_of(token: &str) -> Value {
    serde_json::from_slice(&sitesign::token::b64::decode(token.split('.').next().unwrap()).unwrap()).unwrap()
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A Python checker from `provisioning/tests/tools` run with the independent checkers' venv.
pub fn python_tool(tool: &str, args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools").join(tool);
    Command::new(device_tests::pytools::bin_dir().join("python")).arg(script).args(args).output().unwrap()
}

/// [`python_tool`] with `input` on its standard input.
pub fn python_tool_with_input(tool: &str, args: &[&str], input: &[u8]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools").join(tool);
    let mut child = Command::new(device_tests::pytools::bin_dir().join("python"))
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Writes an NDJSON batch of `n` internal-proof requests for devices `first..first + n`.
pub fn internal_batch_file(dir: &Path, name: &str, first: u32, n: u32) -> PathBuf {
    let path = dir.join(format!("{name}.ndjson"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in first..first + n {
        writeln!(
            f,
            "{{\"device_id\":\"GUID:{i:08X}-0000-4000-8000-000000000000\",\"client_cert_thumbprint\":\"{}\",\"proof\":{{\"kind\":\"internal\"}}}}",
            thumbprint((i % 251) as u8)
        )
        .unwrap();
    }
    path
}

/// The fault-injecting PKCS#11 module (`faulty-pkcs11`, built beside the test binaries as a
/// dev-dependency).
pub fn faulty_module() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_sitesignd")).parent().unwrap().to_owned();
    [bin.join("libfaulty_pkcs11.so"), bin.join("deps/libfaulty_pkcs11.so")]
        .into_iter()
        .find(|p| p.exists())
        .expect("libfaulty_pkcs11.so is built with the tests (a dev-dependency)")
}

/// Writes the fault module's configuration (it re-reads the file when it changes). The file is
/// replaced by a rename, so the module never reads half of it.
pub fn set_faults(path: &Path, faults: &faulty_pkcs11::Faults) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, toml::to_string(faults).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Checks tokens' signatures with `ring` against the keys of the service's JWKS — a second
/// implementation, not the device and not sitesign's verifier.
pub struct JwksChecker {
    keys: std::collections::HashMap<String, (bool, Vec<u8>, Vec<u8>)>,
}

impl JwksChecker {
    /// Reads the service's JWKS.
    pub fn fetch(s: &Service) -> JwksChecker {
        let (status, jwks) = s.call("/.well-known/jwks.json", None);
        assert_eq!(status, 200, "{jwks}\n{}", s.log_text());
        let b64 = |v: &Value| sitesign::token::b64::decode(v.as_str().unwrap()).unwrap();
        let keys = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let x5t = k["x5t"].as_str().unwrap().to_owned();
                match k["kty"].as_str() {
                    Some("RSA") => (x5t, (true, b64(&k["n"]), b64(&k["e"]))),
                    _ => (x5t, (false, b64(&k["x"]), b64(&k["y"]))),
                }
            })
            .collect();
        JwksChecker { keys }
    }

    /// Whether `token`'s signature verifies under the key its header names.
    pub fn verifies(&self, token: &str) -> bool {
        use ring::signature::{
            ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
        };
        let Some((signed, sig)) = token.rsplit_once('.') else { return false };
        let Some(sig) = sitesign::token::b64::decode(sig) else { return false };
        let Some(x5t) = header_of(token)["x5t"].as_str().map(str::to_owned) else { return false };
        match self.keys.get(&x5t) {
            Some((true, n, e)) => {
                RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &sig).is_ok()
            }
            Some((false, x, y)) => {
                let point = [&[4u8][..], x, y].concat();
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(signed.as_bytes(), &sig).is_ok()
            }
            None => false,
        }
    }
}
