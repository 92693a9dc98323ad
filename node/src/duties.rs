//! Fleet duties: work that one anchor at a time does for the whole fleet, without a lock
//! service.
//!
//! A duty (`lifecycle`, `gc`) has a record in the fleet document (`duties.<name>`: holder,
//! fencing epoch, when it was taken, the lease). The holder's gossip heartbeats renew its
//! lease, so holding a duty writes nothing; the document changes only when the holder changes.
//! The rule every anchor applies, from its own gossip view and its replica of the fleet
//! document ([`turn`]):
//!
//! * the holder works while its replica names it;
//! * while the holder is alive in this anchor's gossip view, every other anchor waits, even
//!   one that would be preferred (no churn when anchors come and go);
//! * once the holder has been silent (offline, gone, or no longer an anchor) for the lease
//!   (`duties.lease`), or when there is no holder, the live anchor with the lowest node id
//!   takes the duty, with the epoch one above the highest it has seen;
//! * a holder that finds a different holder or a higher epoch in its replica stops at once:
//!   after a partition heals, the merged record names exactly one holder;
//! * an anchor takes nothing within a lease of its own start: its replica and gossip view may
//!   be behind (a restart, a promotion), and it must not mistake "not heard of yet" for
//!   "silent".
//!
//! During a partition each side may have a holder (the side without the holder takes over
//! once the holder was silent there for the lease). That is allowed because every duty is idempotent: it
//! writes the state the fleet should be in (a flag set, an object removed), never a delta,
//! so two holders write the same thing and the merge keeps it once. Work is checked against
//! the lease right before every write ([`Duties::still_holds`]), so a holder that lost its
//! duty stops between two writes, not after a whole sweep.
//!
//! The duties:
//!
//! * `lifecycle`: flags members offline longer than `duties.offline_grace`
//!   (`members.<id>.offline_since`), clears the flag when they return, and marks decommissioned
//!   members whose `membership.decommission_grace` has passed as removed (`removed_at`). Their
//!   certificates were revoked at decommission by the anchors that issued them.
//! * `gc`: removes configuration that names removed nodes (their node overrides; their ids in
//!   route sources, and a route whose every source is gone), tenant CAs of deleted tenants or
//!   removed anchors, and API keys expired or revoked longer than `duties.retention` ago.
//!
//! Separately, every anchor sweeps its own SQLite file (not a duty: nobody else holds it):
//! join tokens and certificate records expired longer than `duties.retention` ago.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use nexus_ca::{NodeId, Role};
use nexus_crdt::{DocId, DutyLease, FleetDoc, RoutePolicy};
use nexus_mesh::{Mesh, NodeStatus};
use serde::{Deserialize, Serialize};

use crate::replication::Replication;
use crate::store::Store;

/// The `lifecycle` duty.
pub const LIFECYCLE: &str = "lifecycle";
/// The `gc` duty.
pub const GC: &str = "gc";
/// Every duty, in the order they run.
pub const ALL: [&str; 2] = [LIFECYCLE, GC];

/// `[duties]` table of the config file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DutiesFile {
    /// How long a holder may be silent before another anchor takes its duties (`15s`).
    pub lease: Option<String>,
    /// How long a node may be offline before it is flagged (`24h`).
    pub offline_grace: Option<String>,
    /// Time between garbage-collection sweeps (`60s`).
    pub gc_interval: Option<String>,
    /// How long expired or revoked tokens, certificates and API keys are kept (`7d`).
    pub retention: Option<String>,
}

/// The duties' settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DutiesConfig {
    /// How long a holder may be silent before another anchor takes over.
    pub lease: Duration,
    /// Offline longer than this: flagged.
    pub offline_grace: Duration,
    /// Between two sweeps.
    pub gc_interval: Duration,
    /// Expired and revoked records are kept this long.
    pub retention: Duration,
}

