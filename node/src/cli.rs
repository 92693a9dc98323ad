//! Commands and flags. Every flag that configures the daemon can also come from a `NEXUS_*`
//! environment variable or the config file; precedence is flag > env > file > default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::AddrFlags;

/// Nexus Cloud: a fleet control plane for edge networks, without a central store.
#[derive(Debug, Parser)]
#[command(name = "nexus", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new fleet with this machine as its first anchor.
    Init(InitArgs),
    /// Run the node stored in a data directory.
    Run(RunArgs),
    /// Enroll this machine into a fleet with a join token, then run it.
    Join(JoinArgs),
    /// Manage join tokens (against an anchor's API).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Query and manage nodes (against any node's API).
    Nodes(NodesArgs),
    /// Anchors: list them, or promote a node (against the first anchor's API).
    Anchor(AnchorArgs),
    /// Machine identity certificates: list, revoke, and the revocation list (against an anchor).
    Mics(MicsArgs),
    /// Start a local fleet on loopback: one anchor and three nodes.
    Dev(DevArgs),
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Directory for this node's keys, certificates, database and config.
    #[arg(long, env = "NEXUS_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// Site this anchor belongs to.
    #[arg(long, env = "NEXUS_SITE", default_value = crate::DEFAULT_SITE)]
    site: String,
    #[command(flatten)]
    addrs: AddrFlags,
    #[command(flatten)]
    keys: crate::cakeys::CaKeyFlags,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Directory holding an enrolled node.
    #[arg(long, env = "NEXUS_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    addrs: AddrFlags,
    /// Extra gossip seed (a node's gossip IP:PORT); repeatable.
    #[arg(long = "seed", value_name = "ADDR")]
    seeds: Vec<String>,
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// The join token printed by `nexus token create`.
    #[arg(env = "NEXUS_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Directory for this node's keys, certificates, database and config (must not hold a node).
    #[arg(long, env = "NEXUS_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// Site to join (must match the token's site when the token names one).
    #[arg(long, env = "NEXUS_SITE")]
    site: Option<String>,
    /// Label for this node, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Anchor QUIC address to dial instead of those in the token; repeatable.
    #[arg(long = "anchor", value_name = "ADDR")]
    anchors: Vec<SocketAddr>,
    /// Stop after enrolling instead of running the node.
    #[arg(long)]
    no_run: bool,
    #[command(flatten)]
    addrs: AddrFlags,
}

/// How to reach a node's API.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Node API URL.
    #[arg(
        long = "api",
        env = "NEXUS_API_URL",
        default_value = "https://127.0.0.1:7600",
        global = true
    )]
    pub api_url: String,
    /// Fleet root certificate to verify the node's HTTPS certificate with
    /// (<data-dir>/trust/root.pem of any node).
    #[arg(long, env = "NEXUS_CA_FILE", value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Authenticate with this certificate (a MIC, e.g. <data-dir>/node.pem) instead of an API key.
    #[arg(
        long,
        env = "NEXUS_CLIENT_CERT",
        value_name = "FILE",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Key of --client-cert (e.g. <data-dir>/node.key).
    #[arg(
        long,
        env = "NEXUS_CLIENT_KEY",
        value_name = "FILE",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// API key.
    #[arg(long, env = "NEXUS_API_KEY", hide_env_values = true, global = true)]
    pub key: Option<String>,
    /// File holding the API key (for example <data-dir>/admin.key).
    #[arg(long, value_name = "FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

