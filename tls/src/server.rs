//! rustls server configurations.

use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;

use crate::{Material, TlsError};

/// HTTPS for the HTTP front: the node's certificate (reloaded in place),
/// no client certificates, HTTP/2 by ALPN beside HTTP/1.1 (`http2` false
/// offers HTTP/1.1 alone).
pub fn https(material: &Material, http2: bool) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(crate::VERSIONS)
        .map_err(|e| TlsError::Invalid(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(material.clone()));
    config.alpn_protocols = if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(Arc::new(config))
}

/// Who may present a client certificate to the admin API: certificates
/// of the CA bundle in a file, which [`AdminClients::reload`] reads again
/// (a CA added or taken out without a restart), and whether one is required.
#[derive(Debug, Clone)]
pub struct AdminClients {
    inner: Arc<AdminInner>,
}

#[derive(Debug)]
struct AdminInner {
    ca_file: std::path::PathBuf,
    /// Refuse callers without one (else a certificate is checked if sent).
    required: bool,
    /// The verifier for the bundle in use, and the file's bytes it came from.
    current: std::sync::RwLock<(Arc<dyn ClientCertVerifier>, Vec<u8>)>,
}

impl AdminClients {
    pub fn load(ca_file: &std::path::Path, required: bool) -> Result<AdminClients, TlsError> {
        let bytes = crate::pem::read(ca_file)?;
        let verifier = Self::verifier(ca_file, &bytes, required)?;
        let inner = AdminInner { ca_file: ca_file.to_path_buf(), required, current: (verifier, bytes).into() };
        Ok(AdminClients { inner: Arc::new(inner) })
    }

    fn verifier(
        ca_file: &std::path::Path,
        bytes: &[u8],
        required: bool,
    ) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let roots = Arc::new(crate::pem::roots_in(ca_file, bytes)?);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crate::provider());
        let verifier = if required { verifier } else { verifier.allow_unauthenticated() };
        verifier.build().map_err(|e| TlsError::file(ca_file, format!("not a usable client CA bundle ({e})")))
    }

    /// Reads the bundle again: `Ok(true)` if it changed and is in use; on
    /// an error the bundle in use stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let bytes = crate::pem::read(&self.inner.ca_file)?;
        if self.current().1 == bytes {
            return Ok(false);
        }
        let verifier = Self::verifier(&self.inner.ca_file, &bytes, self.inner.required)?;
        *self.inner.current.write().unwrap_or_else(|p| p.into_inner()) = (verifier, bytes);
        Ok(true)
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, (Arc<dyn ClientCertVerifier>, Vec<u8>)> {
        self.inner.current.read().unwrap_or_else(|p| p.into_inner())
    }

    fn verifier_now(&self) -> Arc<dyn ClientCertVerifier> {
        self.current().0.clone()
    }
}

impl ClientCertVerifier for AdminClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.required
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // No hints: an operator's client has one certificate to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.verifier_now().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier_now().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier_now().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifier_now().supported_verify_schemes()
    }
}

/// The admin API's listener (gRPC): the node's certificate (reloaded in
/// place), HTTP/2 by ALPN, and client certificates when `clients` says so.
/// The API key is checked on every call either way.
pub fn admin(material: &Material, clients: Option<&AdminClients>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(crate::VERSIONS)
        .map_err(|e| TlsError::Invalid(format!("TLS versions: {e}")))?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(c) => builder.with_client_cert_verifier(Arc::new(c.clone())),
    };
    let mut config = builder.with_cert_resolver(Arc::new(material.clone()));
    config.alpn_protocols = vec![b"h2".to_vec()];
    if clients.is_some() {
        crate::peer::no_resumption(&mut config);
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{new_ca, node_certificate};
    use rustls::pki_types::ServerName;

    /// A real handshake over a socket pair: ALPN, versions, and the name the
    /// client verified.
    #[tokio::test]
    async fn https_negotiates_h2_or_http1_over_tls12_or_13_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("test CA", 30).unwrap();
        let node = node_certificate(&ca, 1, &["front.example".into()], &[], 30).unwrap();
        let (cert, key) = (dir.path().join("n.pem"), dir.path().join("n.key"));
        std::fs::write(&cert, &node.cert_pem).unwrap();
        std::fs::write(&key, node.key_pem.expose()).unwrap();
        let material = Material::load(&cert, &key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let roots = Arc::new(roots);

        for (http2, offered, want) in [
            (true, vec![b"h2".to_vec(), b"http/1.1".to_vec()], Some(b"h2".to_vec())),
            (false, vec![b"h2".to_vec(), b"http/1.1".to_vec()], Some(b"http/1.1".to_vec())),
            (true, vec![], None),
        ] {
            for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
                let acceptor = tokio_rustls::TlsAcceptor::from(https(&material, http2).unwrap());
                let mut client = rustls::ClientConfig::builder_with_provider(crate::provider())
                    .with_protocol_versions(&[version])
                    .unwrap()
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
                client.alpn_protocols = offered.clone();
                let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
                let (a, b) = tokio::io::duplex(64 << 10);
                let server = tokio::spawn(async move {
                    acceptor.accept(a).await.map(|s| s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
                });
                let name = ServerName::try_from("front.example").unwrap();
                let tls = connector.connect(name, b).await.unwrap();
                assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
                assert_eq!(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec), want);
                assert_eq!(server.await.unwrap().unwrap(), want);
            }
        }
    }
}
