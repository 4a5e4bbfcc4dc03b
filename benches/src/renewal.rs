//! `renewal`: the end-to-end mass-renewal benchmark (SPEC §6, issue 7).
//!
//! In one run it
//! 1. measures the **raw** sign rate of the backend with the same key type and the same number
//!    of sessions (`raw-rate`, a fresh device of the same kind);
//! 2. provisions a fresh appliance (`sitesign quickstart`: SoftHSM, or with `--backend swtpm` a
//!    private swtpm) and starts `sitesignd`;
//! 3. registers N devices through `POST /v1/client-tokens:batch` over HTTPS with mTLS (internal
//!    proofs); rotates the token-signing key (`sitesign rotate token-signing --activate-at now`,
//!    through the running service's admin socket) — the mass renewal a real site runs, since a
//!    token of the active key is not renewable before `renew_after_days`; then **renews** all N
//!    with their tokens (renew proofs: each presented token fully verified, then re-signed by the
//!    new key) — the renewal phase is the end-to-end rate;
//! 4. drives single-token requests from 64 concurrent MP connections and records their latency;
//! 5. prints one JSON line: raw rate, end-to-end rate, their ratio, p50/p99 single-token latency,
//!    sitesignd's peak RSS.
//!
//! `cargo run --release -p sitesign-benches --bin renewal -- [--tokens N | --million]
//! [--backend swtpm] [--algorithm ec-p256] [--hsm-latency-ms 20 --sessions 64]`. Progress goes to
//! standard error.
//!
//! `--hsm-latency-ms` makes the SoftHSM a network HSM: every call goes through `faulty-pkcs11`,
//! which adds that latency to each `C_Sign` (raw rate and appliance alike). The JSON line then
//! also gives the latency-bound rate, sessions / latency, and the end-to-end rate's share of it.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Device {
    Softhsm,
    Swtpm,
}

/// End-to-end renewal benchmark: raw backend rate vs. tokens through sitesignd's batch endpoint.
#[derive(Debug, Parser)]
struct Args {
    /// Tokens to register and then renew.
    #[arg(long, default_value_t = 100_000)]
    tokens: u64,
    /// 1,000,000 tokens.
    #[arg(long)]
    million: bool,
    /// The key device.
    #[arg(long, value_enum, default_value = "softhsm")]
    backend: Device,
    /// Token-signing key: rsa-2048 (RS256) or ec-p256 (ES256).
    #[arg(long, default_value = "rsa-2048")]
    algorithm: String,
    /// Concurrent MP connections for the single-token latency phases: one phase per value
    /// (comma-separated), each `--latency-seconds` long.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64])]
    concurrency: Vec<usize>,
    /// Seconds of each single-token latency phase.
    #[arg(long, default_value_t = 10.0)]
    latency_seconds: f64,
    /// Seconds of the raw-rate measurement.
    #[arg(long, default_value_t = 5.0)]
    raw_seconds: f64,
    /// Keep the appliance in this folder (default: a temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Device sessions (signing workers). Default: the number of CPUs for SoftHSM, 1 for swtpm.
    #[arg(long)]
    sessions: Option<usize>,
    /// Milliseconds added to every C_Sign (a network HSM), through the faulty-pkcs11 shim.
    #[arg(long)]
    hsm_latency_ms: Option<u64>,
    /// Scrape sitesignd's /metrics every half second into this file (JSON lines: seconds since
    /// the service started, the phase, every sample); `scripts/plot-metrics` draws it.
    #[arg(long)]
    metrics_out: Option<PathBuf>,
}

/// The benchmark's phase, as the metrics scraper labels its samples.
static PHASE: std::sync::Mutex<&'static str> = std::sync::Mutex::new("start");

fn phase(name: &'static str) {
    *PHASE.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = name;
}

/// The samples of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> serde_json::Map<String, serde_json::Value> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), serde_json::Value::from(v.parse::<f64>().ok()?))))
        .collect()
}

/// Scrapes `http://127.0.0.1:PORT/metrics` every 500 ms into `out` until `stop` is set.
fn scrape(
    port: u16,
    out: PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let mut file = BufWriter::new(std::fs::File::create(&out)?);
        let started = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let next = Instant::now() + Duration::from_millis(500);
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
            let phase = *PHASE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let line =
                serde_json::json!({"t": started.elapsed().as_secs_f64(), "phase": phase, "samples": samples(body)});
            writeln!(file, "{line}")?;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        file.flush()?;
        Ok(())
    })
}

