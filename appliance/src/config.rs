//! The appliance's configuration file (`sitesign.toml`): serde + TOML with unknown keys refused,
//! validated into [`Config`]; every problem is reported with its key path in one pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hsm_adapters::{BackendConfig, BackendConfigFile, ConfigProblem, KeyAlgorithm};
use serde::{Deserialize, Serialize};

/// The largest `[audit] max_size_mb`: 1 TiB (a larger cap is no cap; leave it out).
pub const MAX_AUDIT_MB: f64 = 1024.0 * 1024.0;

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where the state database and audit log live.
    pub state_dir: Option<PathBuf>,
    /// Key backends by name (`[backends.NAME]`).
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfigFile>,
    /// The certificate authority (`[pki]`).
    pub pki: Option<PkiConfigFile>,
    /// Token verification (`[tokens]`).
    pub tokens: Option<TokensConfigFile>,
    /// The service `sitesignd` (`[service]`).
    pub service: Option<ServiceConfigFile>,
    /// The audit log (`[audit]`).
    pub audit: Option<AuditConfigFile>,
    /// The state store (`[store]`): the embedded SQLite database, or PostgreSQL shared by
    /// several appliances.
    pub store: Option<StoreConfigFile>,
    /// This appliance among several (`[node]`).
    pub node: Option<NodeConfigFile>,
}

/// The `[store]` table as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfigFile {
    /// `sqlite` (default: `state.db` in the state folder) or `postgres`.
    pub kind: Option<String>,
    /// PostgreSQL: a libpq connection string (`host=db1.example.org dbname=sitesign
    /// user=sitesign`), without a password. A Unix-socket host needs no TLS; a network host is
    /// reached only over TLS, its certificate checked against `ca_file` and its name.
    pub url: Option<String>,
    /// A file holding the database password (mode 0600, owned by the service user).
    pub password_file: Option<PathBuf>,
    /// The systemd credential holding it, instead of `password_file`.
    pub password_credential: Option<String>,
    /// The CA certificate(s), PEM, that the database server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
}

/// The `[node]` table as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfigFile {
    /// This node's id, unique among the appliances sharing a store (letters, digits, `.`, `-`,
    /// `_`; at most 64); default the host name.
    pub id: Option<String>,
    /// Where its API is reached (for the node registry); default `[service] listen`.
    pub address: Option<String>,
}

/// The validated `[store]` table.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded SQLite database in the state folder.
    Sqlite,
    /// A PostgreSQL database.
    Postgres(Box<PgConfig>),
}

/// How to reach the PostgreSQL database.
#[derive(Clone)]
pub struct PgConfig {
    /// The parsed connection string (no password).
    pub config: postgres::Config,
    /// Where the password is read from at each connection, if the server asks for one.
    pub password: Option<hsm_adapters::PinSource>,
    /// The CA the server's certificate must chain to (network hosts).
    pub ca_file: Option<PathBuf>,
    /// Host(s), database and user, for messages.
    pub describe: String,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig").field("database", &self.describe).field("ca_file", &self.ca_file).finish()
    }
}

/// The validated `[node]` table.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub id: String,
    /// Where its API is reached.
    pub address: String,
}

