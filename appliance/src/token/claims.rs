//! The claim sets of SPEC §3, each a struct whose field order is the wire order (serde_json
//! writes fields in declaration order), and the strict reader that turns a verified payload back
//! into one of them.

use serde::Serialize;
use serde_json::Value;

use super::guid::Guid;
use super::{Reason, Rejection};

/// `Authority` and `License` of ConfigMgr's tokens.
pub const SCCM: &str = "SCCM";
/// `aud` of every site token.
pub const AUDIENCE: &str = "urn:sccm:service";

/// `iss` of a hierarchy's tokens: `urn:sccm:oauth2:<hierarchy guid, lower case>`.
pub fn issuer_for(hierarchy: Guid) -> String {
    format!("urn:sccm:oauth2:{}", hierarchy.lower())
}

/// The three kinds of token sitesign issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum TokenKind {
    /// Bulk registration token (`SCCMPreAuthToken` / `BulkRegistration`).
    Bulk,
    /// Per-device client token (`SCCMClientToken` / `Device`), 90 days.
    Client,
    /// CCM access token (`SCCMAccessToken` / `Device`), 8 hours.
    Access,
}

impl TokenKind {
    /// `SCCMTokenCategory`.
    pub fn category(self) -> &'static str {
        match self {
            TokenKind::Bulk => "SCCMPreAuthToken",
            TokenKind::Client => "SCCMClientToken",
            TokenKind::Access => "SCCMAccessToken",
        }
    }

    /// `Type`.
    pub fn type_name(self) -> &'static str {
        match self {
            TokenKind::Bulk => "BulkRegistration",
            TokenKind::Client | TokenKind::Access => "Device",
        }
    }

    /// The longest lifetime sitesign gives this kind, seconds; a token claiming longer is refused.
    pub fn max_lifetime(self) -> i64 {
        match self {
            TokenKind::Bulk => super::BULK_MAX_LIFETIME_MINUTES * 60,
            TokenKind::Client => super::CLIENT_LIFETIME,
            TokenKind::Access => super::ACCESS_LIFETIME,
        }
    }

    /// Lower-case name (`bulk`, `client`, `access`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Bulk => "bulk",
            TokenKind::Client => "client",
            TokenKind::Access => "access",
        }
    }

    /// The member names of this kind's claim set, in wire order.
    fn members(self) -> &'static [&'static str] {
        match self {
            TokenKind::Bulk => &[
                "SCCMTokenCategory",
                "Authority",
                "License",
                "Type",
                "TenantId",
                "UniqueId",
                "iss",
                "aud",
                "exp",
                "nbf",
            ],
            TokenKind::Client => &[
                "SCCMTokenCategory",
                "Authority",
                "License",
                "Type",
                "TenantId",
                "UniqueId",
                "DeviceId",
                "cnf",
                "iss",
                "aud",
                "iat",
                "nbf",
                "exp",
            ],
            TokenKind::Access => {
                &["SCCMTokenCategory", "Type", "DeviceId", "cnf", "UniqueId", "iss", "aud", "iat", "nbf", "exp"]
            }
        }
    }
}

/// RFC 7800 confirmation: the SHA-256 thumbprint of the client's certificate (RFC 8705 §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confirmation {
    /// base64url(SHA-256(client certificate DER)).
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// A bulk registration token's claims, byte-compatible with ConfigMgr's tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BulkClaims {
    /// `SCCMTokenCategory`: the kind of token.
    #[serde(rename = "SCCMTokenCategory")]
    pub category: String,
    /// `Authority`: always `SCCM`.
    #[serde(rename = "Authority")]
    pub authority: String,
    /// `License`: always `SCCM`.
    #[serde(rename = "License")]
    pub license: String,
    /// `Type`: `BulkRegistration` or `Device`.
    #[serde(rename = "Type")]
    pub type_name: String,
    /// The hierarchy GUID, upper case.
    #[serde(rename = "TenantId")]
    pub tenant_id: String,
    /// This token's GUID, lower case: what the registry tracks and blocks.
    #[serde(rename = "UniqueId")]
    pub unique_id: String,
    /// `iss`: `urn:sccm:oauth2:<hierarchy GUID, lower case>`.
    pub iss: String,
    /// `aud`: `urn:sccm:service`.
    pub aud: String,
    /// `exp`: expiry, Unix seconds.
    pub exp: i64,
    /// `nbf`: start of validity, Unix seconds.
    pub nbf: i64,
}

