//! The certificate profiles (SPEC §2) as x509-cert builder profiles: which extensions each kind of
//! certificate carries, and how critical they are.

use spki::SubjectPublicKeyInfoRef;
use x509_cert::TbsCertificate;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;

use const_oid::db::rfc5912::{ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH};

/// The kinds of certificate sitesign issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileKind {
    /// The SMS Issuing root: self-signed, CA, keyCertSign + cRLSign.
    SmsIssuing,
    /// SMS Token Signing: digitalSignature only, no extended key usage.
    TokenSigning,
    /// A management point's mTLS client identity: digitalSignature, clientAuth.
    MpClient,
    /// A site system's TLS server certificate: serverAuth, names from the request.
    RoleSsl,
    /// The appliance's own TLS server certificate: serverAuth.
    ApplianceTls,
    /// A cross-certificate between two SMS Issuing roots (`rotate issuing`): CA, keyCertSign +
    /// cRLSign, certifying one root's key under the other's name.
    CrossCertificate,
}

/// The profiles a certificate request (PKCS#10) may ask for: the role certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RoleProfile {
    /// A management point's mTLS client identity (clientAuth).
    MpClient,
    /// A site system's TLS server certificate (serverAuth), like ConfigMgr's "SMS Role SSL
    /// Certificate".
    RoleSsl,
}

impl From<RoleProfile> for ProfileKind {
    fn from(p: RoleProfile) -> Self {
        match p {
            RoleProfile::MpClient => ProfileKind::MpClient,
            RoleProfile::RoleSsl => ProfileKind::RoleSsl,
        }
    }
}

impl ProfileKind {
    /// The profile's name as the CLI and the inventory spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::SmsIssuing => "sms-issuing",
            ProfileKind::TokenSigning => "token-signing",
            ProfileKind::MpClient => "mp-client",
            ProfileKind::RoleSsl => "role-ssl",
            ProfileKind::ApplianceTls => "appliance-tls",
            ProfileKind::CrossCertificate => "cross-certificate",
        }
    }
}

/// A profile bound to one subject and issuer.
pub(super) struct Profile {
    pub kind: ProfileKind,
    pub subject: Name,
    pub issuer: Name,
    pub alt_names: Vec<GeneralName>,
    /// RSA subject keys also get keyEncipherment on TLS server certificates (TLS 1.2 RSA key
    /// exchange, still used by IIS on older site systems).
    pub rsa_subject: bool,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let subject = tbs.subject();
        let mut ext: Vec<Extension> = Vec::new();
        // RFC 5280 §4.2.1.2 method 1: the key identifier is the SHA-1 of the subjectPublicKey bits.
        let ski = SubjectKeyIdentifier::try_from(spk)?;
        let aki = SubjectKeyIdentifier::try_from(issuer_spk)?;
        let ca = matches!(self.kind, ProfileKind::SmsIssuing | ProfileKind::CrossCertificate);
        if ca {
            // Critical (the builder marks it so); no path length: `rotate issuing` cross-signs
            // the next root with this one.
            ext.push(BasicConstraints { ca: true, path_len_constraint: None }.to_extension(subject, &ext)?);
        }
        let usage = match self.kind {
            ProfileKind::SmsIssuing | ProfileKind::CrossCertificate => KeyUsages::KeyCertSign | KeyUsages::CRLSign,
            ProfileKind::RoleSsl | ProfileKind::ApplianceTls if self.rsa_subject => {
                KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment
            }
            _ => KeyUsages::DigitalSignature.into(),
        };
        ext.push(KeyUsage(usage).to_extension(subject, &ext)?);
        let eku = match self.kind {
            ProfileKind::MpClient => Some(ID_KP_CLIENT_AUTH),
            ProfileKind::RoleSsl | ProfileKind::ApplianceTls => Some(ID_KP_SERVER_AUTH),
            ProfileKind::SmsIssuing | ProfileKind::TokenSigning | ProfileKind::CrossCertificate => None,
        };
        if let Some(purpose) = eku {
            ext.push(ExtendedKeyUsage(vec![purpose]).to_extension(subject, &ext)?);
        }
        if !self.alt_names.is_empty() {
            ext.push(SubjectAltName(self.alt_names.clone()).to_extension(subject, &ext)?);
        }
        ext.push(ski.to_extension(subject, &ext)?);
        ext.push(
            AuthorityKeyIdentifier { key_identifier: Some(aki.0), ..Default::default() }.to_extension(subject, &ext)?,
        );
        Ok(ext)
    }
}
