//! `sitesign quickstart --dir DIR`: everything a working appliance needs, for a newcomer. A
//! device (its own SoftHSM token, or the TPM `--tcti` names), `DIR/sitesign.toml`, `init` (SMS
//! Issuing root, token-signing key, the appliance's TLS certificate for localhost, 127.0.0.1 and
//! the `--listen` host), one demo management point enrolled through a real PKCS#10 request
//! (`DIR/mp/mp.key`, `DIR/mp/mp.crt`), and `DIR/ca.pem`. Running it again reuses what exists.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::collections::BTreeMap;

use der::Encode;
use hsm_adapters::config::{BackendConfigFile, Pkcs11ConfigFile, TpmConfigFile};
use hsm_adapters::signer::VerifyingKey;
use hsm_adapters::{PublicKey, X509Signature, random_secret};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use secrecy::ExposeSecret;
use serde_json::json;
use sitesign::admin::{self, AdminContext, AdminRequest, AdminResponse};
use sitesign::config::{ConfigFile, PkiConfigFile, ServiceConfigFile};
use sitesign::keys::KeyRole;
use sitesign::pki::{self, ProfileKind, RoleProfile};
use spki::{AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier};
use x509_cert::builder::{Builder, RequestBuilder};
use x509_cert::ext::pkix::SubjectAltName;

use crate::absolute;
use crate::context::{Context, actor};
use crate::output::{CliError, Output};
use crate::softhsm::{self, write_private};

/// Which device the quickstart appliance uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// A SoftHSM2 token of its own under DIR.
    Softhsm,
    /// The TPM named by --tcti.
    Tpm,
    /// An existing token of any PKCS#11 module: --module, --token-label, --pin-file.
    Pkcs11,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder for everything the appliance needs (created if missing).
    #[arg(long, default_value = "./var")]
    dir: PathBuf,
    /// The key device.
    #[arg(long, value_enum, default_value = "softhsm")]
    backend: Device,
    /// TCTI of the TPM for --backend tpm.
    #[arg(long, default_value = hsm_adapters::config::DEFAULT_TCTI)]
    tcti: String,
    /// Address the service will listen on; its host goes into the TLS certificate.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    /// Algorithm of the token-signing key: rsa-2048 (RS256, what ConfigMgr clients verify) or
    /// ec-p256 (ES256).
    #[arg(long, default_value = "rsa-2048", value_parser = ["rsa-2048", "ec-p256"])]
    token_algorithm: String,
    /// Address of the plain-HTTP ops listener (health, readiness, metrics); default the
    /// --listen port + 1 on the same host.
    #[arg(long)]
    ops_listen: Option<String>,
    /// The PKCS#11 module (SoftHSM2's by default).
    #[arg(long, default_value = hsm_adapters::config::DEFAULT_PKCS11_MODULE)]
    module: PathBuf,
    /// The label of the existing token, for --backend pkcs11.
    #[arg(long, default_value = "sitesign")]
    token_label: String,
    /// The file holding the existing token's user PIN (mode 0600), for --backend pkcs11.
    #[arg(long)]
    pin_file: Option<PathBuf>,
    /// A variable the module reads its own configuration from, NAME=VALUE (repeatable), for
    /// --backend pkcs11: written to the backend's `environment` table, which allows only such
    /// variables (e.g. KRYOPTIC_CONF, ChrystokiConfigurationPath).
    #[arg(long = "module-env", value_name = "NAME=VALUE", value_parser = parse_module_env)]
    module_env: Vec<(String, String)>,
    /// Algorithm of the appliance's TLS key: ec-p256, or rsa-2048 for a module without elliptic
    /// curves (opencryptoki's soft token).
    #[arg(long, default_value = "ec-p256", value_parser = ["ec-p256", "rsa-2048"])]
    tls_algorithm: String,
    /// Keep the state in this PostgreSQL database, shared with other appliances, instead of
    /// the embedded SQLite: a libpq connection string without a password
    /// (`host=/run/postgresql dbname=sitesign user=sitesign`). Written to `[store]`.
    #[arg(long, value_name = "CONNINFO")]
    store_url: Option<String>,
    /// The file holding the database password (mode 0600), with --store-url.
    #[arg(long, requires = "store_url")]
    store_password_file: Option<PathBuf>,
    /// The CA the database server's certificate chains to (PEM), with --store-url and a
    /// network host.
    #[arg(long, requires = "store_url")]
    store_ca_file: Option<PathBuf>,
    /// This node's id among appliances sharing a store (default: the host name).
    #[arg(long)]
    node_id: Option<String>,
}