/// Output format of client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a join token and print it.
    Create {
        /// Lifetime: 30m, 1h, 7d …
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Tenant of joining nodes.
        #[arg(long)]
        tenant: Option<String>,
        /// Site of joining nodes.
        #[arg(long)]
        site: Option<String>,
        /// Label for joining nodes, KEY=VALUE; repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List join tokens.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a join token.
    Revoke {
        /// Token id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
struct NodesArgs {
    #[command(subcommand)]
    command: Option<NodesCommand>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct AnchorArgs {
    #[command(subcommand)]
    command: Option<AnchorCommand>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct MicsArgs {
    #[command(subcommand)]
    command: Option<MicsCommand>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum MicsCommand {
    /// Certificates the anchor issued (default), optionally of one node.
    List {
        /// Only this node's certificates.
        #[arg(long, value_name = "NODE_ID")]
        node: Option<String>,
    },
    /// Revoke a certificate (on the anchor that issued it); enforced fleet-wide within a second.
    Revoke {
        /// Serial, hex (as `openssl x509 -serial` prints it).
        serial: String,
        /// unspecified, key_compromise, superseded or cessation_of_operation.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Print the certificate revocation lists the node enforces (PEM).
    Crl,
}

#[derive(Debug, Subcommand)]
enum AnchorCommand {
    /// List anchors and pending promotions (default).
    List,
    /// Make a node an anchor: it gets its own intermediate CA and admits joining nodes. Send it
    /// to the anchor holding the fleet root key (the fleet's first anchor).
    Promote {
        /// Node id (32 hex characters).
        node: String,
    },
}

#[derive(Debug, Subcommand)]
enum NodesCommand {
    /// List every node the answering node knows (default).
    List,
    /// Show one node.
    Get {
        /// Node id (32 hex characters).
        id: String,
    },
    /// Mark a node draining.
    Drain {
        /// Node id.
        id: String,
    },
    /// Remove a node from the fleet.
    Decommission {
        /// Node id.
        id: String,
    },
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Where the local fleet keeps its data.
    #[arg(long, env = "NEXUS_DATA_DIR", default_value = "nexus-dev")]
    data_dir: PathBuf,
    /// Number of non-anchor nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=64))]
    nodes: u16,
    /// First port: node i uses base+10i (API), +1 (gossip), +2 (QUIC); 0 = any free ports.
    #[arg(long, default_value_t = 7600)]
    base_port: u16,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("label {text:?} must be KEY=VALUE"))?;
    crate::client::check_label(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

/// Token lifetimes are whole seconds, at least one.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = nexus_mesh::parse_duration(text)?;
    if ttl.subsec_millis() != 0 || ttl.is_zero() {
        return Err(format!(
            "token lifetime {text:?} must be a whole number of seconds, at least 1s"
        ));
    }
    Ok(ttl)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a command.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init(args) => {
            crate::agent::init_logging("warn");
            let dir = crate::datadir::DataDir::new(&args.data_dir);
            let done = crate::enroll::init(&dir, &args.site, &args.addrs, &args.keys)?;
            println!(
                "Created fleet {} with anchor {}.",
                done.fleet_id, done.node_id
            );
            println!("Data directory: {}", args.data_dir.display());
            println!("CA keys: {}", done.ca_keys);
            println!();
            println!(
                "Fleet admin API key (shown once; also in {}):",
                dir.admin_key().display()
            );
            println!("  {}", done.admin_key);
            println!();
            println!(
                "Start the anchor:  nexus run --data-dir {}",
                args.data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let dir = crate::datadir::DataDir::new(&args.data_dir);
            dir.require_enrolled()?;
            let config = crate::config::NodeConfig::load(dir.root(), &args.addrs, &args.seeds)?;
            crate::agent::init_logging(&config.log);
            let exit = runtime()?.block_on(async {
                let sockets = crate::agent::Sockets::bind(&config)?;
                crate::agent::run(dir, config, sockets).await
            })?;
            restart_if_asked(exit, &args.data_dir, args.addrs.config.as_deref())
        }
        Command::Join(args) => {
            let dir = crate::datadir::DataDir::new(&args.data_dir);
            let token = nexus_ca::JoinToken::decode(&args.token)?;
            if let Some(site) = &args.site {
                crate::check_name("site", site)?;
            }
            let config = crate::config::NodeConfig::resolve(
                &crate::config::read_file(&args.data_dir, args.addrs.config.as_deref())?,
                &args.addrs,
                &[],
            )?;
            crate::agent::init_logging(&config.log);
            dir.create_fresh()?;
            let exit = runtime()?.block_on(async {
                // Bind first: an occupied port must fail before the token is spent.
                let sockets = crate::agent::Sockets::bind(&config)?;
                let key = nexus_ca::NodeKey::generate();
                let admission = crate::enroll::request_admission(
                    &token,
                    &args.anchors,
                    &key,
                    args.site.clone(),
                    args.labels.into_iter().collect(),
                )
                .await?;
                crate::enroll::persist_admission(&dir, &key, &admission, &args.addrs)?;
                let anchors: Vec<String> = if args.anchors.is_empty() {
                    token.anchors.iter().map(ToString::to_string).collect()
                } else {
                    args.anchors.iter().map(ToString::to_string).collect()
                };
                crate::store::Store::open(&dir.db())?.save_anchor_addrs(&anchors, false)?;
                println!(
                    "Joined fleet {} as node {} (site {}, tenant {}).",
                    admission.fleet_id, admission.node_id, admission.site, admission.tenant
                );
                if args.no_run {
                    println!(
                        "Start it with: nexus run --data-dir {}",
                        args.data_dir.display()
                    );
                    return Ok(crate::agent::Exit::Stopped);
                }
                crate::agent::run(dir, config, sockets).await
            })?;
            restart_if_asked(exit, &args.data_dir, args.addrs.config.as_deref())
        }
        Command::Token { command } => runtime()?.block_on(async {
            match command {
                TokenCommand::Create {
                    ttl,
                    uses,
                    tenant,
                    site,
                    labels,
                    client,
                } => crate::client::token_create(&client, ttl, uses, tenant, site, labels).await,
                TokenCommand::List { client } => crate::client::token_list(&client).await,
                TokenCommand::Revoke { id, client } => {
                    crate::client::token_revoke(&client, &id).await
                }
            }
        }),
        Command::Nodes(args) => runtime()?.block_on(async {
            let client = &args.client;
            match args.command.unwrap_or(NodesCommand::List) {
                NodesCommand::List => crate::client::nodes_list(client).await,
                NodesCommand::Get { id } => crate::client::nodes_get(client, &id).await,
                NodesCommand::Drain { id } => {
                    crate::client::nodes_action(client, &id, "drain").await
                }
                NodesCommand::Decommission { id } => {
                    crate::client::nodes_action(client, &id, "decommission").await
                }
            }
        }),
        Command::Mics(args) => runtime()?.block_on(async {
            let client = &args.client;
            match args.command.unwrap_or(MicsCommand::List { node: None }) {
                MicsCommand::List { node } => crate::client::mics_list(client, node).await,
                MicsCommand::Revoke { serial, reason } => {
                    crate::client::mics_revoke(client, &serial, &reason).await
                }
                MicsCommand::Crl => crate::client::crl(client).await,
            }
        }),
        Command::Anchor(args) => runtime()?.block_on(async {
            let client = &args.client;
            match args.command.unwrap_or(AnchorCommand::List) {
                AnchorCommand::List => crate::client::anchors_list(client).await,
                AnchorCommand::Promote { node } => {
                    crate::client::anchor_promote(client, &node).await
                }
            }
        }),
        Command::Dev(args) => {
            crate::agent::init_logging("warn");
            runtime()?.block_on(crate::dev::run(args.data_dir, args.nodes, args.base_port))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// After the node stopped: if it must restart (it became an anchor), replaces this process with
/// `nexus run` on the same data directory and the addresses it had bound, so peers, clients and
/// supervisors see the same process and ports. Returns only when no restart was asked for.
fn restart_if_asked(
    exit: crate::agent::Exit,
    data_dir: &std::path::Path,
    config: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let crate::agent::Exit::Restart { api, gossip, quic } = exit else {
        return Ok(ExitCode::SUCCESS);
    };
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the nexus executable to restart")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("run")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--api", &api.to_string()])
        .args(["--gossip", &gossip.to_string()])
        .args(["--quic", &quic.to_string()]);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    // `exec` returns only if it failed.
    let err = command.exec();
    Err(anyhow::anyhow!(
        "cannot restart as an anchor ({err}): start the node again with `nexus run --data-dir {}`",
        data_dir.display()
    ))
}
