//! `gatehouse tls …`: certificates for a first cluster, without OpenSSL.
//!
//! `init-ca` makes a CA (`ca.pem`, `ca.key`); `issue` signs a node's
//! certificate with it (`node-<id>.pem`, `node-<id>.key`); `issue-front` a
//! stateless front's (`front-<id>.pem`, `front-<id>.key`). Every file is
//! written 0600 and never over an existing one: to rotate, issue into a new
//! directory and move the files in place (the node picks them up).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use gatehouse_tls::issue::{ca_from_pem, front_certificate, new_ca, node_certificate, Issued, MAX_DAYS};

use crate::bootstrap::write_private_atomic;

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Create a CA for a first cluster: `ca.pem` (give it to every node and
    /// client) and `ca.key` (keep it offline) in `--out`.
    InitCa {
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Gatehouse cluster CA")]
        name: String,
        #[arg(long, default_value_t = MAX_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
    },
    /// Sign node `--node-id`'s certificate with the CA in `--ca-dir`:
    /// `node-<id>.pem` and `node-<id>.key` in `--out`. The certificate binds
    /// the id (`gatehouse-node-<id>`) and carries every `--dns` name and
    /// `--ip` address clients and peers dial the node by.
    Issue {
        #[arg(long)]
        node_id: u64,
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        #[arg(long = "ip", value_name = "ADDR")]
        ip: Vec<IpAddr>,
        /// Where `ca.pem` and `ca.key` are.
        #[arg(long, value_name = "DIR", default_value = ".")]
        ca_dir: PathBuf,
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Validity in days (397 by default, as browsers allow for public certificates).
        #[arg(long, default_value_t = 397, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
    },
    /// Sign stateless front `--front-id`'s certificate with the CA in
    /// `--ca-dir`: `front-<id>.pem` and `front-<id>.key` in `--out`. It binds
    /// `gatehouse-front-<id>` only, for dialling voters: it can never pass
    /// for a node.
    IssueFront {
        #[arg(long)]
        front_id: u64,
        #[arg(long, value_name = "DIR", default_value = ".")]
        ca_dir: PathBuf,
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value_t = 397, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
    },
}

/// The CA in `dir` (`ca.pem`, `ca.key`).
fn read_ca(dir: &Path) -> anyhow::Result<Issued> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    Ok(ca_from_pem(&read("ca.pem")?, &read("ca.key")?)?)
}

/// Writes `issued` as `<out>/<stem>.pem` and `.key`, never over a file.
fn write_pair(issued: &Issued, out: &Path, stem: &str) -> anyhow::Result<Vec<PathBuf>> {
    let (cert, key) = (out.join(format!("{stem}.pem")), out.join(format!("{stem}.key")));
    refuse_existing(&[&cert, &key])?;
    write_private_atomic(&key, issued.key_pem.expose())?;
    write_private_atomic(&cert, issued.cert_pem.trim_end())?;
    Ok(vec![cert, key])
}

/// Runs the command; returns what it wrote, for the operator.
pub fn run(cmd: TlsCommand) -> anyhow::Result<Vec<PathBuf>> {
    match cmd {
        TlsCommand::InitCa { out, name, days } => {
            let ca = new_ca(&name, days)?;
            let (cert, key) = (out.join("ca.pem"), out.join("ca.key"));
            refuse_existing(&[&cert, &key])?;
            write_private_atomic(&key, ca.key_pem.expose())?;
            write_private_atomic(&cert, ca.cert_pem.trim_end())?;
            Ok(vec![cert, key])
        }
        TlsCommand::Issue { node_id, dns, ip, ca_dir, out, days } => {
            let issued = node_certificate(&read_ca(&ca_dir)?, node_id, &dns, &ip, days)?;
            write_pair(&issued, &out, &format!("node-{node_id}"))
        }
        TlsCommand::IssueFront { front_id, ca_dir, out, days } => {
            let issued = front_certificate(&read_ca(&ca_dir)?, front_id, days)?;
            write_pair(&issued, &out, &format!("front-{front_id}"))
        }
    }
}

/// Both files of a pair are refused before either is written.
fn refuse_existing(paths: &[&Path]) -> anyhow::Result<()> {
    for p in paths {
        if p.exists() {
            anyhow::bail!("{} exists: certificates and keys are never overwritten", p.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_ca_then_a_node_certificate_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let wrote = run(TlsCommand::InitCa { out: d.clone(), name: "Test CA".into(), days: 30 }).unwrap();
        assert_eq!(wrote, [d.join("ca.pem"), d.join("ca.key")]);
        let issue = || TlsCommand::Issue {
            node_id: 3,
            dns: vec!["node-3.example".into()],
            ip: vec!["10.0.0.3".parse().unwrap()],
            ca_dir: d.clone(),
            out: d.clone(),
            days: 30,
        };
        run(issue()).unwrap();
        for f in ["ca.pem", "ca.key", "node-3.pem", "node-3.key"] {
            let mode = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let m = gatehouse_tls::Material::load(&d.join("node-3.pem"), &d.join("node-3.key")).unwrap();
        assert_eq!(m.info().node_id(), Some(3));
        let before = std::fs::read(d.join("node-3.key")).unwrap();
        assert!(run(issue()).unwrap_err().to_string().contains("never overwritten"));
        assert_eq!(std::fs::read(d.join("node-3.key")).unwrap(), before);
        assert!(run(TlsCommand::InitCa { out: d.clone(), name: "again".into(), days: 30 }).is_err());
        // A front's certificate: it binds the front and no node.
        run(TlsCommand::IssueFront { front_id: 101, ca_dir: d.clone(), out: d.clone(), days: 30 }).unwrap();
        let f = gatehouse_tls::Material::load_front(&d.join("front-101.pem"), &d.join("front-101.key"), 101).unwrap();
        assert_eq!(f.info().holder(), Some(gatehouse_tls::identity::Holder::Front(101)));
        assert!(gatehouse_tls::Material::load_node(&d.join("front-101.pem"), &d.join("front-101.key"), 101).is_err());
        // A CA directory without the CA.
        let empty = tempfile::tempdir().unwrap();
        let e = run(TlsCommand::Issue {
            node_id: 1,
            dns: vec![],
            ip: vec![],
            ca_dir: empty.path().into(),
            out: empty.path().into(),
            days: 30,
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("ca.pem"), "{e:#}");
    }
}
