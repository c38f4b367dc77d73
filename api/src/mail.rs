//! Mail over SMTP (lettre, rustls): what sends sign-in links.
//!
//! A request never waits for mail: [`Mailer::send`] queues the message and
//! returns, and one task per node sends the queue in order, retrying a
//! failed delivery a few times. So an answer takes as long whether or not a
//! mail went out (whether the address has an account), and a slow or dead
//! SMTP server holds no request. A full queue drops the mail, counted and
//! logged: the person asks again.
//!
//! The server is reached with STARTTLS (required, not opportunistic) or
//! implicit TLS, against the system's roots and an optional extra CA;
//! plaintext only to a loopback server or in dev mode (checked by the
//! config). The password comes from a file and is never logged. Logs name
//! a mail's recipient by domain only, never the link.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;

use crate::metrics::OutcomeLabels;

type Counts = Family<OutcomeLabels, Counter>;

fn count(counts: &Counts, outcome: &'static str) {
    counts.get_or_create(&OutcomeLabels { outcome }).inc();
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailTls {
    /// Plain connection, then `STARTTLS`, which the server must offer (587).
    StartTls,
    /// TLS from the first byte (465).
    Implicit,
    /// No TLS: a loopback server or dev mode only.
    None,
}

/// `[mail]`, read and checked.
#[derive(Clone)]
pub struct MailConfig {
    pub host: String,
    pub port: u16,
    pub tls: MailTls,
    /// Extra trusted roots (PEM), beside the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// SMTP AUTH, when the server wants it: the user and the password
    /// (read from `password_file`).
    pub credentials: Option<(String, String)>,
    pub from: Mailbox,
    pub timeout: Duration,
}

impl std::fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

/// One mail to send: plain text, to one address.
pub struct Outgoing {
    pub to: String,
    pub subject: String,
    pub text: String,
}

impl std::fmt::Debug for Outgoing {
    // The text holds a link: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing").field("to", &domain_of(&self.to)).finish_non_exhaustive()
    }
}

/// How many mails may wait to be sent.
pub const QUEUE: usize = 256;
/// Attempts per mail, the first included.
const ATTEMPTS: u32 = 3;

/// The node's mail queue; cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    tx: mpsc::Sender<Outgoing>,
    config: Arc<MailConfig>,
    counts: Counts,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("config", &self.config).finish()
    }
}

/// Why a mail setting cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail.ca_file holds no PEM certificate")]
    Ca,
    #[error("mail TLS settings: {0}")]
    Tls(String),
}

impl Mailer {
    /// Starts the sending task (on the current runtime); it ends when the
    /// last `Mailer` is dropped, after the queue is sent.
    /// `counts`: the node's `mails` series.
    pub fn start(config: MailConfig, counts: Counts) -> Result<Mailer, MailError> {
        let transport = transport(&config)?;
        let config = Arc::new(config);
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_queue(transport, config.clone(), rx, counts.clone()));
        Ok(Mailer { tx, config, counts })
    }

    /// The configured sender and server, for `Debug` and the docs' checks.
    pub fn config(&self) -> &MailConfig {
        &self.config
    }

    /// Queues `mail`; false when the queue is full (the mail is dropped).
    pub fn send(&self, mail: Outgoing) -> bool {
        match self.tx.try_send(mail) {
            Ok(()) => true,
            Err(e) => {
                count(&self.counts, "dropped");
                let to = match &e {
                    mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => domain_of(&m.to),
                };
                tracing::warn!(to, "the mail queue is full: a mail was dropped");
                false
            }
        }
    }
}

fn transport(config: &MailConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.clone())
        .port(config.port)
        .timeout(Some(config.timeout));
    if config.tls != MailTls::None {
        let mut params = TlsParameters::builder(config.host.clone());
        if let Some(pem) = &config.ca_pem {
            params = params.add_root_certificate(Certificate::from_pem(pem).map_err(|_| MailError::Ca)?);
        }
        let params = params.build_rustls().map_err(|e| MailError::Tls(e.to_string()))?;
        b = b.tls(match config.tls {
            MailTls::StartTls => Tls::Required(params),
            _ => Tls::Wrapper(params),
        });
    }
    if let Some((user, password)) = &config.credentials {
        b = b.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(b.build())
}

async fn send_queue(
    transport: AsyncSmtpTransport<Tokio1Executor>,
    config: Arc<MailConfig>,
    mut rx: mpsc::Receiver<Outgoing>,
    counts: Counts,
) {
    while let Some(mail) = rx.recv().await {
        let to = domain_of(&mail.to).to_string();
        let message = match message(&config, &mail) {
            Ok(m) => m,
            Err(e) => {
                count(&counts, "failed");
                tracing::warn!(to, error = %e, "a mail could not be written");
                continue;
            }
        };
        for attempt in 1..=ATTEMPTS {
            match transport.send(message.clone()).await {
                Ok(_) => {
                    count(&counts, "sent");
                    tracing::info!(to, "mail sent");
                    break;
                }
                // A permanent refusal (a bad address) is not retried. Only
                // the reply's code is logged: its text often quotes the
                // recipient.
                Err(e) if attempt == ATTEMPTS || e.is_permanent() => {
                    count(&counts, "failed");
                    tracing::warn!(to, why = failure(&e), "a mail could not be sent");
                    break;
                }
                Err(e) => {
                    tracing::info!(to, attempt, why = failure(&e), "sending a mail failed; trying again");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        }
    }
}

/// What a log says of a failed delivery: the kind, and the server's reply
/// code, never its text.
fn failure(e: &lettre::transport::smtp::Error) -> String {
    let kind = if e.is_permanent() {
        "refused"
    } else if e.is_transient() {
        "deferred"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_tls() {
        "TLS failed"
    } else {
        "connection or protocol error"
    };
    match e.status() {
        Some(code) => format!("{kind} ({code})"),
        None => kind.to_string(),
    }
}

fn message(config: &MailConfig, mail: &Outgoing) -> Result<Message, String> {
    let to: Mailbox = mail.to.parse().map_err(|_| "the recipient is no mail address".to_string())?;
    Message::builder()
        .from(config.from.clone())
        .to(to)
        .subject(&mail.subject)
        .header(ContentType::TEXT_PLAIN)
        .body(mail.text.clone())
        .map_err(|e| e.to_string())
}

/// What logs say of an address: its domain.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("(none)", |(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_name_the_domain_only() {
        assert_eq!(domain_of("ann@example.com"), "example.com");
        assert_eq!(domain_of("nobody"), "(none)");
        let m = Outgoing { to: "ann@example.com".into(), subject: "s".into(), text: "gl_secret".into() };
        let shown = format!("{m:?}");
        assert!(!shown.contains("gl_secret") && !shown.contains("ann@"), "{shown}");
    }

    #[test]
    fn a_message_is_plain_text_from_the_configured_sender() {
        let config = MailConfig {
            host: "localhost".into(),
            port: 25,
            tls: MailTls::None,
            ca_pem: None,
            credentials: Some(("u".into(), "hunter2hunter2".into())),
            from: "Gatehouse <no-reply@example.com>".parse().unwrap(),
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        let mail = Outgoing { to: "ann@example.com".into(), subject: "Sign in".into(), text: "hello".into() };
        let m = String::from_utf8(message(&config, &mail).unwrap().formatted()).unwrap();
        assert!(m.contains("From: Gatehouse <no-reply@example.com>") && m.contains("To: ann@example.com"), "{m}");
        assert!(m.contains("Content-Type: text/plain"), "{m}");
        let bad = Outgoing { to: "not an address".into(), ..mail };
        assert!(message(&config, &bad).is_err());
    }
}