/// The `[service]` table as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfigFile {
    /// mTLS API address; default `127.0.0.1:8443`.
    pub listen: Option<String>,
    /// Plain-HTTP ops address (health, readiness, metrics); default `127.0.0.1:8444`; `""` disables.
    pub ops_listen: Option<String>,
    /// Admin socket path; default `<state_dir>/admin.sock`.
    pub admin_socket: Option<PathBuf>,
    /// Group allowed on the admin socket (numeric gid).
    pub admin_gid: Option<u32>,
    /// Users allowed on the admin socket (numeric uids); default: the service's own uid.
    pub admin_uids: Option<Vec<u32>>,
    /// Requests per second each management point may make (token bucket); default 1000; batch lines count one each.
    pub rate_limit_per_second: Option<u32>,
    /// Burst each management point may make; default 2 × the rate.
    pub rate_limit_burst: Option<u32>,
    /// `text` (default) or `json` logs on standard error.
    pub log_format: Option<String>,
    /// Tokens that may wait for a signing worker; a single request finding the queue full gets
    /// 503 + Retry-After. Default 1024.
    pub queue_depth: Option<usize>,
    /// Seconds a client has to complete its TLS handshake; default 10.
    pub handshake_timeout_seconds: Option<u64>,
    /// Seconds a client has to send a request's headers; default 10.
    pub header_timeout_seconds: Option<u64>,
    /// Seconds a client has to send a single request's body, and — in a batch — each next
    /// complete line; default 10.
    pub body_timeout_seconds: Option<u64>,
    /// Largest batch body, MiB; default 2048 (a million renewals is about 1.1 GiB).
    pub max_batch_mb: Option<u64>,
    /// Batches one management point may stream at once; default 4.
    pub max_batches_per_mp: Option<u32>,
    /// Lines of a batch read ahead of the client's reading of the answer: a client that sends
    /// the whole body before it reads (half duplex) always completes a batch this long; a
    /// longer one needs a client that reads while it sends. Default 10,000.
    pub max_batch_lines: Option<u64>,
    /// Batches the appliance streams at once, all management points together; default 16.
    pub max_batches: Option<u32>,
    /// Requests one HTTP/2 connection may have open at once; default 32.
    pub max_streams_per_connection: Option<u32>,
    /// Connections one management point (client certificate) may have open at once; default 256.
    pub max_connections_per_mp: Option<u32>,
    /// Connections open at once on the API listener; default 4096.
    pub max_connections: Option<usize>,
    /// TLS handshakes in progress at once; default 64.
    pub max_handshakes: Option<usize>,
    /// TLS handshakes a second from one source address (a handshake makes the device sign
    /// before the client is known); default 20, bursts of five times that.
    pub handshakes_per_second_per_source: Option<u32>,
    /// Device sessions of the TLS key's own, apart from the token-signing workers' (PKCS#11);
    /// default 1.
    pub tls_sessions: Option<usize>,
}

/// The `[audit]` table as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfigFile {
    /// Folder of `audit.db`; default the state folder. Put it on its own filesystem if you like.
    pub dir: Option<PathBuf>,
    /// Cap on the audit database, MiB (fractions allowed); past it signing stops (fail closed).
    /// Default none.
    pub max_size_mb: Option<f64>,
    /// A file that gets every signed checkpoint of the log's head, one JSON line each: a witness
    /// the log's own database cannot change (another filesystem, an append-only mount, a
    /// network share). Default none.
    pub anchor_file: Option<PathBuf>,
}

/// The validated `[service]` table.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// mTLS API address.
    pub listen: std::net::SocketAddr,
    /// Ops address, if enabled.
    pub ops_listen: Option<std::net::SocketAddr>,
    /// Admin socket path.
    pub admin_socket: PathBuf,
    /// Admin group.
    pub admin_gid: Option<u32>,
    /// Admin users (empty: the service's own uid).
    pub admin_uids: Vec<u32>,
    /// Per-MP rate, requests per second.
    pub rate_limit_per_second: u32,
    /// Per-MP burst.
    pub rate_limit_burst: u32,
    /// JSON logs.
    pub json_logs: bool,
    /// Signing queue depth.
    pub queue_depth: usize,
    /// TLS handshake deadline.
    pub handshake_timeout: std::time::Duration,
    /// Request header deadline.
    pub header_timeout: std::time::Duration,
    /// Request body progress deadline.
    pub body_timeout: std::time::Duration,
    /// Largest batch body, bytes.
    pub max_batch_bytes: u64,
    /// Concurrent batches per MP.
    pub max_batches_per_mp: u32,
    /// A batch's read-ahead window, lines.
    pub max_batch_lines: u64,
    /// Concurrent batches, all MPs.
    pub max_batches: u32,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// Connections per MP.
    pub max_connections_per_mp: u32,
    /// Open connections on the API listener.
    pub max_connections: usize,
    /// TLS handshakes in progress.
    pub max_handshakes: usize,
    /// Handshakes a second per source address (burst: five times).
    pub handshakes_per_second_per_source: u32,
    /// The TLS key's own device sessions.
    pub tls_sessions: usize,
}

/// The validated `[audit]` table.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Folder of `audit.db`.
    pub dir: PathBuf,
    /// Size cap, bytes.
    pub max_bytes: Option<u64>,
    /// The anchor file, if any.
    pub anchor_file: Option<PathBuf>,
}

/// The `[tokens]` table as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfigFile {
    /// Clock skew allowed on `nbf`/`exp`, seconds; default 300, at most 3600.
    pub clock_skew_seconds: Option<i64>,
    /// A client token signed by the active key may be renewed once it is this old, days;
    /// default 30 (tokens of a replaced or revoked key may always be renewed).
    pub renew_after_days: Option<i64>,
}

