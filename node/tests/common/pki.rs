//! A cluster's PKI for tests: a CA and node certificates in a temp dir, the
//! `[cluster_tls]` section that uses them, and peers that dial with them.

use std::path::{Path, PathBuf};

use gatehouse::config::ClusterTlsConfig;
use gatehouse_cluster::peer_tls::PeerTls;
use gatehouse_cluster::{ClusterSecret, Peers};
use gatehouse_tls::issue::{new_ca, node_certificate, Issued};

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Issued,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("cluster CA", 30).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        for id in 1..=3 {
            Self::write(dir.path(), &format!("node-{id}"), &node_certificate(&ca, id, &[], &[], 30).unwrap());
        }
        Pki { dir, ca }
    }

    pub fn write(dir: &Path, name: &str, issued: &Issued) {
        std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), issued.key_pem.expose()).unwrap();
    }

    /// Replaces a file as an operator's tooling does: written aside, then
    /// renamed over the old one (a reader sees the old or the new, never half).
    pub fn replace(path: &Path, content: &str) {
        let aside = path.with_extension("new");
        std::fs::write(&aside, content).unwrap();
        std::fs::rename(&aside, path).unwrap();
    }

    /// Gives node `id` a new certificate and key from `ca`, in place.
    pub fn reissue(&self, ca: &Issued, id: u64) -> Issued {
        let issued = node_certificate(ca, id, &[], &[], 30).unwrap();
        Self::replace(&self.path(&format!("node-{id}.key")), issued.key_pem.expose());
        Self::replace(&self.path(&format!("node-{id}.pem")), &issued.cert_pem);
        issued
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self, id: u64, deny: &[String]) -> ClusterTlsConfig {
        ClusterTlsConfig {
            ca_file: self.path("ca.pem"),
            cert_file: self.path(&format!("node-{id}.pem")),
            key_file: self.path(&format!("node-{id}.key")),
            deny_serials: deny.to_vec(),
            deny_file: None,
        }
    }

    /// Peers that dial node `id` at `addr` with the certificate `name` and trust `ca_file`.
    pub fn peers(&self, secret: &str, name: &str, ca_file: &Path, addr: &str, id: u64) -> Peers {
        let trust = gatehouse_tls::peer::Trust::load(ca_file, &[], None).unwrap();
        let material =
            gatehouse_tls::Material::load(&self.path(&format!("{name}.pem")), &self.path(&format!("{name}.key")))
                .unwrap();
        let peers = Peers::new(ClusterSecret::new(secret).unwrap()).with_tls(PeerTls::new(trust, &material).unwrap());
        peers.expect(addr, id);
        peers
    }
}
