//! The node status lifecycle, I/O-free: observations of gossip state and the passage of time go
//! in, statuses and transitions come out. Time is injected ([`Now`]), so tests drive it by hand.
//!
//! ```text
//!            heartbeat advancing, healthy
//!   ┌──────────────► online ◄──────────────┐
//!   │                  │ suspect_after       │ heartbeat advances again
//!   │                  ▼ or health failing   │
//!   │               degraded ────────────────┘
//!   │                  │ offline_after without a heartbeat
//!   │                  ▼
//!   └─(new heartbeat)─ offline
//!
//!   draining:        set by an operator; shown while the node is alive (offline wins)
//!   decommissioned:  set by an operator; final; forgotten after `decommission_grace`
//!   offline for `forget_offline_after`: forgotten
//! ```
//!
//! A forgotten member leaves a tombstone (its incarnation and last heartbeats) for
//! [`Membership::set_tombstone_ttl`], at most [`MAX_TOMBSTONES`] of them: gossip state of that
//! incarnation still carried by some peer does not bring it back, a new incarnation does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use nexus_ca::NodeId;
use serde::{Deserialize, Serialize};

use crate::wire::{NodeInfo, OperatorAction, SelfStatus};

/// Timing of failure detection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipConfig {
    /// A node whose heartbeat has not advanced for this long is `degraded` (suspected).
    #[serde(with = "humantime_serde_compat")]
    pub suspect_after: Duration,
    /// A node whose heartbeat has not advanced for this long is `offline`.
    #[serde(with = "humantime_serde_compat")]
    pub offline_after: Duration,
    /// How long a decommissioned node stays listed before it is forgotten.
    #[serde(with = "humantime_serde_compat")]
    pub decommission_grace: Duration,
    /// How long a node may stay `offline` (in this node's view) before it is forgotten: dropped
    /// from the table, from what the node lists and from what it remembers across restarts.
    #[serde(
        with = "humantime_serde_compat",
        default = "default_forget_offline_after"
    )]
    pub forget_offline_after: Duration,
}

/// Default of [`MembershipConfig::forget_offline_after`]: a week, long enough to ride out a
/// site outage over a long weekend.
pub const FORGET_OFFLINE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

fn default_forget_offline_after() -> Duration {
    FORGET_OFFLINE_AFTER
}

/// Most tombstones of forgotten members a table keeps; past it the ones expiring first go.
pub const MAX_TOMBSTONES: usize = 4096;

impl Default for MembershipConfig {
    /// Tuned for the default 250 ms gossip interval: at 50 nodes a live node's heartbeat reaches
    /// every node within ~0.75 s (measured: detection lag over `offline_after` is at most that), so
    /// 1.2 s of silence is suspicious and 2 s is a failure, with a false-alarm count the benchmark
    /// reports.
    fn default() -> Self {
        MembershipConfig {
            suspect_after: Duration::from_millis(1200),
            offline_after: Duration::from_millis(2000),
            decommission_grace: Duration::from_secs(24 * 3600),
            forget_offline_after: FORGET_OFFLINE_AFTER,
        }
    }
}

impl MembershipConfig {
    /// Checks that the timings make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.suspect_after.is_zero() {
            return Err("membership.suspect_after must be above zero".into());
        }
        if self.offline_after <= self.suspect_after {
            return Err(format!(
                "membership.offline_after ({:?}) must be longer than membership.suspect_after ({:?})",
                self.offline_after, self.suspect_after
            ));
        }
        if self.forget_offline_after <= self.offline_after {
            return Err(format!(
                "membership.forget_offline_after ({:?}) must be longer than membership.offline_after ({:?}), or nodes are forgotten as soon as they go offline",
                self.forget_offline_after, self.offline_after
            ));
        }
        Ok(())
    }
}

/// Durations in config files are written like `1500ms` or `2s`.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Where a node is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Heartbeat advancing, health checks passing.
    Online,
    /// Health checks failing, or heartbeat late (suspected).
    Degraded,
    /// Heartbeat silent past `offline_after`.
    Offline,
    /// An operator is draining it.
    Draining,
    /// An operator removed it from the fleet.
    Decommissioned,
}

impl NodeStatus {
    /// Every status, for metrics.
    pub const ALL: [NodeStatus; 5] = [
        NodeStatus::Online,
        NodeStatus::Degraded,
        NodeStatus::Offline,
        NodeStatus::Draining,
        NodeStatus::Decommissioned,
    ];

    /// Lowercase name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Online => "online",
            NodeStatus::Degraded => "degraded",
            NodeStatus::Offline => "offline",
            NodeStatus::Draining => "draining",
            NodeStatus::Decommissioned => "decommissioned",
        }
    }
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NodeStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        NodeStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown node status {s:?}"))
    }
}

/// The gossip pool an observation came from. A node is in its site's pool; anchors and site
/// gateways are also in the fleet's WAN pool (DESIGN invariant 7: pools stay small enough for
/// one datagram digest, and the fleet grows by adding sites).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// The pool of the node's own site.
    Site,
    /// The pool of anchors and site gateways that joins the sites.
    Wan,
}

impl Pool {
    fn index(self) -> usize {
        match self {
            Pool::Site => 0,
            Pool::Wan => 1,
        }
    }
}

/// What a gateway says about a member of its site, published in the WAN pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The member reported on.
    pub subject: NodeId,
    /// The gateway reporting.
    pub reporter: NodeId,
    /// The status the gateway derives for it.
    pub status: NodeStatus,
    /// The incarnation the gateway sees.
    pub generation: u64,
}

/// The current time, as both a monotonic reading (for detection) and wall clock (for display).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since an arbitrary origin.
    pub mono: Duration,
    /// Unix milliseconds.
    pub wall_ms: u64,
}