/// The validated `[tokens]` table.
#[derive(Debug, Clone, Copy)]
pub struct TokensConfig {
    /// Allowed clock skew, seconds.
    pub clock_skew_seconds: i64,
    /// Minimum age of a renewable client token (of the active key), days.
    pub renew_after_days: i64,
}

/// The `[pki]` table as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PkiConfigFile {
    /// The organisation in certificate subjects (e.g. "Contoso CM01").
    pub site_name: Option<String>,
    /// Backend that holds the SMS Issuing key.
    pub issuing_backend: String,
    /// `rsa-3072` (default), `rsa-2048` or `rsa-4096`.
    pub issuing_algorithm: Option<String>,
    /// Default 7300 (20 years).
    pub issuing_validity_days: Option<u32>,
    /// Backend that holds the token-signing keys; default the issuing backend.
    pub token_signing_backend: Option<String>,
    /// `rsa-2048` (default, RS256) or `ec-p256` (ES256).
    pub token_signing_algorithm: Option<String>,
    /// Default 730 (2 years).
    pub token_signing_validity_days: Option<u32>,
    /// Validity of mp-client and role-ssl certificates; default 365.
    pub role_validity_days: Option<u32>,
    /// Backend that holds the appliance's TLS key; default the issuing backend.
    pub tls_backend: Option<String>,
    /// Default `ec-p256`.
    pub tls_algorithm: Option<String>,
    /// Default 365.
    pub tls_validity_days: Option<u32>,
    /// DNS names and IP addresses of the appliance's TLS certificate; default localhost, 127.0.0.1.
    pub tls_names: Option<Vec<String>>,
    /// The hierarchy GUID tokens carry (`TenantId`, `iss`); default a fresh one at `init`.
    pub hierarchy_id: Option<String>,
}

/// The validated `[pki]` table.
#[derive(Debug, Clone)]
pub struct PkiConfig {
    /// Organisation in subjects.
    pub site_name: String,
    /// (backend, algorithm, validity days) of the SMS Issuing key.
    pub issuing: KeyPlan,
    /// Of the token-signing key.
    pub token_signing: KeyPlan,
    /// Of the appliance's TLS key.
    pub tls: KeyPlan,
    /// Validity of role certificates, days.
    pub role_validity_days: u32,
    /// Names in the TLS certificate.
    pub tls_names: Vec<String>,
    /// The hierarchy GUID to adopt at `init`, if configured.
    pub hierarchy_id: Option<crate::token::Guid>,
}

