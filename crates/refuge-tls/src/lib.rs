//! Certificates and TLS for refuge.
//!
//! * [`CertAuthority`] creates a CA and issues node and client certificates
//!   with rcgen (no hand-written ASN.1).
//! * [`server_config`] and [`client_config`] build rustls configurations
//!   that speak TLS 1.3 only and require a certificate on both sides.
//! * [`identity_from_cert`] reads the role, name and tenants that a client
//!   certificate names: the only place the node learns who a client is.
//!
//! A client certificate carries its [`Role`] in the subject's
//! organizational unit (`OU=refuge-agent`, `refuge-operator`,
//! `refuge-admin`, `refuge-auditor` or `refuge-replica`) and its name in
//! the common name (CN; an agent's CN is its host name, a replica's its
//! site). An agent's tenant is the subject's organization (O). The
//! tenants granted to an operator or a replica are URI subject
//! alternative names `refuge:tenant:NAME`, or `refuge:tenant:*` for all.
//! Admins and auditors act node-wide and name no tenant.

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

/// What a client may do; carried in the certificate's OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A source host: adds chunks and commits snapshots for its own tenant
    /// and host; reads its own tenant's snapshots.
    Agent,
    /// Lists, restores and drills for the tenants it is granted; cannot
    /// delete.
    Operator,
    /// Retention, quotas, garbage collection, verification; never reads
    /// chunk contents.
    Admin,
    /// Reads the audit log, nothing else.
    Auditor,
    /// A peer node (replication): copies the snapshots and chunks of the
    /// tenants it is granted, sealed as they are stored; calls the
    /// replication RPCs only.
    Replica,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Agent,
        Role::Operator,
        Role::Admin,
        Role::Auditor,
        Role::Replica,
    ];

    /// Whether the certificate grants tenants by URI (operators and
    /// replicas), rather than naming one (agents) or none.
    pub fn grants_tenants(self) -> bool {
        matches!(self, Role::Operator | Role::Replica)
    }

    /// The name used on the command line and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Replica => "replica",
        }
    }

    /// The certificate's OU for this role.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Agent => "refuge-agent",
            Role::Operator => "refuge-operator",
            Role::Admin => "refuge-admin",
            Role::Auditor => "refuge-auditor",
            Role::Replica => "refuge-replica",
        }
    }

    fn from_ou(ou: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.ou() == ou)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?} (agent, operator, admin, auditor or replica)")
            })
    }
}

/// URI prefix of an operator's tenant grant.
pub const TENANT_URI_PREFIX: &str = "refuge:tenant:";

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

    /// A client certificate for `who` (checked with
    /// [`ClientIdentity::check`] first; its serial is ignored: rcgen derives
    /// one from the new key).
    pub fn issue_client(
        &self,
        who: &ClientIdentity,
        validity: Validity,
    ) -> Result<CertPair, TlsError> {
        who.check()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let mut names = vec![
            (DnType::CommonName, who.name.as_str()),
            (DnType::OrganizationalUnitName, who.role.ou()),
        ];
        if who.role == Role::Agent
            && let TenantScope::Only(t) = &who.tenants
        {
            names.push((DnType::OrganizationName, t[0].as_str()));
        }
        p.distinguished_name = dn(&names);
        if who.role.grants_tenants() {
            let grants: Vec<String> = match &who.tenants {
                TenantScope::All => vec!["*".to_string()],
                TenantScope::Only(ts) => ts.iter().map(|t| t.to_string()).collect(),
            };
            for g in grants {
                p.subject_alt_names
                    .push(SanType::URI(format!("{TENANT_URI_PREFIX}{g}").try_into()?));
            }
        }
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

/// Which tenants a client acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// Every tenant (an operator granted `*`).
    All,
    /// These tenants (one for an agent; none for admins and auditors).
    Only(Vec<TenantId>),
}

impl TenantScope {
    /// Whether `t` is in scope.
    pub fn contains(&self, t: &TenantId) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Only(ts) => ts.contains(t),
        }
    }
}

/// A client's identity as the node reads it from the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Subject OU.
    pub role: Role,
    /// Subject CN (an agent's host name).
    pub name: String,
    /// The tenants it acts for.
    pub tenants: TenantScope,
    /// Certificate serial number, lowercase hex without leading zeros
    /// (what a revocation list names).
    pub serial: String,
}

impl ClientIdentity {
    /// An agent of `tenant` on `host`.
    pub fn agent(tenant: TenantId, host: HostName) -> Self {
        ClientIdentity {
            role: Role::Agent,
            name: host.to_string(),
            tenants: TenantScope::Only(vec![tenant]),
            serial: String::new(),
        }
    }

    /// For an agent, its tenant and host.
    pub fn agent_of(&self) -> Option<(TenantId, HostName)> {
        match (&self.role, &self.tenants) {
            (Role::Agent, TenantScope::Only(t)) if t.len() == 1 => {
                Some((t[0].clone(), HostName::new(self.name.clone()).ok()?))
            }
            _ => None,
        }
    }