impl Default for DutiesConfig {
    fn default() -> Self {
        DutiesConfig {
            lease: Duration::from_secs(15),
            offline_grace: Duration::from_secs(24 * 3600),
            gc_interval: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl DutiesConfig {
    /// Resolves the `[duties]` table over the defaults and checks it. `NEXUS_DUTIES_<KEY>`
    /// (`NEXUS_DUTIES_LEASE=5s`) overrides the file, as for other keys.
    pub fn resolve(file: Option<&DutiesFile>) -> anyhow::Result<DutiesConfig> {
        let d = DutiesConfig::default();
        let mut file = file.cloned().unwrap_or_default();
        for (key, slot) in [
            ("LEASE", &mut file.lease),
            ("OFFLINE_GRACE", &mut file.offline_grace),
            ("GC_INTERVAL", &mut file.gc_interval),
            ("RETENTION", &mut file.retention),
        ] {
            if let Ok(value) = std::env::var(format!("NEXUS_DUTIES_{key}")) {
                *slot = Some(value);
            }
        }
        let get = |value: &Option<String>, key: &str, default: Duration| match value {
            None => Ok(default),
            Some(text) => nexus_mesh::parse_duration(text)
                .map_err(|err| anyhow::anyhow!("config key `duties.{key}`: {err}")),
        };
        let config = DutiesConfig {
            lease: get(&file.lease, "lease", d.lease)?,
            offline_grace: get(&file.offline_grace, "offline_grace", d.offline_grace)?,
            gc_interval: get(&file.gc_interval, "gc_interval", d.gc_interval)?,
            retention: get(&file.retention, "retention", d.retention)?,
        };
        if config.lease < Duration::from_secs(2) || config.lease > Duration::from_secs(3600) {
            anyhow::bail!(
                "config key `duties.lease` must be between 2s and 1h (is {:?})",
                config.lease
            );
        }
        if config.gc_interval < Duration::from_secs(1) {
            anyhow::bail!("config key `duties.gc_interval` must be at least 1s");
        }
        if config.offline_grace < Duration::from_secs(1) {
            anyhow::bail!("config key `duties.offline_grace` must be at least 1s");
        }
        Ok(config)
    }
}

/// What the lease rule says one anchor should do about one duty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turn {
    /// This anchor holds the duty with `epoch`.
    Hold { epoch: u64 },
    /// This anchor should take the duty with `epoch`.
    Take { epoch: u64 },
    /// Another anchor holds it (or should take it).
    Wait,
}

/// The lease rule (see the module docs), I/O-free. `live` are the active anchors alive in
/// this node's view (itself among them only while it is one); `vacant_ms` is how long the duty
/// has had no live holder here (its holder silent, or none); `highest` is the highest epoch
/// this anchor has seen for the duty.
///
/// The live anchor of rank k (0 = lowest node id) takes a vacant duty once it has been vacant
/// for k leases, plus one when a holder is recorded (it may only be slow to gossip): the
/// lowest first, the others in turn if it does not (a full disk, an old build).
pub fn turn(
    me: &NodeId,
    lease: Option<&DutyLease>,
    live: &BTreeSet<NodeId>,
    vacant_ms: i64,
    config: &DutiesConfig,
    highest: u64,
) -> Turn {
    let Some(rank) = live.iter().position(|id| id == me) else {
        return Turn::Wait;
    };
    if let Some(l) = lease
        && l.holder == me.to_hex()
    {
        return Turn::Hold { epoch: l.epoch };
    }
    let leases = rank as i64 + i64::from(lease.is_some());
    if vacant_ms < leases.saturating_mul(config.lease.as_millis() as i64) {
        return Turn::Wait;
    }
    Turn::Take {
        epoch: lease.map_or(0, |l| l.epoch).max(highest) + 1,
    }
}

#[derive(Default)]
struct Local {
    /// Highest epoch seen per duty.
    highest: BTreeMap<String, u64>,
    /// Last run per duty: (Unix ms, result).
    last: BTreeMap<String, (i64, String)>,
    /// Epoch held per duty, for noticing a loss.
    held: BTreeMap<String, u64>,
    /// Since when (Unix ms) a recorded holder has not been a live anchor in this view.
    silent_since: BTreeMap<String, i64>,
}

/// The duties on one node (they run on anchors only).
pub struct Duties {
    node_id: NodeId,
    role: Role,
    mesh: Arc<Mesh>,
    replication: Arc<Replication>,
    store: Arc<Store>,
    config: DutiesConfig,
    decommission_grace: Duration,
    local: Mutex<Local>,
    /// When this process started: it takes no duty within a lease of it, so it first learns
    /// who is alive and who holds what (its replica and gossip view may be behind).
    started: std::time::Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn alive(status: NodeStatus) -> bool {
    matches!(
        status,
        NodeStatus::Online | NodeStatus::Degraded | NodeStatus::Draining
    )
}

impl Duties {
    /// The duties of node `node_id`.
    pub fn new(
        node_id: NodeId,
        role: Role,
        mesh: Arc<Mesh>,
        replication: Arc<Replication>,
        store: Arc<Store>,
        config: DutiesConfig,
        decommission_grace: Duration,
    ) -> Duties {
        Duties {
            node_id,
            role,
            mesh,
            replication,
            store,
            config,
            decommission_grace,
            local: Mutex::new(Local::default()),
            started: std::time::Instant::now(),
        }
    }

    /// Every duty as this node sees it (`GET /v1/fleet/duties`).
    pub fn status(&self) -> Vec<nexus_api::tenants::Duty> {
        let fleet = self.replication.fleet_model().unwrap_or_default();
        let local = lock(&self.local);
        ALL.iter()
            .map(|name| {
                let lease = fleet.duties.get(*name);
                let last = local.last.get(*name);
                nexus_api::tenants::Duty {
                    name: name.to_string(),
                    holder: lease.map(|l| l.holder.clone()),
                    epoch: lease.map_or(0, |l| l.epoch),
                    acquired_at: lease.map(|l| l.acquired_at),
                    held_here: local.held.contains_key(*name),
                    last_run_at: last.map(|l| l.0),
                    last_result: last.map(|l| l.1.clone()),
                }
            })
            .collect()
    }

    /// The duty's record and the anchors alive in this node's view, by the fleet's member
    /// records: itself included only while its own record is an active anchor's (a
    /// decommissioned anchor still running holds nothing).
    fn view(&self, duty: &str) -> Option<(Option<DutyLease>, BTreeSet<NodeId>)> {
        let mut candidates: Vec<NodeId> = self
            .mesh
            .members()
            .into_iter()
            .filter(|m| alive(m.status))
            .map(|m| m.node_id)
            .collect();
        candidates.push(self.node_id);
        self.replication.with_fleet(|fleet| {
            let active = |id: &NodeId| {
                fleet.members.get(&id.to_hex()).is_some_and(|r| {
                    r.role == "anchor" && r.decommissioned_at.is_none() && r.removed_at.is_none()
                })
            };
            let live = candidates.into_iter().filter(active).collect();
            (fleet.duties.get(duty).cloned(), live)
        })
    }

    /// Whether this node still holds `duty` with `epoch` (checked before every write a duty
    /// makes: the fence).
    pub fn still_holds(&self, duty: &str, epoch: u64) -> bool {
        let me = self.node_id.to_hex();
        self.replication
            .with_fleet(|fleet| {
                fleet
                    .duties
                    .get(duty)
                    .is_some_and(|l| l.holder == me && l.epoch == epoch)
            })
            .unwrap_or(false)
    }

    /// Applies the lease rule for `duty` now; the epoch to work with when this node holds it
    /// and may act.
    async fn claim(self: &Arc<Self>, duty: &str) -> Option<u64> {
        let (lease, live) = self.view(duty)?;
        let lease = lease.as_ref();
        let now = crate::now_ms() as i64;
        let highest = {
            let mut local = lock(&self.local);
            let seen = local.highest.entry(duty.to_string()).or_default();
            *seen = (*seen).max(lease.map_or(0, |l| l.epoch));
            *seen
        };
        // How long the duty has been vacant in this view: its holder silent (not a live
        // anchor), or no holder at all. Keyed by the record it is about, so a new record (a
        // merge, a take-over) starts a new clock.
        let vacant_ms = {
            let mut local = lock(&self.local);
            let holder = lease.and_then(|l| l.holder.parse::<NodeId>().ok());
            let key = match (lease, holder) {
                (Some(l), Some(h)) => format!("{duty}/{h}/{}", l.epoch),
                _ => format!("{duty}/none"),
            };
            local
                .silent_since
                .retain(|k, _| !k.starts_with(&format!("{duty}/")) || *k == key);
            if holder.is_some_and(|h| live.contains(&h)) {
                local.silent_since.remove(&key);
                0
            } else {
                now - *local.silent_since.entry(key).or_insert(now)
            }
        };
        let mut decided = turn(
            &self.node_id,
            lease,
            &live,
            vacant_ms,
            &self.config,
            highest,
        );
        if matches!(decided, Turn::Take { .. }) && self.started.elapsed() < self.config.lease {
            decided = Turn::Wait;
        }
        let held_before = lock(&self.local).held.get(duty).copied();
        let epoch = match decided {
            Turn::Wait => {
                if let Some(epoch) = held_before {
                    tracing::info!(
                        duty,
                        epoch,
                        holder = lease.map(|l| l.holder.as_str()).unwrap_or("none"),
                        "gave up a fleet duty: another anchor holds it"
                    );
                    lock(&self.local).held.remove(duty);
                    metrics::gauge!("nexus_duty_held", "duty" => duty.to_string()).set(0.0);
                }
                return None;
            }
            Turn::Hold { epoch } => epoch,
            Turn::Take { epoch } => {
                let record = DutyLease {
                    holder: self.node_id.to_hex(),
                    epoch,
                    acquired_at: now,
                    lease_ms: self.config.lease.as_millis() as i64,
                };
                if let Err(err) = self
                    .replication
                    .write_as_system(&DocId::Fleet, nexus_crdt::DUTIES, duty, Some(record))
                    .await
                {
                    tracing::warn!(duty, error = ?err, "cannot record taking a fleet duty");
                    return None;
                }
                tracing::info!(
                    duty,
                    epoch,
                    previous = lease.map(|l| l.holder.as_str()).unwrap_or("none"),
                    "took a fleet duty"
                );
                metrics::counter!("nexus_duty_takeovers_total", "duty" => duty.to_string())
                    .increment(1);
                lock(&self.local).highest.insert(duty.to_string(), epoch);
                epoch
            }
        };
        lock(&self.local).held.insert(duty.to_string(), epoch);
        metrics::gauge!("nexus_duty_held", "duty" => duty.to_string()).set(1.0);
        metrics::gauge!("nexus_duty_epoch", "duty" => duty.to_string()).set(epoch as f64);
        Some(epoch)
    }

    fn record_run(&self, duty: &str, result: Result<usize, anyhow::Error>) {
        let now = crate::now_ms() as i64;
        let (outcome, text) = match &result {
            Ok(n) => ("ok", format!("changed {n} objects")),
            Err(err) => ("failed", format!("{err:#}")),
        };
        if let Err(err) = &result {
            tracing::warn!(duty, error = %format!("{err:#}"), "a fleet duty failed; it runs again");
        }
        metrics::counter!("nexus_duty_runs_total", "duty" => duty.to_string(), "outcome" => outcome)
            .increment(1);
        lock(&self.local).last.insert(duty.to_string(), (now, text));
    }

    /// Runs the duties until `stop`. Anchors only; other nodes return at once.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.role != Role::Anchor {
            return;
        }
        let step =
            (self.config.lease / 6).clamp(Duration::from_millis(250), Duration::from_secs(5));
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lifecycle_every = step.max(Duration::from_secs(1));
        let mut next_lifecycle = tokio::time::Instant::now();
        let mut next_gc =
            tokio::time::Instant::now() + self.config.gc_interval.min(Duration::from_secs(5));
        let mut next_local = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            let now = tokio::time::Instant::now();
            if let Some(epoch) = self.claim(LIFECYCLE).await
                && now >= next_lifecycle
            {
                next_lifecycle = now + lifecycle_every;
                let result = self.lifecycle(epoch).await;
                self.record_run(LIFECYCLE, result);
            }
            if let Some(epoch) = self.claim(GC).await
                && now >= next_gc
            {
                next_gc = now + self.config.gc_interval;
                let result = self.gc(epoch).await;
                self.record_run(GC, result);
            }
            if now >= next_local {
                next_local = now + self.config.gc_interval;
                self.sweep_store().await;
            }
        }
    }

