//! Certificates and TLS for refuge.
//!
//! * [`CertAuthority`] creates a CA and issues node and client certificates
//!   with rcgen (no hand-written ASN.1).
//! * [`server_config`] and [`client_config`] build rustls configurations
//!   that speak TLS 1.3 only and require a certificate on both sides.
//! * [`identity_from_cert`] reads the tenant and host that a client
//!   certificate names: the only place the node learns who a client is.
//!
//! A client certificate names its tenant in the subject's organization (O)
//! and its host in the common name (CN), and carries the marker
//! `OU=refuge-client`.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use refuge_core::{HostName, TenantId};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use time::{Duration, OffsetDateTime};

/// Organizational unit that marks a refuge client certificate.
pub const CLIENT_OU: &str = "refuge-client";

/// What went wrong with certificates or TLS setup.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen could not build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file holds no usable certificate or key.
    #[error("{what}: {why}")]
    Pem {
        /// Which file or item.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate does not carry a refuge identity.
    #[error("client certificate does not name a refuge tenant and host: {0}")]
    Identity(String),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A certificate authority that can issue node and client certificates.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    pair: CertPair,
}

/// Validity window of a certificate to issue.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Not valid before this time.
    pub not_before: OffsetDateTime,
    /// Not valid after this time.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From now (minus a minute of clock skew) for `days` days.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::days(days),
        }
    }
}

fn dn(pairs: &[(DnType, &str)]) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    for (t, v) in pairs {
        d.push(t.clone(), *v);
    }
    d
}

impl CertAuthority {
    /// A new CA named `name`, valid for `validity`.
    pub fn generate(name: &str, validity: Validity) -> Result<Self, TlsError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = dn(&[
            (DnType::CommonName, name),
            (DnType::OrganizationName, "refuge"),
        ]);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = validity.not_before;
        p.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        let pair = CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(CertAuthority {
            issuer: Issuer::new(p, key),
            pair,
        })
    }

    /// Loads a CA from its certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(CertAuthority {
            issuer,
            pair: CertPair {
                cert_pem: cert_pem.to_string(),
                key_pem: key_pem.to_string(),
            },
        })
    }

    /// The CA's own certificate and key.
    pub fn pair(&self) -> &CertPair {
        &self.pair
    }

    /// A server certificate for the node, valid for the DNS names and IP
    /// addresses in `names`.
    pub fn issue_node(&self, names: &[String], validity: Validity) -> Result<CertPair, TlsError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        for n in names {
            p.subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.clone().try_into()?),
                });
        }
        let cn = names.first().map(String::as_str).unwrap_or("refuged");
        p.distinguished_name = dn(&[
            (DnType::CommonName, cn),
            (DnType::OrganizationalUnitName, "refuge-node"),
        ]);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = validity.not_before;
        p.not_after = validity.not_after;
        self.sign(p)
    }

    /// A client certificate naming `tenant` and `host`.
    pub fn issue_client(
        &self,
        tenant: &TenantId,
        host: &HostName,
        validity: Validity,
    ) -> Result<CertPair, TlsError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = dn(&[
            (DnType::CommonName, host.as_str()),
            (DnType::OrganizationName, tenant.as_str()),
            (DnType::OrganizationalUnitName, CLIENT_OU),
        ]);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = validity.not_before;
        p.not_after = validity.not_after;
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> Result<CertPair, TlsError> {
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A client's identity as the node reads it from the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Subject O.
    pub tenant: TenantId,
    /// Subject CN.
    pub host: HostName,
}