/// The fault-injecting module, built beside the binaries (a dependency).
fn latency_shim() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let folder = exe.parent().context("binary folder")?;
    [folder.join("libfaulty_pkcs11.so"), folder.join("deps/libfaulty_pkcs11.so")]
        .into_iter()
        .find(|p| p.exists())
        .context("libfaulty_pkcs11.so not found: cargo build --release -p sitesign-benches builds it")
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("binary folder")?.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p sitesign-provisioning -p sitesign-benches)",
            path.display()
        );
    }
    Ok(path)
}

/// The `Environment=` settings of the shipped unit (systemd/sitesignd.service): the service is
/// measured with the environment it runs with.
fn unit_environment() -> anyhow::Result<Vec<(String, String)>> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/sitesignd.service");
    let text = std::fs::read_to_string(&unit).with_context(|| unit.display().to_string())?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .flat_map(|v| v.split_whitespace())
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect())
}

fn free_port() -> anyhow::Result<u16> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port < 65_000 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
}

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")).map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
        })
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A device's id and its client certificate thumbprint (deterministic from its number).
fn device(i: u64) -> (String, String) {
    let id = format!("GUID:{:08X}-{:04X}-4000-8000-{:012X}", i & 0xffff_ffff, (i >> 32) & 0xffff, i);
    let out = sitesign::token::b64::encode(ring::digest::digest(&ring::digest::SHA256, &i.to_be_bytes()).as_ref());
    (id, out)
}

struct Client {
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
}

impl Client {
    fn new(dir: &Path, port: u16) -> anyhow::Result<Client> {
        let pem = |p: &str| -> anyhow::Result<Vec<u8>> {
            Ok(der::pem::decode_vec(&std::fs::read(dir.join(p))?).map_err(|e| anyhow::anyhow!("{p}: {e}"))?.1)
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(pem("ca.pem")?))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem("mp/mp.key")?));
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![CertificateDer::from(pem("mp/mp.crt")?)], key)?;
        Ok(Client { config: Arc::new(config), addr: SocketAddr::from(([127, 0, 0, 1], port)) })
    }

    async fn connect<B>(&self) -> anyhow::Result<hyper::client::conn::http1::SendRequest<B>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
            .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

type LineStream = futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>;

/// Streams `lines` (chunks of NDJSON) to the batch endpoint; returns (tokens, errors, seconds).
/// Each response line goes to `sink` as it arrives.
async fn batch(
    client: &Client,
    lines: LineStream,
    total: u64,
    label: &str,
    mut sink: impl FnMut(&[u8]) -> bool + Send,
) -> anyhow::Result<(u64, u64, f64)> {
    let mut sender = client.connect::<StreamBody<LineStream>>().await?;
    let bar = ProgressBar::new(total).with_message(label.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")?.progress_chars("=> "),
    );
    let started = Instant::now();
    let request = hyper::Request::post("/v1/client-tokens:batch")
        .header("host", "127.0.0.1")
        .header("content-type", "application/x-ndjson")
        .body(StreamBody::new(lines))?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        bail!("batch answered {}", response.status());
    }
    let mut body = response.into_body();
    let (mut tokens, mut errors, mut pending) = (0u64, 0u64, Vec::<u8>::new());
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        pending.extend_from_slice(&data);
        let mut start = 0;
        while let Some(at) = pending[start..].iter().position(|b| *b == b'\n') {
            let line = &pending[start..start + at];
            if sink(line) {
                tokens += 1;
            } else {
                errors += 1;
            }
            start += at + 1;
        }
        pending.drain(..start);
        bar.set_position(tokens + errors);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok((tokens, errors, seconds))
}

/// NDJSON chunks of ~64 KiB from `line(i)` for i in 0..n.
fn generate(n: u64, mut line: impl FnMut(u64, &mut Vec<u8>) + Send + 'static) -> LineStream {
    futures_util::stream::unfold(0u64, move |i| {
        let mut chunk = Vec::with_capacity(64 * 1024 + 2048);
        let mut j = i;
        while j < n && chunk.len() < 64 * 1024 {
            line(j, &mut chunk);
            j += 1;
        }
        let out = (!chunk.is_empty()).then(|| (Ok(Frame::data(Bytes::from(chunk))), j));
        std::future::ready(out)
    })
    .boxed()
}

/// The `x5t` in the header of `token`.
fn x5t_of(token: &str) -> anyhow::Result<String> {
    let header = token.split('.').next().and_then(sitesign::token::b64::decode).context("not a token")?;
    let header: serde_json::Value = serde_json::from_slice(&header)?;
    Ok(header["x5t"].as_str().context("no x5t")?.to_owned())
}

