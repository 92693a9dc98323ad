//! Scenario files: the fleet, the network, a timeline of events and the assertions to check.
//! TOML or YAML; the format is documented in `docs/simulation.md`.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written like `250ms`, `2s`, `5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let text = String::deserialize(d)?;
        nexus_mesh::parse_duration(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

impl Dur {
    /// Milliseconds, as a float.
    pub fn ms(self) -> f64 {
        self.0.as_secs_f64() * 1000.0
    }
}

/// A whole scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name, used in the report.
    pub name: String,
    /// What it shows (free text).
    #[serde(default)]
    pub description: String,
    /// Seed of every random choice the simulator makes.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated time to run.
    pub duration: Dur,
    /// The fleet.
    pub fleet: Fleet,
    /// Gossip and failure-detection settings.
    #[serde(default)]
    pub mesh: MeshSettings,
    /// The simulated network.
    #[serde(default)]
    pub network: Network,
    /// Events, in any order (they run sorted by time).
    #[serde(default)]
    pub timeline: Vec<Event>,
    /// Checks on the outcome.
    #[serde(default, rename = "assert")]
    pub assertions: Vec<Assertion>,
}

fn default_seed() -> u64 {
    1
}

/// The fleet: sites of nodes, a few of them gateways, and anchors in their own site `core`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Number of edge sites.
    pub sites: usize,
    /// Nodes per edge site, gateways included.
    pub nodes_per_site: usize,
    /// Gateways per edge site (they also join the WAN pool).
    #[serde(default = "default_gateways")]
    pub gateways_per_site: usize,
    /// Anchors (site `core`; every anchor is in the WAN pool).
    #[serde(default = "default_anchors")]
    pub anchors: usize,
    /// Number of tenants; edge site `i` belongs to tenant `t<i mod tenants>`.
    #[serde(default = "default_tenants")]
    pub tenants: usize,
    /// Labels every node carries.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn default_gateways() -> usize {
    2
}
fn default_anchors() -> usize {
    3
}
fn default_tenants() -> usize {
    1
}

/// Gossip and failure-detection settings (the node's defaults unless set).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSettings {
    /// Time between gossip rounds.
    pub gossip_interval: Dur,
    /// Members a node exchanges with as soon as it learns something new between rounds (0:
    /// regular rounds only); see `nexus_mesh::RumorConfig`.
    pub rumor_fanout: usize,
    /// Least time between two news-triggered exchanges of a node in one pool.
    pub rumor_gap: Dur,
    /// Silence after which a node is degraded.
    pub suspect_after: Dur,
    /// Silence after which a node is offline.
    pub offline_after: Dur,
    /// How often gossip state is folded into the membership table.
    pub tick_interval: Dur,
    /// Peers a change is pushed to directly.
    pub push_fanout: usize,
    /// How often each node looks for a peer to run anti-entropy with.
    pub anti_entropy_interval: Dur,
    /// Run the failure detector (direct heartbeats to monitors, confirmed by probes).
    pub detector: bool,
    /// Time between two heartbeats to each monitor.
    pub heartbeat_interval: Dur,
    /// Silence after which a monitor probes a node.
    pub probe_after: Dur,
    /// Monitors per node.
    pub monitors: usize,
    /// Probes before a verdict.
    pub probes: usize,
    /// Time between probes.
    pub probe_gap: Dur,
}

impl MeshSettings {
    /// The news-triggered gossip's configuration.
    pub fn rumor(&self) -> nexus_mesh::RumorConfig {
        nexus_mesh::RumorConfig {
            fanout: self.rumor_fanout,
            gap: self.rumor_gap.0,
            ..nexus_mesh::RumorConfig::quiet_also(&[crate::engine::CFG_PREFIX])
        }
    }

    /// The detector's configuration.
    pub fn detector(&self) -> nexus_mesh::DetectorConfig {
        nexus_mesh::DetectorConfig {
            interval: self.heartbeat_interval.0,
            suspect_after: self.probe_after.0,
            monitors: self.monitors,
            probes: self.probes,
            probe_gap: self.probe_gap.0,
        }
    }
}

