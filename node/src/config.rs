//! The daemon's one config tree: defaults, then the TOML file, then `NEXUS_*` environment
//! variables, then flags (clap resolves flag-over-env; this module puts both over the file).
//! [`NodeConfig::load`] validates everything and names the offending key in its errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use nexus_mesh::{DEFAULT_GOSSIP_INTERVAL, MembershipConfig, parse_duration};
use serde::{Deserialize, Serialize};

/// Default API address.
pub const DEFAULT_API: &str = "127.0.0.1:7600";
/// Default gossip (UDP) address.
pub const DEFAULT_GOSSIP: &str = "127.0.0.1:7601";
/// Default QUIC (UDP) address.
pub const DEFAULT_QUIC: &str = "127.0.0.1:7602";

/// The TOML file (`<data-dir>/nexus.toml` or `--config`). Every key is optional.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// API listen address (`HOST:PORT`, port 0 = any free port).
    pub api: Option<String>,
    /// Gossip listen address.
    pub gossip: Option<String>,
    /// QUIC listen address.
    pub quic: Option<String>,
    /// Extra gossip seeds.
    pub seeds: Option<Vec<String>>,
    /// Log filter (`info`, `nexus=debug`, …).
    pub log: Option<String>,
    /// Time between gossip rounds (`250ms`).
    pub gossip_interval: Option<String>,
    /// Failure detection timing.
    pub membership: Option<MembershipFile>,
    /// Failure detector.
    pub detector: Option<DetectorFile>,
    /// Fleet duties on anchors: leases, node lifecycle, garbage collection.
    pub duties: Option<crate::duties::DutiesFile>,
    /// Certificate lifetimes and renewal.
    pub certificates: Option<CertificatesFile>,
    /// The HTTP API.
    pub http: Option<HttpFile>,
    /// What this node demands of its peers' certificates.
    pub trust: Option<TrustFile>,
    /// The data plane's NIC: `memory`, `af_packet:<iface>[,<egress iface>]` or
    /// `dpdk:<EAL arguments>`.
    pub nic: Option<String>,
    /// Usage metering.
    pub usage: Option<UsageFile>,
}

/// `[usage]` table.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageFile {
    /// Time between two reports of this node's usage to the anchors (`60s`; 1s to 1h).
    pub report_interval: Option<String>,
    /// How long usage rows are kept (`400d`; at least 1h): the roll-up on anchors, rows every
    /// anchor acknowledged on nodes.
    pub retention: Option<String>,
}

/// `[trust]` table.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    /// Strict mode: accept a peer's MIC (gossip, incoming QUIC, API) only once an anchor proved
    /// it is in its transparency log.
    pub require_logged_certificates: Option<bool>,
}

/// `[certificates]` table.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesFile {
    /// Lifetime of the MICs this anchor issues (`90d`).
    pub lifetime: Option<String>,
    /// Renew this node's MIC when less than this is left (`30d`; at most a third of the
    /// certificate's lifetime is used, so short-lived certificates renew in time too).
    pub renew_before: Option<String>,
    /// Lifetime of the anchor intermediate CAs the root holder certifies (`1826d`). Anchors
    /// renew theirs when a third of it is left.
    pub ca_lifetime: Option<String>,
}

/// `[http]` table.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Serve the API over plain HTTP instead of HTTPS. Only allowed on a loopback address, for
    /// local development.
    pub insecure_plaintext: Option<bool>,
}

/// `[detector]` table: the failure detector (direct heartbeats to monitors, confirmed by
/// probes). Off by default.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorFile {
    /// Run it (on a UDP socket next to the gossip one, published in gossip).
    pub enabled: Option<bool>,
    /// Time between two heartbeats to each monitor.
    pub interval: Option<String>,
    /// Silence after which a monitor probes a node.
    pub suspect_after: Option<String>,
}

/// `[membership]` table.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipFile {
    /// Silence before a node is `degraded`.
    pub suspect_after: Option<String>,
    /// Silence before a node is `offline`.
    pub offline_after: Option<String>,
    /// How long a decommissioned node stays listed.
    pub decommission_grace: Option<String>,
    /// How long an offline node stays listed (and remembered) before it is forgotten.
    pub forget_offline_after: Option<String>,
}

