//! TLS as a client sees it: TLS 1.3 with the MP certificate works; no certificate, a certificate
//! from another CA, a server certificate from the right CA, and TLS 1.2 are each refused at the
//! handshake with the alert that says why; a handshake or request headers that never finish are
//! cut at their deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::appliance::{Appliance, parse_curl};
use common::openssl;

/// curl's stderr and HTTP status (0: no HTTP answer) for `/v1/certificates` with `cert`/`key`.
fn attempt(s: &common::appliance::Service, cert_key: Option<(&std::path::Path, &std::path::Path)>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "60", "-w", "\n%{http_code}", "--cacert"]).arg(s.dir.join("ca.pem"));
    if let Some((cert, key)) = cert_key {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = c.arg(s.url("/v1/certificates")).output().unwrap();
    (parse_curl(&out).0, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn tls_refuses_missing_foreign_server_and_old_clients_with_the_right_alert() {
    let a = Appliance::new();
    let s = a.start();
    // TLS 1.3 with the MP certificate works.
    let (status, err) = attempt(&s, Some((&s.dir.join("mp/mp.crt"), &s.dir.join("mp/mp.key"))));
    assert_eq!(status, 200, "{err}");

    // No client certificate: the server asks for one and refuses the handshake without.
    let (status, err) = attempt(&s, None);
    assert_eq!(status, 0, "served without a client certificate");
    assert!(err.contains("certificate required"), "{err}");

    // A certificate from another CA, with clientAuth and the MP's very name.
    let d = |n: &str| s.dir.join(n).to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=SMS Issuing/O=sitesign quickstart",
        "-keyout",
        &d("rogue-ca.key"),
        "-out",
        &d("rogue-ca.crt"),
    ]);
    let (rogue_key, rogue_csr) =
        common::key_and_csr(&s.dir, "rogue", "demo-mp.sitesign.local", Some("DNS:demo-mp.sitesign.local"));
    std::fs::write(s.dir.join("rogue.ext"), "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        rogue_csr.to_str().unwrap(),
        "-CA",
        &d("rogue-ca.crt"),
        "-CAkey",
        &d("rogue-ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &d("rogue.ext"),
        "-out",
        &d("rogue.crt"),
    ]);
    let (status, err) = attempt(&s, Some((&s.dir.join("rogue.crt"), &rogue_key)));
    assert_eq!(status, 0, "served a certificate not issued by SMS Issuing");
    assert!(err.contains("alert unknown ca"), "{err}");
    // A CA certificate presented as a client certificate.
    let (status, err) = attempt(&s, Some((&s.dir.join("rogue-ca.crt"), &s.dir.join("rogue-ca.key"))));
    assert_eq!(status, 0, "served a CA certificate as a client");
    assert!(err.contains("alert"), "{err}");

    // A serverAuth certificate from the right CA (a role-ssl certificate sitesign issued) is not
    // an MP identity.
    let (key, csr) = common::key_and_csr(&s.dir, "site-system", "site.contoso.test", Some("DNS:site.contoso.test"));
    let crt = s.dir.join("site-system.crt");
    a.ok(&["cert", "issue", "--profile", "role-ssl", "--csr", csr.to_str().unwrap(), "--out", crt.to_str().unwrap()]);
    let (status, err) = attempt(&s, Some((&crt, &key)));
    assert_eq!(status, 0, "served a serverAuth certificate as a client");
    assert!(err.contains("alert unsupported certificate"), "{err}");

    // TLS 1.2 offered: rustls has no TLS 1.2 at all and says so with protocol_version.
    let out =
        s.mtls().args(["--tls-max", "1.2", "-w", "%{http_code}"]).arg(s.url("/v1/certificates")).output().unwrap();
    assert!(!out.status.success(), "TLS 1.2 accepted");
    let out = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect", &format!("127.0.0.1:{}", s.api.port())])
        .arg("-CAfile")
        .arg(s.dir.join("ca.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("alert protocol version"), "{text}");
}

#[test]
fn a_handshake_or_headers_that_never_finish_are_cut_at_their_deadline() {
    let a = Appliance::new();
    a.edit_service(|svc| {
        svc.handshake_timeout_seconds = Some(2);
        svc.header_timeout_seconds = Some(2);
    });
    let s = a.start();
    // A TCP connection that never starts its handshake.
    let started = Instant::now();
    let mut idle = TcpStream::connect(s.api).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "the server closed the idle connection");
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_secs(20), "closed after {waited:?}");

    // A completed handshake, then half a request line and nothing more.
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &format!("127.0.0.1:{}", s.api.port())])
        .arg("-CAfile")
        .arg(s.dir.join("ca.pem"))
        .arg("-cert")
        .arg(s.dir.join("mp/mp.crt"))
        .arg("-key")
        .arg(s.dir.join("mp/mp.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"GET /v1/certificates HTTP/1.1\r\nHost: x\r\n").unwrap();
    stdin.flush().unwrap();
    let started = Instant::now();
    let mut out = String::new();
    client.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let waited = started.elapsed();
    let _ = client.wait();
    drop(stdin);
    assert!(waited < Duration::from_secs(20), "headers never finished, yet the connection stayed {waited:?}");
    assert!(!out.contains("200 OK"), "{out}");
}