    /// How the audit log and messages name this client:
    /// `role:name` (plus the serial when known).
    pub fn subject(&self) -> String {
        if self.serial.is_empty() {
            format!("{}:{}", self.role, self.name)
        } else {
            format!("{}:{} (serial {})", self.role, self.name, self.serial)
        }
    }

    /// Checks that the role's tenant rules hold: an agent names exactly one
    /// tenant and a valid host name; an operator at least one tenant (or
    /// all); admins and auditors none.
    pub fn check(&self) -> Result<(), TlsError> {
        let bad = |m: String| Err(TlsError::Identity(m));
        if self.name.is_empty() || self.name.len() > 128 {
            return bad("the name (CN) must be 1 to 128 characters".into());
        }
        match (self.role, &self.tenants) {
            (Role::Agent, TenantScope::Only(t)) if t.len() == 1 => {
                HostName::new(self.name.clone()).map_err(|e| TlsError::Identity(e.to_string()))?;
                Ok(())
            }
            (Role::Agent, _) => bad("an agent certificate names exactly one tenant".into()),
            (r, TenantScope::Only(t)) if r.grants_tenants() && t.is_empty() => bad(format!(
                "an {r} certificate names at least one tenant (or all)"
            )),
            (r, _) if r.grants_tenants() => Ok(()),
            (_, TenantScope::Only(t)) if t.is_empty() => Ok(()),
            (r, _) => bad(format!(
                "an {r} certificate acts node-wide and names no tenant"
            )),
        }
    }
}

/// Reads the role, name and tenants of an (already verified) client
/// certificate.
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
        "organizational unit (OU = role)",
    )?;
    let role = Role::from_ou(&ou).ok_or_else(|| {
        TlsError::Identity(format!(
            "OU {ou:?} is not a refuge role (refuge-agent, refuge-operator, refuge-admin, refuge-auditor, refuge-replica)"
        ))
    })?;
    let name = one(&mut subject.iter_common_name(), "common name (CN)")?;
    let tenant = |s: &str| TenantId::new(s).map_err(|e| TlsError::Identity(e.to_string()));
    let tenants = match role {
        Role::Agent => {
            let t = one(
                &mut subject.iter_organization(),
                "organization (O = tenant)",
            )?;
            TenantScope::Only(vec![tenant(&t)?])
        }
        Role::Operator | Role::Replica => {
            let mut grants = Vec::new();
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for n in &san.value.general_names {
                    if let x509_parser::extensions::GeneralName::URI(u) = n
                        && let Some(t) = u.strip_prefix(TENANT_URI_PREFIX)
                    {
                        grants.push(t.to_string());
                    }
                }
            }
            if grants.iter().any(|g| g == "*") {
                TenantScope::All
            } else {
                TenantScope::Only(grants.iter().map(|g| tenant(g)).collect::<Result<_, _>>()?)
            }
        }
        Role::Admin | Role::Auditor => TenantScope::Only(Vec::new()),
    };
    let id = ClientIdentity {
        role,
        name,
        tenants,
        serial: serial_hex(cert.raw_serial()),
    };
    id.check()?;
    Ok(id)
}

/// A serial number as lowercase hex without leading zero bytes.
fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    let hex: String = raw[start..].iter().map(|b| format!("{b:02x}")).collect();
    if hex.is_empty() { "0".into() } else { hex }
}

/// Normalises a serial number as written in a revocation list (hex,
/// optionally with `:` separators or a `0x` prefix) to the form of
/// [`ClientIdentity::serial`].
pub fn normalize_serial(s: &str) -> Result<String, String> {
    let t = s
        .trim()
        .trim_start_matches("0x")
        .replace(':', "")
        .to_ascii_lowercase();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_hexdigit()) || t.len() > 64 {
        return Err(format!("{s:?} is not a hexadecimal serial number"));
    }
    let trimmed = t.trim_start_matches('0');
    let mut out = if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    };
    if out.len() % 2 == 1 && out != "0" {
        out.insert(0, '0');
    }
    Ok(out)
}

/// The identity and serial of a PEM client certificate (for `refuge certs
/// show`).
pub fn identity_from_pem(cert_pem: &str) -> Result<ClientIdentity, TlsError> {
    let der = parse_certs("certificate", cert_pem)?.remove(0);
    identity_from_cert(&der)
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
    server_with(ca_pem, node, ClientCerts::Required, b"h2")
}

/// The web console's side: TLS 1.3 only, the node's certificate, ALPN
/// `http/1.1`, and a client certificate asked for but not required. A
/// certificate that is offered must be valid and signed by `ca_pem` (the
/// handshake fails otherwise); a browser without one gets through the
/// handshake so that the console can say, in a page, why it refuses.
pub fn console_server_config(ca_pem: &str, node: &CertPair) -> Result<ServerConfig, TlsError> {
    server_with(ca_pem, node, ClientCerts::Optional, b"http/1.1")
}