impl Default for MeshSettings {
    fn default() -> MeshSettings {
        let membership = nexus_mesh::MembershipConfig::default();
        let detector = nexus_mesh::DetectorConfig::default();
        let rumor = nexus_mesh::RumorConfig::default();
        MeshSettings {
            gossip_interval: Dur(nexus_mesh::DEFAULT_GOSSIP_INTERVAL),
            rumor_fanout: rumor.fanout,
            rumor_gap: Dur(rumor.gap),
            suspect_after: Dur(membership.suspect_after),
            offline_after: Dur(membership.offline_after),
            tick_interval: Dur(Duration::from_millis(100)),
            push_fanout: 6,
            anti_entropy_interval: Dur(Duration::from_secs(1)),
            detector: true,
            heartbeat_interval: Dur(detector.interval),
            probe_after: Dur(detector.suspect_after),
            monitors: detector.monitors,
            probes: detector.probes,
            probe_gap: Dur(detector.probe_gap),
        }
    }
}

/// A latency distribution: uniform between `min` and `max`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// Shortest one-way delay.
    pub min: Dur,
    /// Longest one-way delay.
    pub max: Dur,
}

/// The simulated network.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// One-way delay between nodes of one site.
    pub site_latency: Latency,
    /// One-way delay between sites. With `geographic`, the delay between two sites is fixed by
    /// their distance on a plane (sites placed by the seed), scaled into this range, plus 10%
    /// jitter.
    pub wan_latency: Latency,
    /// Place sites on a plane and derive WAN delays from distance.
    pub geographic: bool,
    /// Datagram loss within a site (0..1).
    pub site_loss: f64,
    /// Datagram loss between sites (0..1).
    pub wan_loss: f64,
    /// Uplink of every node, in bits per second (0 = unlimited); a datagram waits for the
    /// ones before it to leave.
    pub bandwidth_bps: u64,
    /// Link MTU: larger datagrams are counted and are lost if any of their fragments is.
    pub mtu: usize,
}

impl Default for Network {
    fn default() -> Network {
        Network {
            site_latency: Latency {
                min: Dur(Duration::from_millis(1)),
                max: Dur(Duration::from_millis(5)),
            },
            wan_latency: Latency {
                min: Dur(Duration::from_millis(20)),
                max: Dur(Duration::from_millis(80)),
            },
            geographic: false,
            site_loss: 0.0,
            wan_loss: 0.0,
            bandwidth_bps: 0,
            mtu: 1400,
        }
    }
}

/// Which nodes an event acts on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Selector {
    /// Node names (`s003-n007`, `anchor-0`).
    pub nodes: Vec<String>,
    /// Every node of these sites (`s003`, `core`).
    pub sites: Vec<String>,
    /// A random fraction (0..1) of the non-anchor nodes (chosen by the seed).
    pub fraction: Option<f64>,
    /// A random number of non-anchor nodes (chosen by the seed).
    pub count: Option<usize>,
}

/// One timeline event. (Unknown fields are refused by [`Action`], which gets every field but
/// `at`.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// When, from the start.
    pub at: Dur,
    /// What.
    #[serde(flatten)]
    pub action: Action,
}

/// What an event does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Config changes: `count` changes to `document` (`fleet` or `tenant:<t>`), written on
    /// node `from` (a name, or `random`), `every` apart.
    Change {
        /// Label in the report.
        #[serde(default)]
        label: Option<String>,
        /// `fleet` or `tenant:<tenant>`.
        document: String,
        /// Number of changes.
        #[serde(default = "one")]
        count: usize,
        /// Writer node name, or `random` (an anchor for the fleet document, a node of the
        /// tenant otherwise).
        #[serde(default = "random")]
        from: String,
        /// Time between two changes.
        #[serde(default)]
        every: Dur,
    },
    /// Nodes stop at once (kill -9: no goodbye).
    Crash(Selector),
    /// Crashed nodes start again (a new incarnation; their stored configuration survived).
    Restart(Selector),
    /// Every node stops; after `down`, all restart within `spread`.
    PowerCut {
        /// Which nodes (default every node).
        #[serde(default)]
        select: Selector,
        /// How long the power stays off.
        down: Dur,
        /// Restarts are spread evenly over this window.
        #[serde(default)]
        spread: Dur,
    },
    /// The listed sites lose every link to the rest of the fleet (both ways).
    Partition {
        /// Sites on one side.
        sites: Vec<String>,
    },
    /// Every partition and one-way failure ends.
    Heal,
    /// Datagrams and messages from `from` sites to `to` sites are dropped; the other direction
    /// still works.
    Asymmetric {
        /// Sending sites.
        from: Vec<String>,
        /// Receiving sites.
        to: Vec<String>,
    },
    /// Extra loss on every datagram to or from the selected sites (all sites if none) for
    /// `duration`.
    LossBurst {
        /// Loss (0..1).
        loss: f64,
        /// How long.
        duration: Dur,
        /// Sites affected (default all).
        #[serde(default)]
        sites: Vec<String>,
    },
    /// The wall clock of the selected nodes moves by `skew` (positive or `-` for behind).
    ClockSkew {
        /// Which nodes.
        select: Selector,
        /// Offset, e.g. `30s`; prefix with `-` for a clock behind.
        skew: String,
    },
    /// An anchor revokes the node: the revocation is a fleet-document change, and every node
    /// that holds it refuses the node's gossip and pushes.
    Revoke {
        /// The node.
        node: String,
    },
    /// New nodes join the given site (default: spread over all edge sites), `over` a window.
    Join {
        /// How many.
        count: usize,
        /// Site (`s003`), or every edge site in turn when absent.
        #[serde(default)]
        site: Option<String>,
        /// Joins are spread evenly over this window.
        #[serde(default)]
        over: Dur,
    },
}

