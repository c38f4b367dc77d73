//! A real SMTP server for tests: Python's aiosmtpd (Debian's
//! `python3-aiosmtpd`, which `scripts/deps.sh test` installs), started on
//! port 0 with STARTTLS required, storing each mail it receives.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

pub struct Smtp {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
    pub port: u16,
    /// The CA that issued the server's certificate (PEM), for `mail.ca_file`.
    pub ca_file: std::path::PathBuf,
}

impl Smtp {
    /// Starts the server with a certificate for 127.0.0.1 from a new CA.
    pub async fn start() -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        let ca = gatehouse_tls::issue::new_ca("smtp test CA", 2).unwrap();
        let cert = gatehouse_tls::issue::node_certificate(&ca, 1, &[], &["127.0.0.1".parse().unwrap()], 2).unwrap();
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).unwrap();
        std::fs::write(tls.join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(tls.join("cert.pem"), &cert.cert_pem).unwrap();
        std::fs::write(tls.join("key.pem"), cert.key_pem.expose()).unwrap();
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/smtp_server.py");
        let mut child = tokio::process::Command::new("/usr/bin/python3")
            .arg(script)
            .arg(&mail)
            .arg(tls.join("cert.pem"))
            .arg(tls.join("key.pem"))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with aiosmtpd (scripts/deps.sh test installs it)");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), tokio::io::BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("the SMTP server starts")
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the SMTP server printed {line:?}"));
        Smtp { _child: child, dir, port, ca_file: tls.join("ca.pem") }
    }

    /// `[mail]` for this server: STARTTLS against its CA.
    pub fn settings(&self) -> gatehouse::config::MailSettings {
        gatehouse::config::MailSettings {
            host: "127.0.0.1".into(),
            port: Some(self.port),
            tls: gatehouse::config::MailTlsSetting::Starttls,
            ca_file: Some(self.ca_file.clone()),
            username: None,
            password_file: None,
            from: "Example SSO <no-reply@example.com>".into(),
            timeout_secs: 10,
        }
    }

    /// Every mail received so far, oldest first.
    pub fn mails(&self) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path().join("mail"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
    }

    /// Waits for the `n`th mail and returns it.
    pub async fn wait_mail(&self, n: usize) -> String {
        let what = format!("mail number {n}");
        super::wait_until(&what, Duration::from_secs(30), || async { self.mails().len() >= n }).await;
        self.mails().swap_remove(n - 1)
    }
}

/// The sign-in link a mail carries.
pub fn link_in(mail: &str) -> String {
    mail.lines()
        .map(str::trim)
        .find(|l| l.contains("/login/link?token="))
        .unwrap_or_else(|| panic!("no link in {mail}"))
        .to_string()
}
