//! Mutual TLS between nodes.
//!
//! Each node presents its own certificate, on the connections it accepts
//! and on those it dials. Either side accepts a peer only with a
//! certificate that chains to the cluster's CA bundle ([`Trust`]; it may
//! hold the old and the new CA during a CA rotation), binds exactly one
//! node id (`gatehouse-node-<id>`), and whose serial is not on the
//! deny-list. A node dialling a member it knows by id checks that the
//! certificate is that member's: a stolen node-2 certificate cannot answer
//! for node 3. Who may call what (a member of the current membership, the
//! id a Raft message claims) is checked by the services, from the id
//! [`Trust::peer_id`] reads.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::identity::{node_name, normalize_serial};
use crate::{Material, TlsError};

/// What a node dials node `id` as: its bound name. Only that node's
/// certificate is taken; there is no way to dial "any node".
pub fn server_name(id: u64) -> ServerName<'static> {
    ServerName::try_from(node_name(id)).expect("a valid DNS name")
}

/// The cluster's CA bundle and deny-list, reloaded in place.
#[derive(Clone, Debug)]
pub struct Trust {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ca_file: PathBuf,
    state: RwLock<State>,
    deny: RwLock<HashSet<String>>,
}

#[derive(Debug)]
struct State {
    roots: Arc<RootCertStore>,
    clients: Arc<dyn ClientCertVerifier>,
    seen: Vec<u8>,
}

fn load(ca_file: &Path, seen: Vec<u8>) -> Result<State, TlsError> {
    let roots = Arc::new(crate::pem::roots_in(ca_file, &seen)?);
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), crate::provider())
        .build()
        .map_err(|e| TlsError::file(ca_file, format!("not a usable CA bundle ({e})")))?;
    Ok(State { roots, clients, seen })
}

fn deny_set(serials: &[String]) -> Result<HashSet<String>, TlsError> {
    serials
        .iter()
        .map(|s| {
            normalize_serial(s)
                .ok_or_else(|| TlsError::Invalid(format!("{s:?} in the deny-list is not a hexadecimal serial number")))
        })
        .collect()
}

impl Trust {
    /// The CA bundle in `ca_file`, and the serials (hex, any case, colons
    /// allowed) refused even on valid certificates.
    pub fn load(ca_file: &Path, deny: &[String]) -> Result<Trust, TlsError> {
        Ok(Trust {
            inner: Arc::new(Inner {
                ca_file: ca_file.to_path_buf(),
                state: RwLock::new(load(ca_file, crate::pem::read(ca_file)?)?),
                deny: RwLock::new(deny_set(deny)?),
            }),
        })
    }