    /// The `lifecycle` duty: offline flags and removal of decommissioned members.
    async fn lifecycle(self: &Arc<Self>, epoch: u64) -> anyhow::Result<usize> {
        let now = crate::now_ms() as i64;
        let grace = self.config.offline_grace.as_millis() as i64;
        let removal = self.decommission_grace.as_millis() as i64;
        let seen: BTreeMap<String, nexus_mesh::Member> = self
            .mesh
            .members()
            .into_iter()
            .map(|m| (m.node_id.to_hex(), m))
            .collect();
        // Decided on the record as it is now, in place; each mark is written on the record as
        // it is when written (read again then), so a field another anchor or an operator
        // changed meanwhile is never put back.
        let (marks, flagged) = self
            .replication
            .with_fleet(|fleet| {
                let mut marks = Vec::new();
                for (id, record) in &fleet.members {
                    if record.removed_at.is_some() {
                        continue;
                    }
                    if let Some(at) = record.decommissioned_at {
                        if now - at > removal {
                            marks.push((id.clone(), Mark::Removed(now)));
                        }
                    } else if let Some(member) = seen.get(id) {
                        let since = member.status_since_ms as i64;
                        match member.status {
                            NodeStatus::Offline
                                if now - since > grace && record.offline_since.is_none() =>
                            {
                                marks.push((id.clone(), Mark::Offline(Some(since))));
                            }
                            status if alive(status) && record.offline_since.is_some() => {
                                marks.push((id.clone(), Mark::Offline(None)));
                            }
                            _ => {}
                        }
                    }
                }
                let flagged = fleet
                    .members
                    .values()
                    .filter(|m| m.offline_since.is_some() && m.removed_at.is_none())
                    .count();
                (marks, flagged)
            })
            .context("no fleet document")?;
        metrics::gauge!("nexus_nodes_offline_flagged").set(flagged as f64);
        let mut changed = 0;
        for (id, mark) in marks {
            if !self.still_holds(LIFECYCLE, epoch) {
                anyhow::bail!("lost the duty (epoch {epoch}) during the run");
            }
            let Some(mut record) = self
                .replication
                .with_fleet(|f| f.members.get(&id).cloned())
                .flatten()
            else {
                continue;
            };
            match mark {
                Mark::Removed(at) if record.removed_at.is_none() => {
                    record.removed_at = Some(at);
                    record.offline_since = None;
                }
                Mark::Offline(since) if record.removed_at.is_none() => {
                    record.offline_since = since;
                }
                _ => continue,
            }
            self.replication
                .write_as_system(&DocId::Fleet, nexus_crdt::MEMBERS, &id, Some(record))
                .await
                .map_err(|e| anyhow::anyhow!("recording member {id}: {e:?}"))?;
            changed += 1;
            match mark {
                Mark::Removed(_) => {
                    tracing::info!(node = %id, epoch, "removed a decommissioned node after its grace");
                    metrics::counter!("nexus_nodes_removed_total").increment(1);
                }
                Mark::Offline(Some(since)) => {
                    tracing::warn!(node = %id, epoch, since, "node offline longer than its grace: flagged");
                }
                Mark::Offline(None) => {
                    tracing::info!(node = %id, epoch, "flagged node is back online");
                }
            }
        }
        Ok(changed)
    }

