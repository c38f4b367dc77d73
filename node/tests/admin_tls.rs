//! The admin API over TLS, driven by the real CLI: the server verified
//! against `--ca-file`, client certificates when the node asks for them,
//! and no API key in plaintext off loopback.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{admin_cli, wait_until, TestCluster};
use gatehouse::config::AdminTlsConfig;
use gatehouse_api::metrics::ReloadLabels;
use gatehouse_tls::issue::{new_ca, node_certificate, Issued};

fn write(dir: &Path, name: &str, issued: &Issued) {
    std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), issued.key_pem.expose()).unwrap();
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

async fn status(endpoint: &str, token: &str, extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["cluster", "status"]);
    admin_cli(endpoint, token, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_verifies_the_node_and_never_sends_a_key_in_plaintext_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = new_ca("cluster CA", 30).unwrap();
    std::fs::write(d.join("ca.pem"), &ca.cert_pem).unwrap();
    write(d, "node-1", &node_certificate(&ca, 1, &["localhost".into()], &["127.0.0.1".parse().unwrap()], 30).unwrap());
    let other = new_ca("another CA", 30).unwrap();
    std::fs::write(d.join("other.pem"), &other.cert_pem).unwrap();
    let c = TestCluster::start_with(1, |cfg| {
        cfg.peer_addr = Some("127.0.0.1:0".parse().unwrap());
        cfg.admin_tls = Some(AdminTlsConfig {
            cert_file: d.join("node-1.pem"),
            key_file: d.join("node-1.key"),
            client_ca_file: None,
            require_client_cert: false,
        });
    })
    .await;
    let port = c.node(1).grpc_addr().port();
    let key = &c.admin_key;
    let ca_file = path(d, "ca.pem");

    // Verified against the CA: https:// or implied by --ca-file, by name or address.
    for endpoint in
        [format!("https://localhost:{port}"), format!("localhost:{port}"), format!("https://127.0.0.1:{port}")]
    {
        let s = status(&endpoint, key, &["--ca-file", &ca_file]).await.unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        assert!(s.contains("\"leader\":1"), "{s}");
    }
    // A CA that did not sign the node's certificate: refused.
    let e = status(&format!("https://localhost:{port}"), key, &["--ca-file", &path(d, "other.pem")]).await.unwrap_err();
    assert!(e.contains("cannot reach") && e.to_lowercase().contains("certificate"), "{e}");
    // https:// without a CA to verify with: refused before dialling.
    let e = status(&format!("https://localhost:{port}"), key, &[]).await.unwrap_err();
    assert!(e.contains("--ca-file"), "{e}");
    // Plaintext to the TLS port: no answer.
    assert!(status(&format!("http://127.0.0.1:{port}"), key, &[]).await.is_err());
    // Plaintext off loopback: refused before anything is sent, unless told.
    let e = status("http://10.255.255.1:9090", key, &[]).await.unwrap_err();
    assert!(e.contains("refusing to send the API key in plaintext"), "{e}");
    let e = status("node-9.example:9090", key, &[]).await.unwrap_err();
    assert!(e.contains("refusing to send the API key in plaintext"), "{e}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_requires_client_certificates_takes_only_its_cas() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = new_ca("cluster CA", 30).unwrap();
    std::fs::write(d.join("ca.pem"), &ca.cert_pem).unwrap();
    write(d, "node-1", &node_certificate(&ca, 1, &["localhost".into()], &[], 30).unwrap());
    let operators = new_ca("operators CA", 30).unwrap();
    std::fs::write(d.join("operators.pem"), &operators.cert_pem).unwrap();
    write(d, "alice", &node_certificate(&operators, 100, &["alice.example".into()], &[], 30).unwrap());
    write(d, "mallory", &node_certificate(&ca, 101, &["mallory.example".into()], &[], 30).unwrap());
    let c = TestCluster::start_with(1, |cfg| {
        cfg.peer_addr = Some("127.0.0.1:0".parse().unwrap());
        cfg.admin_tls = Some(AdminTlsConfig {
            cert_file: d.join("node-1.pem"),
            key_file: d.join("node-1.key"),
            client_ca_file: Some(d.join("operators.pem")),
            require_client_cert: true,
        });
    })
    .await;
    let endpoint = format!("https://localhost:{}", c.node(1).grpc_addr().port());
    let key = &c.admin_key;
    let ca_file = path(d, "ca.pem");
    let with = |who: &str| {
        [
            "--ca-file".to_string(),
            ca_file.clone(),
            "--cert-file".into(),
            path(d, &format!("{who}.pem")),
            "--key-file".into(),
            path(d, &format!("{who}.key")),
        ]
    };

    let alice = with("alice");
    let alice: Vec<&str> = alice.iter().map(String::as_str).collect();
    assert!(status(&endpoint, key, &alice).await.unwrap().contains("\"leader\":1"));
    // No certificate, or one from another CA: refused in the handshake.
    assert!(status(&endpoint, key, &["--ca-file", &ca_file]).await.is_err());
    let mallory = with("mallory");
    let mallory: Vec<&str> = mallory.iter().map(String::as_str).collect();
    assert!(status(&endpoint, key, &mallory).await.is_err());
    // A certificate is a second factor: the key is still required.
    let e = status(&endpoint, "gk_not-a-key", &alice).await.unwrap_err();
    assert!(e.starts_with("unauthenticated"), "{e}");

    // The operators' CA is replaced without a restart: the new one's
    // certificates are taken, the old one's refused.
    let next = new_ca("operators CA, next", 30).unwrap();
    write(d, "bob", &node_certificate(&next, 102, &["bob.example".into()], &[], 30).unwrap());
    std::fs::write(d.join("operators.new"), &next.cert_pem).unwrap();
    std::fs::rename(d.join("operators.new"), d.join("operators.pem")).unwrap();
    let reloaded = ReloadLabels { listener: "admin-ca", outcome: "reloaded" };
    wait_until("the node reads the new operators' CA", Duration::from_secs(20), || {
        // SAFETY: kill(2) on our own pid with a signal the node handles.
        unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        let n = c.node(1).api().metrics().tls_reloads.get_or_create(&reloaded).get();
        async move { n >= 1 }
    })
    .await;
    let bob = with("bob");
    let bob: Vec<&str> = bob.iter().map(String::as_str).collect();
    assert!(status(&endpoint, key, &bob).await.unwrap().contains("\"leader\":1"));
    assert!(status(&endpoint, key, &alice).await.is_err(), "the old operators' CA is still taken");
    c.shutdown().await;
}
