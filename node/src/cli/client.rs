//! The connection to a node's admin API: the endpoint, the API key sent on every call, and how a refused call reads.

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
#[derive(Debug, Args)]
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
    let endpoint =
        if args.endpoint.contains("://") { args.endpoint.clone() } else { format!("http://{}", args.endpoint) };
    let channel = Channel::from_shared(endpoint.clone())
        .context("invalid endpoint")?
        .connect()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let value: MetadataValue<Ascii> =
        format!("Bearer {}", token(args)?).parse().context("the API key has invalid characters")?;
    Ok(InterceptedService::new(channel, Bearer(value)))
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