/// The `x5t` of the first token in the file of registered tokens.
fn first_line_x5t(path: &Path) -> anyhow::Result<String> {
    let mut line = String::new();
    BufReader::new(std::fs::File::open(path)?).read_line(&mut line)?;
    x5t_of(line.trim())
}

/// The `x5t` of the key signing new tokens now: one internal registration of a spare device.
async fn signing_x5t(client: &Client) -> anyhow::Result<String> {
    let mut sender = client.connect::<Full<Bytes>>().await?;
    let (id, tp) = device(0xffff_ffff_ffff);
    let body = format!(r#"{{"device_id":"{id}","client_cert_thumbprint":"{tp}","proof":{{"kind":"internal"}}}}"#);
    let request = hyper::Request::post("/v1/client-tokens")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    x5t_of(answer["token"].as_str().with_context(|| format!("no token in {answer}"))?)
}

/// Single-token requests from `concurrency` connections for `seconds`: the latencies in ms of the
/// ones that succeeded, sorted, and the number that did not (reported beside them, never hidden).
async fn latency(client: Arc<Client>, concurrency: usize, seconds: f64) -> anyhow::Result<(Vec<f64>, u64)> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let client = Arc::clone(&client);
        tasks.push(tokio::spawn(async move {
            let mut sender = client.connect::<Full<Bytes>>().await?;
            let (mut out, mut failed) = (Vec::new(), 0u64);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let (id, tp) = device(10_000_000_000 + (c as u64) * 1_000_000 + i);
                let body =
                    format!(r#"{{"device_id":"{id}","client_cert_thumbprint":"{tp}","proof":{{"kind":"internal"}}}}"#);
                let request = hyper::Request::post("/v1/client-tokens")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                let started = Instant::now();
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                if status.is_success() {
                    out.push(started.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed += 1;
                }
                i += 1;
            }
            anyhow::Ok((out, failed))
        }));
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (latencies, failures) = t.await??;
        all.extend(latencies);
        failed += failures;
    }
    all.sort_by(f64::total_cmp);
    Ok((all, failed))
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// The performance targets of issue 15 this run measured, each with its figure and whether it was
/// met (a target whose phase did not run is left out).
fn targets(algorithm: &str, ratio: f64, single: &serde_json::Value, tokens: u64, peak_mib: f64) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut target = |name: &str, measured: f64, limit: f64, at_least: bool| {
        let met = if at_least { measured >= limit } else { measured <= limit };
        out.insert(name.to_owned(), serde_json::json!({"measured": measured, "target": limit, "met": met}));
    };
    match algorithm {
        "rsa-2048" => target("rs256_renewal_ratio_at_least", ratio, 0.90, true),
        "ec-p256" => target("es256_renewal_ratio_at_least", ratio, 0.75, true),
        _ => {}
    }
    for phase in single.as_array().into_iter().flatten() {
        let (p50, p99) = (phase["p50_ms"].as_f64().unwrap_or(f64::NAN), phase["p99_ms"].as_f64().unwrap_or(f64::NAN));
        match phase["concurrency"].as_u64() {
            Some(16) => target("single_p99_ms_at_16_at_most", p99, 10.0, false),
            Some(64) => target("single_p99_over_p50_at_64_at_most", round(p99 / p50, 2), 2.0, false),
            _ => {}
        }
    }
    if tokens >= 1_000_000 {
        target("peak_rss_mib_at_1m_at_most", round(peak_mib, 1), 64.0, false);
    }
    out.into()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.0.wait();
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let tokens = if args.million { 1_000_000 } else { args.tokens };
    let sessions = args.sessions.unwrap_or(match args.backend {
        Device::Softhsm => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Device::Swtpm => 1,
    });
    let backend_name = format!("{:?}", args.backend).to_lowercase();
    let temp = tempfile::Builder::new().prefix("sitesign-renewal-").tempdir()?;
    let root = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&root)?;
    // A network HSM: the shim in front of SoftHSM, its latency in a file it reads.
    let shim = match args.hsm_latency_ms {
        Some(0) => bail!("--hsm-latency-ms must be at least 1"),
        Some(ms) if args.backend == Device::Softhsm => {
            let faults = root.join("faults.toml");
            let config = faulty_pkcs11::Faults {
                module: Some(hsm_adapters::config::DEFAULT_PKCS11_MODULE.into()),
                latency_ms: [("C_Sign".to_owned(), ms)].into(),
                ..Default::default()
            };
            std::fs::write(&faults, toml::to_string(&config)?)?;
            Some((latency_shim()?, faults))
        }
        Some(_) => bail!("--hsm-latency-ms is for the SoftHSM backend"),
        None => None,
    };

    // 1. The raw rate, same key type, same sessions, same run.
    eprintln!(
        "measuring the raw {backend_name} rate ({}, {sessions} session(s), {} s)…",
        args.algorithm, args.raw_seconds
    );
    let mut raw = Command::new(bin("raw-rate")?);
    raw.args(["--backend", &backend_name, "--algorithm", &args.algorithm, "--sessions", &sessions.to_string()])
        .args(["--seconds", &args.raw_seconds.to_string()])
        .stderr(Stdio::inherit());
    if let Some((module, faults)) = &shim {
        raw.arg("--module").arg(module).env(faulty_pkcs11::CONFIG_ENV, faults);
    }
    let raw = raw.output()?;
    let raw: serde_json::Value = serde_json::from_slice(
        raw.stdout.split(|b| *b == b'\n').find(|l| !l.is_empty()).context("raw-rate printed nothing")?,
    )?;
    let raw_rate = raw["rate_per_s"].as_f64().context("raw rate")?;

    // 2. A fresh appliance and its service.
    let dir = root.join("appliance");
    let swtpm = (args.backend == Device::Swtpm).then(|| device_tests::swtpm::Swtpm::start(&root));
    let port = free_port()?;
    let mut quickstart = Command::new(bin("sitesign")?);
    quickstart.args(["quickstart", "--json", "--dir"]).arg(&dir);
    quickstart.args(["--listen", &format!("127.0.0.1:{port}"), "--token-algorithm", &args.algorithm]);
    if let Some(t) = &swtpm {
        quickstart.args(["--backend", "tpm", "--tcti", &t.tcti()]);
    }
    if let Some((module, faults)) = &shim {
        quickstart.arg("--module").arg(module).env(faulty_pkcs11::CONFIG_ENV, faults);
    }
    let made = quickstart.env_remove("SOFTHSM2_CONF").output()?;
    if !made.status.success() {
        bail!("quickstart failed: {}", String::from_utf8_lossy(&made.stdout));
    }
    let config = dir.join("sitesign.toml");
    let text = std::fs::read_to_string(&config)?;
    // The benchmark is one MP: lift its rate limit; keep the default queue. Edited as TOML, so a
    // key that moved fails loudly instead of being left out.
    let mut table: toml::Table = toml::from_str(&text)?;
    let service = table.get_mut("service").and_then(|v| v.as_table_mut()).context("quickstart wrote no [service]")?;
    service.insert("rate_limit_per_second".into(), 100_000_000.into());
    service.insert("rate_limit_burst".into(), 100_000_000.into());
    // A network HSM signs each TLS handshake slowly too: give handshakes sessions to match (as
    // docs/backends.md advises), or the 64 connections of the latency phase queue past their
    // handshake patience.
    if args.hsm_latency_ms.is_some() {
        service.insert("tls_sessions".into(), 16.into());
    }
    // As many signing workers as the raw rate had sessions, when they were chosen.
    if args.sessions.is_some() || args.hsm_latency_ms.is_some() {
        let backends = table.get_mut("backends").and_then(|v| v.as_table_mut()).context("no [backends]")?;
        for (_, backend) in backends.iter_mut() {
            let Some(backend) = backend.as_table_mut() else { continue };
            if backend.get("kind").and_then(|k| k.as_str()) == Some("pkcs11") {
                backend.insert("sessions".into(), i64::try_from(sessions)?.into());
            }
        }
    }
    std::fs::write(&config, toml::to_string(&table)?)?;
    let mut sitesignd = Command::new(bin("sitesignd")?);
    sitesignd
        .arg("--config")
        .arg(&config)
        .envs(unit_environment()?)
        .env_remove("SOFTHSM2_CONF")
        .stderr(std::fs::File::create(root.join("sitesignd.log"))?);
    if let Some((_, faults)) = &shim {
        sitesignd.env(faulty_pkcs11::CONFIG_ENV, faults);
    }
    if rustix::process::geteuid().is_root() {
        sitesignd.arg("--allow-root");
    }
    let service = Service(sitesignd.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(port + 1) {
        if Instant::now() > deadline {
            bail!("sitesignd did not become ready; see {}", root.join("sitesignd.log").display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = service.0.id();
    let stop_scraping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = args.metrics_out.clone().map(|out| scrape(port + 1, out, Arc::clone(&stop_scraping)));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let client = Arc::new(Client::new(&dir, port)?);
    let tokens_path = root.join("tokens.txt");

    // 3a. Registration: N devices, internal proofs; their tokens kept for the renewal.
    phase("registration");
    let lines = generate(tokens, |i, out| {
        let (id, tp) = device(i);
        let _ = write!(out, r#"{{"device_id":"{id}","client_cert_thumbprint":"{tp}","proof":{{"kind":"internal"}}}}"#);
        out.push(b'\n');
    });
    let mut file = BufWriter::new(std::fs::File::create(&tokens_path)?);
    let (registered, reg_errors, reg_seconds) =
        runtime.block_on(batch(&client, lines, tokens, "register", |line| {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else { return false };
            match v["token"].as_str() {
                Some(t) => writeln!(file, "{t}").is_ok(),
                None => false,
            }
        }))?;
    file.flush()?;
    drop(file);
    if registered != tokens {
        bail!("registration: {registered} tokens, {reg_errors} errors; see {}", root.join("sitesignd.log").display());
    }

    // 3b. The security team rotates the token-signing key; the service takes it up live.
    eprintln!("rotating the token-signing key (activate now)…");
    phase("rotation");
    let old_x5t = first_line_x5t(&tokens_path)?;
    let rotated = Command::new(bin("sitesign")?)
        .arg("--config")
        .arg(&config)
        .args(["--json", "rotate", "token-signing", "--activate-at", "now", "--yes"])
        .env_remove("SOFTHSM2_CONF")
        .output()?;
    if !rotated.status.success() {
        bail!("rotate token-signing failed: {}", String::from_utf8_lossy(&rotated.stdout));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while runtime.block_on(signing_x5t(&client))? == old_x5t {
        if Instant::now() > deadline {
            bail!("sitesignd did not take up the new token-signing key within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // 3c. Renewal: every device presents its token (verified in full) for a new one.
    let mut reader = BufReader::new(std::fs::File::open(&tokens_path)?);
    let lines = generate(tokens, move |i, out| {
        let mut token = String::new();
        let _ = reader.read_line(&mut token);
        let (id, tp) = device(i);
        let _ = write!(
            out,
            r#"{{"device_id":"{id}","client_cert_thumbprint":"{tp}","proof":{{"kind":"renew","token":"{}"}}}}"#,
            token.trim()
        );
        out.push(b'\n');
    });
    phase("renewal");
    let (renewed, renew_errors, renew_seconds) =
        runtime.block_on(batch(&client, lines, tokens, "renew", |line| line.starts_with(br#"{"token""#)))?;

    // 4. Single-token latency under concurrent load, one phase per connection count.
    let mut single = Vec::new();
    for &concurrency in &args.concurrency {
        eprintln!("single-token requests from {concurrency} connections for {} s…", args.latency_seconds);
        phase(if concurrency == 16 {
            "single 16"
        } else if concurrency == 64 {
            "single 64"
        } else {
            "single"
        });
        let (latencies, failures) =
            runtime.block_on(latency(Arc::clone(&client), concurrency, args.latency_seconds))?;
        single.push(serde_json::json!({
            "concurrency": concurrency,
            "requests": latencies.len(),
            "failures": failures,
            "rate_per_s": round(latencies.len() as f64 / args.latency_seconds, 1),
            "p50_ms": round(percentile(&latencies, 0.50), 2),
            "p99_ms": round(percentile(&latencies, 0.99), 2),
        }));
    }
    let peak = peak_rss_mib(pid);
    stop_scraping.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(scraper) = scraper {
        scraper.join().map_err(|_| anyhow::anyhow!("the metrics scraper panicked"))??;
    }
    drop(service);
    drop(swtpm);

    let e2e = renewed as f64 / renew_seconds;
    let ratio = round(e2e / raw_rate, 3);
    let mut line = serde_json::json!({
        "backend": backend_name,
        "algorithm": args.algorithm,
        "sessions": sessions,
        "tokens": tokens,
        "raw_rate_per_s": round(raw_rate, 1),
        "registration_rate_per_s": round(registered as f64 / reg_seconds, 1),
        "renewal_rate_per_s": round(e2e, 1),
        "ratio": ratio,
        "renewal_errors": renew_errors,
        "single": single,
        "peak_rss_mib": round(peak, 1),
    });
    if args.hsm_latency_ms.is_none() {
        line["targets"] = targets(&args.algorithm, ratio, &line["single"], tokens, peak);
    }
    if let Some(ms) = args.hsm_latency_ms {
        // What the sessions could do if the host cost nothing: each waits `ms` per signature.
        let bound = sessions as f64 * 1000.0 / ms as f64;
        line["hsm_latency_ms"] = ms.into();
        line["latency_bound_rate_per_s"] = ((bound * 10.0).round() / 10.0).into();
        line["ratio_to_latency_bound"] = ((e2e / bound * 1000.0).round() / 1000.0).into();
    }
    println!("{line}");
    Ok(())
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("renewal: {e:#}");
            ExitCode::FAILURE
        }
    }
}
