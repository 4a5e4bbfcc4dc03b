//! The configuration loader, `sitesign::config::Config::parse` (what `Config::load` does after
//! reading the file): TOML into `ConfigFile`, validated into `Config`, the backends' tables
//! through `hsm_adapters::BackendConfigFile::validate`. Nothing is opened; the only contact with
//! the machine is validation's `is_file` check of a PKCS#11 module path.
//!
//! Checked: no panic; a configuration that validates has every bounded value inside its
//! documented range (skew, renewal age, timeouts, batch and connection limits, session counts,
//! TPM handle), absolute paths, at least one backend with a well-formed name, and a `[pki]` whose
//! backends exist. A `ConfigFile` written back to TOML — as `sitesign quickstart` writes the file
//! it made — reads back to the same verdict: the same `Config`, or the same problems.

#![no_main]

use std::path::Path;

use hsm_adapters::BackendConfig;
use hsm_adapters::config::{MAX_SESSIONS, MODULE_ENVIRONMENT};
use libfuzzer_sys::fuzz_target;
use sitesign::config::{Config, ConfigError, ConfigFile};

const PATH: &str = "/etc/sitesign/sitesign.toml";

fn check_valid(c: &Config) {
    assert!(c.state_dir.is_absolute(), "state_dir {:?}", c.state_dir);
    assert!((0..=3600).contains(&c.tokens.clock_skew_seconds), "skew {}", c.tokens.clock_skew_seconds);
    assert!((0..=89).contains(&c.tokens.renew_after_days), "renew_after_days {}", c.tokens.renew_after_days);
    let s = &c.service;
    for (name, t) in [("handshake", s.handshake_timeout), ("header", s.header_timeout), ("body", s.body_timeout)] {
        assert!((1..=300).contains(&t.as_secs()), "{name} timeout {t:?}");
    }
    assert!(s.rate_limit_per_second >= 1 && s.rate_limit_burst >= 1, "rate {}", s.rate_limit_per_second);
    assert!((1 << 20..=1 << 40).contains(&s.max_batch_bytes), "max_batch_bytes {}", s.max_batch_bytes);
    assert!((100..=1_000_000).contains(&s.max_batch_lines), "max_batch_lines {}", s.max_batch_lines);
    assert!((1..=64).contains(&s.max_batches_per_mp) && (1..=1024).contains(&s.max_batches));
    assert!((16..=1 << 20).contains(&s.max_connections) && (1..=4096).contains(&s.max_handshakes));
    assert!((1..=16).contains(&s.tls_sessions) && (1..=1 << 20).contains(&s.queue_depth));
    assert!(s.admin_socket.is_absolute() && c.audit.dir.is_absolute());
    assert!(!c.backends.is_empty(), "validated without a backend");
    for (name, backend) in &c.backends {
        let well_formed = !name.is_empty() && name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch));
        assert!(well_formed, "backend name {name:?}");
        match backend {
            BackendConfig::Pkcs11(p) => {
                assert!(p.module.is_absolute(), "module {:?}", p.module);
                assert!(p.sessions.get() <= MAX_SESSIONS, "sessions {}", p.sessions);
                for (var, _) in &p.environment {
                    assert!(MODULE_ENVIRONMENT.contains(&var.as_str()), "environment {var:?}");
                }
            }
            BackendConfig::Tpm(t) => {
                assert_eq!(t.parent_handle >> 24, 0x81, "parent handle {:#x}", t.parent_handle);
                assert!(t.key_dir.is_absolute(), "key_dir {:?}", t.key_dir);
            }
            _ => {}
        }
    }
    if let Some(pki) = &c.pki {
        for plan in [&pki.issuing, &pki.token_signing, &pki.tls] {
            assert!(c.backends.contains_key(&plan.backend), "[pki] names backend {:?}", plan.backend);
            assert!((1..=36_500).contains(&plan.validity_days), "validity {}", plan.validity_days);
        }
        assert!(!pki.tls_names.is_empty(), "no TLS names");
    }
}

/// A verdict that two readings of the same configuration must share (`Debug` of the validated
/// configuration; syntax errors are compared by kind only, their messages name positions).
fn verdict(r: &Result<Config, ConfigError>) -> String {
    match r {
        Ok(c) => format!("{c:?}"),
        Err(ConfigError::Invalid { problems, .. }) => format!("{problems:?}"),
        Err(ConfigError::Syntax { .. }) => "syntax".into(),
        Err(e) => format!("{e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let result = Config::parse(text, Path::new(PATH));
    if let Ok(c) = &result {
        check_valid(c);
    }

    // Written back (as quickstart writes a ConfigFile) and read again: the same verdict.
    let Ok(file) = toml::from_str::<ConfigFile>(text) else { return };
    let Ok(written) = toml::to_string(&file) else { return };
    let again = Config::parse(&written, Path::new(PATH));
    assert_eq!(verdict(&again), verdict(&result), "verdict changed on writing back:\n{written}");
});