#[derive(PartialEq)]
enum ClientCerts {
    Required,
    Optional,
}

fn server_with(
    ca_pem: &str,
    node: &CertPair,
    client: ClientCerts,
    alpn: &[u8],
) -> Result<ServerConfig, TlsError> {
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider());
    if client == ClientCerts::Optional {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder.build().map_err(|e| TlsError::Pem {
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
    cfg.alpn_protocols = vec![alpn.to_vec()];
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

    fn read(pair: &CertPair) -> Result<ClientIdentity, TlsError> {
        identity_from_pem(&pair.cert_pem)
    }

    #[test]
    fn issued_client_certificates_carry_role_name_and_tenants() {
        let ca = CertAuthority::generate("test CA", Validity::days(1)).unwrap();
        let t = TenantId::new("finance").unwrap();
        let h = HostName::new("db1").unwrap();
        let c = ca
            .issue_client(
                &ClientIdentity::agent(t.clone(), h.clone()),
                Validity::days(1),
            )
            .unwrap();
        let id = read(&c).unwrap();
        assert_eq!(id.agent_of(), Some((t.clone(), h)));
        assert_eq!(id.role, Role::Agent);
        assert!(!id.serial.is_empty());
        assert_eq!(normalize_serial(&id.serial).unwrap(), id.serial);

        let hr = TenantId::new("hr").unwrap();
        for (role, tenants) in [
            (
                Role::Operator,
                TenantScope::Only(vec![t.clone(), hr.clone()]),
            ),
            (Role::Operator, TenantScope::All),
            (Role::Admin, TenantScope::Only(vec![])),
            (Role::Auditor, TenantScope::Only(vec![])),
        ] {
            let want = ClientIdentity {
                role,
                name: "alice".into(),
                tenants,
                serial: String::new(),
            };
            let got = read(&ca.issue_client(&want, Validity::days(1)).unwrap()).unwrap();
            assert_eq!(
                (got.role, &got.name, &got.tenants),
                (role, &want.name, &want.tenants)
            );
            assert_eq!(got.agent_of(), None);
        }

        // Each role's tenant rule is enforced when issuing.
        for bad in [
            ClientIdentity {
                role: Role::Agent,
                name: "db1".into(),
                tenants: TenantScope::All,
                serial: String::new(),
            },
            ClientIdentity {
                role: Role::Agent,
                name: "db1".into(),
                tenants: TenantScope::Only(vec![t.clone(), hr.clone()]),
                serial: String::new(),
            },
            ClientIdentity {
                role: Role::Agent,
                name: "bad host!".into(),
                tenants: TenantScope::Only(vec![t.clone()]),
                serial: String::new(),
            },
            ClientIdentity {
                role: Role::Operator,
                name: "op".into(),
                tenants: TenantScope::Only(vec![]),
                serial: String::new(),
            },
            ClientIdentity {
                role: Role::Admin,
                name: "adm".into(),
                tenants: TenantScope::Only(vec![t.clone()]),
                serial: String::new(),
            },
        ] {
            assert!(ca.issue_client(&bad, Validity::days(1)).is_err(), "{bad:?}");
        }

        // A node certificate is not a client identity.
        let n = ca
            .issue_node(&["localhost".into(), "127.0.0.1".into()], Validity::days(1))
            .unwrap();
        let e = read(&n).unwrap_err();
        assert!(e.to_string().contains("not a refuge role"), "{e}");

        // Configs build from the issued material, and a reloaded CA still signs.
        server_config(&ca.pair().cert_pem, &n).unwrap();
        client_config(&ca.pair().cert_pem, &c).unwrap();
        let again = CertAuthority::load(&ca.pair().cert_pem, &ca.pair().key_pem).unwrap();
        again
            .issue_client(
                &ClientIdentity::agent(TenantId::new("x").unwrap(), HostName::new("y").unwrap()),
                Validity::days(1),
            )
            .unwrap();
        assert!(not_after(&c.cert_pem).unwrap() > OffsetDateTime::now_utc());
    }

    #[test]
    fn serials_normalise() {
        assert_eq!(normalize_serial("0A:1b").unwrap(), "0a1b");
        assert_eq!(normalize_serial("0x00a1b").unwrap(), "0a1b");
        assert_eq!(normalize_serial(" a1b ").unwrap(), "0a1b");
        assert_eq!(normalize_serial("00").unwrap(), "0");
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial("").is_err());
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let e = parse_certs("CA certificate", "hello").unwrap_err();
        assert!(e.to_string().contains("CA certificate"), "{e}");
        assert!(parse_key("client key", "nope").is_err());
    }
}