/// Reads tenant and host from a (already verified) client certificate.
pub fn identity_from_cert(der: &[u8]) -> Result<ClientIdentity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Identity(format!("unparseable certificate: {e}")))?;
    let subject = cert.subject();
    let one = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>,
               what: &str| {
        let vals: Vec<_> = it.collect();
        if vals.len() != 1 {
            return Err(TlsError::Identity(format!(
                "expected one {what}, found {}",
                vals.len()
            )));
        }
        vals[0]
            .as_str()
            .map(str::to_string)
            .map_err(|_| TlsError::Identity(format!("{what} is not a string")))
    };
    let ou = one(
        &mut subject.iter_organizational_unit(),
        "organizational unit (OU)",
    )?;
    if ou != CLIENT_OU {
        return Err(TlsError::Identity(format!(
            "OU is {ou:?}, not {CLIENT_OU:?}"
        )));
    }
    let tenant = one(
        &mut subject.iter_organization(),
        "organization (O = tenant)",
    )?;
    let host = one(&mut subject.iter_common_name(), "common name (CN = host)")?;
    Ok(ClientIdentity {
        tenant: TenantId::new(tenant).map_err(|e| TlsError::Identity(e.to_string()))?,
        host: HostName::new(host).map_err(|e| TlsError::Identity(e.to_string()))?,
    })
}

/// The `notAfter` of a PEM certificate, for messages and status.
pub fn not_after(cert_pem: &str) -> Result<OffsetDateTime, TlsError> {
    let der = parse_certs("certificate", cert_pem)?.remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::Pem {
        what: "certificate".into(),
        why: e.to_string(),
    })?;
    Ok(cert.validity().not_after.to_datetime())
}

/// Parses every certificate in a PEM text.
pub fn parse_certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.into(),
            why: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.into(),
            why: "contains no certificate".into(),
        });
    }
    Ok(certs)
}

fn parse_key(what: &str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: what.into(),
        why: format!("no usable private key: {e}"),
    })
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in parse_certs("CA certificate", ca_pem)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            what: "CA certificate".into(),
            why: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side: TLS 1.3 only, a client certificate signed by `ca_pem` is
/// required, ALPN `h2`.
pub fn server_config(ca_pem: &str, node: &CertPair) -> Result<ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
            .build()
            .map_err(|e| TlsError::Pem {
                what: "CA certificate".into(),
                why: e.to_string(),
            })?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            parse_certs("node certificate", &node.cert_pem)?,
            parse_key("node key", &node.key_pem)?,
        )?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Client side: TLS 1.3 only, the node's certificate must be signed by
/// `ca_pem`, presents `client`, ALPN `h2`.
pub fn client_config(ca_pem: &str, client: &CertPair) -> Result<ClientConfig, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(
            parse_certs("client certificate", &client.cert_pem)?,
            parse_key("client key", &client.key_pem)?,
        )?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_client_certificates_carry_tenant_and_host() {
        let ca = CertAuthority::generate("test CA", Validity::days(1)).unwrap();
        let t = TenantId::new("finance").unwrap();
        let h = HostName::new("db1").unwrap();
        let c = ca.issue_client(&t, &h, Validity::days(1)).unwrap();
        let der = parse_certs("c", &c.cert_pem).unwrap().remove(0);
        assert_eq!(
            identity_from_cert(&der).unwrap(),
            ClientIdentity { tenant: t, host: h }
        );

        // A node certificate is not a client identity.
        let n = ca
            .issue_node(&["localhost".into(), "127.0.0.1".into()], Validity::days(1))
            .unwrap();
        let der = parse_certs("n", &n.cert_pem).unwrap().remove(0);
        assert!(identity_from_cert(&der).is_err());

        // Configs build from the issued material, and a reloaded CA still signs.
        server_config(&ca.pair().cert_pem, &n).unwrap();
        client_config(&ca.pair().cert_pem, &c).unwrap();
        let again = CertAuthority::load(&ca.pair().cert_pem, &ca.pair().key_pem).unwrap();
        again
            .issue_client(
                &TenantId::new("x").unwrap(),
                &HostName::new("y").unwrap(),
                Validity::days(1),
            )
            .unwrap();
        assert!(not_after(&c.cert_pem).unwrap() > OffsetDateTime::now_utc());
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let e = parse_certs("CA certificate", "hello").unwrap_err();
        assert!(e.to_string().contains("CA certificate"), "{e}");
        assert!(parse_key("client key", "nope").is_err());
    }
}