fn one() -> usize {
    1
}
fn random() -> String {
    "random".into()
}

/// A check on the outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "snake_case", deny_unknown_fields)]
pub enum Assertion {
    /// Every live node's membership table holds every member it should within `within` of the
    /// start (or of the last join or heal, whichever is later).
    ConvergeWithin {
        /// Bound.
        within: Dur,
    },
    /// Every change reaches `fraction` of its target nodes within `within`.
    ChangeReaches {
        /// Fraction (0..1].
        fraction: f64,
        /// Bound.
        within: Dur,
    },
    /// At the end, every live node holding a document has every change written to it.
    NoAcknowledgedWriteLost,
    /// Every crashed node is offline on every node that tracks it within `within`.
    DetectedWithin {
        /// Bound.
        within: Dur,
    },
    /// No live, reachable node is ever marked offline.
    NoFalseOffline,
    /// Every live node refuses a revoked node within `within` of the revocation.
    RevokedRefusedWithin {
        /// Bound.
        within: Dur,
    },
    /// Steady-state gossip stays at or below this many bits per second per node.
    GossipBelow {
        /// Bound.
        bits_per_s: f64,
    },
}

impl Scenario {
    /// Reads a scenario file (`.toml`, `.yaml` or `.yml`) and checks it.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            anyhow::anyhow!("cannot read scenario file {}: {err}", path.display())
        })?;
        let scenario = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Scenario::from_toml(&text),
            Some("yaml" | "yml") => Scenario::from_yaml(&text),
            _ => Err(anyhow::anyhow!(
                "scenario file {} must end in .toml, .yaml or .yml",
                path.display()
            )),
        };
        scenario.map_err(|err| anyhow::anyhow!("scenario file {}: {err:#}", path.display()))
    }

    /// Parses and checks a TOML scenario.
    pub fn from_toml(text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        scenario.check()?;
        Ok(scenario)
    }

    /// Parses and checks a YAML scenario.
    pub fn from_yaml(text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario =
            serde_norway::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        scenario.check()?;
        Ok(scenario)
    }

    /// Names of the edge sites.
    pub fn site_names(&self) -> Vec<String> {
        (1..=self.fleet.sites).map(site_name).collect()
    }

    /// Total nodes at the start.
    pub fn initial_nodes(&self) -> usize {
        self.fleet.anchors + self.fleet.sites * self.fleet.nodes_per_site
    }

    /// Checks what serde cannot: ranges and references.
    pub fn check(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        let f = &self.fleet;
        if f.sites == 0 || f.sites > 250 {
            bail!("fleet.sites must be between 1 and 250, not {}", f.sites);
        }
        if f.nodes_per_site == 0 || f.nodes_per_site > 10_000 {
            bail!(
                "fleet.nodes_per_site must be between 1 and 10000, not {}",
                f.nodes_per_site
            );
        }
        if f.gateways_per_site == 0 || f.gateways_per_site > f.nodes_per_site {
            bail!(
                "fleet.gateways_per_site must be between 1 and nodes_per_site ({}), not {}",
                f.nodes_per_site,
                f.gateways_per_site
            );
        }
        if f.anchors == 0 || f.anchors > 16 {
            bail!("fleet.anchors must be between 1 and 16, not {}", f.anchors);
        }
        if f.tenants == 0 || f.tenants > f.sites {
            bail!(
                "fleet.tenants must be between 1 and the number of sites ({}), not {}",
                f.sites,
                f.tenants
            );
        }
        if self.initial_nodes() > 50_000 {
            bail!("a scenario may start at most 50000 nodes");
        }
        if self.duration.0.is_zero() || self.duration.0 > Duration::from_secs(24 * 3600) {
            bail!("duration must be above zero and at most 24h");
        }
        let m = &self.mesh;
        if m.gossip_interval.0 < Duration::from_millis(10) {
            bail!("mesh.gossip_interval must be at least 10ms");
        }
        if m.rumor_fanout > 0 && m.rumor_gap.0 < Duration::from_millis(10) {
            bail!("mesh.rumor_gap must be at least 10ms (or set mesh.rumor_fanout = 0)");
        }
        if m.rumor_fanout > 16 {
            bail!("mesh.rumor_fanout must be at most 16");
        }
        if m.tick_interval.0 < Duration::from_millis(10) {
            bail!("mesh.tick_interval must be at least 10ms");
        }
        if m.anti_entropy_interval.0 < Duration::from_millis(100) {
            bail!("mesh.anti_entropy_interval must be at least 100ms");
        }
        nexus_mesh::MembershipConfig {
            suspect_after: m.suspect_after.0,
            offline_after: m.offline_after.0,
            decommission_grace: Duration::from_secs(3600),
            ..Default::default()
        }
        .validate()
        .map_err(|e| anyhow::anyhow!("{}", e.replace("membership.", "mesh.")))?;
        m.detector().validate().map_err(|e| {
            anyhow::anyhow!(
                "{}",
                e.replace("detector.suspect_after", "mesh.probe_after")
                    .replace("detector.", "mesh.")
            )
        })?;
        if m.push_fanout == 0 || m.push_fanout > 64 {
            bail!("mesh.push_fanout must be between 1 and 64");
        }
        let n = &self.network;
        for (name, l) in [
            ("site_latency", n.site_latency),
            ("wan_latency", n.wan_latency),
        ] {
            if l.min > l.max {
                bail!(
                    "network.{name}: min ({:?}) is above max ({:?})",
                    l.min.0,
                    l.max.0
                );
            }
            if l.max.0 > Duration::from_secs(10) {
                bail!("network.{name}: max must be at most 10s");
            }
        }
        for (name, p) in [("site_loss", n.site_loss), ("wan_loss", n.wan_loss)] {
            if !(0.0..1.0).contains(&p) {
                bail!("network.{name} must be in [0, 1), not {p}");
            }
        }
        if n.mtu < 576 || n.mtu > 65_535 {
            bail!("network.mtu must be between 576 and 65535, not {}", n.mtu);
        }
        let sites = self.site_names();
        let known_site = |s: &str| s == "core" || sites.iter().any(|x| x == s);
        let check_sites = |what: &str, list: &[String]| -> anyhow::Result<()> {
            for s in list {
                if !known_site(s) {
                    bail!(
                        "{what}: unknown site {s:?} (sites are core and s001..s{:03})",
                        f.sites
                    );
                }
            }
            Ok(())
        };
        for event in &self.timeline {
            let at = event.at.0;
            if at > self.duration.0 {
                bail!(
                    "an event at {:?} is after the end of the scenario ({:?})",
                    at,
                    self.duration.0
                );
            }
            let what = format!("event at {}ms", at.as_millis());
            match &event.action {
                Action::Change {
                    document,
                    count,
                    every,
                    ..
                } => {
                    if *count == 0 || *count > 100_000 {
                        bail!("{what}: change count must be between 1 and 100000");
                    }
                    if *count > 1 && every.0.is_zero() {
                        bail!("{what}: {count} changes need `every` (the time between them)");
                    }
                    if document != "fleet" {
                        let Some(t) = document.strip_prefix("tenant:") else {
                            bail!(
                                "{what}: document must be `fleet` or `tenant:<tenant>`, not {document:?}"
                            );
                        };
                        let index: Option<usize> = t.strip_prefix('t').and_then(|i| i.parse().ok());
                        if index.is_none_or(|i| i >= f.tenants) {
                            bail!(
                                "{what}: unknown tenant {t:?} (tenants are t0..t{})",
                                f.tenants - 1
                            );
                        }
                    }
                }
                Action::Crash(sel) | Action::Restart(sel) => {
                    check_selector(&what, sel, &check_sites)?
                }
                Action::PowerCut { select, .. } => check_selector(&what, select, &check_sites)?,
                Action::ClockSkew { select, skew } => {
                    check_selector(&what, select, &check_sites)?;
                    parse_skew(skew).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
                }
                Action::Partition { sites } => {
                    if sites.is_empty() {
                        bail!("{what}: a partition needs at least one site");
                    }
                    check_sites(&what, sites)?;
                }
                Action::Asymmetric { from, to } => {
                    check_sites(&what, from)?;
                    check_sites(&what, to)?;
                }
                Action::LossBurst { loss, sites, .. } => {
                    if !(0.0..=1.0).contains(loss) {
                        bail!("{what}: loss must be in [0, 1]");
                    }
                    check_sites(&what, sites)?;
                }
                Action::Join { count, site, .. } => {
                    if *count == 0 || *count > 50_000 {
                        bail!("{what}: join count must be between 1 and 50000");
                    }
                    if let Some(site) = site {
                        check_sites(&what, std::slice::from_ref(site))?;
                    }
                }
                Action::Heal | Action::Revoke { .. } => {}
            }
        }
        for a in &self.assertions {
            if let Assertion::ChangeReaches { fraction, .. } = a
                && !(*fraction > 0.0 && *fraction <= 1.0)
            {
                bail!("assert change_reaches: fraction must be in (0, 1]");
            }
        }
        Ok(())
    }
}