    /// The `gc` duty: configuration naming removed nodes, orphaned tenant CAs, old API keys.
    async fn gc(self: &Arc<Self>, epoch: u64) -> anyhow::Result<usize> {
        let fleet = self
            .replication
            .fleet_model()
            .context("no fleet document")?;
        let plan = plan_gc(
            &fleet,
            |tenant| self.replication.tenant_model(tenant),
            crate::now_ms() as i64,
            self.config.retention,
        );
        let removed: BTreeSet<NodeId> = fleet
            .members
            .iter()
            .filter(|(_, m)| m.removed_at.is_some())
            .filter_map(|(id, _)| id.parse().ok())
            .collect();
        let mut changed = 0;
        for step in plan {
            if !self.still_holds(GC, epoch) {
                anyhow::bail!("lost the duty (epoch {epoch}) during the sweep");
            }
            let (object, result) = match &step {
                GcStep::Route {
                    doc,
                    collection,
                    key,
                    ..
                } => {
                    let c = if *collection == "site_routes" {
                        nexus_crdt::SITE_ROUTES
                    } else if *collection == "policies" {
                        nexus_crdt::POLICIES
                    } else {
                        nexus_crdt::ROUTES
                    };
                    // The route as it is now (a tenant admin may have changed it since the
                    // plan was made): only the removed sources go.
                    let fresh = match doc {
                        DocId::Fleet => self
                            .replication
                            .with_fleet(|f| f.policies.get(key).cloned()),
                        DocId::Tenant(t) => self.replication.with_tenant(t, |d| {
                            if *collection == "site_routes" {
                                d.site_routes.get(key).cloned()
                            } else {
                                d.routes.get(key).cloned()
                            }
                        }),
                    }
                    .flatten();
                    let Some(keep) = fresh.and_then(|p| without_sources(&p, &removed)) else {
                        continue;
                    };
                    (
                        "route",
                        self.replication.write_as_system(doc, c, key, keep).await,
                    )
                }
                GcStep::Override {
                    doc,
                    collection,
                    key,
                } => {
                    let c = if *collection == "site_node_overrides" {
                        nexus_crdt::SITE_NODE_OVERRIDES
                    } else {
                        nexus_crdt::NODE_OVERRIDES
                    };
                    (
                        "node_override",
                        self.replication.write_as_system(doc, c, key, None).await,
                    )
                }
                GcStep::TenantCa { key } => (
                    "tenant_ca",
                    self.replication
                        .write_as_system(&DocId::Fleet, nexus_crdt::TENANT_CAS, key, None)
                        .await,
                ),
                GcStep::ApiKey { doc, key } => {
                    let c = if *doc == DocId::Fleet {
                        nexus_crdt::FLEET_API_KEYS
                    } else {
                        nexus_crdt::TENANT_API_KEYS
                    };
                    (
                        "api_key",
                        self.replication.write_as_system(doc, c, key, None).await,
                    )
                }
                GcStep::Anchor { key } => (
                    "anchor",
                    self.replication
                        .write_as_system(&DocId::Fleet, nexus_crdt::ANCHORS, key, None)
                        .await,
                ),
            };
            match result {
                Ok(_) => {
                    changed += 1;
                    tracing::info!(epoch, step = ?step, "garbage-collected configuration");
                    metrics::counter!("nexus_gc_removed_total", "object" => object).increment(1);
                }
                Err(err) => tracing::warn!(step = ?step, error = ?err, "cannot garbage-collect"),
            }
        }
        Ok(changed)
    }