/// Address flags shared by `init`, `join` and `run` (flag or `NEXUS_*` env, resolved by clap).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct AddrFlags {
    /// HTTP API listen address, IP:PORT [default: 127.0.0.1:7600]
    #[arg(long, env = "NEXUS_API_ADDR", value_name = "ADDR")]
    pub api: Option<String>,
    /// Gossip (UDP) listen address [default: 127.0.0.1:7601]
    #[arg(long, env = "NEXUS_GOSSIP_ADDR", value_name = "ADDR")]
    pub gossip: Option<String>,
    /// QUIC (UDP) listen address [default: 127.0.0.1:7602]
    #[arg(long, env = "NEXUS_QUIC_ADDR", value_name = "ADDR")]
    pub quic: Option<String>,
    /// Config file [default: <data-dir>/nexus.toml]
    #[arg(long, env = "NEXUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data-plane NIC: memory, af_packet:IFACE[,EGRESS] or dpdk:EAL-ARGS [default: memory]
    #[arg(long, env = "NEXUS_NIC", value_name = "NIC")]
    pub nic: Option<String>,
}

/// The validated configuration a node runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// API listen address.
    pub api: SocketAddr,
    /// Gossip listen address.
    pub gossip: SocketAddr,
    /// The failure detector's settings, when it runs.
    pub detector: Option<nexus_mesh::DetectorConfig>,
    /// Fleet duties (anchors).
    pub duties: crate::duties::DutiesConfig,
    /// QUIC listen address.
    pub quic: SocketAddr,
    /// Extra gossip seeds.
    pub seeds: Vec<SocketAddr>,
    /// Log filter.
    pub log: String,
    /// Gossip interval.
    pub gossip_interval: Duration,
    /// Failure detection.
    pub membership: MembershipConfig,
    /// Lifetime of the MICs this node issues (anchors).
    pub mic_lifetime: Duration,
    /// Renew this node's MIC when less than this is left (capped at a third of its lifetime).
    pub mic_renew_before: Duration,
    /// Lifetime of the anchor CAs the root holder certifies.
    pub ca_lifetime: Duration,
    /// Serve the API over plain HTTP (loopback only).
    pub api_plaintext: bool,
    /// Strict mode (`[trust] require_logged_certificates`).
    pub require_logged: bool,
    /// The data plane's NIC.
    pub nic: nexus_dataplane::nic::NicSpec,
    /// Time between two usage reports to the anchors (`[usage] report_interval`).
    pub usage_report_interval: Duration,
    /// How long usage rows are kept (`[usage] retention`).
    pub usage_retention: Duration,
}

