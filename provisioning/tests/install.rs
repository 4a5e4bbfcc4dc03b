//! The appliance installed (issue 17): the Debian package (`bash scripts/package`, from the debug
//! build) installed with apt into a clean Debian 12 tree (debootstrap, minbase, cached in
//! target/debian-base), `sitesign setup` run there against a SoftHSM token the `sitesign` user
//! made, the installed unit started as systemd would start it — its `ExecStart=` as its `User=`
//! with its groups, its `LoadCredential=` laid out in a credentials folder of its own, its
//! runtime folder, `NOTIFY_SOCKET` — ready as `sitesign`, not root, with the PIN from the
//! credential; a management point served over mTLS; `systemd-analyze security` on the installed
//! unit; then an upgrade to a newer package version that keeps the state.
//!
//! Why not `systemd-nspawn --boot`: this machine is a Firecracker VM whose PID 1 is not systemd
//! and whose CI runs inside a chroot; booting a container's systemd needs a delegated cgroup
//! hierarchy neither offers. Every step below runs from the installed unit's own settings, so a
//! change to the unit is what is tested.
//!
//! Needs root, debootstrap and the Debian mirror (`bash scripts/install-deps` installs
//! debootstrap; CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

const MIRROR: &str = "http://deb.debian.org/debian";
const PIN: &str = "appliance-pin-4f1c";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the package from the debug build: `PROFILE=dev bash scripts/package`; its path.
fn package(version: Option<&str>) -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(workspace().join("scripts/package")).env("PROFILE", "dev").current_dir(workspace());
    if let Some(v) = version {
        cmd.env("DEB_VERSION", v);
    }
    let out = ok(cmd.output().unwrap(), "scripts/package");
    let deb = out.lines().find_map(|l| l.strip_prefix("== package: ")).expect("the package's path");
    workspace().join(deb.trim())
}

/// A clean Debian 12 tree (debootstrap minbase), made once and kept in target/debian-base.
fn base() -> PathBuf {
    let base = workspace().join("target/debian-base");
    if !base.join(".complete").exists() {
        let _ = std::fs::remove_dir_all(&base);
        let out = Command::new("debootstrap").args(["--variant=minbase", "bookworm"]).arg(&base).arg(MIRROR).output();
        ok(out.expect("debootstrap (apt-get install debootstrap; scripts/install-deps does)"), "debootstrap");
        std::fs::write(base.join(".complete"), "").unwrap();
    }
    base
}

/// Runs `script` with /bin/sh -e inside `root` (its own mount namespace: /dev and /proc mounted
/// for it, gone with it); `exec` in the script keeps the same process.
fn in_root(root: &Path, script: &str) -> Command {
    let name =
        format!("step-{}.sh", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    std::fs::write(root.join("tmp").join(&name), script).unwrap();
    let mut cmd = Command::new("unshare");
    // Mounts made private inside the namespace where `/` is a mount point; in a chroot (CI's
    // fresh machine) it is not, and its namespace is private already.
    cmd.args(["-m", "--propagation", "unchanged", "sh", "-c"])
        .arg(r#"mount --make-rprivate / 2>/dev/null; mount --rbind /dev "$1/dev" && mount -t proc proc "$1/proc" && exec chroot "$1" /bin/sh -e "/tmp/$2""#)
        .arg("sh")
        .arg(root)
        .arg(name)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8");
    cmd
}

fn run_in(root: &Path, what: &str, script: &str) -> String {
    ok(in_root(root, script).output().unwrap(), what)
}

/// `name`'s (uid, gid) in the tree's /etc/passwd.
fn user_in(root: &Path, name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f[0] == name).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
    })
}

/// The values of `key=` in the installed unit (in order).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_owned).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The installed unit's service, started as systemd would start it; waits for READY=1.
struct Unit {
    child: Child,
    log: PathBuf,
}

