//! GUIDs as ConfigMgr writes them: 8-4-4-4-12 hex digits, random (version 4). The bulk-token
//! layout uses the hierarchy GUID upper case in `TenantId` and lower case elsewhere.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};

/// A 128-bit GUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid([u8; 16]);

/// The system has no randomness (the kernel's CSPRNG failed).
#[derive(Debug, thiserror::Error)]
#[error("the system's random number generator failed")]
pub struct NoRandomness;

impl Guid {
    /// A fresh random (version 4, RFC 4122 variant) GUID.
    pub fn random() -> Result<Guid, NoRandomness> {
        let mut b = [0u8; 16];
        SystemRandom::new().fill(&mut b).map_err(|_| NoRandomness)?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Ok(Guid(b))
    }

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in either case (also inside braces, as
    /// Windows tools print them).
    pub fn parse(text: &str) -> Option<Guid> {
        let t = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or(text);
        let bytes = t.as_bytes();
        if bytes.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if bytes[i] != b'-' {
                    return None;
                }
                i += 1;
                continue;
            }
            let hi = (bytes[i] as char).to_digit(16)?;
            let lo = (bytes[i + 1] as char).to_digit(16)?;
            out[n] = (hi * 16 + lo) as u8;
            n += 1;
            i += 2;
        }
        Some(Guid(out))
    }

    /// Lower case, hyphenated.
    pub fn lower(&self) -> String {
        self.to_string()
    }

    /// Upper case, hyphenated.
    pub fn upper(&self) -> String {
        self.to_string().to_ascii_uppercase()
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_cases_and_prints_each_as_configmgr_does() {
        let g = Guid::parse("CDCC5E91-0ADF-4A24-82D0-196667F1C081").unwrap();
        assert_eq!(g.lower(), "cdcc5e91-0adf-4a24-82d0-196667f1c081");
        assert_eq!(g.upper(), "CDCC5E91-0ADF-4A24-82D0-196667F1C081");
        assert_eq!(Guid::parse("{cdcc5e91-0adf-4a24-82d0-196667f1c081}"), Some(g));
        for bad in [
            "",
            "cdcc5e91-0adf-4a24-82d0-196667f1c08",
            "cdcc5e91_0adf-4a24-82d0-196667f1c081",
            "gdcc5e91-0adf-4a24-82d0-196667f1c081",
            "cdcc5e910adf4a2482d0196667f1c081",
        ] {
            assert!(Guid::parse(bad).is_none(), "{bad}");
        }
        let r = Guid::random().unwrap();
        assert_eq!(Guid::parse(&r.lower()), Some(r));
        assert_eq!(&r.lower()[14..15], "4");
        assert_ne!(r, Guid::random().unwrap());
    }
}