/// Default lifetime of a node MIC.
pub const DEFAULT_MIC_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Default renewal point: 30 days before expiry.
pub const DEFAULT_MIC_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Reads the config file if it exists (an explicitly named one must exist).
pub fn read_file(data_dir: &Path, explicit: Option<&Path>) -> anyhow::Result<FileConfig> {
    let (path, required) = match explicit {
        Some(path) => (path.to_path_buf(), true),
        None => (data_dir.join("nexus.toml"), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(FileConfig::default());
        }
        Err(err) => {
            return Err(err).with_context(|| format!("cannot read config file {}", path.display()));
        }
    };
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

fn addr(
    flag: &Option<String>,
    file: &Option<String>,
    default: &str,
    key: &str,
) -> anyhow::Result<SocketAddr> {
    let (value, source) = match (flag, file) {
        (Some(v), _) => (
            v.as_str(),
            format!("--{key} / NEXUS_{}_ADDR", key.to_uppercase()),
        ),
        (None, Some(v)) => (v.as_str(), format!("config key `{key}`")),
        (None, None) => (default, "default".to_string()),
    };
    value.parse().with_context(|| {
        format!("{key} address {value:?} (from {source}) is not IP:PORT, e.g. 127.0.0.1:7600")
    })
}

fn duration(value: &Option<String>, key: &str, default: Duration) -> anyhow::Result<Duration> {
    match value {
        None => Ok(default),
        Some(text) => {
            parse_duration(text).map_err(|err| anyhow::anyhow!("config key `{key}`: {err}"))
        }
    }
}

impl NodeConfig {
    /// Resolves flags over file over defaults and validates.
    pub fn load(
        data_dir: &Path,
        flags: &AddrFlags,
        extra_seeds: &[String],
    ) -> anyhow::Result<NodeConfig> {
        let file = read_file(data_dir, flags.config.as_deref())?;
        Self::resolve(&file, flags, extra_seeds)
    }

    /// Resolves an already read file.
    pub fn resolve(
        file: &FileConfig,
        flags: &AddrFlags,
        extra_seeds: &[String],
    ) -> anyhow::Result<NodeConfig> {
        let api = addr(&flags.api, &file.api, DEFAULT_API, "api")?;
        let gossip = addr(&flags.gossip, &file.gossip, DEFAULT_GOSSIP, "gossip")?;
        let quic = addr(&flags.quic, &file.quic, DEFAULT_QUIC, "quic")?;
        if gossip == quic && gossip.port() != 0 {
            bail!("gossip and quic addresses are both {gossip}: each needs its own UDP port");
        }
        let mut seeds = Vec::new();
        for seed in file.seeds.iter().flatten().chain(extra_seeds) {
            seeds.push(seed.parse().with_context(|| {
                format!("seed {seed:?} is not IP:PORT of a node's gossip address")
            })?);
        }
        let gossip_interval = duration(
            &file.gossip_interval,
            "gossip_interval",
            DEFAULT_GOSSIP_INTERVAL,
        )?;
        if gossip_interval < Duration::from_millis(10) || gossip_interval > Duration::from_secs(60)
        {
            bail!("config key `gossip_interval` must be between 10ms and 60s");
        }
        let defaults = MembershipConfig::default();
        let mut m = file.membership.clone().unwrap_or_default();
        if let Ok(value) = std::env::var("NEXUS_DECOMMISSION_GRACE") {
            m.decommission_grace = Some(value);
        }
        let membership = MembershipConfig {
            suspect_after: duration(
                &m.suspect_after,
                "membership.suspect_after",
                defaults.suspect_after,
            )?,
            offline_after: duration(
                &m.offline_after,
                "membership.offline_after",
                defaults.offline_after,
            )?,
            decommission_grace: duration(
                &m.decommission_grace,
                "membership.decommission_grace",
                defaults.decommission_grace,
            )?,
            forget_offline_after: duration(
                &m.forget_offline_after,
                "membership.forget_offline_after",
                defaults.forget_offline_after,
            )?,
        };
        membership.validate().map_err(anyhow::Error::msg)?;
        if membership.suspect_after < gossip_interval * 2 {
            bail!(
                "config key `membership.suspect_after` ({:?}) must be at least twice `gossip_interval` ({gossip_interval:?}), or live nodes will be suspected",
                membership.suspect_after
            );
        }
        let mut c = file.certificates.clone().unwrap_or_default();
        // Environment over file, as for every other key.
        if let Ok(value) = std::env::var("NEXUS_CERT_LIFETIME") {
            c.lifetime = Some(value);
        }
        if let Ok(value) = std::env::var("NEXUS_CERT_RENEW_BEFORE") {
            c.renew_before = Some(value);
        }
        if let Ok(value) = std::env::var("NEXUS_CA_LIFETIME") {
            c.ca_lifetime = Some(value);
        }
        let ca_lifetime = duration(
            &c.ca_lifetime,
            "certificates.ca_lifetime",
            Duration::from_secs(1826 * 24 * 3600),
        )?;
        if ca_lifetime < Duration::from_secs(10)
            || ca_lifetime > Duration::from_secs(1826 * 24 * 3600)
        {
            bail!("config key `certificates.ca_lifetime` must be between 10s and 1826d");
        }
        let mic_lifetime = duration(&c.lifetime, "certificates.lifetime", DEFAULT_MIC_LIFETIME)?;
        if mic_lifetime < Duration::from_secs(10)
            || mic_lifetime > Duration::from_secs(5 * 365 * 24 * 3600)
        {
            bail!("config key `certificates.lifetime` must be between 10s and 5 years (1825d)");
        }
        let mic_renew_before = duration(
            &c.renew_before,
            "certificates.renew_before",
            DEFAULT_MIC_RENEW_BEFORE,
        )?;
        if mic_renew_before.is_zero() {
            bail!("config key `certificates.renew_before` must be longer than zero");
        }
        let api_plaintext = match std::env::var("NEXUS_HTTP_INSECURE_PLAINTEXT") {
            Ok(value) => match value.as_str() {
                "true" | "1" => true,
                "false" | "0" | "" => false,
                other => bail!("NEXUS_HTTP_INSECURE_PLAINTEXT={other:?}: expected true or false"),
            },
            Err(_) => file
                .http
                .as_ref()
                .and_then(|h| h.insecure_plaintext)
                .unwrap_or(false),
        };
        if api_plaintext && !api.ip().is_loopback() {
            bail!(
                "config key `http.insecure_plaintext` serves the API without TLS and is only \
                 allowed on a loopback address, but the API address is {api}: remove the key \
                 (HTTPS is the default) or bind the API to 127.0.0.1"
            );
        }
        let require_logged = match std::env::var("NEXUS_REQUIRE_LOGGED_CERTIFICATES") {
            Ok(value) => match value.as_str() {
                "true" | "1" => true,
                "false" | "0" | "" => false,
                other => {
                    bail!("NEXUS_REQUIRE_LOGGED_CERTIFICATES={other:?}: expected true or false")
                }
            },
            Err(_) => file
                .trust
                .as_ref()
                .and_then(|t| t.require_logged_certificates)
                .unwrap_or(false),
        };
        let nic = match (&flags.nic, &file.nic) {
            (Some(v), _) => v
                .parse()
                .map_err(|e| anyhow::anyhow!("--nic / NEXUS_NIC {e}"))?,
            (None, Some(v)) => v
                .parse()
                .map_err(|e| anyhow::anyhow!("config key `nic`: {e}"))?,
            (None, None) => nexus_dataplane::nic::NicSpec::Memory,
        };
        let d = file.detector.clone().unwrap_or_default();
        let detector = if d.enabled.unwrap_or(false) {
            let defaults = nexus_mesh::DetectorConfig::default();
            let detector = nexus_mesh::DetectorConfig {
                interval: duration(&d.interval, "detector.interval", defaults.interval)?,
                suspect_after: duration(
                    &d.suspect_after,
                    "detector.suspect_after",
                    defaults.suspect_after,
                )?,
                ..defaults
            };
            detector
                .validate()
                .map_err(|e| anyhow::anyhow!("config: {e}"))?;
            Some(detector)
        } else {
            None
        };
        let duties = crate::duties::DutiesConfig::resolve(file.duties.as_ref())?;
        if duties.offline_grace >= membership.forget_offline_after {
            bail!(
                "config key `duties.offline_grace` ({:?}) must be shorter than \
                 `membership.forget_offline_after` ({:?}): a node is forgotten before it could be \
                 flagged otherwise",
                duties.offline_grace,
                membership.forget_offline_after
            );
        }
        let mut u = file.usage.clone().unwrap_or_default();
        if let Ok(value) = std::env::var("NEXUS_USAGE_REPORT_INTERVAL") {
            u.report_interval = Some(value);
        }
        let usage_report_interval = duration(
            &u.report_interval,
            "usage.report_interval",
            crate::usage::DEFAULT_REPORT_INTERVAL,
        )?;
        if usage_report_interval < Duration::from_secs(1)
            || usage_report_interval > Duration::from_secs(3600)
        {
            bail!(
                "config key `usage.report_interval` (or NEXUS_USAGE_REPORT_INTERVAL) must be \
                 between 1s and 1h, got {usage_report_interval:?}"
            );
        }
        let usage_retention = duration(
            &u.retention,
            "usage.retention",
            crate::usage::DEFAULT_RETENTION,
        )?;
        if usage_retention < Duration::from_secs(3600) {
            bail!("config key `usage.retention` must be at least 1h, got {usage_retention:?}");
        }
        Ok(NodeConfig {
            api,
            gossip,
            detector,
            duties,
            quic,
            seeds,
            log: file.log.clone().unwrap_or_else(|| "info".to_string()),
            gossip_interval,
            membership,
            mic_lifetime,
            mic_renew_before,
            ca_lifetime,
            api_plaintext,
            require_logged,
            nic,
            usage_report_interval,
            usage_retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let file: FileConfig = toml::from_str(
            "api = \"127.0.0.1:9000\"\ngossip = \"127.0.0.1:9001\"\n[membership]\noffline_after = \"5s\"\n",
        )
        .unwrap();
        let flags = AddrFlags {
            api: Some("127.0.0.1:9100".into()),
            ..AddrFlags::default()
        };
        let config = NodeConfig::resolve(&file, &flags, &[]).unwrap();
        assert_eq!(config.api, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(config.gossip, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(config.quic, DEFAULT_QUIC.parse().unwrap());
        assert_eq!(config.membership.offline_after, Duration::from_secs(5));
    }

    #[test]
    fn the_nic_comes_from_the_flag_over_the_file_and_is_checked() {
        use nexus_dataplane::nic::NicSpec;
        let file: FileConfig = toml::from_str("nic = \"af_packet:eth1,eth2\"").unwrap();
        let config = NodeConfig::resolve(&file, &AddrFlags::default(), &[]).unwrap();
        assert_eq!(
            config.nic,
            NicSpec::AfPacket {
                ingress: "eth1".into(),
                egress: "eth2".into()
            }
        );
        let flags = AddrFlags {
            nic: Some("memory".into()),
            ..AddrFlags::default()
        };
        assert_eq!(
            NodeConfig::resolve(&file, &flags, &[]).unwrap().nic,
            NicSpec::Memory
        );
        let config = NodeConfig::resolve(&FileConfig::default(), &AddrFlags::default(), &[]);
        assert_eq!(config.unwrap().nic, NicSpec::Memory, "the default");
        let file: FileConfig = toml::from_str("nic = \"eth0\"").unwrap();
        let err = NodeConfig::resolve(&file, &AddrFlags::default(), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("config key `nic`"), "{err:#}");
        let flags = AddrFlags {
            nic: Some("dpdk:".into()),
            ..AddrFlags::default()
        };
        let err = NodeConfig::resolve(&FileConfig::default(), &flags, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("--nic"), "{err:#}");
    }

    #[test]
    fn errors_name_the_key() {
        let file: FileConfig = toml::from_str("api = \"nowhere\"").unwrap();
        let err = NodeConfig::resolve(&file, &AddrFlags::default(), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("config key `api`"), "{err:#}");

        let file: FileConfig = toml::from_str("[membership]\nsuspect_after = \"9s\"").unwrap();
        let err = NodeConfig::resolve(&file, &AddrFlags::default(), &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("membership.offline_after"),
            "{err:#}"
        );

        let file: FileConfig =
            toml::from_str("[membership]\nforget_offline_after = \"1s\"").unwrap();
        let err = NodeConfig::resolve(&file, &AddrFlags::default(), &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("membership.forget_offline_after"),
            "{err:#}"
        );
        let file: FileConfig =
            toml::from_str("[membership]\nforget_offline_after = \"3d\"").unwrap();
        let config = NodeConfig::resolve(&file, &AddrFlags::default(), &[]).unwrap();
        assert_eq!(
            config.membership.forget_offline_after,
            Duration::from_secs(3 * 24 * 3600)
        );
        let config =
            NodeConfig::resolve(&FileConfig::default(), &AddrFlags::default(), &[]).unwrap();
        assert_eq!(
            config.membership.forget_offline_after,
            nexus_mesh::FORGET_OFFLINE_AFTER
        );

        assert!(
            toml::from_str::<FileConfig>("colour = 1").is_err(),
            "unknown keys are refused"
        );
    }
}
