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
//!
//! A stateless front presents a certificate of the same CA binding
//! `gatehouse-front-<id>` ([`Holder::Front`]): the peer listener's handshake
//! takes it, the Raft and control services refuse it ([`Trust::peer_id`]
//! reads nodes only), and the fronts' services check it names the front
//! that calls. A front dials each voter as the node it is listed as, with
//! [`Trust::client_config`] and its own certificate, as nodes dial each other.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::identity::{node_name, normalize_serial, Holder};
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
    /// The serials denied in the configuration, and those of the deny file.
    configured: HashSet<String>,
    deny_file: Option<PathBuf>,
    deny: RwLock<Denied>,
    /// A deny file read once that would lift a denial: taken when read the
    /// same a second time.
    lifting: std::sync::Mutex<Option<Vec<u8>>>,
}

#[derive(Debug, Default)]
struct Denied {
    serials: HashSet<String>,
    /// The deny file's bytes in use (a reload that finds the same does nothing).
    seen: Option<Vec<u8>>,
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

/// The serials of a deny file: one per line (hex, any case, colons
/// allowed); blank lines and `#` comments are skipped. One bad line refuses
/// the whole file, naming the line; so does a last line without its
/// newline (a file caught while it is written: a serial cut short is still
/// hex, and would deny the wrong certificate).
fn deny_file_serials(path: &Path, bytes: &[u8]) -> Result<HashSet<String>, TlsError> {
    let text = std::str::from_utf8(bytes).map_err(|_| TlsError::file(path, "not UTF-8 text"))?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(TlsError::file(
            path,
            "the last line has no newline: still being written? (write the file beside it and rename it over)",
        ));
    }
    let mut serials = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let serial = normalize_serial(line)
            .ok_or_else(|| TlsError::file(path, format!("line {}: not a hexadecimal serial number", n + 1)))?;
        serials.insert(serial);
    }
    Ok(serials)
}

impl Trust {
    /// The CA bundle in `ca_file`, and the serials (hex, any case, colons
    /// allowed) refused even on valid certificates: those in `deny`, and
    /// those in `deny_file` (one per line), which [`Trust::reload`] reads again.
    pub fn load(ca_file: &Path, deny: &[String], deny_file: Option<&Path>) -> Result<Trust, TlsError> {
        let trust = Trust {
            inner: Arc::new(Inner {
                ca_file: ca_file.to_path_buf(),
                state: RwLock::new(load(ca_file, crate::pem::read(ca_file)?)?),
                configured: deny_set(deny)?,
                deny_file: deny_file.map(Path::to_path_buf),
                deny: RwLock::default(),
                lifting: Default::default(),
            }),
        };
        trust.reload_deny_file()?;
        Ok(trust)
    }

