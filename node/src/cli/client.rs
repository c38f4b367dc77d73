//! The connection to a node's admin API: the endpoint (TLS verified against
//! `--ca-file`, an optional client certificate), the API key sent on every
//! call, and how a refused call reads. The key is never sent in plaintext
//! off loopback unless the operator says `--insecure`.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// Where the admin API is, and the key to call it with.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Admin API endpoint (any node).
    #[arg(long, global = true, env = "GATEHOUSE_ENDPOINT", default_value = "http://127.0.0.1:9090")]
    pub endpoint: String,
    /// Admin API key. Use GATEHOUSE_TOKEN or --token-file instead: arguments are
    /// visible to every user of the machine (a warning says so).
    #[arg(long, global = true, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin API key on its first line ("-": the first line of
    /// standard input; --password-stdin then reads the second).
    #[arg(long, global = true, env = "GATEHOUSE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) the node's certificate must chain to; the endpoint
    /// is then dialled over TLS (https:// is implied).
    #[arg(long, global = true, env = "GATEHOUSE_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a node that asks for one ([admin_tls] client_ca_file).
    #[arg(long, global = true, env = "GATEHOUSE_CERT_FILE", value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, global = true, env = "GATEHOUSE_KEY_FILE", value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Send the API key in plaintext to an endpoint off loopback.
    #[arg(long, global = true)]
    pub insecure: bool,
}

pub(super) fn token(args: &Connection) -> anyhow::Result<String> {
    if let Some(path) = &args.token_file {
        // One line only from stdin: a password for --password-stdin may follow.
        let text = if path.as_os_str() == "-" {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the key from stdin")?;
            line
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        };
        let first = text.lines().next().unwrap_or_default().trim();
        anyhow::ensure!(!first.is_empty(), "no API key on the first line of {}", path.display());
        return Ok(first.to_string());
    }
    args.token
        .clone()
        .filter(|t| !t.is_empty())
        .context("an admin API key is required: set GATEHOUSE_TOKEN or --token-file")
}

pub(super) async fn connect(args: &Connection) -> anyhow::Result<InterceptedService<Channel, Bearer>> {
    let tls = args.ca_file.is_some() || args.endpoint.starts_with("https://");
    let endpoint = match args.endpoint.split_once("://") {
        Some(_) => args.endpoint.clone(),
        None if tls => format!("https://{}", args.endpoint),
        None => format!("http://{}", args.endpoint),
    };
    let uri: http::Uri = endpoint.parse().context("invalid endpoint")?;
    let host = uri.host().context("the endpoint names no host")?.to_string();
    let channel = if tls {
        anyhow::ensure!(uri.scheme_str() == Some("https"), "--ca-file needs an https:// endpoint, got {endpoint}");
        let ca = args.ca_file.as_ref().context("an https:// endpoint needs --ca-file (or GATEHOUSE_CA_FILE)")?;
        let config = tls_config(ca, args.cert_file.as_deref().zip(args.key_file.as_deref()))?;
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
                .context("the endpoint's host is not a name a certificate can carry")?;
        let port = uri.port_u16().unwrap_or(443);
        let dial = format!("{}:{port}", uri.host().unwrap_or_default());
        let connector = tower::service_fn(move |_: http::Uri| {
            let (config, name, dial) = (config.clone(), name.clone(), dial.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&dial).await?;
                let _ = tcp.set_nodelay(true);
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        // The connector speaks TLS itself: tonic sees a plain http:// channel.
        let authority = uri.authority().map(|a| a.as_str().to_string()).context("the endpoint names no host")?;
        Channel::from_shared(format!("http://{authority}"))
            .context("invalid endpoint")?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect_with_connector(connector)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {endpoint} over TLS: {}", describe(&e)))?
    } else {
        // The API key goes in every call's metadata: plaintext stays on this machine.
        if !gatehouse_cluster::peers::is_loopback_addr(&host) && !args.insecure {
            anyhow::bail!(
                "refusing to send the API key in plaintext to {host}: use an https:// endpoint with --ca-file, \
                 or --insecure"
            );
        }
        Channel::from_shared(endpoint.clone())
            .context("invalid endpoint")?
            .connect()
            .await
            .with_context(|| format!("cannot reach {endpoint}"))?
    };
    let value: MetadataValue<Ascii> =
        format!("Bearer {}", token(args)?).parse().context("the API key has invalid characters")?;
    Ok(InterceptedService::new(channel, Bearer(value)))
}

/// The TLS client configuration: the CA bundle to verify the node with, and
/// the client certificate to present, if any.
fn tls_config(
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let roots = gatehouse_tls::pem::roots(ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(gatehouse_tls::provider())
        .with_protocol_versions(gatehouse_tls::VERSIONS)?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let material = gatehouse_tls::Material::load(cert, key)?;
            builder.with_client_cert_resolver(std::sync::Arc::new(material))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// A connection error with its causes (the TLS refusal is in a source).
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// A failed RPC, as the operator should read it.
pub fn rpc_error(status: tonic::Status) -> anyhow::Error {
    let mut msg = format!("{}: {}", code_name(status.code()), status.message());
    if let Some(leader) = status.metadata().get(gatehouse_cluster::error::LEADER_METADATA).and_then(|v| v.to_str().ok())
    {
        msg.push_str(&format!(" (leader: {leader})"));
    }
    anyhow::anyhow!(msg)
}

pub(super) fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "timed out",
        _ => "error",
    }
}