    /// This anchor's own file: expired tokens and certificate records past the retention.
    async fn sweep_store(&self) {
        let before = crate::now_ms().saturating_sub(self.config.retention.as_millis() as u64);
        let store = self.store.clone();
        let swept = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((
                store.delete_tokens_expired_before(before)?,
                store.delete_certificates_expired_before(before)?,
            ))
        })
        .await;
        match swept {
            Ok(Ok((tokens, certificates))) => {
                if tokens + certificates > 0 {
                    tracing::info!(tokens, certificates, "removed expired records");
                }
                metrics::counter!("nexus_gc_removed_total", "object" => "token")
                    .increment(tokens as u64);
                metrics::counter!("nexus_gc_removed_total", "object" => "certificate")
                    .increment(certificates as u64);
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "cannot remove expired records"),
            Err(err) => tracing::warn!(error = %err, "cannot remove expired records"),
        }
    }
}

/// A lifecycle mark on one member record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// `removed_at`.
    Removed(i64),
    /// `offline_since` set, or cleared.
    Offline(Option<i64>),
}

/// One write of a garbage-collection sweep.
#[derive(Clone, Debug, PartialEq)]
pub enum GcStep {
    /// A route (tenant `routes`, `site_routes`, or fleet `policies`) naming removed nodes:
    /// rewritten without them, or deleted (`keep: None`) when every source is gone.
    Route {
        doc: DocId,
        collection: &'static str,
        key: String,
        keep: Option<Box<RoutePolicy>>,
    },
    /// A node override of a removed node.
    Override {
        doc: DocId,
        collection: &'static str,
        key: String,
    },
    /// A tenant CA of a deleted tenant or a removed anchor.
    TenantCa { key: String },
    /// An API key expired or revoked longer than the retention ago.
    ApiKey { doc: DocId, key: String },
    /// The anchor record of a removed anchor.
    Anchor { key: String },
}