/// One node as the local node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub node_id: NodeId,
    /// Incarnation: chitchat generation (start time of the process, unix ms).
    pub generation: u64,
    /// Gossip address of the current incarnation.
    pub gossip_addr: Option<SocketAddr>,
    /// What the node publishes about itself; `None` until its state has been received.
    pub info: Option<NodeInfo>,
    /// Health summary the node publishes: `ok` or the failing check.
    pub health: String,
    /// The node's data-plane summary (JSON: backend, counters, policy generation), if it
    /// publishes one.
    #[serde(default)]
    pub dataplane: Option<String>,
    /// Status the node declares about itself.
    pub self_status: SelfStatus,
    /// Derived status.
    pub status: NodeStatus,
    /// Wall clock (unix ms) when the status last changed.
    pub status_since_ms: u64,
    /// Wall clock (unix ms) when its heartbeat last advanced, as seen here.
    pub last_heartbeat_ms: Option<u64>,
    /// Operator action in force, with the unix ms it was taken at.
    pub operator: Option<(OperatorAction, u64)>,
    /// Where the node's failure detector listens, if it runs one.
    #[serde(default)]
    pub probe_addr: Option<SocketAddr>,
    /// A failure detector's verdict on the current incarnation: (generation, when).
    #[serde(skip)]
    verdict: Option<(u64, Duration)>,
    /// Last heartbeat counter seen, per pool (each pool's chitchat counts its own).
    #[serde(skip)]
    heartbeat: [u64; 2],
    /// The pools this node has been observed in (by heartbeat), per [`Pool`].
    #[serde(skip)]
    seen_in: [bool; 2],
    /// For a member of another site: what the gateways of its site report, by gateway.
    #[serde(skip)]
    reports: BTreeMap<NodeId, (NodeStatus, u64)>,
    /// Monotonic time of the last heartbeat advance.
    #[serde(skip)]
    last_advance: Option<Duration>,
    /// Whether chitchat's phi-accrual detector holds this incarnation live, per pool it was
    /// observed in.
    #[serde(skip)]
    accrual_live: [Option<bool>; 2],
    /// Whether that detector has held this incarnation live since it was last offline. Until
    /// then its "dead" only means "too few samples yet" (a new incarnation, a healed partition).
    #[serde(skip)]
    accrual_armed: bool,
}

impl Member {
    /// Whether this node's heartbeat has been observed in `pool`.
    pub fn in_pool(&self, pool: Pool) -> bool {
        self.seen_in[pool.index()]
    }

    /// Whether this node is known only from its site gateways' reports (a member of another
    /// site, seen from an anchor or gateway).
    pub fn is_remote(&self) -> bool {
        !self.seen_in.iter().any(|s| *s) && !self.reports.is_empty()
    }

    /// Whether this member's status comes from gateway reports and verdicts (a member of
    /// another site) rather than from heartbeats heard here.
    fn judged_by_reports(&self) -> bool {
        self.is_remote() || (self.verdict.is_some() && self.seen_in == [false; 2])
    }

    fn accrual(&self) -> bool {
        // Live if any pool that observed it holds it live; unobserved counts as live.
        let observed: Vec<bool> = self.accrual_live.iter().flatten().copied().collect();
        observed.is_empty() || observed.iter().any(|l| *l)
    }

    fn blank(node_id: NodeId, generation: u64, now: Now) -> Member {
        Member {
            node_id,
            generation,
            gossip_addr: None,
            info: None,
            health: "unknown".to_string(),
            dataplane: None,
            self_status: SelfStatus::Active,
            status: NodeStatus::Online,
            status_since_ms: now.wall_ms,
            last_heartbeat_ms: None,
            operator: None,
            probe_addr: None,
            verdict: None,
            heartbeat: [0; 2],
            seen_in: [false; 2],
            reports: BTreeMap::new(),
            last_advance: None,
            accrual_live: [None; 2],
            accrual_armed: false,
        }
    }
}

/// A status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Which node.
    pub node_id: NodeId,
    /// Previous status.
    pub from: NodeStatus,
    /// New status.
    pub to: NodeStatus,
}

/// Why a member was forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForgetReason {
    /// Offline for longer than `forget_offline_after`.
    Offline,
    /// Decommissioned for longer than `decommission_grace`.
    Decommissioned,
}

impl ForgetReason {
    /// Lowercase name, as in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ForgetReason::Offline => "offline",
            ForgetReason::Decommissioned => "decommissioned",
        }
    }
}

/// A member dropped from the table by [`Membership::tick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    /// Which node.
    pub node_id: NodeId,
    /// Why.
    pub reason: ForgetReason,
}

/// What the table keeps of a forgotten member for a while.
#[derive(Debug, Clone, Copy)]
struct Tombstone {
    /// The incarnation forgotten: news of it (or an older one) does not re-create the member.
    generation: u64,
    /// Its highest heartbeat seen per pool (0: none seen there).
    heartbeat: [u64; 2],
    /// When a heartbeat beyond the one it was forgotten with was first seen: a peer's copy
    /// catching up, or the node alive after all (which the heartbeat still advancing
    /// `suspect_after` later tells).
    stirred: Option<Duration>,
    /// Monotonic time the tombstone expires.
    until: Duration,
}

/// What one gossip state says about one node incarnation.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Node id.
    pub node_id: NodeId,
    /// chitchat generation.
    pub generation: u64,
    /// Gossip address.
    pub gossip_addr: SocketAddr,
    /// chitchat heartbeat counter.
    pub heartbeat: u64,
    /// Published node info, if present and parseable.
    pub info: Option<NodeInfo>,
    /// Published health.
    pub health: Option<String>,
    /// Published data-plane summary (JSON), if any.
    pub dataplane: Option<String>,
    /// Published self status.
    pub self_status: SelfStatus,
    /// Whether chitchat's phi-accrual detector holds this incarnation live.
    pub accrual_live: bool,
    /// The pool whose gossip state this was read from.
    pub pool: Pool,
    /// Where its failure detector listens, if published.
    pub probe_addr: Option<SocketAddr>,
}

/// The membership table of one node.
#[derive(Debug)]
pub struct Membership {
    config: MembershipConfig,
    self_id: NodeId,
    members: BTreeMap<NodeId, Member>,
    /// Forgotten members, for `tombstone_ttl` each, at most [`MAX_TOMBSTONES`].
    tombstones: BTreeMap<NodeId, Tombstone>,
    tombstone_ttl: Duration,
    /// Whether something the statuses of remote members (known only from reports) depend on
    /// moved since `tick` last derived them: reports, verdicts, operator actions.
    remote_dirty: bool,
    /// Ticks since the remote members' statuses were last derived.
    remote_age: u32,
}

/// Ticks between two passes over the remote members when nothing they depend on moved (their
/// statuses then change only with time: a verdict running out, forgetting).
const REMOTE_EVERY: u32 = 8;