/// A client token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientClaims {
    /// `SCCMTokenCategory`: the kind of token.
    #[serde(rename = "SCCMTokenCategory")]
    pub category: String,
    /// `Authority`: always `SCCM`.
    #[serde(rename = "Authority")]
    pub authority: String,
    /// `License`: always `SCCM`.
    #[serde(rename = "License")]
    pub license: String,
    /// `Type`: `BulkRegistration` or `Device`.
    #[serde(rename = "Type")]
    pub type_name: String,
    /// `TenantId`: the hierarchy GUID, upper case.
    #[serde(rename = "TenantId")]
    pub tenant_id: String,
    /// A fresh GUID per token.
    #[serde(rename = "UniqueId")]
    pub unique_id: String,
    /// `GUID:<SMS client GUID>`.
    #[serde(rename = "DeviceId")]
    pub device_id: String,
    /// `cnf`: the client certificate the token is bound to (RFC 7800).
    pub cnf: Confirmation,
    /// `iss`: `urn:sccm:oauth2:<hierarchy GUID, lower case>`.
    pub iss: String,
    /// `aud`: `urn:sccm:service`.
    pub aud: String,
    /// `iat`: issue time, Unix seconds.
    pub iat: i64,
    /// `nbf`: start of validity, Unix seconds.
    pub nbf: i64,
    /// `exp`: expiry, Unix seconds.
    pub exp: i64,
}

/// A CCM access token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessClaims {
    /// `SCCMTokenCategory`: the kind of token.
    #[serde(rename = "SCCMTokenCategory")]
    pub category: String,
    /// `Type`: `BulkRegistration` or `Device`.
    #[serde(rename = "Type")]
    pub type_name: String,
    /// `DeviceId`: `GUID:<SMS client GUID>`.
    #[serde(rename = "DeviceId")]
    pub device_id: String,
    /// `cnf`: the client certificate the token is bound to (RFC 7800).
    pub cnf: Confirmation,
    /// `UniqueId`: this token's own GUID, lower case.
    #[serde(rename = "UniqueId")]
    pub unique_id: String,
    /// `iss`: `urn:sccm:oauth2:<hierarchy GUID, lower case>`.
    pub iss: String,
    /// `aud`: `urn:sccm:service`.
    pub aud: String,
    /// `iat`: issue time, Unix seconds.
    pub iat: i64,
    /// `nbf`: start of validity, Unix seconds.
    pub nbf: i64,
    /// `exp`: expiry, Unix seconds.
    pub exp: i64,
}

/// Any of the three claim sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Claims {
    /// Bulk registration.
    Bulk(BulkClaims),
    /// Client.
    Client(ClientClaims),
    /// Access.
    Access(AccessClaims),
}

impl Claims {
    /// The kind.
    pub fn kind(&self) -> TokenKind {
        match self {
            Claims::Bulk(_) => TokenKind::Bulk,
            Claims::Client(_) => TokenKind::Client,
            Claims::Access(_) => TokenKind::Access,
        }
    }

    /// (`nbf`, `exp`).
    pub fn window(&self) -> (i64, i64) {
        match self {
            Claims::Bulk(c) => (c.nbf, c.exp),
            Claims::Client(c) => (c.nbf, c.exp),
            Claims::Access(c) => (c.nbf, c.exp),
        }
    }

    /// Sets `exp` (a token re-prepared under another key keeps its claims but not its expiry).
    pub(crate) fn set_expiry(&mut self, exp: i64) {
        match self {
            Claims::Bulk(c) => c.exp = exp,
            Claims::Client(c) => c.exp = exp,
            Claims::Access(c) => c.exp = exp,
        }
    }

    /// `iat`, for the kinds that carry it.
    pub fn issued_at(&self) -> Option<i64> {
        match self {
            Claims::Bulk(_) => None,
            Claims::Client(c) => Some(c.iat),
            Claims::Access(c) => Some(c.iat),
        }
    }

    /// `iss`.
    pub fn issuer(&self) -> &str {
        match self {
            Claims::Bulk(c) => &c.iss,
            Claims::Client(c) => &c.iss,
            Claims::Access(c) => &c.iss,
        }
    }

    /// `aud`.
    pub fn audience(&self) -> &str {
        match self {
            Claims::Bulk(c) => &c.aud,
            Claims::Client(c) => &c.aud,
            Claims::Access(c) => &c.aud,
        }
    }

    /// `TenantId`, for the kinds that carry it.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Claims::Bulk(c) => Some(&c.tenant_id),
            Claims::Client(c) => Some(&c.tenant_id),
            Claims::Access(_) => None,
        }
    }

    /// `cnf.x5t#S256`, for the kinds bound to a client certificate.
    pub fn binding(&self) -> Option<&str> {
        match self {
            Claims::Bulk(_) => None,
            Claims::Client(c) => Some(&c.cnf.x5t_s256),
            Claims::Access(c) => Some(&c.cnf.x5t_s256),
        }
    }

    /// `UniqueId`.
    pub fn unique_id(&self) -> &str {
        match self {
            Claims::Bulk(c) => &c.unique_id,
            Claims::Client(c) => &c.unique_id,
            Claims::Access(c) => &c.unique_id,
        }
    }

    /// `DeviceId`, for device tokens.
    pub fn device_id(&self) -> Option<&str> {
        match self {
            Claims::Bulk(_) => None,
            Claims::Client(c) => Some(&c.device_id),
            Claims::Access(c) => Some(&c.device_id),
        }
    }
}