/// Where a key is made and for how long its certificate lasts.
#[derive(Debug, Clone)]
pub struct KeyPlan {
    /// Backend name.
    pub backend: String,
    /// Algorithm.
    pub algorithm: KeyAlgorithm,
    /// Certificate validity in days.
    pub validity_days: u32,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the state database and audit log live (absolute).
    pub state_dir: PathBuf,
    /// Key backends by name.
    pub backends: BTreeMap<String, BackendConfig>,
    /// The certificate authority, if configured.
    pub pki: Option<PkiConfig>,
    /// Token verification.
    pub tokens: TokensConfig,
    /// The service.
    pub service: ServiceConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// The state store.
    pub store: StoreConfig,
    /// This node.
    pub node: NodeConfig,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("configuration {path} is not valid: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file (or its folder) may be changed by someone other than root and the service.
    #[error("configuration {path} is refused: {reason}")]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// Who could change it.
        reason: String,
    },
    /// The file parsed but its values are not usable.
    #[error("configuration {path} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, with its key path.
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigFile {
    /// Validates into a [`Config`]; `base` resolves relative paths (the config file's folder).
    pub fn validate(&self, base: &Path) -> Result<Config, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let state_dir = match &self.state_dir {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => base.join(p),
            None => {
                problems.push(ConfigProblem {
                    path: "state_dir".into(),
                    message: "missing: set the folder for the state database and audit log".into(),
                });
                PathBuf::new()
            }
        };
        if self.backends.is_empty() {
            problems.push(ConfigProblem {
                path: "backends".into(),
                message: "no key backend configured: add a [backends.NAME] table".into(),
            });
        }
        let mut backends = BTreeMap::new();
        for (name, raw) in &self.backends {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                problems.push(ConfigProblem {
                    path: format!("backends.{name}"),
                    message: "backend names use letters, digits, '-' and '_'".into(),
                });
            }
            match raw.validate(&format!("backends.{name}")) {
                Ok(b) => {
                    backends.insert(name.clone(), b);
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        let pki = self.pki.as_ref().and_then(|p| validate_pki(p, &self.backends, &mut problems));
        let tokens = self.tokens.clone().unwrap_or_default();
        let clock_skew_seconds = tokens.clock_skew_seconds.unwrap_or(crate::token::DEFAULT_SKEW);
        if !(0..=3600).contains(&clock_skew_seconds) {
            problems
                .push(ConfigProblem { path: "tokens.clock_skew_seconds".into(), message: "must be 0 to 3600".into() });
        }
        let renew_after_days = tokens.renew_after_days.unwrap_or(crate::token::DEFAULT_RENEW_AFTER_DAYS);
        if !(0..=89).contains(&renew_after_days) {
            problems.push(ConfigProblem {
                path: "tokens.renew_after_days".into(),
                message: "must be 0 to 89 (a client token lasts 90 days)".into(),
            });
        }
        let tokens = TokensConfig { clock_skew_seconds, renew_after_days };
        if let Some(mb) = self.audit.as_ref().and_then(|a| a.max_size_mb)
            && !(mb.is_finite() && mb > 0.0 && mb <= MAX_AUDIT_MB)
        {
            problems.push(ConfigProblem {
                path: "audit.max_size_mb".into(),
                message: format!(
                    "{mb} is not a size: a positive number of MiB, at most {MAX_AUDIT_MB} (leave it out for no cap)"
                ),
            });
        }
        let service = validate_service(&self.service.clone().unwrap_or_default(), base, &state_dir, &mut problems);
        let audit_file = self.audit.clone().unwrap_or_default();
        let audit = AuditConfig {
            dir: match audit_file.dir {
                Some(d) if d.is_absolute() => d,
                Some(d) => base.join(d),
                None => state_dir.clone(),
            },
            max_bytes: audit_file.max_size_mb.map(|m| (m.max(0.0) * 1024.0 * 1024.0) as u64),
            anchor_file: audit_file
                .anchor_file
                .as_ref()
                .map(|f| if f.is_absolute() { f.clone() } else { base.join(f) }),
        };
        let store = validate_store(&self.store.clone().unwrap_or_default(), base, &mut problems);
        let node = validate_node(&self.node.clone().unwrap_or_default(), &service, &mut problems);
        if problems.is_empty() {
            Ok(Config { state_dir, backends, pki, tokens, service, audit, store, node })
        } else {
            Err(problems)
        }
    }
}

/// The host name, as the default node id: what a node id may not hold made `-`, at most 64
/// characters, `node` if nothing is left (a container's `(none)` must not stop a service).
fn host_name() -> String {
    let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let id: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '-' })
        .take(64)
        .collect();
    if id.trim_matches('-').is_empty() { "node".to_owned() } else { id }
}

fn validate_node(n: &NodeConfigFile, service: &ServiceConfig, problems: &mut Vec<ConfigProblem>) -> NodeConfig {
    let id = n.id.clone().unwrap_or_else(host_name);
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        problems.push(ConfigProblem {
            path: "node.id".into(),
            message: format!(
                "{id:?} is not a node id: 1 to 64 letters, digits, '.', '-' or '_' (default: the host name)"
            ),
        });
    }
    NodeConfig { id, address: n.address.clone().unwrap_or_else(|| service.listen.to_string()) }
}

