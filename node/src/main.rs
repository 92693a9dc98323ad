//! `nexus`: the Nexus Cloud node and its command line.
//!
//! Parts: [`cli`] (commands and flags), [`config`] (one config tree: file, env, flags),
//! [`store`] (the node's SQLite file), [`datadir`] (files on disk), [`enroll`] (fleet creation
//! and the join protocol), [`cakeys`] (where an anchor's CA keys live), [`agent`] (the running node: gossip, API, QUIC), [`backend`] (what
//! the API serves), [`client`] (CLI commands against a node's API, with [`client_config`],
//! [`client_admin`] and [`client_watch`]), [`profile`] (the CLI's profile file), [`dev`] (a local fleet),
//! [`transparency`] (an anchor's certificate transparency log).

mod access;
mod agent;
mod audit;
mod backend;
mod cakeys;
mod cli;
mod client;
mod client_admin;
mod client_config;
mod client_usage;
mod client_watch;
mod config;
mod config_view;
mod datadir;
mod dataplane;
mod dev;
mod duties;
mod enroll;
mod events;
mod mirror;
mod peer;
mod profile;
mod replication;
mod store;
mod tenant_ca;
mod transparency;
mod usage;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

/// Site of nodes that name none.
pub const DEFAULT_SITE: &str = "default";
/// Tenant of nodes whose token names none.
pub const DEFAULT_TENANT: &str = nexus_ca::DEFAULT_TENANT;

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 for unix milliseconds, UTC, always with three fractional digits, so the strings
/// sort as the times do.
pub fn rfc3339_ms(ms: u64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Checks a site, tenant or label-ish name (the alphabet that fits in certificate URIs).
pub fn check_name(what: &'static str, value: &str) -> anyhow::Result<()> {
    nexus_ca::validate_name(what, value, false).map_err(anyhow::Error::from)
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