impl Unit {
    fn start(root: &Path) -> Unit {
        let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/sitesignd.service")).unwrap();
        let exec = unit_values(&unit, "ExecStart").pop().expect("ExecStart=");
        let user = unit_values(&unit, "User").pop().expect("User=");
        let group = unit_values(&unit, "Group").pop().expect("Group=");
        let runtime = unit_values(&unit, "RuntimeDirectory").pop().expect("RuntimeDirectory=");
        let runtime_mode = unit_values(&unit, "RuntimeDirectoryMode").pop().unwrap_or_else(|| "0755".into());
        let state = unit_values(&unit, "StateDirectory").pop().expect("StateDirectory=");
        // Supplementary groups as systemd sets them: the user's own (initgroups) and the unit's
        // SupplementaryGroups=.
        let etc_group = std::fs::read_to_string(root.join("etc/group")).unwrap();
        let mut groups: Vec<String> = etc_group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() == 4 && f[3].split(',').any(|m| m == user)).then(|| f[0].to_owned())
            })
            .collect();
        for g in unit_values(&unit, "SupplementaryGroups").iter().flat_map(|v| v.split_whitespace()) {
            if !groups.iter().any(|x| x == g) {
                groups.push(g.to_owned());
            }
        }
        // LoadCredential=NAME:PATH, each copied into /run/credentials/UNIT/NAME, owned by the
        // service user, 0400, in a 0500 folder (what systemd does).
        let mut creds = String::new();
        for spec in unit_values(&unit, "LoadCredential") {
            let (name, path) = spec.split_once(':').unwrap();
            creds.push_str(&format!(
                "install -m 0400 -o {user} -g {group} {path} /run/credentials/sitesignd.service/{name}\n"
            ));
        }
        // LimitNOFILE=, up to what this machine's hard limit allows.
        let environment: Vec<String> =
            unit_values(&unit, "Environment").iter().flat_map(|v| v.split_whitespace().map(str::to_owned)).collect();
        let limits: Vec<String> = unit_values(&unit, "LimitNOFILE")
            .iter()
            .map(|v| format!("ulimit -n {v} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\""))
            .collect();
        let notify = root.join("run/sitesign-notify.sock");
        let _ = std::fs::remove_file(&notify);
        let script = format!(
            "install -d -m 0500 -o {user} -g {group} /run/credentials/sitesignd.service\n{creds}\
             install -d -m {runtime_mode} -o {user} -g {group} /run/{runtime}\n{}\n\
             umask 0077\n\
             exec setpriv --reuid={user} --regid={group} --groups={} --inh-caps=-all --no-new-privs \
             env -i PATH=/usr/bin:/bin CREDENTIALS_DIRECTORY=/run/credentials/sitesignd.service \
             RUNTIME_DIRECTORY=/run/{runtime} STATE_DIRECTORY=/var/lib/{state} NOTIFY_SOCKET=/run/sitesign-notify.sock \
             {} {exec}\n",
            limits.join("\n"),
            groups.join(","),
            environment.join(" ")
        );
        let socket = UnixDatagram::bind(&notify).unwrap();
        // The service user must be able to write to it, as to systemd's.
        let (uid, gid) = user_in(root, &user).unwrap();
        std::os::unix::fs::chown(&notify, Some(uid), Some(gid)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let log = root.join("tmp/sitesignd.log");
        let child =
            in_root(root, &script).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        // Held from here, so that a failed start kills it too.
        let mut unit = Unit { child, log };
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 1024];
        let log_text = |u: &Unit| std::fs::read_to_string(&u.log).unwrap_or_default();
        loop {
            assert!(Instant::now() < deadline, "no READY=1: {}", log_text(&unit));
            if let Some(status) = unit.child.try_wait().unwrap() {
                panic!("sitesignd exited with {status}: {}", log_text(&unit));
            }
            if let Ok(n) = socket.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
            {
                break;
            }
        }
        unit
    }

    /// The service's real uid (from /proc).
    fn uid(&self) -> u32 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn stop(mut self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "sitesignd stopped with {status}: {}", std::fs::read_to_string(&self.log).unwrap());
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token request over mTLS from outside the tree (curl on the host, as an MP would).
fn token_request(root: &Path, port: u16, n: u32) -> serde_json::Value {
    let body = format!(
        r#"{{"device_id":"GUID:{n:08X}-1111-4000-8000-000000000000","client_cert_thumbprint":"q1MKE5hX1uWoOlxMqk1B7v4HnpnZz3jOhP1ZbpQ6sGA","proof":{{"kind":"internal"}}}}"#
    );
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "30", "--cacert"])
        .arg(root.join("etc/sitesign/trust/sms-issuing.pem"))
        .arg("--cert")
        .arg(root.join("tmp/mp.crt"))
        .arg("--key")
        .arg(root.join("tmp/mp.key"))
        .args(["-H", "content-type: application/json", "--data-binary", &body])
        .arg(format!("https://localhost:{port}/v1/client-tokens"))
        .output()
        .unwrap();
    serde_json::from_str(&ok(out, "the token request")).unwrap()
}