impl Membership {
    /// A table holding only the local node. Tombstones last twice the default dead-incarnation
    /// grace ([`crate::DEAD_INCARNATION_GRACE`]) until [`Membership::set_tombstone_ttl`].
    pub fn new(config: MembershipConfig, self_id: NodeId) -> Membership {
        Membership {
            config,
            self_id,
            members: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            tombstone_ttl: crate::DEAD_INCARNATION_GRACE.saturating_mul(2),
            remote_dirty: true,
            remote_age: 0,
        }
    }

    /// How long a forgotten member's tombstone lasts. It must outlast the gossip state of the
    /// forgotten incarnation that peers may still carry: chitchat drops a dead incarnation's
    /// state after its dead-incarnation grace, so twice that grace is enough.
    pub fn set_tombstone_ttl(&mut self, ttl: Duration) {
        self.tombstone_ttl = ttl;
    }

    /// Restores a member remembered from before a restart. One that was online gets the full
    /// `offline_after` detection window to show up; one that was offline stays offline until news
    /// of it arrives, its offline time running on from the record; one not heard from for longer
    /// than `forget_offline_after` is offline since its last heartbeat, and so forgotten by the
    /// next [`Membership::tick`].
    pub fn restore(&mut self, mut member: Member, now: Now) {
        self.remote_dirty = true;
        member.heartbeat = [0; 2];
        member.accrual_live = [None; 2];
        member.accrual_armed = false;
        let long_silent = member.last_heartbeat_ms.is_some_and(|at| {
            now.wall_ms.saturating_sub(at) > self.config.forget_offline_after.as_millis() as u64
        });
        if long_silent && member.status != NodeStatus::Decommissioned {
            if member.status != NodeStatus::Offline {
                member.status = NodeStatus::Offline;
                member.status_since_ms = member.last_heartbeat_ms.unwrap_or(now.wall_ms);
            }
            member.last_advance = None;
        } else if member.status == NodeStatus::Offline {
            member.last_advance = None;
        } else {
            member.last_advance = Some(now.mono);
        }
        self.members.insert(member.node_id, member);
    }

    /// Whether news of `node`'s incarnation `generation` is about a forgotten incarnation and
    /// must not re-create it. A newer generation clears the tombstone, and so does news of the
    /// same one that `lives` (a sign of life: a long partition healed).
    fn buried(
        &mut self,
        node: NodeId,
        generation: u64,
        lives: impl FnOnce(&mut Tombstone) -> bool,
        now: Now,
    ) -> bool {
        let Some(tombstone) = self.tombstones.get_mut(&node) else {
            return false;
        };
        let alive = tombstone.until <= now.mono
            || generation > tombstone.generation
            || (generation == tombstone.generation && lives(tombstone));
        if alive {
            self.tombstones.remove(&node);
        }
        !alive
    }

    /// Leaves a tombstone for `member`, dropping the ones expiring first past [`MAX_TOMBSTONES`].
    fn bury(&mut self, member: &Member, now: Now) {
        self.tombstones.insert(
            member.node_id,
            Tombstone {
                generation: member.generation,
                heartbeat: member.heartbeat,
                stirred: None,
                until: now.mono.saturating_add(self.tombstone_ttl),
            },
        );
        if self.tombstones.len() > MAX_TOMBSTONES {
            let mut by_expiry: Vec<(Duration, NodeId)> = self
                .tombstones
                .iter()
                .map(|(id, t)| (t.until, *id))
                .collect();
            by_expiry.sort_unstable();
            let excess = self.tombstones.len() - MAX_TOMBSTONES;
            for (_, id) in by_expiry.into_iter().take(excess) {
                self.tombstones.remove(&id);
            }
        }
    }

    /// How many tombstones of forgotten members the table holds.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Members, ordered by node id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// One member.
    pub fn get(&self, node_id: &NodeId) -> Option<&Member> {
        self.members.get(node_id)
    }

    /// Records what gossip says about one node incarnation. Older incarnations are ignored; a
    /// newer one (a restart) replaces the previous.
    pub fn observe(&mut self, obs: Observation, now: Now) {
        let proof = self.config.suspect_after;
        if !self.members.contains_key(&obs.node_id)
            && self.buried(
                obs.node_id,
                obs.generation,
                // Peers' copies of a dead incarnation may hold a few heartbeats more than this
                // node saw; they arrive in a burst and stop. A live node's keep coming: its
                // heartbeat still advancing `suspect_after` after the first advance proves it.
                |t| {
                    let pool = obs.pool.index();
                    if obs.heartbeat <= t.heartbeat[pool] {
                        return false;
                    }
                    t.heartbeat[pool] = obs.heartbeat;
                    let first = *t.stirred.get_or_insert(now.mono);
                    now.mono.saturating_sub(first) >= proof
                },
                now,
            )
        {
            return;
        }
        let pool = obs.pool.index();
        let member = self
            .members
            .entry(obs.node_id)
            .or_insert_with(|| Member::blank(obs.node_id, obs.generation, now));
        if obs.generation < member.generation {
            return;
        }
        if obs.generation > member.generation {
            member.generation = obs.generation;
            member.heartbeat = [0; 2];
            member.accrual_live = [None; 2];
            member.accrual_armed = false;
            member.verdict = None;
        }
        if obs.probe_addr.is_some() {
            member.probe_addr = obs.probe_addr;
        }
        // The site pool's address is the one peers use; a WAN address only stands in for a
        // member seen nowhere else.
        if obs.pool == Pool::Site || !member.seen_in[Pool::Site.index()] {
            member.gossip_addr = Some(obs.gossip_addr);
        }
        // A node first seen in a second pool brings that pool's counter: a baseline, not a
        // sign of life.
        let baseline_only = !member.seen_in[pool] && member.seen_in.iter().any(|s| *s);
        member.seen_in[pool] = true;
        let advanced = obs.heartbeat > member.heartbeat[pool];
        if (advanced && !baseline_only) || member.last_advance.is_none() {
            member.last_advance = Some(now.mono);
            member.last_heartbeat_ms = Some(now.wall_ms);
            // Gossip still carries a crashed node's last heartbeats for a while after the
            // verdict; an advance long after it means the node lives.
            if advanced
                && member
                    .verdict
                    .is_some_and(|(_, at)| now.mono.saturating_sub(at) > self.config.suspect_after)
            {
                member.verdict = None;
            }
        }
        if advanced {
            member.heartbeat[pool] = obs.heartbeat;
        }
        if let Some(info) = obs.info {
            member.info = Some(info);
        }
        if let Some(health) = obs.health {
            member.health = health;
        }
        if obs.dataplane.is_some() {
            member.dataplane = obs.dataplane;
        }
        member.self_status = obs.self_status;
        member.accrual_live[pool] = Some(obs.accrual_live);
        member.accrual_armed |= obs.accrual_live;
    }

