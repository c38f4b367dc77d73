//! The service definitions in `deploy/`, checked as the tools that run them
//! would: the systemd units (a voter's, a front's) pass `systemd-analyze
//! verify` and keep their `systemd-analyze security` exposure at most 2.0;
//! the Kubernetes manifests render with kustomize, validate against the API
//! schemas, keep the properties docs/operations.md promises
//! (`scripts/check_k8s.py`), and every voter's and front's configuration,
//! as its pod's start command makes it, is one Gatehouse accepts. (`scripts/deps.sh test` installs systemd-analyze,
//! kubectl and kubernetes-validate.)

use std::path::{Path, PathBuf};
use std::process::Command;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use gatehouse::Config;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn the_systemd_units_verify_and_their_exposure_is_at_most_two() {
    for (unit, runs) in [
        ("gatehouse.service", "serve --config /etc/gatehouse/node.toml"),
        ("gatehouse-front.service", "front --config /etc/gatehouse/front.toml"),
    ] {
        check_unit(unit, runs);
    }
}

fn check_unit(name: &str, runs: &str) {
    // The unit names the installed binary: the built one stands in for it.
    let unit = std::fs::read_to_string(root().join("deploy/systemd").join(name)).unwrap();
    assert!(unit.contains(&format!("ExecStart=/usr/local/bin/gatehouse {runs}")), "{name}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, unit.replace("/usr/local/bin/gatehouse", env!("CARGO_BIN_EXE_gatehouse"))).unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify {name}: {said}");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split_once(&format!("Overall exposure level for {name}: "))?.1.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no exposure in\n{report}"));
    assert!(exposure <= 2.0, "{name}: exposure {exposure}:\n{report}");
    // The documented figure is the measured one.
    let docs = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let said = format!("`{name}`: exposure {exposure:.1}");
    assert!(docs.contains(&said), "docs/operations.md should say {said}");
}

#[test]
fn the_kubernetes_manifests_validate_and_configure_every_voter() {
    let venv = std::env::var("GATEHOUSE_PYENV")
        .unwrap_or_else(|_| format!("{}/.cache/gatehouse/pyenv", std::env::var("HOME").expect("HOME")));
    let out = Command::new(format!("{venv}/bin/python"))
        .arg(root().join("scripts/check_k8s.py"))
        .arg(root().join("deploy/k8s"))
        .output()
        .expect("the Python environment of scripts/deps.sh test");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let renderings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(renderings["base"]["replicas"] == 3 && renderings["five"]["replicas"] == 5, "{renderings}");
    for (name, r) in renderings.as_object().unwrap() {
        let replicas = r["replicas"].as_u64().unwrap();
        let ns = r["namespace"].as_str().unwrap();
        let toml = r["node_toml"].as_str().unwrap();
        for ordinal in 0..replicas {
            // What the StatefulSet's start command sets for this pod.
            let id = ordinal + 1;
            let here = format!("gatehouse-{ordinal}.gatehouse-peers.{ns}.svc.cluster.local");
            let fig = Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string(toml))
                .merge(Serialized::default("node_id", id))
                .merge(Serialized::default("advertise_addr", format!("{here}:7000")))
                .merge(Serialized::default("advertise_client_addr", format!("{here}:9090")))
                .merge(Serialized::default("cluster_tls.cert_file", format!("/etc/gatehouse/tls/node-{id}.pem")))
                .merge(Serialized::default("cluster_tls.key_file", format!("/etc/gatehouse/tls/node-{id}.key")))
                .merge(Serialized::default("initialize", ordinal == 0));
            let config: Config = fig.extract().unwrap_or_else(|e| panic!("{name}, pod {ordinal}: {e}"));
            config.validate().unwrap_or_else(|e| panic!("{name}, pod {ordinal}: {e}"));
            assert_eq!(config.initial_members.len() as u64, replicas, "{name}: every voter is an initial member");
            let me = config.initial_members.iter().find(|m| m.id == id).expect("listed");
            assert_eq!(me.addr, format!("{here}:7000"), "{name}: pod {ordinal} is listed where it advertises");
            assert!(config.fronts_file.is_some(), "{name}: voters serve the fronts");
        }
        // Each front, as its pod's start command makes its configuration.
        let toml = r["front_toml"].as_str().unwrap();
        for ordinal in 0..r["fronts"].as_u64().unwrap() {
            let id = 101 + ordinal;
            let fig = Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string(toml))
                .merge(Serialized::default("node_id", id))
                .merge(Serialized::default(
                    "front.secret_file",
                    format!("/etc/gatehouse/front-secrets/front-{id}.secret"),
                ))
                .merge(Serialized::default("front.cert_file", format!("/etc/gatehouse/tls/front-{id}.pem")))
                .merge(Serialized::default("front.key_file", format!("/etc/gatehouse/tls/front-{id}.key")));
            let config: Config = fig.extract().unwrap_or_else(|e| panic!("{name}, front {ordinal}: {e}"));
            config.validate().unwrap_or_else(|e| panic!("{name}, front {ordinal}: {e}"));
            let voters = config.front.as_ref().unwrap().voter_list().unwrap();
            assert_eq!(voters.len() as u64, replicas, "{name}: a front knows every voter");
            for (k, (voter, addr)) in voters.iter().enumerate() {
                assert_eq!(*voter, Some(k as u64 + 1), "{name}");
                assert_eq!(addr, &format!("gatehouse-{k}.gatehouse-peers.{ns}.svc.cluster.local:7000"), "{name}");
            }
        }
    }
}