pub(crate) fn parse_module_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err("expected NAME=VALUE, e.g. KRYOPTIC_CONF=/etc/kryoptic/token.conf".to_owned()),
    }
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
fn listen_host(listen: &str) -> String {
    if let Some(rest) = listen.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_owned();
    }
    match listen.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host.to_owned(),
        _ => listen.to_owned(),
    }
}

fn write(path: &Path, text: impl AsRef<[u8]>) -> Result<(), CliError> {
    fs::write(path, text).map_err(|e| CliError::new("io", format!("cannot write {}: {e}", path.display())))
}

pub fn run(args: &Args, out: Output) -> Result<ExitCode, CliError> {
    let dir = absolute(&args.dir)?;
    fs::create_dir_all(&dir).map_err(|e| CliError::new("io", format!("cannot create {}: {e}", dir.display())))?;
    if !args.module_env.is_empty() && args.backend != Device::Pkcs11 {
        return Err(CliError::new("usage", "--module-env is for --backend pkcs11 (a module of your own)"));
    }
    let (backend_name, table) = match args.backend {
        Device::Softhsm => {
            let prepared = softhsm::prepare(&dir, &args.module)?;
            if prepared.created {
                out.line(format!("created SoftHSM token \"sitesign\" in {}", prepared.softhsm.root().display()));
            }
            let table = softhsm::backend_table(&prepared.softhsm, &args.module, &prepared.pin_file);
            ("softhsm", BackendConfigFile::Pkcs11(table))
        }
        Device::Tpm => {
            let auth = dir.join("tpm.auth");
            if !auth.exists() {
                write_private(&auth, random_secret()?.expose_secret().as_bytes())?;
            }
            let table = TpmConfigFile {
                tcti: Some(args.tcti.clone()),
                key_dir: Some(dir.join("tpm-keys")),
                auth_file: Some(auth),
                ..TpmConfigFile::default()
            };
            ("tpm", BackendConfigFile::Tpm(table))
        }
        Device::Pkcs11 => {
            let pin_file = args.pin_file.as_ref().ok_or_else(|| {
                CliError::new("usage", "--backend pkcs11 needs --pin-file (the token's user PIN, a 0600 file)")
            })?;
            let table = Pkcs11ConfigFile {
                module: Some(absolute(&args.module)?),
                token_label: Some(args.token_label.clone()),
                pin_file: Some(absolute(pin_file)?),
                sessions: Some(2),
                environment: args.module_env.iter().cloned().collect(),
                ..Pkcs11ConfigFile::default()
            };
            ("hsm", BackendConfigFile::Pkcs11(table))
        }
    };
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let host = listen_host(&args.listen);
    if !names.contains(&host) && !host.is_empty() && host != "0.0.0.0" && host != "::" {
        names.push(host);
    }
    let config_path = dir.join("sitesign.toml");
    if !config_path.exists() {
        // A host name in --listen goes into the certificate; the service then listens on every
        // interface at that port, and the ops listener stays on loopback.
        let port = args.listen.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).ok_or_else(|| {
            CliError::new("usage", format!("--listen {:?} needs a port (e.g. 127.0.0.1:8443)", args.listen))
        })?;
        let (listen, ops_ip) = match args.listen.parse::<std::net::SocketAddr>() {
            Ok(addr) => (addr, addr.ip()),
            Err(_) => (std::net::SocketAddr::from(([0, 0, 0, 0], port)), std::net::IpAddr::from([127, 0, 0, 1])),
        };
        let ops_listen = match &args.ops_listen {
            Some(o) => o.clone(),
            None => std::net::SocketAddr::new(ops_ip, port.wrapping_add(1)).to_string(),
        };
        let password_file = args.store_password_file.as_deref().map(crate::absolute).transpose()?;
        let ca_file = args.store_ca_file.as_deref().map(crate::absolute).transpose()?;
        let file = ConfigFile {
            state_dir: Some("state".into()),
            backends: BTreeMap::from([(backend_name.to_owned(), table)]),
            pki: Some(PkiConfigFile {
                site_name: Some("sitesign quickstart".into()),
                issuing_backend: backend_name.to_owned(),
                token_signing_algorithm: Some(args.token_algorithm.clone()),
                tls_algorithm: Some(args.tls_algorithm.clone()),
                tls_names: Some(names.clone()),
                ..PkiConfigFile::default()
            }),
            service: Some(ServiceConfigFile {
                listen: Some(listen.to_string()),
                ops_listen: Some(ops_listen),
                admin_socket: Some("admin.sock".into()),
                ..ServiceConfigFile::default()
            }),
            store: args.store_url.as_ref().map(|url| sitesign::config::StoreConfigFile {
                kind: Some("postgres".into()),
                url: Some(url.clone()),
                password_file,
                ca_file,
                ..Default::default()
            }),
            node: args
                .node_id
                .as_ref()
                .map(|id| sitesign::config::NodeConfigFile { id: Some(id.clone()), address: None }),
            ..ConfigFile::default()
        };
        let body = toml::to_string(&file).map_err(|e| CliError::new("encoding", format!("the configuration: {e}")))?;
        let text = format!("# Written by `sitesign quickstart`. See sitesign.sample.toml for every option.\n{body}");
        // Checked before it is written (a --module-env outside the allow-list, say), so that a
        // refused configuration never stays behind to be picked up by the next run.
        sitesign::config::Config::parse(&text, &config_path)?;
        write(&config_path, text)?;
        out.line(format!("wrote {}", config_path.display()));
    }
    let ctx = Context::load(&config_path)?;
    let mut store = ctx.store()?;
    out.progress("opening the backend");
    let backends = ctx.backends()?;
    let audit = ctx.audit()?;
    let actor = actor();
    let mut admin_ctx = AdminContext {
        config: &ctx.config,
        store: &mut store,
        backends: &backends,
        audit: &audit,
        actor: &actor,
        now: sitesign::time::now_unix(),
    };
    if admin_ctx.store.meta("initialized_at")?.is_none() {
        out.progress("generating the SMS Issuing, token-signing and TLS keys inside the device");
        let report = admin::init::init(&mut admin_ctx)?;
        admin::witness_head(&mut admin_ctx);
        for key in &report.keys {
            out.line(format!("created {} key {}", key.role.as_str(), key.uri));
        }
    }

    let mp_dir = dir.join("mp");
    fs::create_dir_all(&mp_dir).map_err(|e| CliError::new("io", format!("cannot create {}: {e}", mp_dir.display())))?;
    let (mp_key, mp_crt) = (mp_dir.join("mp.key"), mp_dir.join("mp.crt"));
    if !mp_crt.exists() {
        out.progress("enrolling the demo management point");
        let csr = demo_mp_request(&mp_key)?;
        write(&mp_dir.join("mp.csr"), pki::pem("CERTIFICATE REQUEST", &csr)?)?;
        let request =
            AdminRequest::CertIssue { profile: RoleProfile::MpClient, csr: sitesign::token::b64::encode(&csr) };
        let (certificate, pem) = match admin::execute(&mut admin_ctx, &request)? {
            AdminResponse::CertificateIssued { certificate, pem } => (certificate, pem),
            other => return Err(crate::admin_client::unexpected(&other)),
        };
        write(&mp_crt, pem)?;
        out.line(format!("enrolled demo management point {} ({})", certificate.subject, mp_crt.display()));
    }

    let state = ctx.state()?;
    let root = state.active(KeyRole::Issuing).and_then(|k| k.certificate()).unwrap_or_default();
    write(&dir.join("ca.pem"), pki::pem("CERTIFICATE", root)?)?;
    let tls = state.active(KeyRole::Tls).and_then(|k| k.certificate()).unwrap_or_default();
    write(&dir.join("tls.crt"), pki::pem("CERTIFICATE", tls)?)?;
    let exported = crate::certs::export(&state, &dir.join("certs"))?;
    out.line(format!(
        "wrote {} (SMS Issuing), {} (this appliance's TLS server) and {} certificates in {}",
        dir.join("ca.pem").display(),
        dir.join("tls.crt").display(),
        exported.len(),
        dir.join("certs").display()
    ));
    out.line(String::new());
    out.line("next:");
    out.line(format!("  target/release/sitesign --config {} status", config_path.display()));
    out.line(format!("  target/release/sitesign --config {} keys list", config_path.display()));
    out.json(&json!({
        "dir": dir,
        "config": config_path,
        "backend": backend_name,
        "ca": dir.join("ca.pem"),
        "tls_certificate": dir.join("tls.crt"),
        "mp": {"key": mp_key, "certificate": mp_crt},
        "tls_names": names,
        "exported": exported,
    }));
    Ok(ExitCode::SUCCESS)
}

