//! What a certificate says about who holds it.
//!
//! A node's certificate binds its node id as a DNS name,
//! `gatehouse-node-<id>` (see [`node_name`]): a peer that presents the
//! certificate of node 2 is node 2 and nothing else, whatever id its
//! messages claim. The same certificate carries the node's real host names
//! and addresses for clients that dial it by those. A stateless front's
//! certificate binds `gatehouse-front-<id>` instead ([`front_name`]): it
//! can never pass for a node. A certificate that binds more than one name
//! of either kind stands for nobody ([`CertInfo::holder`]).

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The DNS name that binds node `id` to a certificate.
pub fn node_name(id: u64) -> String {
    format!("{NODE_NAME_PREFIX}{id}")
}

const NODE_NAME_PREFIX: &str = "gatehouse-node-";
const FRONT_NAME_PREFIX: &str = "gatehouse-front-";

/// The DNS name that binds stateless front `id` to a certificate.
pub fn front_name(id: u64) -> String {
    format!("{FRONT_NAME_PREFIX}{id}")
}

/// Whom a certificate stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    Node(u64),
    Front(u64),
}

/// The facts of one certificate that Gatehouse acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Every node id the certificate names (a node certificate names one).
    pub node_ids: Vec<u64>,
    /// Every front id it names (a front certificate names one, and no node).
    pub front_ids: Vec<u64>,
    /// The serial number, lowercase hex without separators (as deny-lists
    /// and `openssl x509 -serial` give it, case aside).
    pub serial: String,
    /// When it starts and stops being valid, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// Whether it is a CA certificate (basic constraints).
    pub is_ca: bool,
}

impl CertInfo {
    /// The one node id the certificate is bound to, if exactly one (and no front).
    pub fn node_id(&self) -> Option<u64> {
        match self.holder() {
            Some(Holder::Node(id)) => Some(id),
            _ => None,
        }
    }

    /// The one node or front the certificate is bound to, if exactly one.
    pub fn holder(&self) -> Option<Holder> {
        match (self.node_ids.as_slice(), self.front_ids.as_slice()) {
            ([id], []) => Some(Holder::Node(*id)),
            ([], [id]) => Some(Holder::Front(*id)),
            _ => None,
        }
    }
}

/// Reads a DER certificate; the error says what is wrong without its bytes.
pub fn parse(cert: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (rest, x509) = X509Certificate::from_der(cert.as_ref()).map_err(|_| "not an X.509 certificate".to_string())?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    let (mut node_ids, mut front_ids) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                if let Some(id) = id_of_name(dns, NODE_NAME_PREFIX) {
                    node_ids.push(id);
                }
                if let Some(id) = id_of_name(dns, FRONT_NAME_PREFIX) {
                    front_ids.push(id);
                }
            }
        }
    }
    node_ids.sort_unstable();
    node_ids.dedup();
    front_ids.sort_unstable();
    front_ids.dedup();
    Ok(CertInfo {
        node_ids,
        front_ids,
        serial: serial_of(x509.raw_serial()),
        not_before: x509.validity().not_before.timestamp(),
        not_after: x509.validity().not_after.timestamp(),
        is_ca: x509.is_ca(),
    })
}

/// A serial's bytes as lowercase hex without leading zeros (`0` for zero):
/// the one form deny-lists are compared in.
fn serial_of(raw: &[u8]) -> String {
    let hex = hex::encode(raw);
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// `<kind prefix><id>` (DNS names compare without case) → `id` (a
/// positive decimal without leading zeros, so one id has one name).
fn id_of_name(dns: &str, kind: &str) -> Option<u64> {
    let prefix = dns.get(..kind.len())?;
    if !prefix.eq_ignore_ascii_case(kind) {
        return None;
    }
    let digits = &dns[kind.len()..];
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A serial number as an operator may write it (`0A:1b:…`, `0x0a1b…`,
/// `a1b…`), in the form [`CertInfo::serial`] has; `None` if it is not hex.
pub fn normalize_serial(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.is_empty() || hex.len() > 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = hex.to_ascii_lowercase().trim_start_matches('0').to_string();
    Some(if trimmed.is_empty() { "0".into() } else { trimmed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_id_of_name(dns: &str) -> Option<u64> {
        id_of_name(dns, NODE_NAME_PREFIX)
    }

    #[test]
    fn a_certificate_stands_for_one_node_or_one_front_or_nobody() {
        let info = |node_ids: Vec<u64>, front_ids: Vec<u64>| CertInfo {
            node_ids,
            front_ids,
            serial: "1".into(),
            not_before: 0,
            not_after: 0,
            is_ca: false,
        };
        assert_eq!(info(vec![2], vec![]).holder(), Some(Holder::Node(2)));
        assert_eq!(info(vec![], vec![7]).holder(), Some(Holder::Front(7)));
        assert_eq!(info(vec![2], vec![7]).holder(), None, "a node and a front at once");
        assert_eq!(info(vec![2], vec![7]).node_id(), None);
        assert_eq!(info(vec![], vec![7]).node_id(), None, "a front is no node");
        assert_eq!(info(vec![1, 2], vec![]).holder(), None);
        assert_eq!(id_of_name(&front_name(7), FRONT_NAME_PREFIX), Some(7));
        assert_eq!(id_of_name(&front_name(7), NODE_NAME_PREFIX), None);
    }

    #[test]
    fn names_bind_exactly_one_id() {
        assert_eq!(node_id_of_name("gatehouse-node-3"), Some(3));
        assert_eq!(node_id_of_name(&node_name(42)), Some(42));
        assert_eq!(node_id_of_name("GateHouse-Node-5"), Some(5));
        assert_eq!(serial_of(&[0, 0]), "0");
        assert_eq!(serial_of(&[0, 0x0a, 0x1b]), "a1b");
        for bad in [
            "gatehouse-node-",
            "gatehouse-node-03",
            "gatehouse-node-0",
            "gatehouse-node-3a",
            "node-3",
            "gatehouse-node--3",
            "gatehouse-node-99999999999999999999999",
        ] {
            assert_eq!(node_id_of_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn serials_compare_however_they_are_written() {
        assert_eq!(normalize_serial("0A:1B:2c").as_deref(), Some("a1b2c"));
        assert_eq!(normalize_serial("0x0a1b2c").as_deref(), Some("a1b2c"));
        assert_eq!(normalize_serial(" a1b2c ").as_deref(), Some("a1b2c"));
        assert_eq!(normalize_serial("00").as_deref(), Some("0"));
        for bad in ["", "xyz", "12 34", &"a".repeat(65)] {
            assert_eq!(normalize_serial(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_issued_node_certificate_says_its_id_serial_and_expiry() {
        let ca = crate::issue::new_ca("test CA", 10).unwrap();
        let node =
            crate::issue::node_certificate(&ca, 7, &["n7.example".into()], &["10.0.0.7".parse().unwrap()], 5).unwrap();
        let info = parse(&node.cert_der).unwrap();
        assert_eq!(info.node_id(), Some(7));
        assert!(!info.is_ca);
        assert_eq!(normalize_serial(&info.serial).as_deref(), Some(info.serial.as_str()));
        let days = (info.not_after - time::OffsetDateTime::now_utc().unix_timestamp()) / 86_400;
        assert!((4..=5).contains(&days), "{days}");
        let ca_info = parse(&ca.cert_der).unwrap();
        assert!(ca_info.is_ca);
        assert_eq!(ca_info.node_id(), None);
        assert!(parse(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])).is_err());
    }
}