fn validate_store(s: &StoreConfigFile, base: &Path, problems: &mut Vec<ConfigProblem>) -> StoreConfig {
    let mut problem =
        |key: &str, message: String| problems.push(ConfigProblem { path: format!("store.{key}"), message });
    match s.kind.as_deref().unwrap_or("sqlite") {
        "sqlite" => {
            for (key, set) in [
                ("url", s.url.is_some()),
                ("password_file", s.password_file.is_some()),
                ("password_credential", s.password_credential.is_some()),
                ("ca_file", s.ca_file.is_some()),
            ] {
                if set {
                    problem(key, "only for kind = \"postgres\"".into());
                }
            }
            StoreConfig::Sqlite
        }
        "postgres" => {
            let Some(url) = &s.url else {
                problem(
                    "url",
                    "missing: a libpq connection string, e.g. \"host=db1.example.org dbname=sitesign user=sitesign\""
                        .into(),
                );
                return StoreConfig::Sqlite;
            };
            // libpq's verifying modes mean what sitesign always does over a network (rustls checks
            // the chain to ca_file and the name); the client library knows them as `require`.
            let url =
                url.replace("sslmode=verify-full", "sslmode=require").replace("sslmode=verify-ca", "sslmode=require");
            let config: postgres::Config = match url.parse() {
                Ok(c) => c,
                Err(e) => {
                    // The parser's message names the option, never a value.
                    problem("url", format!("not a connection string: {e}"));
                    return StoreConfig::Sqlite;
                }
            };
            if config.get_password().is_some() {
                problem("url", "holds a password: put it in password_file (mode 0600) or password_credential, never in the configuration".into());
            }
            if config.get_user().is_none() {
                problem("url", "names no user: add user=NAME".into());
            }
            if config.get_dbname().is_none() {
                problem("url", "names no database: add dbname=NAME".into());
            }
            // `hostaddr` would be connected to whatever `host` says (a socket path: in the clear).
            if !config.get_hostaddrs().is_empty() {
                problem(
                    "url",
                    "hostaddr is not supported: name the server with host=NAME (its certificate's name)".into(),
                );
            }
            let network = config.get_hosts().iter().any(|h| matches!(h, postgres::config::Host::Tcp(_)));
            if config.get_hosts().is_empty() {
                problem("url", "names no host: add host=NAME (or host=/run/postgresql for the local socket)".into());
            }
            if network && s.ca_file.is_none() {
                problem(
                    "ca_file",
                    "missing: a network database is reached only over TLS; set the CA (PEM) its certificate chains to"
                        .into(),
                );
            }
            if network && config.get_ssl_mode() == postgres::config::SslMode::Disable {
                problem("url", "sslmode=disable: a network database is reached only over TLS".into());
            }
            let password = match (&s.password_file, &s.password_credential) {
                (Some(_), Some(_)) => {
                    problem("password_credential", "set password_file or password_credential, not both".into());
                    None
                }
                (Some(f), None) if !f.is_absolute() => {
                    problem("password_file", format!("{} must be an absolute path", f.display()));
                    None
                }
                (Some(f), None) => Some(hsm_adapters::PinSource::File(f.clone())),
                (None, Some(c)) if c.is_empty() || c.contains('/') => {
                    problem("password_credential", "must be a credential name without '/'".into());
                    None
                }
                (None, Some(c)) => Some(hsm_adapters::PinSource::Credential(c.clone())),
                (None, None) => None,
            };
            let ca_file = s.ca_file.as_ref().map(|f| if f.is_absolute() { f.clone() } else { base.join(f) });
            let hosts: Vec<String> = config
                .get_hosts()
                .iter()
                .map(|h| match h {
                    postgres::config::Host::Tcp(name) => name.clone(),
                    postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .collect();
            let describe = format!(
                "host={} dbname={} user={}",
                hosts.join(","),
                config.get_dbname().unwrap_or("?"),
                config.get_user().unwrap_or("?")
            );
            StoreConfig::Postgres(Box::new(PgConfig { config, password, ca_file, describe }))
        }
        other => {
            problem("kind", format!("{other:?} is not a store: \"sqlite\" (one appliance) or \"postgres\" (several)"));
            StoreConfig::Sqlite
        }
    }
}

pub(crate) fn validate_service(
    s: &ServiceConfigFile,
    base: &Path,
    state_dir: &Path,
    problems: &mut Vec<ConfigProblem>,
) -> ServiceConfig {
    // Bounded numbers first (the closures below hold `problems`).
    let max_batch_bytes = within(problems, "max_batch_mb", s.max_batch_mb, 2048, 1, 1 << 20) << 20;
    let max_batches_per_mp =
        within(problems, "max_batches_per_mp", s.max_batches_per_mp.map(u64::from), 4, 1, 64) as u32;
    let max_batch_lines = within(problems, "max_batch_lines", s.max_batch_lines, 10_000, 100, 1_000_000);
    let max_batches = within(problems, "max_batches", s.max_batches.map(u64::from), 16, 1, 1024) as u32;
    let max_streams_per_connection =
        within(problems, "max_streams_per_connection", s.max_streams_per_connection.map(u64::from), 32, 1, 1024) as u32;
    let max_connections_per_mp =
        within(problems, "max_connections_per_mp", s.max_connections_per_mp.map(u64::from), 256, 1, 1 << 20) as u32;
    let max_connections =
        within(problems, "max_connections", s.max_connections.map(|n| n as u64), 4096, 16, 1 << 20) as usize;
    let max_handshakes = within(problems, "max_handshakes", s.max_handshakes.map(|n| n as u64), 64, 1, 4096) as usize;
    let handshakes_per_second_per_source = within(
        problems,
        "handshakes_per_second_per_source",
        s.handshakes_per_second_per_source.map(u64::from),
        20,
        1,
        100_000,
    ) as u32;
    let tls_sessions = within(problems, "tls_sessions", s.tls_sessions.map(|n| n as u64), 1, 1, 16) as usize;
    let mut problem =
        |key: &str, message: String| problems.push(ConfigProblem { path: format!("service.{key}"), message });
    let mut addr = |key: &str, text: &str| match text.parse::<std::net::SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problem(key, format!("{text:?} is not an address:port (e.g. 0.0.0.0:8443 or [::1]:8443)"));
            None
        }
    };
    let fallback: std::net::SocketAddr = ([127, 0, 0, 1], 8443).into();
    let listen = addr("listen", s.listen.as_deref().unwrap_or("127.0.0.1:8443")).unwrap_or(fallback);
    let ops_listen = match s.ops_listen.as_deref() {
        Some("") => None,
        other => addr("ops_listen", other.unwrap_or("127.0.0.1:8444")),
    };
    let rate = s.rate_limit_per_second.unwrap_or(1000);
    if rate == 0 {
        problem("rate_limit_per_second", "must be at least 1".into());
    }
    let burst = s.rate_limit_burst.unwrap_or(rate.saturating_mul(2)).max(1);
    let json_logs = match s.log_format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            problem("log_format", format!("{other:?}: text or json"));
            false
        }
    };
    let mut seconds = |key: &str, value: Option<u64>| match value.unwrap_or(10) {
        n @ 1..=300 => std::time::Duration::from_secs(n),
        _ => {
            problem(key, "must be 1 to 300 seconds".into());
            std::time::Duration::from_secs(10)
        }
    };
    let admin_socket = match &s.admin_socket {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => base.join(p),
        None => state_dir.join("admin.sock"),
    };
    ServiceConfig {
        listen,
        ops_listen,
        admin_socket,
        admin_gid: s.admin_gid,
        admin_uids: s.admin_uids.clone().unwrap_or_default(),
        rate_limit_per_second: rate.max(1),
        rate_limit_burst: burst,
        json_logs,
        queue_depth: s.queue_depth.unwrap_or(1024).clamp(1, 1 << 20),
        handshake_timeout: seconds("handshake_timeout_seconds", s.handshake_timeout_seconds),
        header_timeout: seconds("header_timeout_seconds", s.header_timeout_seconds),
        body_timeout: seconds("body_timeout_seconds", s.body_timeout_seconds),
        max_batch_bytes,
        max_batches_per_mp,
        max_batch_lines,
        max_batches,
        max_streams_per_connection,
        max_connections_per_mp,
        max_connections,
        max_handshakes,
        handshakes_per_second_per_source,
        tls_sessions,
    }
}