/// `p` without the sources in `removed`: `None` when it names none of them (nothing to
/// write); `Some(None)` when every source is gone, so the route goes (an empty source list
/// would match every node).
fn without_sources(p: &RoutePolicy, removed: &BTreeSet<NodeId>) -> Option<Option<RoutePolicy>> {
    if !p
        .matches
        .source_node_ids
        .iter()
        .any(|n| removed.contains(n))
    {
        return None;
    }
    let mut keep = p.clone();
    keep.matches
        .source_node_ids
        .retain(|n| !removed.contains(n));
    Some((!keep.matches.source_node_ids.is_empty()).then_some(keep))
}

/// What a sweep should write, I/O-free: the same inputs give the same steps on every anchor,
/// and applying them twice changes nothing the second time.
pub fn plan_gc(
    fleet: &FleetDoc,
    tenant_doc: impl Fn(&str) -> Option<nexus_crdt::TenantDoc>,
    now_ms: i64,
    retention: Duration,
) -> Vec<GcStep> {
    let removed: BTreeSet<NodeId> = fleet
        .members
        .iter()
        .filter(|(_, m)| m.removed_at.is_some())
        .filter_map(|(id, _)| id.parse().ok())
        .collect();
    let old = |at: Option<i64>| at.is_some_and(|t| now_ms - t > retention.as_millis() as i64);
    let mut steps = Vec::new();
    let route_step = |doc: &DocId, collection: &'static str, key: &str, p: &RoutePolicy| {
        let keep = without_sources(p, &removed)?;
        Some(GcStep::Route {
            doc: doc.clone(),
            collection,
            key: key.to_string(),
            keep: keep.map(Box::new),
        })
    };
    for (key, p) in &fleet.policies {
        steps.extend(route_step(&DocId::Fleet, "policies", key, p));
    }
    for (key, k) in &fleet.api_keys {
        if old(k.expires_at) || old(k.revoked_at) {
            steps.push(GcStep::ApiKey {
                doc: DocId::Fleet,
                key: key.clone(),
            });
        }
    }
    for tenant in fleet.tenants.keys() {
        let (Ok(doc), Some(t)) = (DocId::tenant(tenant), tenant_doc(tenant)) else {
            continue;
        };
        for (key, p) in &t.routes {
            steps.extend(route_step(&doc, "routes", key, p));
        }
        for (key, p) in &t.site_routes {
            steps.extend(route_step(&doc, "site_routes", key, p));
        }
        for key in t.node_overrides.keys() {
            if key.parse::<NodeId>().is_ok_and(|n| removed.contains(&n)) {
                steps.push(GcStep::Override {
                    doc: doc.clone(),
                    collection: "node_overrides",
                    key: key.clone(),
                });
            }
        }
        for key in t.site_node_overrides.keys() {
            let node = nexus_crdt::split_site_key(key).map(|(_, n)| n);
            if node.is_some_and(|n| n.parse::<NodeId>().is_ok_and(|n| removed.contains(&n))) {
                steps.push(GcStep::Override {
                    doc: doc.clone(),
                    collection: "site_node_overrides",
                    key: key.clone(),
                });
            }
        }
        for (key, k) in &t.api_keys {
            if old(k.expires_at) || old(k.revoked_at) {
                steps.push(GcStep::ApiKey {
                    doc: doc.clone(),
                    key: key.clone(),
                });
            }
        }
    }
    for (key, ca) in &fleet.tenant_cas {
        let anchor_gone = ca
            .anchor
            .parse::<NodeId>()
            .is_ok_and(|n| removed.contains(&n));
        if anchor_gone || !fleet.tenants.contains_key(&ca.tenant) {
            steps.push(GcStep::TenantCa { key: key.clone() });
        }
    }
    for key in fleet.anchors.keys() {
        if key.parse::<NodeId>().is_ok_and(|n| removed.contains(&n)) {
            steps.push(GcStep::Anchor { key: key.clone() });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_crdt::{Member, RouteAction, RouteMatch, TenantDoc};

    fn id(n: u8) -> NodeId {
        hex::encode([n; 16]).parse().unwrap()
    }

    fn lease(holder: u8, epoch: u64) -> DutyLease {
        DutyLease {
            holder: id(holder).to_hex(),
            epoch,
            acquired_at: 0,
            lease_ms: 15_000,
        }
    }

    fn config() -> DutiesConfig {
        DutiesConfig {
            lease: Duration::from_secs(15),
            ..DutiesConfig::default()
        }
    }

    #[test]
    fn the_lowest_live_anchor_takes_a_free_duty() {
        let live: BTreeSet<NodeId> = [id(1), id(2)].into();
        assert_eq!(
            turn(&id(1), None, &live, 0, &config(), 0),
            Turn::Take { epoch: 1 }
        );
        assert_eq!(turn(&id(2), None, &live, 0, &config(), 0), Turn::Wait);
        // The next in rank takes it if the lowest has not within a lease.
        assert_eq!(
            turn(&id(2), None, &live, 15_000, &config(), 0),
            Turn::Take { epoch: 1 }
        );
        // An anchor that is not an active one (decommissioned, say) never takes or holds.
        assert_eq!(turn(&id(9), None, &live, 99_000, &config(), 0), Turn::Wait);
        assert_eq!(
            turn(&id(9), Some(&lease(9, 2)), &live, 0, &config(), 2),
            Turn::Wait
        );
    }

    #[test]
    fn a_live_holder_keeps_its_duty_even_against_a_preferred_anchor() {
        let live: BTreeSet<NodeId> = [id(1), id(2)].into();
        let l = lease(2, 4);
        assert_eq!(turn(&id(1), Some(&l), &live, 0, &config(), 4), Turn::Wait);
        assert_eq!(
            turn(&id(2), Some(&l), &live, 0, &config(), 4),
            Turn::Hold { epoch: 4 }
        );
    }

    #[test]
    fn a_silent_holder_is_replaced_after_the_lease_one_epoch_up() {
        let live: BTreeSet<NodeId> = [id(1), id(3)].into();
        let l = lease(2, 4);
        assert_eq!(
            turn(&id(1), Some(&l), &live, 14_999, &config(), 4),
            Turn::Wait
        );
        assert_eq!(
            turn(&id(1), Some(&l), &live, 15_000, &config(), 4),
            Turn::Take { epoch: 5 }
        );
        // The next in rank waits one lease more.
        assert_eq!(
            turn(&id(3), Some(&l), &live, 29_999, &config(), 4),
            Turn::Wait
        );
        assert_eq!(
            turn(&id(3), Some(&l), &live, 30_000, &config(), 4),
            Turn::Take { epoch: 5 }
        );
        // Never below an epoch already seen (a merged record may carry a lower one).
        assert_eq!(
            turn(&id(1), Some(&l), &live, 15_000, &config(), 9),
            Turn::Take { epoch: 10 }
        );
    }

    #[test]
    fn config_is_checked() {
        let bad = DutiesFile {
            lease: Some("1s".into()),
            ..Default::default()
        };
        let err = DutiesConfig::resolve(Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("duties.lease"), "{err}");
        let bad = DutiesFile {
            retention: Some("soon".into()),
            ..Default::default()
        };
        let err = DutiesConfig::resolve(Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("duties.retention"), "{err}");
        assert_eq!(
            DutiesConfig::resolve(None).unwrap(),
            DutiesConfig::default()
        );
    }

    fn route(id_: &str, sources: Vec<NodeId>) -> RoutePolicy {
        RoutePolicy {
            id: id_.into(),
            name: id_.into(),
            tenant_id: "acme".into(),
            priority: 10,
            matches: RouteMatch {
                source_node_ids: sources,
                ..Default::default()
            },
            action: RouteAction::new(nexus_crdt::ActionType::Allow),
            enabled: true,
            created_at: 0,
        }
    }

    #[test]
    fn gc_removes_what_names_removed_nodes_and_nothing_else() {
        let mut fleet = FleetDoc::default();
        fleet.tenants.insert("acme".into(), Default::default());
        let gone = Member {
            role: "node".into(),
            tenant: "acme".into(),
            removed_at: Some(1),
            decommissioned_at: Some(0),
            ..Default::default()
        };
        fleet.members.insert(id(9).to_hex(), gone);
        fleet.members.insert(id(1).to_hex(), Member::default());
        let mut tenant = TenantDoc {
            tenant_id: "acme".into(),
            ..Default::default()
        };
        tenant
            .routes
            .insert("only-gone".into(), route("only-gone", vec![id(9)]));
        tenant
            .routes
            .insert("mixed".into(), route("mixed", vec![id(9), id(1)]));
        tenant.routes.insert("any".into(), route("any", vec![]));
        tenant
            .node_overrides
            .insert(id(9).to_hex(), Default::default());
        tenant
            .node_overrides
            .insert(id(1).to_hex(), Default::default());
        let steps = plan_gc(&fleet, |_| Some(tenant.clone()), 10, Duration::from_secs(1));
        let doc = DocId::tenant("acme").unwrap();
        assert_eq!(steps.len(), 3, "{steps:#?}");
        assert!(steps.contains(&GcStep::Route {
            doc: doc.clone(),
            collection: "routes",
            key: "only-gone".into(),
            keep: None,
        }));
        assert!(steps.contains(&GcStep::Route {
            doc: doc.clone(),
            collection: "routes",
            key: "mixed".into(),
            keep: Some(Box::new(route("mixed", vec![id(1)]))),
        }));
        assert!(steps.contains(&GcStep::Override {
            doc,
            collection: "node_overrides",
            key: id(9).to_hex(),
        }));
        // Applied, the plan is empty: a second holder (or a second sweep) writes nothing.
        tenant.routes.remove("only-gone");
        tenant
            .routes
            .insert("mixed".into(), route("mixed", vec![id(1)]));
        tenant.node_overrides.remove(&id(9).to_hex());
        assert!(plan_gc(&fleet, |_| Some(tenant.clone()), 10, Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn gc_removes_orphaned_tenant_cas_and_old_keys() {
        let mut fleet = FleetDoc::default();
        fleet.tenants.insert("acme".into(), Default::default());
        for (tenant, anchor) in [("acme", 1), ("gone", 1)] {
            fleet.tenant_cas.insert(
                format!("{tenant}/{}", id(anchor).to_hex()),
                nexus_crdt::TenantCa {
                    tenant: tenant.into(),
                    anchor: id(anchor).to_hex(),
                    ..Default::default()
                },
            );
        }
        let day = 86_400_000;
        fleet.api_keys.insert(
            "old".into(),
            nexus_crdt::ApiKeyRecord {
                revoked_at: Some(0),
                ..Default::default()
            },
        );
        fleet.api_keys.insert(
            "recent".into(),
            nexus_crdt::ApiKeyRecord {
                revoked_at: Some(8 * day),
                ..Default::default()
            },
        );
        let steps = plan_gc(&fleet, |_| None, 9 * day, Duration::from_secs(7 * 86_400));
        assert_eq!(
            steps,
            vec![
                GcStep::ApiKey {
                    doc: DocId::Fleet,
                    key: "old".into()
                },
                GcStep::TenantCa {
                    key: format!("gone/{}", id(1).to_hex())
                },
            ]
        );
    }
}