fn check_selector(
    what: &str,
    sel: &Selector,
    check_sites: &impl Fn(&str, &[String]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    check_sites(what, &sel.sites)?;
    if let Some(f) = sel.fraction
        && !(0.0..=1.0).contains(&f)
    {
        anyhow::bail!("{what}: fraction must be in [0, 1]");
    }
    Ok(())
}

/// `30s` or `-30s` as signed milliseconds.
pub fn parse_skew(text: &str) -> Result<i64, String> {
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let d = nexus_mesh::parse_duration(rest)?;
    Ok(sign * d.as_millis() as i64)
}

/// Name of edge site `i` (1-based).
pub fn site_name(i: usize) -> String {
    format!("s{i:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
name = "small"
seed = 3
duration = "20s"

[fleet]
sites = 2
nodes_per_site = 10

[network]
wan_loss = 0.01

[[timeline]]
at = "5s"
action = "change"
document = "fleet"
count = 2
every = "1s"

[[timeline]]
at = "8s"
action = "crash"
nodes = ["s001-n003"]

[[assert]]
check = "converge_within"
within = "5s"
"#;

    #[test]
    fn toml_and_yaml_scenarios_parse_and_bad_ones_say_why() {
        let s = Scenario::from_toml(SMALL).unwrap();
        assert_eq!(s.initial_nodes(), 23);
        assert_eq!(s.timeline.len(), 2);
        assert!(matches!(s.timeline[1].action, Action::Crash(_)));

        let yaml = r#"
name: y
duration: 10s
fleet: { sites: 1, nodes_per_site: 5 }
timeline:
  - { at: 1s, action: partition, sites: [s001] }
  - { at: 2s, action: heal }
assert:
  - { check: no_acknowledged_write_lost }
"#;
        let y = Scenario::from_yaml(yaml).unwrap();
        assert!(matches!(y.timeline[1].action, Action::Heal));

        let bad = SMALL.replace("nodes_per_site = 10", "nodes_per_site = 0");
        assert!(
            Scenario::from_toml(&bad)
                .unwrap_err()
                .to_string()
                .contains("nodes_per_site")
        );
        let bad = SMALL.replace("document = \"fleet\"", "document = \"tenant:t7\"");
        assert!(
            Scenario::from_toml(&bad)
                .unwrap_err()
                .to_string()
                .contains("unknown tenant")
        );
        let bad = SMALL.replace("at = \"8s\"", "at = \"80s\"");
        assert!(
            Scenario::from_toml(&bad)
                .unwrap_err()
                .to_string()
                .contains("after the end")
        );
        let bad = SMALL.replace("action = \"crash\"", "action = \"explode\"");
        assert!(Scenario::from_toml(&bad).is_err());
        let bad = SMALL.replace("count = 2", "count = 2\ncolour = \"red\"");
        assert!(
            Scenario::from_toml(&bad)
                .unwrap_err()
                .to_string()
                .contains("colour")
        );
        let bad = SMALL.replace("wan_loss = 0.01", "wan_loss = 1.5");
        assert!(
            Scenario::from_toml(&bad)
                .unwrap_err()
                .to_string()
                .contains("wan_loss")
        );
        assert_eq!(parse_skew("-30s"), Ok(-30_000));
    }
}
