//! Certificates, keys and CA bundles from PEM files.
//!
//! A chain file holds the node's certificate first, then any intermediates;
//! a key file holds one PKCS#8, PKCS#1 or SEC1 private key; a CA bundle holds
//! one or more CA certificates (old and new during a CA rotation).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// Largest PEM file read (a chain of a few certificates is a few KiB): a
/// wrong path to a large file fails at once instead of filling memory.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// A file's bytes, read once and at most [`MAX_PEM_BYTES`] of them. Only a
/// regular file (or a link to one) is opened: a FIFO would block the
/// reload loop in `open`, a device would never end.
pub fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| TlsError::file(path, e))?;
    if !meta.is_file() {
        return Err(TlsError::file(path, "not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(|e| TlsError::file(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes).map_err(|e| TlsError::file(path, e))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::file(path, format!("larger than {MAX_PEM_BYTES} bytes: not a PEM file")));
    }
    Ok(bytes)
}

/// The certificates in a PEM file, in order; at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certificates_in(path, &read(path)?)
}

/// The certificates in `bytes`, read from `path` (named in errors).
pub fn certificates_in(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(TlsError::file(path, "no certificate in the file"));
    }
    for cert in &certs {
        crate::identity::parse(cert).map_err(|why| TlsError::file(path, why))?;
    }
    Ok(certs)
}

/// The private key in a PEM file. The error never quotes the file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    private_key_in(path, &read(path)?)
}

/// The private key in `bytes`, read from `path`. The error never quotes it.
pub fn private_key_in(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|_| TlsError::file(path, "no PKCS#8, PKCS#1 or SEC1 private key"))
}

/// A CA bundle as trust anchors: every certificate in the file must be one.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    roots_in(path, &read(path)?)
}

/// The CA bundle in `bytes`, read from `path`.
pub fn roots_in(path: &Path, bytes: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certificates_in(path, bytes)? {
        store.add(cert).map_err(|e| TlsError::file(path, format!("not a usable CA certificate ({e})")))?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_what_they_should_be_are_named_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        let missing = dir.path().join("missing.pem");
        assert!(certificates(&missing).unwrap_err().to_string().starts_with(&missing.display().to_string()));
        let empty = write("empty.pem", b"");
        assert!(certificates(&empty).unwrap_err().to_string().contains("no certificate"));
        let junk = write("junk.pem", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
        assert!(certificates(&junk).is_err());
        // Valid base64, not a certificate.
        let not_x509 = write("notx509.pem", b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n");
        assert!(certificates(&not_x509).is_err());
        let big = write("big.pem", &vec![b'a'; MAX_PEM_BYTES as usize + 1]);
        assert!(certificates(&big).unwrap_err().to_string().contains("larger than"));
        // A key file's error says nothing of what is in it.
        let secretish = write("key.pem", b"hunter2-super-secret");
        let e = private_key(&secretish).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn issued_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::issue::new_ca("test CA", 30).unwrap();
        let node = crate::issue::node_certificate(&ca, 3, &["node-3.example".into()], &[], 30).unwrap();
        let (cert, key, bundle) = (dir.path().join("n.pem"), dir.path().join("n.key"), dir.path().join("ca.pem"));
        std::fs::write(&cert, &node.cert_pem).unwrap();
        std::fs::write(&key, node.key_pem.expose()).unwrap();
        std::fs::write(&bundle, &ca.cert_pem).unwrap();
        assert_eq!(certificates(&cert).unwrap().len(), 1);
        private_key(&key).unwrap();
        assert_eq!(roots(&bundle).unwrap().len(), 1);
    }
}
