//! The dashboards and alert rules operators import (issue 17): `monitoring/alerts.yml` passes
//! `promtool check rules` (Debian's `prometheus` package), and every `sitesign_*` metric the rules
//! and `monitoring/grafana-dashboard.json` name exists in a running sitesignd's `/metrics` — so a
//! renamed metric cannot leave a dashboard blank or an alert silent.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::json;

mod common;
use common::appliance::{Appliance, client_request};

fn monitoring(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring").join(file)).unwrap()
}

/// Every `sitesign_…` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sitesign_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_alert_rules_pass_promtool() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring/alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (Debian's prometheus package; bash scripts/install-deps installs it)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 7 rules found"));
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_name_exists() {
    let a = Appliance::new();
    let s = a.start();
    let (status, _) = s.call("/v1/client-tokens", Some(&client_request(1, json!({"kind": "internal"})).to_string()));
    assert_eq!(status, 200);
    let (status, text) = s.ops("/metrics");
    assert_eq!(status, 200);
    // What the exposition offers: sample names, and the families (a counter family's samples
    // end in _total, a histogram's in _bucket, _sum and _count; a labelled family may have no
    // sample yet).
    let mut offered: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let family = rest.split_whitespace().next().unwrap().to_owned();
            for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
                offered.insert(format!("{family}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            offered.insert(line.split(['{', ' ']).next().unwrap().to_owned());
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(&monitoring("grafana-dashboard.json")).unwrap();
    let mut named = names_in(&monitoring("alerts.yml"));
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    named.extend(exprs.iter().flat_map(|e| names_in(e)));
    named.extend(names_in(&dashboard["templating"].to_string()));
    assert!(named.len() >= 12, "{named:?}");
    let missing: Vec<&String> = named.iter().filter(|n| !offered.contains(*n)).collect();
    assert!(missing.is_empty(), "named but not exported: {missing:?}\n{text}");
    // The new gauges carry values: the keys' ends and the CRL's nextUpdate lie ahead.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let key_ends: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("sitesign_key_expiry_timestamp_seconds{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(key_ends.len(), 3, "issuing, token-signing, tls: {text}");
    assert!(key_ends.iter().all(|t| *t > now + 30.0 * 86400.0));
    let crl = s.metric("sitesign_crl_next_update_timestamp_seconds", "").expect("the CRL's nextUpdate");
    assert!(crl > now + 86400.0 && crl <= now + 8.0 * 86400.0, "{crl}");
    assert!(s.metric("sitesign_queue_depth", "").is_some());
}