    /// Reads the CA bundle again: `Ok(true)` if it changed and is in use,
    /// `Ok(false)` if unchanged; on an error the bundle in use stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let current = crate::pem::read(&self.inner.ca_file)?;
        if current == self.state().seen {
            return Ok(false);
        }
        let state = load(&self.inner.ca_file, current)?;
        *self.inner.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        tracing::info!(ca = %self.inner.ca_file.display(), "cluster CA bundle reloaded");
        Ok(true)
    }

    /// Replaces the deny-list.
    pub fn set_denied(&self, serials: &[String]) -> Result<(), TlsError> {
        let set = deny_set(serials)?;
        *self.inner.deny.write().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(())
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The node a certificate (already verified against the CA) stands
    /// for, or why it stands for none: it binds no id or several, or its
    /// serial is denied.
    pub fn peer_id(&self, cert: &CertificateDer<'_>) -> Result<u64, String> {
        let info = crate::identity::parse(cert)?;
        // Checked on every call too: a connection outlives its handshake.
        if info.not_after <= time::OffsetDateTime::now_utc().unix_timestamp() {
            return Err("the certificate has expired".into());
        }
        if self.inner.deny.read().unwrap_or_else(|p| p.into_inner()).contains(&info.serial) {
            return Err(format!("certificate serial {} is denied", info.serial));
        }
        info.node_id().ok_or_else(|| "the certificate binds no single node id (gatehouse-node-<id>)".to_string())
    }

    /// The peer listener's configuration: `material` served, a client
    /// certificate required, HTTP/2 by ALPN.
    pub fn server_config(&self, material: &Material) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(crate::VERSIONS)
            .map_err(|e| TlsError::Invalid(format!("TLS versions: {e}")))?
            .with_client_cert_verifier(Arc::new(PeerClients(self.clone())))
            .with_cert_resolver(Arc::new(material.clone()));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The configuration a node dials its peers with: `material` presented,
    /// the peer checked by [`PeerServers`].
    pub fn client_config(&self, material: &Material) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(crate::VERSIONS)
            .map_err(|e| TlsError::Invalid(format!("TLS versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerServers(self.clone())))
            .with_client_cert_resolver(Arc::new(material.clone()));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The provider's signature algorithms, read once (both verifiers check
/// handshake signatures with them).
static ALGORITHMS: std::sync::LazyLock<rustls::crypto::WebPkiSupportedAlgorithms> =
    std::sync::LazyLock::new(|| crate::provider().signature_verification_algorithms);

fn refused(why: String) -> rustls::Error {
    rustls::Error::General(why)
}

/// Client certificates on the peer listener: the CA's webpki check
/// (chain, validity, client-auth usage), then a bound id and no denied serial.
#[derive(Debug)]
struct PeerClients(Trust);

impl ClientCertVerifier for PeerClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a node has one certificate to offer.
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = self.0.state().clients.clone();
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        self.0.peer_id(end_entity).map_err(refused)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ALGORITHMS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ALGORITHMS.supported_schemes()
    }
}

/// The certificate of a peer this node dials: chained to the CA, a bound
/// id, no denied serial, and the id dialled when it is known
/// ([`server_name`]).
#[derive(Debug)]
struct PeerServers(Trust);

impl ServerCertVerifier for PeerServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let roots = self.0.state().roots.clone();
        rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, &roots, intermediates, now, ALGORITHMS.all)?;
        let id = self.0.peer_id(end_entity).map_err(refused)?;
        match server_name {
            ServerName::DnsName(name) if name.as_ref() == node_name(id) => {}
            other => {
                return Err(refused(format!("the peer's certificate is node {id}'s, not {}", other.to_str())));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ALGORITHMS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ALGORITHMS.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{new_ca, node_certificate, Issued};

    struct Node {
        _dir: tempfile::TempDir,
        material: Material,
    }

    fn node(ca: &Issued, id: u64) -> (Node, Issued) {
        let issued = node_certificate(ca, id, &[], &[], 30).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("n.pem"), dir.path().join("n.key"));
        std::fs::write(&c, &issued.cert_pem).unwrap();
        std::fs::write(&k, issued.key_pem.expose()).unwrap();
        (Node { material: Material::load(&c, &k).unwrap(), _dir: dir }, issued)
    }

    fn trust(dir: &Path, cas: &[&Issued], deny: &[String]) -> Trust {
        let bundle: String = cas.iter().map(|c| c.cert_pem.clone()).collect();
        std::fs::write(dir.join("ca.pem"), bundle).unwrap();
        Trust::load(&dir.join("ca.pem"), deny).unwrap()
    }

    /// A real handshake between `client` (dialling `dialled`) and `server`;
    /// the id the server read from the client's certificate, or the error.
    async fn handshake(client: (&Trust, &Node), server: (&Trust, &Node), dialled: u64) -> Result<u64, String> {
        let acceptor = tokio_rustls::TlsAcceptor::from(server.0.server_config(&server.1.material).unwrap());
        let connector = tokio_rustls::TlsConnector::from(client.0.client_config(&client.1.material).unwrap());
        let (a, b) = tokio::io::duplex(64 << 10);
        let trust = server.0.clone();
        let served = tokio::spawn(async move {
            let s = acceptor.accept(a).await.map_err(|e| e.to_string())?;
            let cert = s.get_ref().1.peer_certificates().ok_or("no client certificate")?[0].clone();
            trust.peer_id(&cert)
        });
        let dialled = connector.connect(server_name(dialled), b).await.map_err(|e| e.to_string());
        let served = served.await.unwrap();
        dialled?;
        served
    }

    #[tokio::test]
    async fn only_the_clusters_bound_and_undenied_certificates_pass_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("cluster CA", 30).unwrap();
        let other_ca = new_ca("someone else's CA", 30).unwrap();
        let t = trust(dir.path(), &[&ca], &[]);
        let (n1, _) = node(&ca, 1);
        let (n2, n2_cert) = node(&ca, 2);
        let (stranger, _) = node(&other_ca, 1);

        // Both ways, each dialling the other by id.
        assert_eq!(handshake((&t, &n1), (&t, &n2), 2).await.unwrap(), 1);
        assert_eq!(handshake((&t, &n2), (&t, &n1), 1).await.unwrap(), 2);
        // Node 2's certificate cannot answer for node 3.
        let e = handshake((&t, &n1), (&t, &n2), 3).await.unwrap_err();
        assert!(e.contains("node 2's"), "{e}");
        // Another CA's certificate: refused as client and as server.
        assert!(handshake((&t, &stranger), (&t, &n2), 2).await.is_err());
        assert!(handshake((&t, &n1), (&t, &stranger), 1).await.is_err());
        // A CA bundle with the old and the new CA: both accepted (a CA rotation).
        let both = tempfile::tempdir().unwrap();
        let t2 = trust(both.path(), &[&ca, &other_ca], &[]);
        assert_eq!(handshake((&t2, &stranger), (&t2, &n2), 2).await.unwrap(), 1);

        // A denied serial, as client and as server, at once.
        let serial = crate::identity::parse(&n2_cert.cert_der).unwrap().serial;
        t.set_denied(&[serial.to_uppercase()]).unwrap();
        assert!(handshake((&t, &n2), (&t, &n1), 1).await.is_err());
        assert!(handshake((&t, &n1), (&t, &n2), 2).await.is_err());
        t.set_denied(&[]).unwrap();
        assert_eq!(handshake((&t, &n1), (&t, &n2), 2).await.unwrap(), 1);
        assert!(t.set_denied(&["not-hex".into()]).is_err());

        // A certificate from the CA that binds no node id: no peer.
        let unbound = {
            let mut params = rcgen::CertificateParams::new(vec!["client.example".to_string()]).unwrap();
            params.extended_key_usages =
                vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            let key = rcgen::KeyPair::generate().unwrap();
            let ca_key = rcgen::KeyPair::from_pem(ca.key_pem.expose()).unwrap();
            let issuer = rcgen::Issuer::from_ca_cert_der(&ca.cert_der, ca_key).unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join("u.pem"), cert.pem()).unwrap();
            std::fs::write(d.path().join("u.key"), key.serialize_pem()).unwrap();
            Node { material: Material::load(&d.path().join("u.pem"), &d.path().join("u.key")).unwrap(), _dir: d }
        };
        assert!(handshake((&t, &unbound), (&t, &n2), 2).await.is_err());
    }

    #[test]
    fn a_ca_bundle_reloads_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("cluster CA", 30).unwrap();
        let t = trust(dir.path(), &[&ca], &[]);
        assert!(!t.reload().unwrap());
        let next = new_ca("next CA", 30).unwrap();
        std::fs::write(dir.path().join("ca.pem"), format!("{}{}", ca.cert_pem, next.cert_pem)).unwrap();
        assert!(t.reload().unwrap());
        std::fs::write(dir.path().join("ca.pem"), "garbage").unwrap();
        assert!(t.reload().is_err());
        assert_eq!(t.state().roots.len(), 2);
        assert!(Trust::load(&dir.path().join("ca.pem"), &[]).is_err());
    }
}