    /// A failure detector heard from `node`'s incarnation `generation` directly: a sign of life.
    pub fn heard(&mut self, node: NodeId, generation: u64, now: Now) {
        if let Some(member) = self.members.get_mut(&node)
            && member.generation == generation
            && !member.is_remote()
        {
            member.last_advance = Some(now.mono);
            member.last_heartbeat_ms = Some(now.wall_ms);
        }
    }

    /// A failure detector declared `node`'s incarnation `generation` down: offline from the
    /// next [`Membership::tick`] until it refutes or a newer incarnation shows up.
    /// Returns whether this was news (the verdict was not known yet).
    pub fn declare_down(&mut self, node: NodeId, generation: u64, now: Now) -> bool {
        if node == self.self_id {
            return false;
        }
        // Only members already known: a peer naming made-up ids must not grow the table.
        let Some(member) = self.members.get_mut(&node) else {
            return false;
        };
        // The verdict names an incarnation; it counts while that incarnation is the member's
        // (see `verdict_holds`), and a verdict on an older one gives way to a newer one.
        if generation >= member.generation && member.verdict.is_none_or(|(g, _)| g < generation) {
            member.verdict = Some((generation, now.mono));
            self.remote_dirty = true;
            return true;
        }
        false
    }

    /// `node`'s incarnation `generation` refuted a verdict: it is alive.
    /// Returns whether this was news (a verdict was cleared).
    pub fn declare_alive(&mut self, node: NodeId, generation: u64, now: Now) -> bool {
        if let Some(member) = self.members.get_mut(&node)
            && member.verdict.is_some_and(|(g, _)| g <= generation)
        {
            member.verdict = None;
            if generation == member.generation {
                member.last_advance = Some(now.mono);
                member.last_heartbeat_ms = Some(now.wall_ms);
            }
            self.remote_dirty = true;
            return true;
        }
        false
    }

    /// Replaces every gateway report with `reports` (what the WAN pool says now). Reports about
    /// nodes observed here by heartbeat, and about this node, are ignored: first-hand news wins.
    pub fn set_reports(&mut self, reports: impl IntoIterator<Item = Report>, now: Now) {
        self.remote_dirty = true;
        for member in self.members.values_mut() {
            member.reports.clear();
        }
        for report in reports {
            if report.subject == self.self_id || report.reporter == self.self_id {
                continue;
            }
            // Reports of every gateway are kept: `tick` counts those of gateways it holds live
            // (so a gateway coming back speaks for its site again at once). But only a live one
            // brings in a member or a newer incarnation of one.
            let reporter_live = self.members.get(&report.reporter).is_some_and(|r| {
                matches!(
                    r.status,
                    NodeStatus::Online | NodeStatus::Degraded | NodeStatus::Draining
                )
            });
            let known = self.members.get(&report.subject).map(|m| m.generation);
            if !reporter_live && known.is_none_or(|g| report.generation > g) {
                continue;
            }
            // A forgotten member comes back from a report only when a gateway sees it live
            // (or a newer incarnation): a report that it is offline is not news.
            let live = matches!(
                report.status,
                NodeStatus::Online | NodeStatus::Degraded | NodeStatus::Draining
            );
            if known.is_none() && self.buried(report.subject, report.generation, |_| live, now) {
                continue;
            }
            let member = self
                .members
                .entry(report.subject)
                .or_insert_with(|| Member::blank(report.subject, report.generation, now));
            if member.seen_in.iter().any(|s| *s) || report.generation < member.generation {
                continue;
            }
            if report.generation > member.generation {
                member.generation = report.generation;
                member.reports.clear();
                if member.verdict.is_some_and(|(g, _)| g < report.generation) {
                    member.verdict = None;
                }
            }
            member
                .reports
                .insert(report.reporter, (report.status, report.generation));
        }
    }

    /// Applies an operator action published by some node. The latest action wins;
    /// decommissioning is final.
    pub fn apply_operator(&mut self, target: NodeId, action: OperatorAction, at_ms: u64) {
        let Some(member) = self.members.get_mut(&target) else {
            return;
        };
        match member.operator {
            Some((OperatorAction::Decommission, _)) => {}
            Some((_, previous)) if previous >= at_ms => {}
            _ => {
                member.operator = Some((action, at_ms));
                self.remote_dirty = true;
            }
        }
    }

    /// Re-derives every status at `now`; returns the changes. Decommissioned members past their
    /// grace period, and members offline for longer than `forget_offline_after`, are forgotten
    /// (each leaving a tombstone) and returned in the second list.
    pub fn tick(&mut self, now: Now) -> (Vec<Transition>, Vec<Forgotten>) {
        let mut transitions = Vec::new();
        let mut forgotten = Vec::new();
        self.tombstones.retain(|_, t| t.until > now.mono);
        // First-hand members (heard in a pool here) first: their statuses move with time.
        for member in self.members.values_mut() {
            if !member.judged_by_reports() {
                let status = derive_status(&self.config, self.self_id, member, now);
                settle(
                    &self.config,
                    self.self_id,
                    member,
                    status,
                    now,
                    &mut transitions,
                    &mut forgotten,
                );
            }
        }
        // Members of other sites (on a gateway or anchor: most of the fleet) take their status
        // from reports and verdicts, which the table is told of: they are derived again when
        // those moved, when a first-hand status changed (a gateway's liveness decides whether its
        // reports count), and every few ticks for what time alone changes.
        self.remote_age += 1;
        if self.remote_dirty || !transitions.is_empty() || self.remote_age >= REMOTE_EVERY {
            self.remote_dirty = false;
            self.remote_age = 0;
            // A report counts while its gateway is alive here.
            let alive_reporters: std::collections::BTreeSet<NodeId> = self
                .members
                .values()
                .filter(|m| {
                    !m.is_remote()
                        && matches!(
                            m.status,
                            NodeStatus::Online | NodeStatus::Degraded | NodeStatus::Draining
                        )
                })
                .map(|m| m.node_id)
                .collect();
            for member in self.members.values_mut() {
                if member.judged_by_reports() {
                    let status = remote_status(&self.config, member, &alive_reporters, now);
                    settle(
                        &self.config,
                        self.self_id,
                        member,
                        status,
                        now,
                        &mut transitions,
                        &mut forgotten,
                    );
                }
            }
        }
        for gone in &forgotten {
            if let Some(member) = self.members.remove(&gone.node_id) {
                self.bury(&member, now);
            }
        }
        (transitions, forgotten)
    }