/// Reads a verified payload's members into a claim set: the category decides the kind, and the
/// member names must then be exactly that kind's (in any order: the layout rule binds issuance,
/// a reader only needs the right set), each of the right JSON type.
pub(crate) fn read(members: Vec<(String, Value)>) -> Result<Claims, Rejection> {
    let category = members
        .iter()
        .find(|(n, _)| n == "SCCMTokenCategory")
        .and_then(|(_, v)| v.as_str())
        .ok_or_else(|| Rejection::new(Reason::WrongCategory, "no SCCMTokenCategory string"))?;
    let kind =
        [TokenKind::Bulk, TokenKind::Client, TokenKind::Access]
            .into_iter()
            .find(|k| k.category() == category)
            .ok_or_else(|| Rejection::new(Reason::WrongCategory, format!("unknown SCCMTokenCategory {category:?}")))?;
    let expected = kind.members();
    if let Some((extra, _)) = members.iter().find(|(n, _)| !expected.contains(&n.as_str())) {
        return Err(Rejection::new(
            Reason::UnknownClaim,
            format!("claim {extra:?} is not part of a {} token", kind.as_str()),
        ));
    }
    if let Some(missing) = expected.iter().find(|e| !members.iter().any(|(n, _)| n == *e)) {
        return Err(Rejection::new(Reason::MissingClaim, format!("claim {missing:?} is missing")));
    }
    let mut m = Members(members);
    Ok(match kind {
        TokenKind::Bulk => Claims::Bulk(BulkClaims {
            category: m.string("SCCMTokenCategory")?,
            authority: m.string("Authority")?,
            license: m.string("License")?,
            type_name: m.string("Type")?,
            tenant_id: m.string("TenantId")?,
            unique_id: m.string("UniqueId")?,
            iss: m.string("iss")?,
            aud: m.string("aud")?,
            exp: m.time("exp")?,
            nbf: m.time("nbf")?,
        }),
        TokenKind::Client => Claims::Client(ClientClaims {
            category: m.string("SCCMTokenCategory")?,
            authority: m.string("Authority")?,
            license: m.string("License")?,
            type_name: m.string("Type")?,
            tenant_id: m.string("TenantId")?,
            unique_id: m.string("UniqueId")?,
            device_id: m.string("DeviceId")?,
            cnf: m.confirmation()?,
            iss: m.string("iss")?,
            aud: m.string("aud")?,
            iat: m.time("iat")?,
            nbf: m.time("nbf")?,
            exp: m.time("exp")?,
        }),
        TokenKind::Access => Claims::Access(AccessClaims {
            category: m.string("SCCMTokenCategory")?,
            type_name: m.string("Type")?,
            device_id: m.string("DeviceId")?,
            cnf: m.confirmation()?,
            unique_id: m.string("UniqueId")?,
            iss: m.string("iss")?,
            aud: m.string("aud")?,
            iat: m.time("iat")?,
            nbf: m.time("nbf")?,
            exp: m.time("exp")?,
        }),
    })
}

struct Members(Vec<(String, Value)>);

impl Members {
    fn take(&mut self, name: &str) -> Value {
        self.0.iter_mut().find(|(n, _)| n == name).map(|(_, v)| v.take()).unwrap_or(Value::Null)
    }

    fn string(&mut self, name: &str) -> Result<String, Rejection> {
        match self.take(name) {
            Value::String(s) => Ok(s),
            other => Err(Rejection::new(Reason::BadClaim, format!("claim {name:?} must be a string, not {other}"))),
        }
    }

    /// A NumericDate as sitesign writes it: a non-negative integer number of seconds.
    fn time(&mut self, name: &str) -> Result<i64, Rejection> {
        let v = self.take(name);
        v.as_i64().filter(|t| *t >= 0).ok_or_else(|| {
            Rejection::new(Reason::BadClaim, format!("claim {name:?} must be a non-negative integer time, not {v}"))
        })
    }

    fn confirmation(&mut self) -> Result<Confirmation, Rejection> {
        let bad = |what: String| Rejection::new(Reason::BadClaim, format!("claim \"cnf\" {what}"));
        let Value::Object(map) = self.take("cnf") else { return Err(bad("must be an object".into())) };
        if map.len() != 1 {
            return Err(bad("must hold exactly x5t#S256".into()));
        }
        match map.get("x5t#S256") {
            Some(Value::String(s)) if valid_thumbprint(s) => Ok(Confirmation { x5t_s256: s.clone() }),
            _ => Err(bad("must hold x5t#S256, the base64url SHA-256 of a certificate".into())),
        }
    }
}

/// Whether `s` is the canonical base64url of a SHA-256 digest (43 characters).
pub fn valid_thumbprint(s: &str) -> bool {
    super::b64::decode(s).is_some_and(|b| b.len() == 32)
}

/// `GUID:<guid>` in ConfigMgr's spelling (upper case), from any case; `None` if malformed.
pub fn device_id(text: &str) -> Option<String> {
    let rest = text.strip_prefix("GUID:").or_else(|| text.strip_prefix("guid:"))?;
    Guid::parse(rest).map(|g| format!("GUID:{}", g.upper()))
}