/// The demo management point's own key (a file: an MP's key is its own) and a PKCS#10 request
/// signed with it.
fn demo_mp_request(key_path: &Path) -> Result<Vec<u8>, CliError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| CliError::new("random", "cannot generate the demo MP key"))?;
    write_private(key_path, pki::pem("PRIVATE KEY", pkcs8.as_ref())?.as_bytes())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| CliError::new("random", "cannot load the demo MP key"))?;
    let public = PublicKey::from_p256_point(pair.public_key().as_ref())?;
    let signer = FileKeySigner { pair, rng, public };
    let subject = "CN=demo-mp.sitesign.local,O=sitesign quickstart"
        .parse()
        .map_err(|e: der::Error| CliError::new("encoding", e.to_string()))?;
    let mut builder = RequestBuilder::new(subject).map_err(|e| CliError::new("encoding", e.to_string()))?;
    let san = pki::csr::alt_names_for(ProfileKind::MpClient, &["demo-mp.sitesign.local".to_owned()])?;
    builder.add_extension(&SubjectAltName(san)).map_err(|e| CliError::new("encoding", e.to_string()))?;
    let request = builder.build::<_, X509Signature>(&signer).map_err(|e| CliError::new("encoding", e.to_string()))?;
    request.to_der().map_err(|e| CliError::new("encoding", e.to_string()))
}

/// A P-256 key in a file, as RustCrypto's signing traits see it (the MP's key, not sitesign's).
struct FileKeySigner {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    public: PublicKey,
}

impl signature::Keypair for FileKeySigner {
    type VerifyingKey = VerifyingKey;
    fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.public.clone())
    }
}

impl DynSignatureAlgorithmIdentifier for FileKeySigner {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(AlgorithmIdentifierOwned { oid: hsm_adapters::key::OID_ECDSA_WITH_SHA256, parameters: None })
    }
}

impl signature::Signer<X509Signature> for FileKeySigner {
    fn try_sign(&self, msg: &[u8]) -> Result<X509Signature, signature::Error> {
        let sig = self.pair.sign(&self.rng, msg).map_err(|_| signature::Error::new())?;
        Ok(X509Signature::from(sig.as_ref().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_hosts() {
        assert_eq!(listen_host("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(listen_host("[::1]:8443"), "::1");
        assert_eq!(listen_host("sitesign.contoso.com:443"), "sitesign.contoso.com");
        assert_eq!(listen_host("appliance"), "appliance");
    }
}
