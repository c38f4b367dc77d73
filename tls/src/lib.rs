//! Gatehouse's TLS material, for every listener and every client that
//! speaks TLS: the HTTP front, the peer and client gRPC listeners, the
//! channels between nodes and the CLI.
//!
//! Everything here uses rustls with the ring provider ([`provider`]), TLS 1.2
//! and 1.3 only. Nothing reads a process-wide default.
//!
//! # Layout
//! - [`pem`]: certificates, keys and CA bundles from PEM files, with errors
//!   that name the file and what is wrong, never the key's bytes.
//! - [`material`]: a certificate and key that a node serves, reloaded from
//!   their files without a restart (new connections get the new pair; a bad
//!   new pair is refused and the old one kept).
//! - [`identity`]: what a certificate says: the node id bound to it
//!   (`gatehouse-node-<id>`), its serial number and its expiry.
//! - [`server`]: the rustls server configurations (HTTPS with ALPN).
//! - [`peer`]: mutual TLS between nodes: the cluster's CA bundle and
//!   deny-list ([`peer::Trust`]), and the checks each side makes of the other.
//! - [`issue`]: a first cluster's CA and node certificates
//!   (`gatehouse tls init-ca`, `gatehouse tls issue`).

pub mod identity;
pub mod issue;
pub mod material;
pub mod peer;
pub mod pem;
pub mod server;

use std::sync::Arc;

pub use material::Material;

/// The one crypto provider of every TLS configuration here: ring.
///
/// rustls 0.23.48 deprecates it for lacking post-quantum key exchange
/// (X25519MLKEM768), which only the aws-lc-rs provider has; that provider
/// is one more C and CMake build on every fresh machine. Classical X25519
/// and P-256 ECDHE are what this build offers; moving to aws-lc-rs is the
/// change that adds the hybrid exchange.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions Gatehouse speaks: TLS 1.3 and 1.2, nothing older.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// What loading or using TLS material can fail with. Messages name files
/// and causes, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{0}")]
    Invalid(String),
}

impl TlsError {
    pub(crate) fn file(path: &std::path::Path, why: impl std::fmt::Display) -> TlsError {
        TlsError::File { path: path.display().to_string(), why: why.to_string() }
    }
}
