//! Certificates for a first cluster: a CA, and one certificate per node
//! signed by it (`gatehouse tls init-ca`, `gatehouse tls issue`). Production
//! users may bring their own PKI instead; what a node certificate must hold
//! is in `docs/tls.md`.
//!
//! Keys are ECDSA P-256. A node certificate is valid for both server and
//! client authentication (a node dials its peers with it), binds the node
//! id as `gatehouse-node-<id>` and carries the host names and addresses
//! clients use. Serial numbers are 128 random bits.

use std::net::IpAddr;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;

use crate::identity::node_name;
use crate::TlsError;

/// Longest validity `issue` and `init-ca` accept, in days (ten years).
pub const MAX_DAYS: u32 = 3_650;

/// A private key in PEM: never printed by `Debug`.
#[derive(Clone)]
pub struct KeyPem(String);

impl KeyPem {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPem(..)")
    }
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_pem: KeyPem,
}

fn invalid(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid(format!("{what}: {e}"))
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<(), TlsError> {
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(TlsError::Invalid(format!("validity must be 1..={MAX_DAYS} days")));
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind the issuer's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f; // positive, as DER integers of serials must be
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(())
}

/// A new self-signed CA named `name`, valid for `days`.
pub fn new_ca(name: &str, days: u32) -> Result<Issued, TlsError> {
    let mut params = CertificateParams::default();
    validity(&mut params, days)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().map_err(|e| invalid("generating the CA key", e))?;
    let cert = params.self_signed(&key).map_err(|e| invalid("signing the CA certificate", e))?;
    Ok(Issued { cert_pem: cert.pem(), cert_der: cert.der().clone(), key_pem: KeyPem(key.serialize_pem()) })
}

/// A certificate for node `id`, signed by `ca`, for the host names `dns` and
/// the addresses `ips` (besides `gatehouse-node-<id>`), valid for `days`.
pub fn node_certificate(ca: &Issued, id: u64, dns: &[String], ips: &[IpAddr], days: u32) -> Result<Issued, TlsError> {
    if id == 0 {
        return Err(TlsError::Invalid("node id must be a positive integer".into()));
    }
    let mut params = CertificateParams::default();
    validity(&mut params, days)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name(id));
    params.distinguished_name = dn;
    let mut names = vec![SanType::DnsName(node_name(id).try_into().map_err(|e| invalid("node name", e))?)];
    for name in dns {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        let lower = name.to_ascii_lowercase();
        if !valid || lower.starts_with("gatehouse-node-") || lower.starts_with("gatehouse-front-") {
            return Err(TlsError::Invalid(format!("{name:?} is not a host name this certificate may carry")));
        }
        names.push(SanType::DnsName(name.clone().try_into().map_err(|e| invalid("host name", e))?));
    }
    names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    signed_by(ca, params, "node")
}

/// Signs `params` with `ca` for a new key of its own.
fn signed_by(ca: &Issued, mut params: CertificateParams, what: &str) -> Result<Issued, TlsError> {
    params.use_authority_key_identifier_extension = true;
    let ca_key =
        KeyPair::from_pem(ca.key_pem.expose()).map_err(|_| TlsError::Invalid("the CA key is not a key".into()))?;
    let issuer =
        Issuer::from_ca_cert_der(&ca.cert_der, ca_key).map_err(|e| invalid("reading the CA certificate", e))?;
    let key = KeyPair::generate().map_err(|e| invalid(&format!("generating the {what} key"), e))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| invalid(&format!("signing the {what} certificate"), e))?;
    Ok(Issued { cert_pem: cert.pem(), cert_der: cert.der().clone(), key_pem: KeyPem(key.serialize_pem()) })
}

/// A certificate for stateless front `id`, signed by `ca`, valid for `days`:
/// it binds `gatehouse-front-<id>` and nothing else, for client
/// authentication only (a front dials voters and serves no peer).
pub fn front_certificate(ca: &Issued, id: u64, days: u32) -> Result<Issued, TlsError> {
    if id == 0 {
        return Err(TlsError::Invalid("front id must be a positive integer".into()));
    }
    let name = crate::identity::front_name(id);
    let mut params = CertificateParams::default();
    validity(&mut params, days)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name.clone());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::DnsName(name.try_into().map_err(|e| invalid("front name", e))?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    signed_by(ca, params, "front")
}

/// A CA from its certificate and key in PEM (the files `init-ca` wrote).
pub fn ca_from_pem(cert_pem: &str, key_pem: &str) -> Result<Issued, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| TlsError::Invalid("the CA certificate file holds no certificate".into()))?;
    let info = crate::identity::parse(&cert_der).map_err(TlsError::Invalid)?;
    if !info.is_ca {
        return Err(TlsError::Invalid("the CA certificate is not a CA certificate".into()));
    }
    let key = KeyPair::from_pem(key_pem).map_err(|_| TlsError::Invalid("the CA key file holds no key".into()))?;
    // The key must be the certificate's: sign a probe and check it.
    let probe = node_certificate(
        &Issued { cert_pem: cert_pem.to_string(), cert_der: cert_der.clone(), key_pem: KeyPem(key.serialize_pem()) },
        1,
        &[],
        &[],
        1,
    )?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der.clone()).map_err(|e| invalid("the CA certificate", e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), crate::provider())
        .build()
        .map_err(|e| invalid("the CA certificate", e))?;
    let now = rustls::pki_types::UnixTime::now();
    if verifier.verify_client_cert(&probe.cert_der, &[], now).is_err() {
        return Err(TlsError::Invalid("the CA key does not belong to the CA certificate".into()));
    }
    Ok(Issued { cert_pem: cert_pem.to_string(), cert_der, key_pem: KeyPem(key_pem.to_string()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_names_are_checked() {
        assert!(new_ca("x", 0).is_err());
        assert!(new_ca("x", MAX_DAYS + 1).is_err());
        let ca = new_ca("test CA", 30).unwrap();
        assert!(node_certificate(&ca, 0, &[], &[], 30).is_err());
        for bad in ["", "a..b", "-", "under_score.example", "gatehouse-node-9", "GATEHOUSE-NODE-9", &"a".repeat(64)] {
            assert!(node_certificate(&ca, 1, &[bad.to_string()], &[], 30).is_err(), "{bad}");
        }
        assert!(format!("{:?}", ca.key_pem) == "KeyPem(..)");
    }

    #[test]
    fn a_ca_is_loaded_back_only_with_its_own_key() {
        let ca = new_ca("test CA", 30).unwrap();
        let again = ca_from_pem(&ca.cert_pem, ca.key_pem.expose()).unwrap();
        node_certificate(&again, 2, &[], &[], 30).unwrap();
        let other = new_ca("other CA", 30).unwrap();
        let e = ca_from_pem(&ca.cert_pem, other.key_pem.expose()).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        let node = node_certificate(&ca, 2, &[], &[], 30).unwrap();
        let e = ca_from_pem(&node.cert_pem, node.key_pem.expose()).unwrap_err().to_string();
        assert!(e.contains("not a CA"), "{e}");
        assert!(ca_from_pem("junk", ca.key_pem.expose()).is_err());
    }
}
