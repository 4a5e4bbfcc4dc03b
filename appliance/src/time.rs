//! Times as operators read and write them: RFC 3339 UTC (`2026-11-24T21:56:02Z`) out, RFC 3339
//! or `now` and durations like `24h` or `7d` in. Formatting is der's calendar (the one X.509 uses);
//! parsing is humantime's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch now.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `unix` as RFC 3339 UTC, `2026-11-24T21:56:02Z` (times before 1970 or past 9999 print as the
/// number).
pub fn rfc3339(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .and_then(|s| der::DateTime::from_unix_duration(Duration::from_secs(s)).ok())
        .map_or_else(|| unix.to_string(), |d| d.to_string())
}

/// `unix` as `YYYYMMDD-HHMMSS` UTC, for names (key labels, set-aside files).
pub fn stamp(unix: i64) -> String {
    rfc3339(unix).replace(['-', ':'], "").replace('T', "-").trim_end_matches('Z').to_owned()
}

/// A point in time as an operator gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// At once.
    Now,
    /// At this Unix time.
    At(i64),
}

/// Why a time or duration was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TimeError(String);

impl When {
    /// Parses `now` or an RFC 3339 time (`2026-12-01T09:00:00Z`, or with an offset).
    pub fn parse(text: &str) -> Result<When, TimeError> {
        if text.eq_ignore_ascii_case("now") {
            return Ok(When::Now);
        }
        let t = humantime::parse_rfc3339_weak(text).map_err(|e| {
            TimeError(format!("{text:?} is not a time: give `now` or RFC 3339 like 2026-12-01T09:00:00Z ({e})"))
        })?;
        let unix = t.duration_since(UNIX_EPOCH).map_err(|_| TimeError(format!("{text:?} is before 1970")))?;
        Ok(When::At(unix.as_secs() as i64))
    }

    /// The Unix time, taking `now` for [`When::Now`].
    pub fn resolve(self, now: i64) -> i64 {
        match self {
            When::Now => now,
            When::At(t) => t,
        }
    }
}

/// Parses a duration like `24h`, `7d`, `90m` or `1d 12h`, in seconds.
pub fn parse_duration(text: &str) -> Result<i64, TimeError> {
    humantime::parse_duration(text)
        .map_err(|e| TimeError(format!("{text:?} is not a duration: give e.g. 24h, 7d or 90m ({e})")))
        .and_then(|d| i64::try_from(d.as_secs()).map_err(|_| TimeError(format!("{text:?} is too long"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_580_156_305), "2020-01-27T20:18:25Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(stamp(1_580_156_305), "20200127-201825");
        assert_eq!(When::parse("now"), Ok(When::Now));
        assert_eq!(When::parse("2020-01-27T20:18:25Z"), Ok(When::At(1_580_156_305)));
        assert!(When::parse("tomorrow").is_err());
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("1d 12h"), Ok(129_600));
        assert!(parse_duration("soon").is_err());
    }
}
