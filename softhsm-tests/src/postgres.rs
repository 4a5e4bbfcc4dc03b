//! A real PostgreSQL server for the shared-store tests: Debian's `postgresql` binaries, `initdb`
//! and `pg_ctl` in a temporary folder — as an unprivileged user when the tests run as root
//! (`initdb` refuses root) — listening on a Unix socket in that folder and on a loopback TCP
//! port with TLS (a test CA and server certificate made with `openssl`). Passwords are
//! SCRAM-SHA-256: the superuser's (for the harness, in a `PGPASSFILE`) and the `sitesign` role's
//! (in a 0600 file, as an appliance reads it) — never in argv or the environment.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server, stopped (immediately) when dropped.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The unprivileged user that runs it (`None`: the current user).
    user: Option<String>,
    /// Its TCP port on 127.0.0.1 (the Unix socket is in [`Postgres::socket_dir`] with the same
    /// port number).
    pub port: u16,
}

/// The folder of the newest PostgreSQL server binaries installed, if any.
pub fn binaries() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(54_329)
}

fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Postgres {
    /// Initialises and starts a server with a `sitesign` database owned by a `sitesign` role.
    pub fn start() -> Postgres {
        let bin = binaries().expect("PostgreSQL is not installed (bash scripts/install-deps installs it)");
        let dir = tempfile::Builder::new().prefix("sitesign-pg").tempdir().expect("temporary folder");
        let root = rustix::process::geteuid().is_root();
        let user = root.then(|| "postgres".to_owned());
        let superuser_password = hex(&random(16));
        let password = hex(&random(16));
        std::fs::write(dir.path().join("superuser.pw"), &superuser_password).expect("superuser password");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.path().join("superuser.pgpass"))
                .expect("password file");
            writeln!(f, "*:*:*:postgres:{superuser_password}").expect("password file");
        }
        let password_file = dir.path().join("sitesign.pw");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&password_file)
                .expect("password file");
            f.write_all(password.as_bytes()).expect("password file");
        }
        if let Some(u) = &user {
            let uid = rustix::process::Uid::from_raw(uid_of(u));
            rustix::fs::chown(dir.path(), Some(uid), None).expect("chown the server's folder");
            rustix::fs::chown(dir.path().join("superuser.pw"), Some(uid), None).expect("chown");
        }
        let port = free_port();
        let pg = Postgres { dir, bin, user, port };
        pg.make_tls();
        check(
            "initdb",
            pg.as_server(&pg.bin.join("initdb"))
                .arg("-D")
                .arg(pg.data())
                .args(["-U", "postgres", "-A", "scram-sha-256", "--no-sync", "--pwfile"])
                .arg(pg.dir.path().join("superuser.pw"))
                .output(),
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = on\nmax_connections = 60\n",
            pg.socket_dir().display(),
            pg.dir.path().join("server.crt").display(),
            pg.dir.path().join("server.key").display(),
        );
        std::fs::write(pg.data().join("postgresql.auto.conf"), conf).expect("server configuration");
        pg.start_again();
        pg.psql(&format!("CREATE ROLE sitesign LOGIN PASSWORD '{password}'"));
        pg.psql("CREATE DATABASE sitesign OWNER sitesign");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The folder of its Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A connection string for the `sitesign` role over the Unix socket.
    pub fn url(&self) -> String {
        format!("host={} port={} dbname=sitesign user=sitesign", self.socket_dir().display(), self.port)
    }

    /// A connection string for the `sitesign` role over TCP (TLS: see [`Postgres::ca_file`]).
    pub fn tcp_url(&self) -> String {
        format!("host=localhost port={} dbname=sitesign user=sitesign", self.port)
    }

    /// The `sitesign` role's password file (0600).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("sitesign.pw")
    }

    /// The CA that signed the server's certificate (for `localhost`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A CA that did not (for the test that a wrong CA is refused).
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }

    fn as_server(&self, program: &Path) -> Command {
        match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn make_tls(&self) {
        let d = self.dir.path();
        let openssl = |args: &[&str]| {
            check(&format!("openssl {}", args.join(" ")), Command::new("openssl").current_dir(d).args(args).output())
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=sitesign test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ]);
        }
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(d.join("server.ext"), "subjectAltName = DNS:localhost\nextendedKeyUsage = serverAuth\n")
            .expect("extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ]);
        if let Some(u) = &self.user {
            let uid = rustix::process::Uid::from_raw(uid_of(u));
            for f in ["server.crt", "server.key"] {
                rustix::fs::chown(d.join(f), Some(uid), None).expect("chown");
            }
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        check(
            "pg_ctl start",
            self.as_server(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "start"])
                .stdin(Stdio::null())
                .output(),
        );
    }

    /// Stops the server at once (`-m immediate`: like a crash or a cut network, no goodbye to
    /// the clients).
    pub fn stop(&self) {
        check(
            "pg_ctl stop",
            self.as_server(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-m", "immediate", "stop"])
                .output(),
        );
    }

    /// Runs `sql` as the superuser in the `postgres` database; its output, unaligned and tuples
    /// only.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// [`Postgres::psql`] in the `sitesign` database.
    pub fn query(&self, sql: &str) -> String {
        self.psql_in("sitesign", sql)
    }

    /// [`Postgres::psql`] in the database `db`. The statement goes through standard input and
    /// the superuser's password through a password file (`PGPASSFILE`): neither is in argv or
    /// the environment.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        use std::io::Write as _;
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db, "-f", "-"])
            .env("PGPASSFILE", self.dir.path().join("superuser.pgpass"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        child.stdin.take().expect("stdin").write_all(sql.as_bytes()).expect("psql's input");
        let out = check("psql", child.wait_with_output());
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs `sql` as the superuser in the `sitesign` database in a session that stays open — a
    /// lock taken in its transaction stays held — until the returned session is dropped (rolled
    /// back).
    pub fn session(&self, sql: &str) -> Session {
        use std::io::Write as _;
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", "sitesign", "-f", "-"])
            .env("PGPASSFILE", self.dir.path().join("superuser.pgpass"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql");
        let stdin = child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{sql}").expect("psql's input");
        stdin.flush().expect("psql's input");
        Session(child)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits (up to `within`) until `ready` holds.
    pub fn eventually(within: Duration, mut ready: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if ready() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An open `psql` session (see [`Postgres::session`]).
#[derive(Debug)]
pub struct Session(std::process::Child);

impl Drop for Session {
    fn drop(&mut self) {
        use std::io::Write as _;
        if let Some(mut stdin) = self.0.stdin.take() {
            let _ = writeln!(stdin, "ROLLBACK;");
        }
        let _ = self.0.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .as_server(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn uid_of(user: &str) -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(user)).then(|| f.nth(1).and_then(|u| u.parse().ok())).flatten()
        })
        .unwrap_or_else(|| panic!("no user {user:?}: the postgresql package creates it"))
}

fn random(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("random");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
