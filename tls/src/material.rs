//! The certificate and key a node serves (and dials its peers with),
//! reloaded from their files without a restart.
//!
//! [`Material::reload`] reads both files again; a pair that does not load
//! (a half-written file, a key that is not the certificate's) is refused
//! and the pair in use stays, so a rotation that goes wrong never takes a
//! node off the air. New handshakes use the new pair; open connections keep
//! theirs. The node calls it on SIGHUP and on a periodic check of the files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;

use crate::identity::{CertInfo, Holder};
use crate::TlsError;

/// A certificate chain and key from files, swapped in place on reload.
#[derive(Clone, Debug)]
pub struct Material {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The node or front the certificate must bind, at load and at every reload.
    node: Option<Holder>,
    current: RwLock<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    /// The files' bytes this pair was parsed from: a reload that finds the
    /// same bytes changes nothing. Never printed (the key file is here).
    seen: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Parses the pair from the bytes just read (so what is recorded as seen is
/// exactly what is served), refusing a CA certificate, a key that is not the
/// certificate's, and a certificate outside its validity.
fn parse(
    cert_file: &Path,
    key_file: &Path,
    node: Option<Holder>,
    seen: (Vec<u8>, Vec<u8>),
) -> Result<Loaded, TlsError> {
    let chain = crate::pem::certificates_in(cert_file, &seen.0)?;
    let key = crate::pem::private_key_in(key_file, &seen.1)?;
    let info = crate::identity::parse(&chain[0]).map_err(|why| TlsError::file(cert_file, why))?;
    if info.is_ca {
        return Err(TlsError::file(cert_file, "is a CA certificate, not one to serve with"));
    }
    if let Some(holder) = node {
        if info.holder() != Some(holder) {
            let bound = match (info.node_ids.as_slice(), info.front_ids.as_slice()) {
                ([], []) => "binds no node or front".to_string(),
                (nodes, []) => format!("binds node(s) {nodes:?}"),
                ([], fronts) => format!("binds front(s) {fronts:?}"),
                (nodes, fronts) => format!("binds node(s) {nodes:?} and front(s) {fronts:?}"),
            };
            let this = match holder {
                Holder::Node(id) => format!("node {id}"),
                Holder::Front(id) => format!("front {id}"),
            };
            return Err(TlsError::file(cert_file, format!("{bound}, this is {this}")));
        }
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if info.not_after <= now {
        return Err(TlsError::file(cert_file, "has expired"));
    }
    if info.not_before > now {
        return Err(TlsError::file(cert_file, "is not valid yet"));
    }
    let certified = CertifiedKey::from_der(chain, key, &crate::provider())
        .map_err(|_| TlsError::file(key_file, format!("is not the key of {}", cert_file.display())))?;
    Ok(Loaded { key: Arc::new(certified), info, seen })
}

fn read_both(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    Ok((crate::pem::read(cert_file)?, crate::pem::read(key_file)?))
}

impl Material {
    /// Loads the chain in `cert_file` and the key in `key_file`.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Material, TlsError> {
        Self::load_checked(cert_file, key_file, None)
    }

    /// [`Material::load`], for a node's own certificate: it must bind node
    /// `id`, now and at every reload.
    pub fn load_node(cert_file: &Path, key_file: &Path, id: u64) -> Result<Material, TlsError> {
        Self::load_checked(cert_file, key_file, Some(Holder::Node(id)))
    }

    /// [`Material::load`], for a stateless front's certificate: it must bind
    /// front `id` (`gatehouse-front-<id>`) and no node.
    pub fn load_front(cert_file: &Path, key_file: &Path, id: u64) -> Result<Material, TlsError> {
        Self::load_checked(cert_file, key_file, Some(Holder::Front(id)))
    }

    fn load_checked(cert_file: &Path, key_file: &Path, node: Option<Holder>) -> Result<Material, TlsError> {
        let loaded = parse(cert_file, key_file, node, read_both(cert_file, key_file)?)?;
        Ok(Material {
            inner: Arc::new(Inner {
                cert_file: cert_file.to_path_buf(),
                key_file: key_file.to_path_buf(),
                node,
                current: RwLock::new(loaded),
            }),
        })
    }

    /// Reads the files again. `Ok(true)` if a new pair is now in use,
    /// `Ok(false)` if the files did not change; on an error the pair in use
    /// stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let seen = read_both(&self.inner.cert_file, &self.inner.key_file)?;
        if seen == self.inner.current.read().unwrap_or_else(|p| p.into_inner()).seen {
            return Ok(false);
        }
        let loaded = parse(&self.inner.cert_file, &self.inner.key_file, self.inner.node, seen)?;
        tracing::info!(
            cert = %self.inner.cert_file.display(),
            serial = %loaded.info.serial,
            not_after = loaded.info.not_after,
            "TLS certificate reloaded"
        );
        *self.inner.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(true)
    }

    /// The pair new handshakes use.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.inner.current.read().unwrap_or_else(|p| p.into_inner()).key.clone()
    }

