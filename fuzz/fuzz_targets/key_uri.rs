//! The key URI parser, `hsm_adapters::KeyUri` (`FromStr`, RFC 7512 `pkcs11:` and sitesign's
//! `tpm:`), and its `Display`: how the key inventory names every key.
//!
//! Checked: no panic; a URI that parses is written (`Display`) as a URI that parses back to the
//! same key, and writing is idempotent; a `pkcs11:` URI names an object or an id, and each of its
//! percent-escapes is `%` and two hex digits (RFC 3986 §2.1); a `tpm:` handle is hex digits
//! after `0x`, and persistent (0x81……); and the query — where RFC 7512 puts `pin-value` — never
//! reaches the result or the error message beyond the first attribute's name: the same input
//! with every query value replaced gives the same verdict, word for word.

#![no_main]

use hsm_adapters::{KeyUri, TpmUri};
use libfuzzer_sys::fuzz_target;

/// `s` with the value of every query attribute (after the first `?`) replaced by `X`.
fn query_values_replaced(s: &str) -> Option<String> {
    let (path, query) = s.split_once('?')?;
    let attrs: Vec<String> = query
        .split('&')
        .map(|a| match a.split_once('=') {
            Some((name, _)) => format!("{name}=X"),
            None => a.to_owned(),
        })
        .collect();
    Some(format!("{path}?{}", attrs.join("&")))
}

/// Whether every `%` in `text` starts an escape of two hex digits (RFC 3986 §2.1).
fn escapes_well_formed(text: &str) -> bool {
    let bytes = text.as_bytes();
    (0..bytes.len())
        .filter(|&i| bytes[i] == b'%')
        .all(|i| bytes.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)))
}

fn verdict(s: &str) -> Result<KeyUri, String> {
    s.parse::<KeyUri>().map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let parsed = verdict(s);

    if let Some(other) = query_values_replaced(s) {
        assert_eq!(verdict(&other), parsed, "the query's values changed the verdict");
    }

    let Ok(uri) = parsed else { return };
    match &uri {
        KeyUri::Pkcs11(p) => {
            assert!(p.object.is_some() || p.id.is_some(), "a pkcs11 URI naming no object");
            assert!(escapes_well_formed(s), "accepted a malformed percent-escape");
        }
        KeyUri::Tpm(TpmUri::Handle(h)) => {
            assert_eq!(h >> 24, 0x81, "handle {h:#x}");
            let digits = &s["tpm:handle=0x".len()..];
            assert!(digits.bytes().all(|b| b.is_ascii_hexdigit()), "accepted handle {digits:?}");
        }
        _ => {}
    }
    let written = uri.to_string();
    let reread = written.parse::<KeyUri>().unwrap_or_else(|e| panic!("{written:?} does not parse back: {e}"));
    assert_eq!(reread, uri, "{written:?} parses back to another key");
    assert_eq!(reread.to_string(), written, "writing is not idempotent");
});