    /// Count of members per status.
    pub fn counts(&self) -> BTreeMap<NodeStatus, usize> {
        let mut counts: BTreeMap<NodeStatus, usize> =
            NodeStatus::ALL.into_iter().map(|s| (s, 0)).collect();
        for member in self.members.values() {
            *counts.entry(member.status).or_default() += 1;
        }
        counts
    }
}

/// Records `member`'s newly derived `status` (a transition if it changed) and whether it is to
/// be forgotten now.
fn settle(
    config: &MembershipConfig,
    self_id: NodeId,
    member: &mut Member,
    status: NodeStatus,
    now: Now,
    transitions: &mut Vec<Transition>,
    forgotten: &mut Vec<Forgotten>,
) {
    if status != member.status {
        transitions.push(Transition {
            node_id: member.node_id,
            from: member.status,
            to: status,
        });
        member.status = status;
        member.status_since_ms = now.wall_ms;
        if status == NodeStatus::Offline {
            // Its samples are reset: wait to see it live again before trusting "dead".
            member.accrual_armed = false;
        }
    }
    let reason = match member.operator {
        Some((OperatorAction::Decommission, at)) => (now.wall_ms.saturating_sub(at)
            > config.decommission_grace.as_millis() as u64)
            .then_some(ForgetReason::Decommissioned),
        _ => (member.status == NodeStatus::Offline
            && member.node_id != self_id
            && now.wall_ms.saturating_sub(member.status_since_ms)
                > config.forget_offline_after.as_millis() as u64)
            .then_some(ForgetReason::Offline),
    };
    if let Some(reason) = reason {
        forgotten.push(Forgotten {
            node_id: member.node_id,
            reason,
        });
    }
}

/// The status of a member of another site: the most alive status its live gateways report
/// (one gateway cut off from its site must not take the site offline), offline when no live
/// gateway reports it; decommissioned if any says so.
fn remote_status(
    config: &MembershipConfig,
    member: &Member,
    alive_reporters: &std::collections::BTreeSet<NodeId>,
    now: Now,
) -> NodeStatus {
    if let Some((OperatorAction::Decommission, _)) = member.operator {
        return NodeStatus::Decommissioned;
    }
    // A verdict passed on by its site's gateway wins over reports, which gossip carries
    // slowly, until the reports have had time to catch up.
    if verdict_holds(member)
        && member
            .verdict
            .is_some_and(|(_, at)| now.mono.saturating_sub(at) < config.offline_after)
    {
        return NodeStatus::Offline;
    }
    let rank = |s: NodeStatus| match s {
        NodeStatus::Online => 0,
        NodeStatus::Draining => 1,
        NodeStatus::Degraded => 2,
        NodeStatus::Offline => 3,
        NodeStatus::Decommissioned => 4,
    };
    // Runs for every remote member on every fold of a gateway or anchor: no allocation.
    let mut best: Option<NodeStatus> = None;
    for (_, (status, _)) in member
        .reports
        .iter()
        .filter(|(reporter, _)| alive_reporters.contains(reporter))
    {
        if *status == NodeStatus::Decommissioned {
            return NodeStatus::Decommissioned;
        }
        if best.is_none_or(|b| rank(*status) < rank(b)) {
            best = Some(*status);
        }
    }
    best.unwrap_or(NodeStatus::Offline)
}

/// Whether a detector verdict is about the member's current incarnation.
fn verdict_holds(member: &Member) -> bool {
    member
        .verdict
        .is_some_and(|(generation, _)| generation == member.generation)
}

