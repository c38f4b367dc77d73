//! Arguments more than one admin command takes: paging, waiting, where a password comes from.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Which page of a list to fetch.
#[derive(Debug, Clone, Args)]
pub struct Paging {
    /// Items per page (default 100, at most 1000).
    #[arg(long, default_value_t = 0)]
    pub page_size: u32,
    /// Continue from a previous page's token.
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Fetch every page.
    #[arg(long, conflicts_with = "page_token")]
    pub all: bool,
}

/// `--wait all`: return only once every reachable voter applied the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    All,
}

/// Where a password comes from: never the command line.
#[derive(Debug, Clone, Args)]
pub struct PasswordSource {
    /// Read the password (at least 12 characters) from the first line of stdin.
    #[arg(long, conflicts_with = "password_file")]
    pub password_stdin: bool,
    /// Read the password from the first line of a file.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl PasswordSource {
    /// The password from stdin or the file; `None` if neither was asked for.
    pub(super) fn read(&self) -> anyhow::Result<Option<String>> {
        let line = if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            text.lines().next().unwrap_or_default().to_string()
        } else if self.password_stdin {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        } else {
            return Ok(None);
        };
        anyhow::ensure!(!line.is_empty(), "the password is empty");
        Ok(Some(line))
    }
}