/// `value` (default `default`) if it lies in `min..=max`; otherwise a problem at `service.KEY`
/// and the default.
fn within(problems: &mut Vec<ConfigProblem>, key: &str, value: Option<u64>, default: u64, min: u64, max: u64) -> u64 {
    match value.unwrap_or(default) {
        n if (min..=max).contains(&n) => n,
        _ => {
            problems.push(ConfigProblem { path: format!("service.{key}"), message: format!("must be {min} to {max}") });
            default
        }
    }
}

fn validate_pki(
    p: &PkiConfigFile,
    backends: &BTreeMap<String, BackendConfigFile>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<PkiConfig> {
    let before = problems.len();
    let mut problem = |key: &str, message: String| problems.push(ConfigProblem { path: format!("pki.{key}"), message });
    let site_name = p.site_name.clone().unwrap_or_else(|| "ConfigMgr site".into());
    if site_name.is_empty()
        || site_name.len() > 64
        || !site_name.chars().all(|c| c.is_ascii_alphanumeric() || " -_.'()".contains(c))
    {
        problem("site_name", "1 to 64 letters, digits, spaces and - _ . ' ( )".into());
    }
    let mut plan = |role: &str,
                    backend: Option<&String>,
                    algorithm: Option<&String>,
                    default_alg: KeyAlgorithm,
                    allowed: &[KeyAlgorithm],
                    days: Option<u32>,
                    default_days: u32| {
        let backend = backend.unwrap_or(&p.issuing_backend).clone();
        if !backends.contains_key(&backend) {
            problem(&format!("{role}_backend"), format!("no backend named {backend:?} in [backends]"));
        }
        let algorithm = match algorithm.map(|a| a.parse::<KeyAlgorithm>()) {
            None => default_alg,
            Some(Ok(a)) if allowed.contains(&a) => a,
            Some(_) => {
                let names: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
                problem(&format!("{role}_algorithm"), format!("must be one of {}", names.join(", ")));
                default_alg
            }
        };
        let validity_days = days.unwrap_or(default_days);
        if !(1..=36_500).contains(&validity_days) {
            problem(&format!("{role}_validity_days"), "must be 1 to 36500".into());
        }
        KeyPlan { backend, algorithm, validity_days }
    };
    use KeyAlgorithm::{EcP256, Rsa2048, Rsa3072, Rsa4096};
    let issuing = plan(
        "issuing",
        Some(&p.issuing_backend),
        p.issuing_algorithm.as_ref(),
        Rsa3072,
        &[Rsa2048, Rsa3072, Rsa4096],
        p.issuing_validity_days,
        7300,
    );
    let token_signing = plan(
        "token_signing",
        p.token_signing_backend.as_ref(),
        p.token_signing_algorithm.as_ref(),
        Rsa2048,
        &[Rsa2048, Rsa3072, Rsa4096, EcP256],
        p.token_signing_validity_days,
        730,
    );
    let tls = plan(
        "tls",
        p.tls_backend.as_ref(),
        p.tls_algorithm.as_ref(),
        EcP256,
        &KeyAlgorithm::ALL,
        p.tls_validity_days,
        365,
    );
    let role_validity_days = p.role_validity_days.unwrap_or(365);
    if !(1..=3650).contains(&role_validity_days) {
        problem("role_validity_days", "must be 1 to 3650".into());
    }
    let tls_names = p.tls_names.clone().unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into()]);
    if tls_names.is_empty() {
        problem("tls_names", "list at least one DNS name or IP address".into());
    } else if let Err(e) = crate::pki::csr::alt_names_for(crate::pki::ProfileKind::ApplianceTls, &tls_names) {
        problem("tls_names", e.to_string());
    }
    let hierarchy_id = p.hierarchy_id.as_ref().and_then(|h| {
        let parsed = crate::token::Guid::parse(h);
        if parsed.is_none() {
            problem("hierarchy_id", format!("{h:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"));
        }
        parsed
    });
    (problems.len() == before).then_some(PkiConfig {
        hierarchy_id,
        site_name,
        issuing,
        token_signing,
        tls,
        role_validity_days,
        tls_names,
    })
}