#[test]
fn the_package_installs_on_clean_debian_sets_up_starts_as_sitesign_serves_and_upgrades_keeping_state() {
    if !rustix::process::geteuid().is_root() {
        panic!("this test installs a package into a Debian tree and needs root (CI runs as root)");
    }
    let deb = package(None);
    let tmp = tempfile::Builder::new().prefix("sitesign-install-").tempdir().unwrap();
    let root = tmp.path().join("debian");
    ok(Command::new("cp").arg("-a").arg(base()).arg(&root).output().unwrap(), "copy the base tree");
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).unwrap();
    std::fs::copy(&deb, root.join("tmp/sitesign.deb")).unwrap();

    // Installed with apt, as an operator would (dependencies from the mirror); SoftHSM2 as the
    // device, openssl for the MP's key.
    run_in(
        &root,
        "apt",
        "export DEBIAN_FRONTEND=noninteractive\napt-get update -qq\n\
         apt-get install -y -qq --no-install-recommends /tmp/sitesign.deb softhsm2 openssl >/dev/null\n",
    );
    let (uid, gid) = user_in(&root, "sitesign").expect("the package made the sitesign user");
    assert!(uid != 0 && gid != 0);
    let meta = |p: &str| std::fs::metadata(root.join(p)).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((meta("var/lib/sitesign").uid(), meta("var/lib/sitesign").mode() & 0o7777), (uid, 0o700));
    assert_eq!((meta("etc/sitesign").gid(), meta("etc/sitesign").mode() & 0o7777), (gid, 0o750));
    assert_eq!(meta("etc/sitesign/credentials").mode() & 0o7777, 0o700);
    assert!(
        root.join("usr/share/man/man8/sitesignd.8").exists()
            && root.join("usr/share/man/man1/sitesign-setup.1").exists()
    );
    assert!(root.join("usr/share/bash-completion/completions/sitesign").exists());
    // Installed, not enabled, not configured.
    assert!(!root.join("etc/systemd/system/multi-user.target.wants/sitesignd.service").exists());
    assert!(!root.join("etc/sitesign/sitesign.toml").exists());

    // The HSM's security officer makes the token as the service user (SoftHSM's files must be
    // its own); then `sitesign setup` with the PIN on standard input.
    let (port, ops) = (free_port(), free_port());
    run_in(
        &root,
        "token",
        &format!(
            "setpriv --reuid=sitesign --regid=sitesign --init-groups softhsm2-util --init-token --free --label sitesign --so-pin so-2f8e41 --pin {PIN} >/dev/null\n"
        ),
    );
    let made = run_in(
        &root,
        "sitesign setup",
        &format!(
            "echo {PIN} | sitesign --json setup --yes --backend pkcs11 --token-label sitesign --site-name 'Contoso CM01' \
             --name localhost --listen 127.0.0.1:{port} --ops-listen 127.0.0.1:{ops} > /tmp/setup.json\ncat /tmp/setup.json\n"
        ),
    );
    let made: serde_json::Value = serde_json::from_str(made.trim()).unwrap();
    assert_eq!(made["init"]["initialised"], true, "{made}");
    assert_eq!(made["service_user"], "sitesign");
    // The state is the service user's; the secret is root's alone.
    for f in ["var/lib/sitesign/state.db", "var/lib/sitesign/audit.db"] {
        assert_eq!(meta(f).uid(), uid, "{f}");
    }
    assert_eq!(
        (meta("etc/sitesign/credentials/hsm-pin").uid(), meta("etc/sitesign/credentials/hsm-pin").mode() & 0o777),
        (0, 0o600)
    );

    // Started from the installed unit: ready, as sitesign, the PIN from its credential.
    let unit = Unit::start(&root);
    assert_eq!(unit.uid(), uid, "sitesignd runs as sitesign");
    // A management point enrolled through the running service's admin socket, as root.
    run_in(
        &root,
        "enrol an MP",
        "cd /tmp\nopenssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=mp1.contoso.com \
         -addext subjectAltName=DNS:mp1.contoso.com -keyout mp.key -out mp.csr 2>/dev/null\n\
         sitesign --json cert issue --profile mp-client --csr mp.csr --out mp.crt >/dev/null\n",
    );
    let answer = token_request(&root, port, 1);
    assert_eq!(answer["token"].as_str().unwrap().split('.').count(), 3, "{answer}");
    // The administrator's view, as root: every key checked in the device.
    let status: serde_json::Value =
        serde_json::from_str(run_in(&root, "status", "sitesign --json status\n").trim()).unwrap();
    assert_eq!(status["healthy"], true, "{status}");

    // The installed unit's exposure.
    let analyze = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg("sitesignd.service")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&analyze.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for sitesignd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {text}{}", String::from_utf8_lossy(&analyze.stderr)));
    assert!(exposure <= 2.0, "exposure {exposure}");

    // An upgrade: stop, install a newer version of the package, start: the same keys, the same
    // audit chain, serving.
    let keys_before = run_in(&root, "keys list", "sitesign --json keys list\n");
    unit.stop();
    let newer = package(Some("0.1.0-2"));
    std::fs::copy(&newer, root.join("tmp/sitesign-2.deb")).unwrap();
    run_in(
        &root,
        "upgrade",
        "export DEBIAN_FRONTEND=noninteractive\napt-get install -y -qq --no-install-recommends /tmp/sitesign-2.deb >/dev/null\n\
         dpkg-query -W -f '${Version}' sitesign | grep -qx 0.1.0-2\n",
    );
    assert!(root.join("etc/sitesign/sitesign.toml").exists(), "the upgrade kept the configuration");
    let unit = Unit::start(&root);
    let keys_after = run_in(&root, "keys list", "sitesign --json keys list\n");
    assert_eq!(keys_before, keys_after);
    let answer = token_request(&root, port, 2);
    assert!(answer["token"].is_string(), "{answer}");
    let verified = run_in(&root, "audit verify", "sitesign --json audit verify\n");
    let verified: serde_json::Value = serde_json::from_str(verified.trim()).unwrap();
    assert_eq!(verified["intact"], true, "{verified}");
    unit.stop();
}