fn derive_status(
    config: &MembershipConfig,
    self_id: NodeId,
    member: &Member,
    now: Now,
) -> NodeStatus {
    if let Some((OperatorAction::Decommission, _)) = member.operator {
        return NodeStatus::Decommissioned;
    }
    let silent_for = if member.node_id == self_id {
        Duration::ZERO
    } else {
        member
            .last_advance
            .map_or(config.offline_after, |at| now.mono.saturating_sub(at))
    };
    // Offline at `offline_after` of silence at the latest; earlier when chitchat's phi-accrual
    // detector, which adapts to how often this node's heartbeats arrive, already gave up on it —
    // but never before `suspect_after`, so one slow round cannot take a node offline.
    if verdict_holds(member) && member.node_id != self_id {
        return NodeStatus::Offline;
    }
    let accrual_dead = member.accrual_armed && !member.accrual() && member.node_id != self_id;
    if silent_for >= config.offline_after || (accrual_dead && silent_for >= config.suspect_after) {
        return NodeStatus::Offline;
    }
    if matches!(member.operator, Some((OperatorAction::Drain, _)))
        || member.self_status == SelfStatus::Draining
    {
        return NodeStatus::Draining;
    }
    if silent_for >= config.suspect_after || (member.health != "ok" && member.health != "unknown") {
        return NodeStatus::Degraded;
    }
    NodeStatus::Online
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn at(ms: u64) -> Now {
        Now {
            mono: Duration::from_millis(ms),
            wall_ms: 1_700_000_000_000 + ms,
        }
    }

    fn obs(n: u8, generation: u64, heartbeat: u64) -> Observation {
        Observation {
            node_id: id(n),
            generation,
            gossip_addr: ([127, 0, 0, 1], 7000 + n as u16).into(),
            heartbeat,
            info: None,
            health: Some("ok".into()),
            dataplane: None,
            self_status: SelfStatus::Active,
            accrual_live: true,
            pool: Pool::Site,
            probe_addr: None,
        }
    }

    fn status(m: &Membership, n: u8) -> NodeStatus {
        m.get(&id(n)).unwrap().status
    }

    #[test]
    fn silence_makes_a_node_degraded_then_offline_and_a_heartbeat_brings_it_back() {
        let mut m = Membership::new(MembershipConfig::default(), id(0));
        m.observe(obs(1, 1, 1), at(0));
        assert!(m.tick(at(100)).0.is_empty());
        assert_eq!(status(&m, 1), NodeStatus::Online);

        let (t, _) = m.tick(at(1300));
        assert_eq!(
            t,
            vec![Transition {
                node_id: id(1),
                from: NodeStatus::Online,
                to: NodeStatus::Degraded
            }]
        );
        m.tick(at(2100));
        assert_eq!(status(&m, 1), NodeStatus::Offline);

        // Same heartbeat again is not a sign of life.
        m.observe(obs(1, 1, 1), at(2700));
        m.tick(at(2700));
        assert_eq!(status(&m, 1), NodeStatus::Offline);

        m.observe(obs(1, 1, 2), at(2800));
        m.tick(at(2800));
        assert_eq!(status(&m, 1), NodeStatus::Online);
    }

    #[test]
    fn a_restart_with_a_new_generation_is_the_same_node_and_older_generations_are_ignored() {
        let mut m = Membership::new(MembershipConfig::default(), id(0));
        m.observe(obs(1, 10, 50), at(0));
        m.tick(at(3000));
        assert_eq!(status(&m, 1), NodeStatus::Offline);
        // Restarted: heartbeat counter restarts from 1 under a new generation.
        m.observe(obs(1, 20, 1), at(3100));
        m.tick(at(3100));
        assert_eq!(status(&m, 1), NodeStatus::Online);
        assert_eq!(m.get(&id(1)).unwrap().generation, 20);
        // The dead incarnation's state still circulates for a while: it must not count.
        m.observe(obs(1, 10, 99), at(5000));
        m.tick(at(5700));
        assert_eq!(status(&m, 1), NodeStatus::Offline);
        assert_eq!(m.members().count(), 1);
    }

    #[test]
    fn failing_health_is_degraded_and_draining_is_shown_while_alive() {
        let mut m = Membership::new(MembershipConfig::default(), id(0));
        let mut sick = obs(1, 1, 1);
        sick.health = Some("store: disk I/O error".into());
        m.observe(sick, at(0));
        m.tick(at(10));
        assert_eq!(status(&m, 1), NodeStatus::Degraded);

        m.observe(obs(2, 1, 1), at(0));
        m.apply_operator(id(2), OperatorAction::Drain, 5);
        m.tick(at(10));
        assert_eq!(status(&m, 2), NodeStatus::Draining);
        m.tick(at(3000));
        assert_eq!(
            status(&m, 2),
            NodeStatus::Offline,
            "a dead draining node is offline"
        );
    }

    #[test]
    fn decommission_is_final_and_forgotten_after_grace() {
        let config = MembershipConfig {
            decommission_grace: Duration::from_secs(60),
            ..MembershipConfig::default()
        };
        let mut m = Membership::new(config, id(0));
        m.observe(obs(1, 1, 1), at(0));
        m.apply_operator(id(1), OperatorAction::Decommission, at(0).wall_ms);
        m.apply_operator(id(1), OperatorAction::Drain, at(10).wall_ms);
        m.tick(at(20));
        assert_eq!(status(&m, 1), NodeStatus::Decommissioned);
        let (_, forgotten) = m.tick(at(61_000));
        assert_eq!(
            forgotten,
            vec![Forgotten {
                node_id: id(1),
                reason: ForgetReason::Decommissioned
            }]
        );
        assert!(m.get(&id(1)).is_none());
    }

    #[test]
    fn the_local_node_is_never_offline_to_itself() {
        let mut m = Membership::new(MembershipConfig::default(), id(0));
        m.observe(obs(0, 1, 1), at(0));
        m.tick(at(60_000));
        assert_eq!(status(&m, 0), NodeStatus::Online);
    }

    #[test]
    fn config_validation_names_the_key() {
        let bad = MembershipConfig {
            suspect_after: Duration::from_secs(3),
            offline_after: Duration::from_secs(2),
            ..MembershipConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("membership.offline_after")
        );
        let bad = MembershipConfig {
            forget_offline_after: Duration::from_secs(1),
            ..MembershipConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("membership.forget_offline_after")
        );
    }

    #[test]
    fn the_accrual_detector_can_only_bring_offline_forward_to_the_suspicion_point() {
        let mut m = Membership::new(MembershipConfig::default(), id(0));
        m.observe(obs(1, 1, 1), at(0));
        let mut dead = obs(1, 1, 1);
        dead.accrual_live = false;
        // chitchat gives up early: still online before suspect_after…
        m.observe(dead.clone(), at(500));
        m.tick(at(1000));
        assert_eq!(status(&m, 1), NodeStatus::Online);
        // …offline from suspect_after on, instead of offline_after.
        m.observe(dead, at(1200));
        m.tick(at(1250));
        assert_eq!(status(&m, 1), NodeStatus::Offline);
        // A live verdict with silence still waits for offline_after.
        let mut m = Membership::new(MembershipConfig::default(), id(0));
        m.observe(obs(2, 1, 1), at(0));
        m.tick(at(1500));
        assert_eq!(status(&m, 2), NodeStatus::Degraded);
        m.tick(at(2000));
        assert_eq!(status(&m, 2), NodeStatus::Offline);
    }

    #[test]
    fn too_few_samples_is_not_dead_for_new_incarnations_and_healed_nodes() {
        let unsampled = |n, generation, heartbeat| {
            let mut o = obs(n, generation, heartbeat);
            o.accrual_live = false;
            o
        };
        // A new node chitchat has not sampled enough: a slow second heartbeat is only suspicious.
        let mut m = Membership::new(MembershipConfig::default(), id(0));
        m.observe(unsampled(1, 1, 1), at(0));
        m.tick(at(1500));
        assert_eq!(status(&m, 1), NodeStatus::Degraded);
        m.observe(unsampled(1, 1, 2), at(1600));
        m.tick(at(1600));
        assert_eq!(status(&m, 1), NodeStatus::Online);

        // Seen live, then offline, then back: its samples were reset, so "dead" is not trusted
        // again until chitchat holds it live once more.
        m.observe(obs(1, 1, 3), at(1700));
        m.tick(at(3800));
        assert_eq!(status(&m, 1), NodeStatus::Offline);
        m.observe(unsampled(1, 1, 4), at(20_000));
        m.tick(at(20_000));
        assert_eq!(status(&m, 1), NodeStatus::Online);
        m.observe(unsampled(1, 1, 4), at(21_300));
        m.tick(at(21_300));
        assert_eq!(
            status(&m, 1),
            NodeStatus::Degraded,
            "not offline at suspect_after"
        );

        // A restart (new generation) also starts unarmed.
        m.observe(obs(1, 1, 5), at(21_400));
        m.observe(unsampled(1, 2, 1), at(21_500));
        m.tick(at(22_800));
        assert_eq!(status(&m, 1), NodeStatus::Degraded);
    }

    /// Forgets offline members after a minute; tombstones last ten minutes.
    fn forgetful() -> Membership {
        let config = MembershipConfig {
            forget_offline_after: Duration::from_secs(60),
            ..MembershipConfig::default()
        };
        let mut m = Membership::new(config, id(0));
        m.set_tombstone_ttl(Duration::from_secs(600));
        m
    }

    fn offline(n: u8) -> Forgotten {
        Forgotten {
            node_id: id(n),
            reason: ForgetReason::Offline,
        }
    }

    /// Node 1 (generation 1, last heartbeat 7) goes offline at 2 s and is forgotten at 62.1 s;
    /// node 2 keeps beating throughout.
    fn forget_node_1(m: &mut Membership) {
        m.observe(obs(1, 1, 7), at(0));
        for (i, t) in (0..=62_100).step_by(500).enumerate() {
            m.observe(obs(2, 1, i as u64 + 1), at(t));
            let (_, forgotten) = m.tick(at(t));
            if t < 62_000 {
                assert!(forgotten.is_empty(), "forgotten at {t} ms: {forgotten:?}");
            }
        }
        let (_, forgotten) = m.tick(at(62_100));
        assert_eq!(forgotten, vec![offline(1)]);
        assert!(m.get(&id(1)).is_none());
        assert_eq!(status(m, 2), NodeStatus::Online);
    }

    #[test]
    fn an_offline_member_is_forgotten_after_forget_offline_after_and_live_ones_stay() {
        let mut m = forgetful();
        m.observe(obs(1, 1, 7), at(0));
        m.observe(obs(2, 1, 1), at(0));
        m.observe(obs(2, 1, 2), at(1_500));
        m.tick(at(2_000));
        assert_eq!(status(&m, 1), NodeStatus::Offline);
        assert_eq!(status(&m, 2), NodeStatus::Online);
        let since = m.get(&id(1)).unwrap().status_since_ms;
        assert_eq!(since, at(2_000).wall_ms);
        // Node 2 beats again; node 1 stays silent.
        m.observe(obs(2, 1, 3), at(61_000));
        let (_, forgotten) = m.tick(at(62_000));
        assert!(
            forgotten.is_empty(),
            "offline for exactly the limit is kept"
        );
        let (_, forgotten) = m.tick(at(62_001));
        assert_eq!(forgotten, vec![offline(1)]);
        assert!(m.get(&id(1)).is_none());
        assert_eq!(m.members().count(), 1);
        assert_eq!(m.tombstones(), 1);
        // A degraded member is not offline: never forgotten for it.
        let mut sick = obs(3, 1, 1);
        sick.health = Some("store: disk I/O error".into());
        m.observe(sick.clone(), at(62_001));
        for t in [100_000, 200_000, 300_000] {
            sick.heartbeat += 1;
            m.observe(sick.clone(), at(t));
            m.observe(obs(2, 1, sick.heartbeat + 1), at(t));
            assert!(m.tick(at(t)).1.is_empty());
            assert_eq!(status(&m, 3), NodeStatus::Degraded);
        }
    }

    #[test]
    fn stale_gossip_of_a_forgotten_incarnation_does_not_bring_it_back() {
        let mut m = forgetful();
        forget_node_1(&mut m);
        // A peer still carries its last state, or an older incarnation's: ignored.
        m.observe(obs(1, 1, 7), at(63_000));
        m.observe(obs(1, 1, 3), at(63_000));
        m.observe(obs(1, 0, 900), at(63_000));
        let mut wan = obs(1, 1, 40);
        wan.pool = Pool::Wan;
        m.observe(wan, at(63_000));
        // Peers that saw a few heartbeats more than this node did pass them on: a burst that
        // stops, not a sign of life.
        m.observe(obs(1, 1, 9), at(63_000));
        m.observe(obs(1, 1, 10), at(63_400));
        m.observe(obs(1, 1, 10), at(66_000));
        // A detector verdict or a sign of life about an unknown node adds nothing either.
        m.heard(id(1), 1, at(63_000));
        m.declare_down(id(1), 1, at(63_000));
        // So does a gateway still reporting it offline, or reporting an older incarnation.
        let report = |status, generation| Report {
            subject: id(1),
            reporter: id(2),
            status,
            generation,
        };
        m.set_reports(
            [
                report(NodeStatus::Offline, 1),
                report(NodeStatus::Online, 0),
            ],
            at(63_000),
        );
        let (transitions, forgotten) = m.tick(at(63_000));
        assert!(m.get(&id(1)).is_none(), "{:?}", m.get(&id(1)));
        assert!(transitions.is_empty() && forgotten.is_empty());
        assert_eq!(m.members().count(), 1);
    }

    #[test]
    fn a_gateway_back_from_a_false_verdict_speaks_for_its_site_again_at_once() {
        let mut m = Membership::new(MembershipConfig::default(), id(0));
        // Gateway 2 is heard first-hand; it reports node 1 of its site online.
        m.observe(obs(2, 1, 1), at(0));
        let report = Report {
            subject: id(1),
            reporter: id(2),
            status: NodeStatus::Online,
            generation: 1,
        };
        m.set_reports([report], at(0));
        m.tick(at(0));
        assert_eq!(status(&m, 1), NodeStatus::Online);
        // A verdict takes the gateway offline, and with it the site it speaks for.
        assert!(m.declare_down(id(2), 1, at(100)));
        assert!(!m.declare_down(id(2), 1, at(150)), "a copy is no news");
        m.set_reports([report], at(200));
        m.tick(at(200));
        assert_eq!(status(&m, 2), NodeStatus::Offline);
        assert_eq!(status(&m, 1), NodeStatus::Offline);
        // A report of an offline gateway brings in nobody new.
        let stranger = Report {
            subject: id(3),
            ..report
        };
        m.set_reports([report, stranger], at(300));
        assert!(m.get(&id(3)).is_none());
        // Refuted: the gateway is online again and its kept report counts in the same tick.
        assert!(m.declare_alive(id(2), 1, at(400)));
        m.tick(at(400));
        assert_eq!(status(&m, 2), NodeStatus::Online);
        assert_eq!(status(&m, 1), NodeStatus::Online);
    }

    #[test]
    fn a_new_incarnation_of_a_forgotten_node_is_admitted_as_a_fresh_member() {
        let mut m = forgetful();
        forget_node_1(&mut m);
        m.observe(obs(1, 2, 1), at(63_000));
        m.tick(at(63_000));
        let member = m.get(&id(1)).expect("the restarted node is a member again");
        assert_eq!(member.generation, 2);
        assert_eq!(member.status, NodeStatus::Online);
        assert_eq!(member.status_since_ms, at(63_000).wall_ms);
        assert_eq!(m.tombstones(), 0);
        // From then on the dead incarnation is ignored as for any member.
        m.observe(obs(1, 1, 99), at(63_100));
        assert_eq!(m.get(&id(1)).unwrap().generation, 2);

        // The same incarnation whose heartbeat keeps advancing lives: a long partition healed.
        let mut m = forgetful();
        forget_node_1(&mut m);
        for (heartbeat, t) in [(8, 63_000), (9, 63_500), (10, 64_000)] {
            m.observe(obs(1, 1, heartbeat), at(t));
            m.tick(at(t));
            assert!(m.get(&id(1)).is_none(), "not yet at {t} ms");
        }
        m.observe(obs(1, 1, 11), at(64_200));
        m.tick(at(64_200));
        assert_eq!(status(&m, 1), NodeStatus::Online);
        assert_eq!(m.tombstones(), 0);

        // And so for a member of another site its gateway sees live again.
        let mut m = forgetful();
        forget_node_1(&mut m);
        m.set_reports(
            [Report {
                subject: id(1),
                reporter: id(2),
                status: NodeStatus::Online,
                generation: 1,
            }],
            at(63_000),
        );
        m.tick(at(63_000));
        assert_eq!(status(&m, 1), NodeStatus::Online);
        assert!(m.get(&id(1)).unwrap().is_remote());
    }

    #[test]
    fn tombstones_expire_and_their_number_is_bounded() {
        let mut m = forgetful();
        forget_node_1(&mut m);
        assert_eq!(m.tombstones(), 1);
        m.tick(at(62_100 + 599_000));
        assert_eq!(m.tombstones(), 1);
        m.tick(at(62_100 + 600_001));
        assert_eq!(m.tombstones(), 0, "expired");
        // Past its tombstone, the table no longer tells stale state from news: by then chitchat
        // has dropped the incarnation's state everywhere.
        m.observe(obs(1, 1, 7), at(62_100 + 600_002));
        assert!(m.get(&id(1)).is_some());

        // Count: forgetting more than MAX_TOMBSTONES members keeps the newest tombstones.
        let mut m = forgetful();
        let wide = |n: usize| {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&(n as u64 + 1).to_be_bytes());
            NodeId(bytes)
        };
        let extra = 10;
        // The first `extra` go offline (and are forgotten) first.
        for (range, t) in [(0..extra, 0), (extra..MAX_TOMBSTONES + extra, 10_000)] {
            for n in range {
                let mut o = obs(1, 1, 1);
                o.node_id = wide(n);
                m.observe(o, at(t));
            }
            m.tick(at(t + 5_000));
        }
        assert_eq!(m.tick(at(70_000)).1.len(), extra);
        assert_eq!(m.tombstones(), extra);
        assert_eq!(m.tick(at(80_000)).1.len(), MAX_TOMBSTONES);
        assert_eq!(m.tombstones(), MAX_TOMBSTONES);
        assert_eq!(m.members().count(), 0);
        // The oldest tombstones went: their stale state is news again, the others' is not.
        for n in [0, extra - 1] {
            let mut o = obs(1, 1, 1);
            o.node_id = wide(n);
            m.observe(o, at(80_001));
            assert!(m.get(&wide(n)).is_some(), "tombstone {n} was dropped");
        }
        for n in [extra, MAX_TOMBSTONES + extra - 1] {
            let mut o = obs(1, 1, 1);
            o.node_id = wide(n);
            m.observe(o, at(80_001));
            assert!(m.get(&wide(n)).is_none(), "tombstone {n} is kept");
        }
    }

    #[test]
    fn restored_members_offline_or_long_silent_stay_offline_and_are_forgotten_in_time() {
        let day = 24 * 3600 * 1000;
        let mut before = Membership::new(MembershipConfig::default(), id(0));
        for n in 1..=3 {
            before.observe(obs(n, 1, 1), at(0));
        }
        before.tick(at(3_000));
        let record = |n: u8| before.get(&id(n)).cloned().unwrap();
        // 1: went offline 6 days ago; 2: offline for 8 days; 3: online when this node stopped,
        // 8 days ago (not heard of since).
        let mut one = record(1);
        (one.status_since_ms, one.last_heartbeat_ms) = (at(0).wall_ms, Some(at(0).wall_ms));
        let mut two = record(2);
        two.status_since_ms = at(0).wall_ms - 2 * day;
        let mut three = record(3);
        three.status = NodeStatus::Online;
        three.last_heartbeat_ms = Some(at(0).wall_ms - 2 * day);

        let restart = |ms: u64| Now {
            mono: Duration::from_millis(ms),
            wall_ms: at(0).wall_ms + 6 * day + ms,
        };
        let mut m = Membership::new(MembershipConfig::default(), id(0));
        for member in [one, two, three] {
            m.restore(member, restart(0));
        }
        let (transitions, forgotten) = m.tick(restart(10));
        assert!(transitions.is_empty(), "{transitions:?}");
        assert_eq!(forgotten, vec![offline(2), offline(3)]);
        assert_eq!(status(&m, 1), NodeStatus::Offline, "no flap to online");
        // Node 1 is forgotten once its week is up, counted from the record.
        assert!(m.tick(restart(day - 10)).1.is_empty());
        assert_eq!(m.tick(restart(day + 10)).1, vec![offline(1)]);
        // Unless news of it comes first: then it is back.
        let mut m = Membership::new(MembershipConfig::default(), id(0));
        m.restore(record(1), restart(0));
        m.observe(obs(1, 1, 2), restart(100));
        m.tick(restart(100));
        assert_eq!(status(&m, 1), NodeStatus::Online);
    }
}
