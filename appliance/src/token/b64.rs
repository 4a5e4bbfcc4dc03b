//! base64url without padding (RFC 4648 §5, RFC 7515 §2), strict: decoding refuses padding,
//! characters outside the URL-safe alphabet and non-canonical trailing bits, so every token has
//! exactly one encoding and a re-encoded token cannot slip past a comparison.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Encodes `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes `text`, or `None` if it is not the canonical unpadded base64url of some bytes.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc4648_vectors() {
        for (input, want) in
            [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"), ("fooba", "Zm9vYmE")]
        {
            assert_eq!(encode(input.as_bytes()), want);
        }
    }

    #[test]
    fn round_trips_and_refuses_every_non_canonical_form() {
        for n in 0..40 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
        }
        assert_eq!(encode(b"\xfb\xff"), "-_8");
        assert!(decode("-_8=").is_none(), "padding");
        assert!(decode("+/8").is_none(), "standard alphabet");
        assert!(decode("-_9").is_none(), "non-zero trailing bits");
        assert!(decode("A").is_none(), "impossible length");
        assert!(decode("ab cd").is_none() && decode("ab\ncd").is_none(), "whitespace");
    }
}