    /// What the certificate in use says (node id, serial, expiry).
    pub fn info(&self) -> CertInfo {
        self.inner.current.read().unwrap_or_else(|p| p.into_inner()).info.clone()
    }
}

impl rustls::server::ResolvesServerCert for Material {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl rustls::client::ResolvesClientCert for Material {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{new_ca, node_certificate};

    #[test]
    fn a_reload_swaps_a_good_pair_and_keeps_the_old_one_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("node.pem"), dir.path().join("node.key"));
        let ca = new_ca("test CA", 30).unwrap();
        let write = |i: &crate::issue::Issued| {
            std::fs::write(&cert, &i.cert_pem).unwrap();
            std::fs::write(&key, i.key_pem.expose()).unwrap();
        };
        let first = node_certificate(&ca, 1, &[], &[], 30).unwrap();
        write(&first);
        let m = Material::load(&cert, &key).unwrap();
        let serial = m.info().serial;
        assert!(!m.reload().unwrap(), "same files, nothing to do");
        // Debug shows what the certificate says, never the key.
        let shown = format!("{m:?} {:?} {:?}", first.key_pem, first);
        let key_body: String = first.key_pem.expose().lines().nth(1).unwrap().chars().take(16).collect();
        assert!(shown.contains("node.pem") && !shown.contains(&key_body), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");

        let second = node_certificate(&ca, 1, &[], &[], 30).unwrap();
        write(&second);
        assert!(m.reload().unwrap());
        assert_ne!(m.info().serial, serial);
        assert_eq!(m.certified_key().cert[0], second.cert_der);

        // Half a rotation: the new certificate, the old key. Refused; the
        // pair in use stays.
        let third = node_certificate(&ca, 1, &[], &[], 30).unwrap();
        std::fs::write(&cert, &third.cert_pem).unwrap();
        let e = m.reload().unwrap_err().to_string();
        assert!(e.contains("is not the key of"), "{e}");
        assert_eq!(m.certified_key().cert[0], second.cert_der);
        // A CA certificate is no certificate to serve with.
        std::fs::write(&cert, &ca.cert_pem).unwrap();
        std::fs::write(&key, ca.key_pem.expose()).unwrap();
        assert!(m.reload().unwrap_err().to_string().contains("CA certificate"));
        // Finished: taken.
        write(&third);
        assert!(m.reload().unwrap());
        assert_eq!(m.certified_key().cert[0], third.cert_der);
    }

    #[test]
    fn a_nodes_own_certificate_must_bind_its_id_at_every_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("node.pem"), dir.path().join("node.key"));
        let ca = new_ca("test CA", 30).unwrap();
        let write = |i: &crate::issue::Issued| {
            std::fs::write(&cert, &i.cert_pem).unwrap();
            std::fs::write(&key, i.key_pem.expose()).unwrap();
        };
        write(&node_certificate(&ca, 2, &[], &[], 30).unwrap());
        let e = Material::load_node(&cert, &key, 1).unwrap_err().to_string();
        assert!(e.contains("binds node(s) [2], this is node 1"), "{e}");
        let mine = node_certificate(&ca, 1, &[], &[], 30).unwrap();
        write(&mine);
        let m = Material::load_node(&cert, &key, 1).unwrap();
        write(&node_certificate(&ca, 2, &[], &[], 30).unwrap());
        assert!(m.reload().unwrap_err().to_string().contains("this is node 1"));
        assert_eq!(m.certified_key().cert[0], mine.cert_der);
    }
}