    /// Reads the CA bundle and the deny file again: `Ok(true)` if either
    /// changed and is in use, `Ok(false)` if neither did; a file that does
    /// not load is refused and the one in use stays (the other may still
    /// have been taken: the error is returned after both were tried).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let ca = self.reload_ca();
        let deny = self.reload_deny_file();
        Ok(ca? | deny?)
    }

    fn reload_ca(&self) -> Result<bool, TlsError> {
        let current = crate::pem::read(&self.inner.ca_file)?;
        if current == self.state().seen {
            return Ok(false);
        }
        let state = load(&self.inner.ca_file, current)?;
        *self.inner.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        tracing::info!(ca = %self.inner.ca_file.display(), "cluster CA bundle reloaded");
        Ok(true)
    }

    fn reload_deny_file(&self) -> Result<bool, TlsError> {
        let (serials, seen) = match &self.inner.deny_file {
            None => (HashSet::new(), None),
            Some(path) => {
                let bytes = crate::pem::read(path)?;
                if self.deny().seen.as_ref() == Some(&bytes) {
                    return Ok(false);
                }
                (deny_file_serials(path, &bytes)?, Some(bytes))
            }
        };
        let first = self.deny().seen.is_none();
        // Lifting a denial waits for the same file on the next read: an
        // editor that empties the file before writing it never lets a
        // denied node back in for the moment between the two.
        let lifts = !serials.is_superset(&self.deny().serials);
        {
            let mut lifting = self.inner.lifting.lock().unwrap_or_else(|p| p.into_inner());
            if lifts && !first && *lifting != seen {
                *lifting = seen;
                return Ok(false);
            }
            *lifting = None;
        }
        let count = serials.len();
        *self.inner.deny.write().unwrap_or_else(|p| p.into_inner()) = Denied { serials, seen };
        if let (Some(path), false) = (&self.inner.deny_file, first) {
            tracing::info!(deny_file = %path.display(), denied = count, "deny-list reloaded");
        }
        Ok(!first)
    }

    fn deny(&self) -> std::sync::RwLockReadGuard<'_, Denied> {
        self.inner.deny.read().unwrap_or_else(|p| p.into_inner())
    }

    fn is_denied(&self, serial: &str) -> bool {
        self.inner.configured.contains(serial) || self.deny().serials.contains(serial)
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the certificate's serial is on the deny-list.
    pub fn denies(&self, cert: &CertificateDer<'_>) -> bool {
        crate::identity::parse(cert).is_ok_and(|info| self.is_denied(&info.serial))
    }

    /// The node a certificate (already verified against the CA) stands
    /// for, or why it stands for none: it binds no id or several, or its
    /// serial is denied.
    pub fn peer_id(&self, cert: &CertificateDer<'_>) -> Result<u64, String> {
        match self.holder(cert)? {
            Holder::Node(id) => Ok(id),
            Holder::Front(id) => Err(format!("the certificate is front {id}'s, not a node's")),
        }
    }

    /// The node or front a certificate (already verified against the CA)
    /// stands for, or why it stands for none: it binds no name or several,
    /// it has expired, or its serial is denied.
    pub fn holder(&self, cert: &CertificateDer<'_>) -> Result<Holder, String> {
        let info = crate::identity::parse(cert)?;
        // Checked on every call too: a connection outlives its handshake.
        if info.not_after <= time::OffsetDateTime::now_utc().unix_timestamp() {
            return Err("the certificate has expired".into());
        }
        if self.is_denied(&info.serial) {
            return Err(format!("certificate serial {} is denied", info.serial));
        }
        info.holder().ok_or_else(|| {
            "the certificate binds no single node or front (gatehouse-node-<id>, gatehouse-front-<id>)".to_string()
        })
    }

    /// Whether a node's (or a front's) certificate, presented when it
    /// dialled this one, passes now: chained to the CA bundle in use
    /// (client-auth usage, valid today), a bound id, no denied serial. Whom
    /// it stands for, or why not.
    /// The handshake runs it; so does [`Trust`]'s user for every connection
    /// still open after the bundle or the deny-list changed.
    pub fn check_client(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Holder, String> {
        let verifier = self.state().clients.clone();
        verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()).map_err(|e| e.to_string())?;
        self.holder(end_entity)
    }

    /// Whether the certificate of node `id`, dialled by this one, passes
    /// now: chained to the CA bundle in use (server-auth usage, valid today),
    /// binding `id`, no denied serial.
    pub fn check_server(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        id: u64,
    ) -> Result<(), String> {
        self.check_server_at(end_entity, intermediates, &server_name(id), UnixTime::now()).map_err(|e| e.to_string())
    }

    /// The certificate of any node of the cluster: chained to the CA
    /// bundle in use (server-auth usage, valid today), binding one node id,
    /// no denied serial. The node's id.
    fn check_any_node_at(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<u64, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let roots = self.state().roots.clone();
        rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, &roots, intermediates, now, ALGORITHMS.all)?;
        self.peer_id(end_entity).map_err(refused)
    }

    fn check_server_at(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        dialled: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let id = self.check_any_node_at(end_entity, intermediates, now)?;
        match dialled {
            ServerName::DnsName(name) if name.as_ref() == node_name(id) => Ok(()),
            other => Err(refused(format!("the peer's certificate is node {id}'s, not {}", other.to_str()))),
        }
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
        no_resumption(&mut config);
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
        // A resumed session skips the certificate checks: a denied peer
        // would be let back in. Connections between nodes are few and
        // long-lived; each gets a full handshake.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// No session resumption on a server whose clients present certificates: a
/// resumed session is not checked again, so a certificate denied (or
/// expired) since the first handshake would still be let in.
pub(crate) fn no_resumption(config: &mut rustls::ServerConfig) {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
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
        self.0.holder(end_entity).map_err(refused)?;
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
        self.0.check_server_at(end_entity, intermediates, server_name, now)?;
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
        Trust::load(&dir.join("ca.pem"), deny, None).unwrap()
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
    async fn a_front_is_taken_at_the_handshake_never_as_a_node_and_takes_only_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("cluster CA", 30).unwrap();
        let t = trust(dir.path(), &[&ca], &[]);
        let front = crate::issue::front_certificate(&ca, 101, 30).unwrap();
        assert_eq!(t.holder(&front.cert_der), Ok(Holder::Front(101)));
        assert!(t.peer_id(&front.cert_der).unwrap_err().contains("front 101"));
        let (voter, _) = node(&ca, 2);
        let front_dir = tempfile::tempdir().unwrap();
        let (c, k) = (front_dir.path().join("f.pem"), front_dir.path().join("f.key"));
        std::fs::write(&c, &front.cert_pem).unwrap();
        std::fs::write(&k, front.key_pem.expose()).unwrap();
        let front_material = Material::load_front(&c, &k, 101).unwrap();
        // A front dials voter 2 as node 2: the voter's handshake takes the front's certificate.
        let dial = |server: Material, as_node: u64| {
            let acceptor = tokio_rustls::TlsAcceptor::from(t.server_config(&server).unwrap());
            let connector = tokio_rustls::TlsConnector::from(t.client_config(&front_material).unwrap());
            async move {
                let (a, b) = tokio::io::duplex(64 << 10);
                let served =
                    tokio::spawn(async move { acceptor.accept(a).await.map(|_| ()).map_err(|e| e.to_string()) });
                let dialled = connector.connect(server_name(as_node), b).await.map(|_| ()).map_err(|e| e.to_string());
                (dialled, served.await.unwrap())
            }
        };
        let (dialled, served) = dial(voter.material.clone(), 2).await;
        assert!(dialled.is_ok() && served.is_ok(), "{dialled:?} {served:?}");
        // ... and only as the node it is listed as: node 2's certificate does not answer for node 3.
        let (dialled, _) = dial(voter.material.clone(), 3).await;
        assert!(dialled.is_err(), "another node's certificate at a voter's address");
        // A "voter" with a front's certificate is refused.
        let (dialled, _) = dial(front_material.clone(), 2).await;
        assert!(dialled.is_err(), "a front's certificate cannot answer as a voter");
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
        let denied = trust(dir.path(), &[&ca], &[serial.to_uppercase()]);
        assert!(handshake((&denied, &n2), (&denied, &n1), 1).await.is_err());
        assert!(handshake((&denied, &n1), (&denied, &n2), 2).await.is_err());
        assert!(Trust::load(&dir.path().join("ca.pem"), &["not-hex".into()], None).is_err());

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

    /// An expired node certificate (signed by the cluster's CA, binding its
    /// id): refused when it dials, and when it answers.
    #[tokio::test]
    async fn an_expired_certificate_is_refused_both_ways() {
        use rustls::pki_types::PrivateKeyDer;
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("cluster CA", 30).unwrap();
        let t = trust(dir.path(), &[&ca], &[]);
        let (n1, _) = node(&ca, 1);
        let (n2, _) = node(&ca, 2);
        // Node 3's certificate, expired yesterday.
        let mut params = rcgen::CertificateParams::new(vec![node_name(3)]).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&ca.cert_der, rcgen::KeyPair::from_pem(ca.key_pem.expose()).unwrap())
                .unwrap();
        let expired = params.signed_by(&key, &issuer).unwrap();
        let chain = vec![expired.der().clone()];
        let private = || PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let roots = Arc::new(crate::pem::roots(&dir.path().join("ca.pem")).unwrap());

        // Node 3 dials node 2.
        let acceptor = tokio_rustls::TlsAcceptor::from(t.server_config(&n2.material).unwrap());
        let client = rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(crate::VERSIONS)
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), private())
            .unwrap();
        let (a, b) = tokio::io::duplex(64 << 10);
        let served = tokio::spawn(async move { acceptor.accept(a).await.map(|_| ()) });
        // (With TLS 1.3 the client may count its side done before the
        // server has read its certificate: the server's verdict is the one.)
        let _ = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(server_name(2), b).await;
        let e = served.await.unwrap().unwrap_err().to_string();
        assert!(e.to_lowercase().contains("expired"), "node 2 took an expired client certificate: {e}");

        // Node 1 dials node 3, which answers with it.
        let server = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(crate::VERSIONS)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, private())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let (a, b) = tokio::io::duplex(64 << 10);
        tokio::spawn(async move { acceptor.accept(a).await.map(|_| ()) });
        let connector = tokio_rustls::TlsConnector::from(t.client_config(&n1.material).unwrap());
        let e = connector.connect(server_name(3), b).await.unwrap_err().to_string();
        assert!(e.to_lowercase().contains("expired"), "{e}");
    }

    /// The same client and server configurations twice, a serial denied in
    /// between: the second handshake is a full one, and refused both ways.
    #[tokio::test]
    async fn no_session_is_resumed_past_a_denial() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("cluster CA", 30).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        let deny_file = dir.path().join("denied");
        std::fs::write(&deny_file, "").unwrap();
        let t = Trust::load(&dir.path().join("ca.pem"), &[], Some(&deny_file)).unwrap();
        let (n1, n1_cert) = node(&ca, 1);
        let (n2, n2_cert) = node(&ca, 2);
        {
            let acceptor = tokio_rustls::TlsAcceptor::from(t.server_config(&n2.material).unwrap());
            let connector = tokio_rustls::TlsConnector::from(t.client_config(&n1.material).unwrap());
            let shake = || {
                let (acceptor, connector) = (acceptor.clone(), connector.clone());
                async move {
                    let (a, b) = tokio::io::duplex(64 << 10);
                    let served = tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        use tokio::io::AsyncWriteExt;
                        let mut s = acceptor.accept(a).await.map_err(|e| e.to_string())?;
                        s.write_all(b"y").await.map_err(|e| e.to_string())?;
                        s.flush().await.map_err(|e| e.to_string())?;
                        let _ = s.read(&mut [0u8; 1]).await;
                        Ok::<_, String>(())
                    });
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut dialled = connector.connect(server_name(2), b).await.map_err(|e| e.to_string())?;
                    // Reading takes in what follows the handshake (TLS 1.3 session tickets).
                    dialled.read_exact(&mut [0u8; 1]).await.map_err(|e| e.to_string())?;
                    let _ = dialled.write_all(b"x").await;
                    let _ = dialled.flush().await;
                    let resumed = dialled.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    served.await.unwrap()?;
                    Ok::<bool, String>(resumed)
                }
            };
            assert_eq!(shake().await, Ok(false));
            assert_eq!(shake().await, Ok(false), "a session was resumed");
            // The client's serial, then the server's too.
            let mut denied = String::new();
            for cert in [&n1_cert, &n2_cert] {
                denied += &format!("{}\n", crate::identity::parse(&cert.cert_der).unwrap().serial);
                std::fs::write(&deny_file, &denied).unwrap();
                assert!(t.reload().unwrap());
                assert!(shake().await.is_err(), "a denied peer came back");
            }
        }
    }

    #[tokio::test]
    async fn a_deny_file_reloads_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("cluster CA", 30).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        let deny_file = dir.path().join("denied");
        std::fs::write(&deny_file, "# none yet\n\n").unwrap();
        let t = Trust::load(&dir.path().join("ca.pem"), &[], Some(&deny_file)).unwrap();
        let (n1, _) = node(&ca, 1);
        let (n2, n2_cert) = node(&ca, 2);
        assert_eq!(handshake((&t, &n2), (&t, &n1), 1).await.unwrap(), 2);
        assert!(!t.reload().unwrap(), "nothing changed");

        // The stolen certificate's serial goes in, with colons and a comment.
        let serial = crate::identity::parse(&n2_cert.cert_der).unwrap().serial;
        let colons: Vec<String> =
            serial.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).to_uppercase()).collect();
        std::fs::write(&deny_file, format!("{}  # node-2's laptop\n", colons.join(":"))).unwrap();
        assert!(t.reload().unwrap());
        let e = t.peer_id(&n2_cert.cert_der).unwrap_err();
        assert!(e.contains("denied"), "{e}");
        assert!(handshake((&t, &n2), (&t, &n1), 1).await.is_err());

        // A bad line refuses the file, names the line, and the list in use stays.
        std::fs::write(&deny_file, format!("{serial}\nnot-a-serial\n")).unwrap();
        let e = t.reload().unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains("not-a-serial"), "{e}");
        assert!(t.peer_id(&n2_cert.cert_der).is_err());
        // A last line without its newline: caught while written, refused.
        std::fs::write(&deny_file, format!("{serial}\n{}", &serial[..4])).unwrap();
        assert!(t.reload().unwrap_err().to_string().contains("newline"));
        // A missing deny file at the start is a start that fails.
        assert!(Trust::load(&dir.path().join("ca.pem"), &[], Some(&dir.path().join("nope"))).is_err());
        // Emptied: admitted again, once the same file is read twice (an
        // editor's empty moment lets nobody back in).
        std::fs::write(&deny_file, "").unwrap();
        assert!(!t.reload().unwrap());
        assert!(t.peer_id(&n2_cert.cert_der).is_err(), "still denied after one read");
        assert!(t.reload().unwrap());
        assert_eq!(handshake((&t, &n2), (&t, &n1), 1).await.unwrap(), 2);
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
        assert!(Trust::load(&dir.path().join("ca.pem"), &[], None).is_err());
    }
}
