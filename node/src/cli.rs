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
    /// Route policies of a tenant, or of one site with --site.
    Routes(RoutesArgs),
    /// Tenants and their quotas (written on anchors).
    Tenants(TenantsArgs),
    /// Firmware targets.
    Firmware(FirmwareArgs),
    /// Fleet-wide route policies and settings (written on anchors).
    Fleet(FleetArgs),
    /// API keys: create (the secret is shown once), list, revoke.
    Keys(KeysArgs),
    /// The audit log, newest first: who called what, and what came of it.
    Audit(AuditArgs),
    /// Print changes as they happen; resumes after a disconnect without missing one.
    Watch(WatchArgs),
    /// Replicated configuration: where each version runs, snapshots and rollback.
    Config(ConfigArgs),
    /// Who the API takes you for, and where the CLI's API URL and credential came from.
    Whoami(WhoamiArgs),
    /// CLI profiles: the API URL and credentials commands use by default.
    Profile(ProfileArgs),
    /// Print a shell completion script: `source <(nexus completions bash)`.
    Completions(CompletionsArgs),
    /// Run a fleet scenario in a network simulation (virtual time, one process): the real
    /// membership, failure detection, broadcast, anti-entropy and configuration code.
    Simulate(SimulateArgs),
}

/// Subcommands shared by collections of configuration objects.
#[derive(Debug, Subcommand)]
enum CollectionCommand {
    /// List them (default).
    List,
    /// Show one.
    Get {
        /// Its id.
        id: String,
    },
    /// Create from a YAML or JSON file (one object, a list, or YAML documents); an id that
    /// exists already is refused.
    Create {
        /// The file; - reads standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Create or replace, by id, from a YAML or JSON file.
    Apply {
        /// The file; - reads standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Delete one.
    Delete {
        /// Its id.
        id: String,
    },
}

#[derive(Debug, Args)]
struct RoutesArgs {
    #[command(subcommand)]
    command: Option<CollectionCommand>,
    /// Tenant whose route policies (fleet admins; default: the answering node's tenant).
    #[arg(long, global = true)]
    tenant: Option<String>,
    /// The route policies scoped to this site (/v1/sites/SITE/routes).
    #[arg(long, global = true)]
    site: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct FirmwareArgs {
    #[command(subcommand)]
    command: Option<CollectionCommand>,
    /// Tenant whose firmware targets (fleet admins; default: the answering node's tenant).
    #[arg(long, global = true)]
    tenant: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct TenantsArgs {
    #[command(subcommand)]
    command: Option<TenantsCommand>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// List tenants (default).
    List,
    /// Show one.
    Get {
        /// Tenant id.
        id: String,
    },
    /// Onboard a tenant: its record, its CA, a first admin API key (printed once, or written
    /// with --admin-key-out) and default policies; the file (YAML or JSON) may give its name,
    /// quotas and an `oidc` provider.
    Create {
        /// Tenant id; also its display name unless --name or the file gives one.
        #[arg(value_name = "ID")]
        id: String,
        /// YAML or JSON file with the tenant's fields; - reads standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Write the first admin API key's secret to this new file (owner-only) instead of
        /// printing it.
        #[arg(long, value_name = "FILE")]
        admin_key_out: Option<PathBuf>,
        /// Create no admin API key (e.g. when the tenant signs in with OIDC only).
        #[arg(long)]
        no_admin_key: bool,
        /// Lifetime of the admin key (`90d`); it never expires when absent.
        #[arg(long, value_name = "DURATION")]
        admin_key_ttl: Option<String>,
        /// Write no default policies (allow within the tenant, deny from other tenants).
        #[arg(long)]
        no_default_policies: bool,
    },
    /// Change a tenant: the file is a merge patch (the fields it names change, null removes one).
    Update {
        /// Tenant id.
        id: String,
        /// YAML or JSON file; - reads standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Delete a tenant.
    Delete {
        /// Tenant id.
        id: String,
    },
    /// A tenant's usage per hour or day: traffic, connections, API calls, node-hours (ask an
    /// anchor); `-o csv` prints the billing CSV.
    Usage {
        /// Tenant id.
        id: String,
        /// Start: RFC 3339 (2025-01-01T00:00:00Z) or Unix ms [default: 24 hours before --to]
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// End, exclusive: RFC 3339 or Unix ms [default: now]
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// Period length: hour (at most 31 days) or day (at most 366 days) [default: hour]
        #[arg(long, value_name = "hour|day")]
        granularity: Option<String>,
    },
}

#[derive(Debug, Args)]
struct FleetArgs {
    #[command(subcommand)]
    command: FleetCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Fleet-wide route policies (every tenant's nodes enforce them).
    Policies {
        #[command(subcommand)]
        command: Option<CollectionCommand>,
    },
    /// Fleet settings.
    Settings {
        #[command(subcommand)]
        command: Option<SettingsCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum SettingsCommand {
    /// Show the settings (default).
    Get,
    /// Replace the settings from a YAML or JSON file (fields left out: the default).
    Set {
        /// The file; - reads standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct KeysArgs {
    #[command(subcommand)]
    command: Option<KeysCommand>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create an API key and print its secret (shown only now).
    Create {
        /// What the key is for, e.g. ci.
        #[arg(long)]
        name: String,
        /// Its role.
        #[arg(long, value_parser = ["fleet-admin", "admin", "operator", "viewer"])]
        role: String,
        /// The tenant it is confined to (every role but fleet-admin has one).
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime: 12h, 30d … [default: no expiry]
        #[arg(long, value_parser = parse_key_ttl)]
        ttl: Option<String>,
    },
    /// List API keys (default).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one key.
    Get {
        /// Key id.
        id: String,
    },
    /// Revoke a key: it stops working on every node.
    Revoke {
        /// Key id.
        id: String,
    },
}

#[derive(Debug, Args)]
struct AuditArgs {
    /// Only this tenant's entries.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this caller: api-key:<id>, user:<issuer>#<sub> or node:<id>.
    #[arg(long)]
    identity: Option<String>,
    /// Only this action, e.g. "POST /v1/routes".
    #[arg(long)]
    action: Option<String>,
    /// Only this outcome.
    #[arg(long, value_parser = ["ok", "denied", "error"])]
    result: Option<String>,
    /// From this time on: RFC 3339, or a duration ago (15m, 2h, 7d).
    #[arg(long, value_parser = crate::client_admin::parse_time)]
    since: Option<String>,
    /// Up to this time: RFC 3339, or a duration ago.
    #[arg(long, value_parser = crate::client_admin::parse_time)]
    until: Option<String>,
    /// Only entries recorded by this node.
    #[arg(long, value_name = "NODE_ID")]
    node: Option<String>,
    /// At most this many entries (pages are followed until then).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    limit: u32,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Kinds to watch, comma-separated: nodes, routes, site_routes, firmware, tenants,
    /// fleet_policies, keys [default: all]
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Resume after this event id (as printed), instead of from now.
    #[arg(long, value_name = "ID")]
    last_event_id: Option<String>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Per configuration document: which nodes run which version, and what is quarantined here.
    Status,
    /// Named states of a document, to roll back to.
    Snapshots {
        #[command(subcommand)]
        command: Option<SnapshotsCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotsCommand {
    /// List snapshots (default).
    List {
        /// Only this document: fleet or tenant/<id>.
        #[arg(long)]
        document: Option<String>,
    },
    /// Show one.
    Get {
        /// Snapshot id.
        id: String,
    },
    /// Name the current state of a document.
    Create {
        /// Display name.
        name: String,
        /// fleet or tenant/<id> [default: the answering node's tenant document]
        #[arg(long)]
        document: Option<String>,
    },
    /// Roll a document back to a snapshot (a new change: every node follows).
    Rollback {
        /// Snapshot id.
        id: String,
    },
}

#[derive(Debug, Args)]
struct WhoamiArgs {
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct ProfileArgs {
    #[command(subcommand)]
    command: ProfileCommand,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum ProfileCommand {
    /// Create or change a profile (fields not given stay as they are); the first one becomes
    /// current.
    Set {
        /// Profile name.
        name: String,
        /// Node API URL.
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// File holding the API key (the path is stored, not the key).
        #[arg(long, value_name = "FILE", conflicts_with = "key")]
        key_file: Option<PathBuf>,
        /// The API key itself (stored in the file; prefer --key-file).
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Fleet root certificate (<data-dir>/trust/root.pem).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Client certificate to authenticate with instead of a key.
        #[arg(long, value_name = "FILE", requires = "client_key")]
        client_cert: Option<PathBuf>,
        /// Key of --client-cert.
        #[arg(long, value_name = "FILE", requires = "client_cert")]
        client_key: Option<PathBuf>,
        /// Also make it the current profile.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// List profiles (keys are not shown).
    List,
    /// Make a profile the current one.
    Use {
        /// Profile name.
        name: String,
    },
    /// Delete a profile.
    Delete {
        /// Profile name.
        name: String,
    },
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// The scenario file (.toml, .yaml or .yml); see docs/simulation.md.
    scenario: PathBuf,
    /// Where to write report.json and the plots (default: simulations/out/<scenario name>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run with another seed than the scenario's.
    #[arg(long)]
    seed: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
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

/// How to reach a node's API. Each setting comes from its flag, else its environment variable,
/// else the profile (see `nexus profile`), else the default.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Node API URL [env: NEXUS_API (or NEXUS_API_URL); profile: api; default:
    /// https://127.0.0.1:7600]
    #[arg(long = "api", value_name = "URL", global = true)]
    pub api_url: Option<String>,
    /// Fleet root certificate to verify the node's HTTPS certificate with
    /// (<data-dir>/trust/root.pem of any node) [env: NEXUS_CA_FILE; profile: ca]
    #[arg(long, value_name = "FILE", global = true)]
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
    /// API key [env: NEXUS_API_KEY; profile: key]
    #[arg(long, value_name = "KEY", global = true)]
    pub key: Option<String>,
    /// File holding the API key, e.g. <data-dir>/admin.key [env: NEXUS_API_KEY_FILE; profile:
    /// key_file]
    #[arg(long, value_name = "FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// Profile of the CLI profile file to use [env: NEXUS_PROFILE; default: the file's
    /// `current`]
    #[arg(long, value_name = "NAME", global = true)]
    pub profile: Option<String>,
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
    /// CSV (`nexus tenants usage` only).
    Csv,
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
    /// Show one certificate.
    Get {
        /// Serial, hex (as `openssl x509 -serial` prints it).
        serial: String,
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

/// API key lifetimes: a duration of at least a second, passed on as written.
fn parse_key_ttl(text: &str) -> Result<String, String> {
    let ttl = nexus_mesh::parse_duration(text)?;
    if ttl < Duration::from_secs(1) {
        return Err(format!("key lifetime {text:?} must be at least 1s"));
    }
    Ok(text.trim().to_string())
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
                MicsCommand::Get { serial } => crate::client::mics_get(client, &serial).await,
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
        Command::Routes(args) => runtime()?.block_on(collection(
            crate::client_config::Collection::routes(args.site, args.tenant),
            args.command,
            &args.client,
        )),
        Command::Firmware(args) => runtime()?.block_on(collection(
            crate::client_config::Collection::firmware(args.tenant),
            args.command,
            &args.client,
        )),
        Command::Tenants(args) => runtime()?.block_on(tenants(args)),
        Command::Fleet(args) => runtime()?.block_on(async {
            let client = &args.client;
            match args.command {
                FleetCommand::Policies { command } => {
                    collection(
                        crate::client_config::Collection::fleet_policies(),
                        command,
                        client,
                    )
                    .await
                }
                FleetCommand::Settings { command } => match command.unwrap_or(SettingsCommand::Get)
                {
                    SettingsCommand::Get => crate::client_config::settings_get(client).await,
                    SettingsCommand::Set { file } => {
                        crate::client_config::settings_set(client, &file).await
                    }
                },
            }
        }),
        Command::Keys(args) => runtime()?.block_on(async {
            use crate::client_admin as admin;
            let client = &args.client;
            match args.command.unwrap_or(KeysCommand::List { tenant: None }) {
                KeysCommand::Create {
                    name,
                    role,
                    tenant,
                    ttl,
                } => admin::keys_create(client, &name, &role, tenant, ttl).await,
                KeysCommand::List { tenant } => admin::keys_list(client, tenant).await,
                KeysCommand::Get { id } => admin::keys_get(client, &id).await,
                KeysCommand::Revoke { id } => admin::keys_revoke(client, &id).await,
            }
        }),
        Command::Audit(args) => {
            let filter = crate::client_admin::AuditFilter {
                tenant: args.tenant,
                identity: args.identity,
                action: args.action,
                result: args.result,
                since: args.since,
                until: args.until,
                node: args.node,
                limit: args.limit as usize,
            };
            runtime()?.block_on(crate::client_admin::audit(&args.client, filter))
        }
        Command::Watch(args) => {
            let options = crate::client_watch::WatchOptions {
                kinds: args.kinds,
                last_event_id: args.last_event_id,
                count: args.count,
            };
            runtime()?.block_on(crate::client_watch::watch(&args.client, options))
        }
        Command::Config(args) => runtime()?.block_on(async {
            use crate::client_config as config;
            let client = &args.client;
            match args.command {
                ConfigCommand::Status => config::status(client).await,
                ConfigCommand::Snapshots { command } => {
                    match command.unwrap_or(SnapshotsCommand::List { document: None }) {
                        SnapshotsCommand::List { document } => {
                            config::snapshots_list(client, document).await
                        }
                        SnapshotsCommand::Get { id } => config::snapshots_get(client, &id).await,
                        SnapshotsCommand::Create { name, document } => {
                            config::snapshots_create(client, &name, document).await
                        }
                        SnapshotsCommand::Rollback { id } => {
                            config::snapshots_rollback(client, &id).await
                        }
                    }
                }
            }
        }),
        Command::Whoami(args) => runtime()?.block_on(crate::client_admin::whoami(&args.client)),
        Command::Profile(args) => match args.command {
            ProfileCommand::Set {
                name,
                api,
                key_file,
                key,
                ca,
                client_cert,
                client_key,
                make_current,
            } => crate::profile::set(
                &name,
                crate::profile::ProfileChange {
                    api,
                    key,
                    key_file,
                    ca,
                    client_cert,
                    client_key,
                },
                make_current,
            ),
            ProfileCommand::List => crate::profile::list(args.output),
            ProfileCommand::Use { name } => crate::profile::use_profile(&name),
            ProfileCommand::Delete { name } => crate::profile::delete(&name),
        },
        Command::Simulate(args) => simulate(args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "nexus",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn collection(
    collection: crate::client_config::Collection,
    command: Option<CollectionCommand>,
    client: &ClientArgs,
) -> anyhow::Result<ExitCode> {
    match command.unwrap_or(CollectionCommand::List) {
        CollectionCommand::List => collection.list(client).await,
        CollectionCommand::Get { id } => collection.get(client, &id).await,
        CollectionCommand::Create { file } => collection.create(client, &file).await,
        CollectionCommand::Apply { file } => collection.apply(client, &file).await,
        CollectionCommand::Delete { id } => collection.delete(client, &id).await,
    }
}

fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    // The nodes' logs are off unless asked for (thousands of nodes log a lot).
    if let Ok(filter) = std::env::var("NEXUS_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let mut scenario = nexus_sim::scenario::Scenario::load(&args.scenario)?;
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("simulations/out").join(&scenario.name));
    let report = nexus_sim::run(
        &scenario,
        &nexus_sim::RunOptions {
            progress: !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        },
    )?;
    let written = report
        .write(&out)
        .with_context(|| format!("cannot write the report into {}", out.display()))?;
    println!("{}", report.summary());
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn tenants(args: TenantsArgs) -> anyhow::Result<ExitCode> {
    use crate::client_config as config;
    let client = &args.client;
    let tenants = config::Collection::tenants();
    match args.command.unwrap_or(TenantsCommand::List) {
        TenantsCommand::List => tenants.list(client).await,
        TenantsCommand::Get { id } => tenants.get(client, &id).await,
        TenantsCommand::Create {
            id,
            file,
            name,
            admin_key_out,
            no_admin_key,
            admin_key_ttl,
            no_default_policies,
        } => {
            let onboarding = config::TenantOnboarding {
                admin_key_out,
                no_admin_key,
                admin_key_ttl,
                no_default_policies,
            };
            config::tenant_create(client, &id, file.as_deref(), name, onboarding).await
        }
        TenantsCommand::Update { id, file } => config::tenant_update(client, &id, &file).await,
        TenantsCommand::Delete { id } => tenants.delete(client, &id).await,
        TenantsCommand::Usage {
            id,
            from,
            to,
            granularity,
        } => crate::client_usage::tenant_usage(client, &id, from, to, granularity).await,
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