impl Config {
    /// Environment variables the configured PKCS#11 modules read when they load (see
    /// [`crate::environment::ensure`]).
    pub fn module_environment(&self) -> Vec<(String, String)> {
        self.backends.values().flat_map(|b| b.environment().iter().cloned()).collect()
    }

    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        // It names the module loaded with the PIN and its environment: it must be ours.
        if path.exists()
            && let Some(reason) = hsm_adapters::trust::untrusted(path)
        {
            return Err(ConfigError::Unsafe { path: path.to_owned(), reason });
        }
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text that was read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| ConfigError::Syntax { path: path.to_owned(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.validate(base).map_err(|problems| ConfigError::Invalid { path: path.to_owned(), problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_config_is_valid_apart_from_machine_specific_paths() {
        let text = include_str!("../../sitesign.sample.toml");
        match Config::parse(text, Path::new("/etc/sitesign/sitesign.toml")) {
            Ok(c) => assert!(c.backends.contains_key("hsm")),
            // On a machine without SoftHSM the module path is the only acceptable complaint.
            Err(ConfigError::Invalid { problems, .. }) => {
                assert!(problems.iter().all(|p| p.path.ends_with(".module")), "{problems:?}")
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let text = "[backends.\"bad name\"]\nkind = \"pkcs11\"\ntoken_label = \"t\"\npin_file = \"/p\"\nmodule = \"/bin/sh\"\n";
        let err = Config::parse(text, Path::new("/x/sitesign.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else { panic!("{err}") };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["state_dir", "backends.bad name"]);
    }

    #[test]
    fn syntax_errors_and_unknown_keys_name_the_place() {
        let err = Config::parse("state_dir = \"/var/lib/sitesign\"\nlisten = 3\n", Path::new("/x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown field `listen`") && msg.contains("line 2"), "{msg}");
    }

    /// Noticed while writing the `config` fuzz target (and in review: 1e18 wrapped to a tiny cap): a cap of -1, NaN or infinity was taken
    /// (the first two as a 0-byte cap that stops all signing, the last as no cap).
    #[test]
    fn an_audit_cap_must_be_a_positive_size() {
        for bad in ["-1.0", "nan", "inf", "0.0", "1e18"] {
            let text = format!("state_dir = \"/var/lib/sitesign\"\n[audit]\nmax_size_mb = {bad}\n");
            let err = Config::parse(&text, Path::new("/x/sitesign.toml")).unwrap_err();
            let ConfigError::Invalid { problems, .. } = err else { panic!("{bad}: {err}") };
            assert!(problems.iter().any(|p| p.path == "audit.max_size_mb"), "{bad}: {problems:?}");
        }
    }

    fn store_problems(table: &str) -> Vec<(String, String)> {
        let text = format!("state_dir = \"/var/lib/sitesign\"\n{table}");
        match Config::parse(&text, Path::new("/x/sitesign.toml")) {
            Err(ConfigError::Invalid { problems, .. }) => problems
                .into_iter()
                .filter(|p| p.path.starts_with("store.") || p.path.starts_with("node."))
                .map(|p| (p.path, p.message))
                .collect(),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    /// A shared store's connection is checked before anything connects: no password in the
    /// configuration, never the clear over a network, one password source.
    #[test]
    fn a_postgres_store_must_keep_its_password_out_of_the_file_and_use_tls_over_a_network() {
        let pg = |rest: &str| store_problems(&format!("[store]\nkind = \"postgres\"\n{rest}"));
        let has = |problems: &[(String, String)], path: &str, words: &str| {
            problems.iter().any(|(p, m)| p == path && m.contains(words))
        };
        let p = pg("url = \"host=db1 dbname=s user=s password=hunter2\"\nca_file = \"/ca.pem\"\n");
        assert!(has(&p, "store.url", "holds a password"), "{p:?}");
        assert!(p.iter().all(|(_, m)| !m.contains("hunter2")), "the password is never echoed: {p:?}");
        let p = pg("url = \"host=db1 dbname=s user=s\"\n");
        assert!(has(&p, "store.ca_file", "only over TLS"), "{p:?}");
        let p = pg("url = \"host=/run/postgresql hostaddr=203.0.113.5 dbname=s user=s\"\n");
        assert!(has(&p, "store.url", "hostaddr"), "{p:?}");
        let p = pg("url = \"host=db1 dbname=s user=s sslmode=verify-full\"\nca_file = \"/ca.pem\"\n");
        assert!(p.is_empty(), "libpq's verify-full is what sitesign does anyway: {p:?}");
        let p = pg("url = \"host=db1 dbname=s user=s sslmode=disable\"\nca_file = \"/ca.pem\"\n");
        assert!(has(&p, "store.url", "sslmode=disable"), "{p:?}");
        let p = pg("url = \"host=/run/postgresql dbname=s\"\npassword_file = \"pw\"\npassword_credential = \"db\"\n");
        assert!(has(&p, "store.url", "no user"), "{p:?}");
        assert!(has(&p, "store.password_credential", "not both"), "{p:?}");
        assert!(has(&pg(""), "store.url", "missing"));
        assert!(has(
            &pg("url = \"host=db1 dbname=s user=s\"\nca_file = \"/ca.pem\"\npassword_file = \"rel\"\n"),
            "store.password_file",
            "absolute"
        ));
        let p = store_problems("[store]\nkind = \"mysql\"\n");
        assert!(has(&p, "store.kind", "not a store"), "{p:?}");
        let p = store_problems("[store]\nurl = \"host=db1\"\n");
        assert!(has(&p, "store.url", "only for kind"), "{p:?}");
        let p = store_problems("[node]\nid = \"a b\"\n");
        assert!(has(&p, "node.id", "not a node id"), "{p:?}");
        // A Unix socket needs no TLS; the password from a credential.
        let text = "state_dir = \"/var/lib/sitesign\"\n[store]\nkind = \"postgres\"\nurl = \"host=/run/postgresql dbname=sitesign user=sitesign\"\npassword_credential = \"db-password\"\n[node]\nid = \"sign-01\"\n";
        let problems = match Config::parse(text, Path::new("/x/sitesign.toml")) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems, .. }) => problems,
            Err(e) => panic!("{e}"),
        };
        assert!(problems.iter().all(|p| !p.path.starts_with("store.") && !p.path.starts_with("node.")), "{problems:?}");
    }
}
