//! The node's data plane: opens the NIC, runs the forwarding engine on a thread of its own, and
//! keeps its route-policy classifier in step with the replicated configuration.
//!
//! - The engine thread (`nexus-dataplane`) opens the NIC itself (DPDK's EAL pins the thread
//!   that initialises it to the first core of `-l`), reports whether that worked, then forwards
//!   until the node stops. Packets never reach the async runtime.
//! - [`run`] recompiles the classifier whenever the configuration or the membership changes
//!   (off the runtime's threads) and publishes it atomically; it also exports the counters as
//!   metrics every second and publishes a summary in gossip every five seconds.
//! - With the policies come the tenant's quotas (`max_connections`, `max_bandwidth_mbps` of the
//!   fleet document's tenant record): they are handed to the engine whenever the configuration
//!   changes, and frames they drop are counted per tenant and quota and logged at most once
//!   every [`QUOTA_WARN_EVERY`] per quota, saying how to raise it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use nexus_api::wire::DataplaneSummary;
use nexus_ca::{FleetTrust, NodeId};
use nexus_dataplane::engine::{DropReason, Engine, EngineConfig, Stats};
use nexus_dataplane::frame::ParseError;
use nexus_dataplane::nic::memory::{self, MemoryPort};
use nexus_dataplane::nic::{NicInfo, NicSpec, Port};
use nexus_dataplane::policy::{Classifier, KnownNode, PolicyHandle, PolicySet, Scope};
use nexus_dataplane::quota::MAX_CONNECTIONS;
use nexus_dataplane::{LimitsHandle, TenantLimits};
use nexus_mesh::Mesh;
use tokio::sync::watch;

use crate::replication::{PolicySources, Replication};

/// A running data plane.
pub struct DataPlane {
    info: NicInfo,
    handle: Arc<PolicyHandle>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The far end of a memory NIC: nothing is attached to it, but it must stay open.
    _wire: Option<Mutex<MemoryPort>>,
    /// Inputs of the classifier in force, to skip recompiling the same thing.
    compiled: Mutex<Option<u64>>,
    /// The tenant's quotas the engine enforces.
    limits: Arc<LimitsHandle>,
    /// Whose quotas they are, and when drops were last logged.
    quota_report: Mutex<QuotaReport>,
}

/// Least time between two warnings about the same quota.
pub const QUOTA_WARN_EVERY: Duration = Duration::from_secs(10);

/// A tenant quota the data plane enforces, as it is named in metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaKind {
    /// `max_connections`.
    Connections,
    /// `max_bandwidth_mbps`.
    Bandwidth,
}

impl QuotaKind {
    /// Both.
    pub const ALL: [QuotaKind; 2] = [QuotaKind::Connections, QuotaKind::Bandwidth];

    /// `quota` label of `nexus_tenant_quota_drops_total`.
    pub fn label(self) -> &'static str {
        match self {
            QuotaKind::Connections => "connections",
            QuotaKind::Bandwidth => "bandwidth",
        }
    }

    /// The engine's drop reason for it.
    pub fn drop_reason(self) -> DropReason {
        match self {
            QuotaKind::Connections => DropReason::QuotaConnections,
            QuotaKind::Bandwidth => DropReason::QuotaBandwidth,
        }
    }
}

/// Quota drops seen, for warnings at most once per [`QUOTA_WARN_EVERY`] per quota.
#[derive(Debug, Default)]
pub struct QuotaReport {
    /// The node's tenant (empty until the configuration was read).
    tenant: String,
    /// Per [`QuotaKind::ALL`]: drops counted at the last warning (or at start), and when.
    warned: [(u64, Option<Instant>); 2],
}

impl QuotaReport {
    /// Frames of `kind` dropped since the last warning, when that is more than none and the
    /// last warning about `kind` is at least [`QUOTA_WARN_EVERY`] old; the warning is then
    /// taken as given at `now`.
    pub fn due(&mut self, kind: QuotaKind, dropped: u64, now: Instant) -> Option<u64> {
        let (seen, at) = &mut self.warned[kind as usize];
        if dropped <= *seen || at.is_some_and(|t| now.duration_since(t) < QUOTA_WARN_EVERY) {
            return None;
        }
        let new = dropped - *seen;
        *seen = dropped;
        *at = Some(now);
        Some(new)
    }
}

/// The engine's limits for a tenant's quotas (megabits are 10^6 bits).
pub fn tenant_limits(quotas: &nexus_crdt::TenantQuotas) -> TenantLimits {
    TenantLimits {
        max_connections: quotas.max_connections,
        max_bandwidth_bps: quotas
            .max_bandwidth_mbps
            .map(|mbps| mbps.saturating_mul(1_000_000)),
    }
}

/// The limit of `kind` in `limits`, in the units of the tenant's quotas (`100 connections`,
/// `50 Mbit/s`).
pub fn quota_limit(kind: QuotaKind, limits: TenantLimits) -> String {
    match kind {
        QuotaKind::Connections => limits
            .max_connections
            .map_or("none".to_string(), |n| format!("{n} connections")),
        QuotaKind::Bandwidth => limits.max_bandwidth_bps.map_or("none".to_string(), |bps| {
            if bps % 1_000_000 == 0 {
                format!("{} Mbit/s", bps / 1_000_000)
            } else {
                format!("{bps} bit/s")
            }
        }),
    }
}

/// The warning for `dropped` frames over `kind` of `tenant`'s quotas `limits`: which quota,
/// its limit and how to raise it.
pub fn quota_warning(tenant: &str, kind: QuotaKind, limits: TenantLimits, dropped: u64) -> String {
    let limit = quota_limit(kind, limits);
    let (what, field) = match kind {
        QuotaKind::Connections => (
            "connection quota (frames of new connections are dropped while that many are open)",
            "max_connections",
        ),
        QuotaKind::Bandwidth => ("bandwidth quota", "max_bandwidth_mbps"),
    };
    format!(
        "tenant `{tenant}` is over its {what}: {dropped} frames dropped, limit {limit}; raise it \
         with `PATCH /v1/tenants/{tenant}` and {{\"quotas\": {{\"{field}\": N}}}}"
    )
}

impl DataPlane {
    /// Opens the NIC named by `spec` and starts forwarding for node `local`. Fails, saying why,
    /// when the NIC cannot be opened.
    pub fn start(spec: &NicSpec, local: NodeId) -> anyhow::Result<DataPlane> {
        let handle = Arc::new(PolicyHandle::default());
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<NicInfo, String>>();
        let mut wire = None;
        let mut memory_port = None;
        if *spec == NicSpec::Memory {
            let (a, b) = memory::pair("nexus");
            wire = Some(Mutex::new(a));
            memory_port = Some(b);
        }
        let config = EngineConfig::new(local.0);
        let limits = config.limits.clone();
        let thread = {
            let (spec, handle, stats, stop) =
                (spec.clone(), handle.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("nexus-dataplane".into())
                .spawn(move || {
                    let ctx = Ctx {
                        handle,
                        stats,
                        stop,
                        config,
                        ready: ready_tx,
                    };
                    match spec {
                        NicSpec::Memory => match memory_port {
                            Some(port) => ctx.serve(port, None),
                            None => ctx.fail("the memory NIC was not created".into()),
                        },
                        NicSpec::AfPacket { ingress, egress } => {
                            use nexus_dataplane::nic::af_packet::AfPacketPort;
                            let rx = match AfPacketPort::open(&ingress) {
                                Ok(p) => p,
                                Err(e) => return ctx.fail(e.to_string()),
                            };
                            let tx = if egress == ingress {
                                None
                            } else {
                                match AfPacketPort::open(&egress) {
                                    Ok(p) => Some(p),
                                    Err(e) => return ctx.fail(e.to_string()),
                                }
                            };
                            ctx.serve(rx, tx)
                        }
                        #[cfg(feature = "dpdk")]
                        NicSpec::Dpdk {
                            eal_args,
                            rx_port,
                            tx_port,
                        } => {
                            match nexus_dataplane::nic::dpdk::open_ports(
                                &eal_args, rx_port, tx_port,
                            ) {
                                Ok((rx, tx)) => ctx.serve(rx, tx),
                                Err(e) => ctx.fail(e.to_string()),
                            }
                        }
                        #[cfg(not(feature = "dpdk"))]
                        NicSpec::Dpdk { .. } => ctx.fail(
                            "this nexus binary was built without DPDK: rebuild it with \
                             `cargo build --release --features dpdk` (needs Debian's dpdk-dev \
                             libdpdk-dev pkg-config), or run with --nic af_packet:<iface>"
                                .into(),
                        ),
                    }
                })
                .context("starting the data-plane thread")?
        };
        let info = match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(info)) => info,
            Ok(Err(why)) => {
                let _ = thread.join();
                anyhow::bail!("cannot open the data-plane NIC `{spec}`: {why}");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                anyhow::bail!(
                    "the data-plane thread ended while opening the NIC `{spec}` (see the log above)"
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // The thread may still be opening it; tell it to stop once it has.
                stop.store(true, Ordering::Relaxed);
                anyhow::bail!("the data-plane NIC `{spec}` did not open within 60 s");
            }
        };
        tracing::info!(
            backend = info.backend,
            device = %info.device,
            model = %info.model,
            "data plane forwarding"
        );
        Ok(DataPlane {
            info,
            handle,
            stats,
            stop,
            thread: Mutex::new(Some(thread)),
            _wire: wire,
            compiled: Mutex::new(None),
            limits,
            quota_report: Mutex::new(QuotaReport::default()),
        })
    }

    /// What the NIC is.
    pub fn info(&self) -> &NicInfo {
        &self.info
    }

    /// The engine's monotonic totals since it started (usage metering reads them).
    pub fn traffic_totals(&self) -> nexus_crdt::usage::TrafficTotals {
        nexus_crdt::usage::TrafficTotals {
            rx_bytes: self.stats.rx_bytes.load(Ordering::Relaxed),
            flows_opened: self.stats.flows_opened.load(Ordering::Relaxed),
        }
    }

    /// Hands `tenant`'s quotas to the engine (from its next burst); returns whether they
    /// changed.
    pub fn apply_quotas(&self, tenant: &str, quotas: &nexus_crdt::TenantQuotas) -> bool {
        let mut report = self.quota_report.lock().unwrap_or_else(|p| p.into_inner());
        if report.tenant != tenant {
            report.tenant = tenant.to_string();
        }
        drop(report);
        let limits = tenant_limits(quotas);
        if !self.limits.set(limits) {
            return false;
        }
        tracing::info!(
            tenant,
            max_connections = ?quotas.max_connections,
            max_bandwidth_mbps = ?quotas.max_bandwidth_mbps,
            "tenant quotas applied to the data plane"
        );
        if let Some(n) = quotas.max_connections
            && n > MAX_CONNECTIONS as u64
        {
            tracing::warn!(
                tenant,
                max_connections = n,
                "the data plane tracks at most {MAX_CONNECTIONS} connections: beyond that, \
                 frames of connections it does not hold pass uncounted"
            );
        }
        true
    }

    /// Compiles `sources` (with the destinations' capabilities) and publishes the classifier,
    /// unless the inputs are the ones in force; the tenant's quotas are handed over either way.
    /// Returns the new generation.
    pub fn update(&self, sources: PolicySources, peers: &Peers) -> Option<u64> {
        self.apply_quotas(&sources.tenant, &sources.quotas);
        let set = policy_set(sources, peers);
        let fingerprint = fingerprint(&set);
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if *compiled == Some(fingerprint) {
            return None;
        }
        let started = Instant::now();
        let classifier = Classifier::compile(&set);
        let rules = classifier.rules().len();
        let skipped = classifier.skipped();
        let generation = self.handle.publish(classifier);
        *compiled = Some(fingerprint);
        let took = started.elapsed();
        metrics::histogram!("nexus_dataplane_policy_compile_seconds").record(took.as_secs_f64());
        metrics::gauge!("nexus_dataplane_rules").set(rules as f64);
        metrics::gauge!("nexus_dataplane_policy_generation").set(generation as f64);
        tracing::info!(
            generation,
            rules,
            skipped,
            routes = set.nodes.len(),
            version = %set.version,
            compile_ms = took.as_millis() as u64,
            "route policies compiled into the data plane"
        );
        Some(generation)
    }

    /// A summary for gossip and `GET /v1/nodes/{id}`.
    pub fn summary(&self) -> DataplaneSummary {
        let s = &self.stats;
        let c = self.handle.load();
        DataplaneSummary {
            backend: self.info.backend.to_string(),
            device: self.info.device.clone(),
            rx_packets: s.rx_packets.load(Ordering::Relaxed),
            tx_packets: s.tx_packets.load(Ordering::Relaxed),
            local_packets: s.local_packets.load(Ordering::Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.label().to_string(), s.dropped(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            active_flows: s.active_flows.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
            rules: c.rules().len() as u64,
            routes: c.route_count() as u64,
            policy_generation: c.generation(),
            policy_version: c.version().to_string(),
            at_ms: crate::now_ms(),
        }
    }

    /// Sets the Prometheus counters from the engine's.
    pub fn export_metrics(&self) {
        let s = &self.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        for (dir, packets, bytes) in [
            ("rx", get(&s.rx_packets), Some(get(&s.rx_bytes))),
            ("tx", get(&s.tx_packets), Some(get(&s.tx_bytes))),
            ("local", get(&s.local_packets), None),
            ("ignored", get(&s.ignored_packets), None),
            ("foreign", get(&s.foreign_packets), None),
        ] {
            metrics::counter!("nexus_dataplane_packets_total", "direction" => dir)
                .absolute(packets);
            if let Some(bytes) = bytes {
                metrics::counter!("nexus_dataplane_bytes_total", "direction" => dir)
                    .absolute(bytes);
            }
        }
        for r in DropReason::ALL {
            metrics::counter!("nexus_dataplane_drops_total", "reason" => r.label())
                .absolute(s.dropped(r));
        }
        for kind in ParseError::ALL {
            if kind == ParseError::NotNexus {
                continue;
            }
            metrics::counter!("nexus_dataplane_malformed_total", "kind" => kind.label())
                .absolute(get(&s.parse_errors[kind.index()]));
        }
        metrics::counter!("nexus_dataplane_redirected_total").absolute(get(&s.redirected));
        metrics::counter!("nexus_dataplane_weight_overrides_total").absolute(get(&s.weighted));
        metrics::counter!("nexus_dataplane_nic_errors_total").absolute(get(&s.nic_errors));
        metrics::gauge!("nexus_dataplane_active_flows").set(get(&s.active_flows) as f64);
        metrics::gauge!("nexus_dataplane_ratelimit_buckets").set(get(&s.buckets) as f64);
        metrics::gauge!("nexus_dataplane_connections").set(get(&s.connections) as f64);
        metrics::counter!("nexus_dataplane_connections_opened_total")
            .absolute(get(&s.flows_opened));
        metrics::counter!("nexus_dataplane_connections_untracked_total")
            .absolute(get(&s.connections_untracked));
        let tenant = self
            .quota_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tenant
            .clone();
        if !tenant.is_empty() {
            for kind in QuotaKind::ALL {
                metrics::counter!(
                    "nexus_tenant_quota_drops_total",
                    "tenant" => tenant.clone(),
                    "quota" => kind.label()
                )
                .absolute(s.dropped(kind.drop_reason()));
            }
        }
        let hits = s
            .policy_hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (policy, n) in hits {
            metrics::counter!("nexus_dataplane_policy_hits_total", "policy" => policy).absolute(n);
        }
    }

    /// Logs frames the tenant's quotas dropped since the last warning, at most once every
    /// [`QUOTA_WARN_EVERY`] per quota.
    pub fn warn_quota_drops(&self) {
        let now = Instant::now();
        let limits = self.limits.get();
        let mut report = self.quota_report.lock().unwrap_or_else(|p| p.into_inner());
        for kind in QuotaKind::ALL {
            let Some(dropped) = report.due(kind, self.stats.dropped(kind.drop_reason()), now)
            else {
                continue;
            };
            tracing::warn!(
                tenant = %report.tenant,
                quota = kind.label(),
                limit = %quota_limit(kind, limits),
                dropped,
                "{}",
                quota_warning(&report.tenant, kind, limits, dropped)
            );
        }
    }

    /// `ok`, or what is wrong with the data plane: its engine stopped (the NIC is gone), its
    /// link is down, or the NIC failed bursts since the last look (`seen` holds the error count
    /// then).
    pub fn health(&self, seen: &mut u64) -> String {
        let stopped = self
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| t.is_finished());
        let errors = self.stats.nic_errors.load(Ordering::Relaxed);
        let new_errors = errors.saturating_sub(*seen);
        *seen = errors;
        if stopped && !self.stop.load(Ordering::Relaxed) {
            format!(
                "dataplane: the engine on {} stopped (NIC gone)",
                self.info.device
            )
        } else if self.stats.link_down.load(Ordering::Relaxed) {
            format!("dataplane: the link of {} is down", self.info.device)
        } else if new_errors > 0 {
            format!(
                "dataplane: {new_errors} failed bursts on {} in the last second",
                self.info.device
            )
        } else {
            "ok".to_string()
        }
    }

    /// Stops the engine thread and waits for it.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the engine thread needs.
struct Ctx {
    handle: Arc<PolicyHandle>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    config: EngineConfig,
    ready: std::sync::mpsc::Sender<Result<NicInfo, String>>,
}

impl Ctx {
    fn fail(self, why: String) {
        let _ = self.ready.send(Err(why));
    }

    fn serve<P: Port>(self, rx: P, tx: Option<P>) {
        let info = rx.info();
        let mut engine = Engine::new(rx, tx, self.handle, self.stats, self.config);
        if self.ready.send(Ok(info)).is_err() {
            return;
        }
        if let Err(e) = engine.run(&self.stop) {
            tracing::error!(error = %e, "the data plane stopped: its NIC is gone");
        }
    }
}

/// The policy set a node's data plane enforces.
///
/// The forwarding table is the fleet's members less those whose certificate is revoked. This
/// node is in the destination table too (with its capabilities), so `dest_capabilities` rules
/// apply to frames addressed to it; the engine delivers those locally before any route lookup.
pub fn policy_set(sources: PolicySources, peers: &Peers) -> PolicySet {
    let scoped = |scope: Scope, list: Vec<nexus_crdt::RoutePolicy>| {
        list.into_iter().map(move |p| (scope, p))
    };
    let policies = scoped(Scope::Fleet, sources.fleet_policies)
        .chain(scoped(Scope::Site, sources.site_routes))
        .chain(scoped(Scope::Tenant, sources.routes))
        .collect();
    let mut nodes: Vec<KnownNode> = sources
        .members
        .iter()
        .filter(|id| !peers.revoked.contains(id))
        .map(|id| KnownNode {
            id: id.0,
            capabilities: peers.capabilities.get(id).cloned().unwrap_or_default(),
        })
        .collect();
    nodes.sort_by_key(|n| n.id);
    PolicySet {
        policies,
        disabled: sources.disabled.into_iter().collect::<HashSet<_>>(),
        nodes,
        own_tenant: sources.tenant_members.iter().map(|id| id.0).collect(),
        version: sources.version,
    }
}

/// What membership tells the classifier about other nodes: the capabilities they publish with
/// their node info (their MIC's, as they report them), and the members whose current MIC is
/// revoked.
#[derive(Debug, Default, PartialEq)]
pub struct Peers {
    capabilities: HashMap<NodeId, Vec<String>>,
    revoked: HashSet<NodeId>,
}

impl Peers {
    fn read(mesh: &Mesh, fleet: &FleetTrust) -> Peers {
        let mut peers = Peers::default();
        for m in mesh.members() {
            let Some(info) = m.info else { continue };
            if fleet.revocations().is_revoked(&info.mic_serial) {
                peers.revoked.insert(m.node_id);
            } else {
                peers.capabilities.insert(m.node_id, info.capabilities);
            }
        }
        peers
    }
}

fn fingerprint(set: &PolicySet) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // The document versions cover every policy (and the quarantine verdicts, which depend on
    // the same documents).
    set.version.hash(&mut h);
    let mut disabled: Vec<&String> = set.disabled.iter().collect();
    disabled.sort();
    disabled.hash(&mut h);
    for n in &set.nodes {
        n.id.hash(&mut h);
        n.capabilities.hash(&mut h);
    }
    h.finish()
}

/// What the data plane follows (configuration, membership, revocations) and reports to (the
/// node's health checks).
pub struct Control {
    /// The replicated configuration.
    pub replication: Arc<Replication>,
    /// Membership: destinations' capabilities, and where the summary is published.
    pub mesh: Arc<Mesh>,
    /// Revocations.
    pub fleet: Arc<FleetTrust>,
    /// The node's health checks; the data plane keeps `dataplane` there.
    pub health: Arc<Mutex<std::collections::BTreeMap<String, String>>>,
    /// This node.
    pub local: NodeId,
    /// Its site.
    pub site: String,
}

/// Keeps the classifier in step with the configuration and membership, and reports the data
/// plane's counters and health, until `stop`.
pub async fn run(dp: Arc<DataPlane>, control: Control, mut stop: watch::Receiver<bool>) {
    let Control {
        replication,
        mesh,
        fleet,
        health,
        local,
        site,
    } = control;
    let mut config_changes = replication.changes();
    let mut members = mesh.changes();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut dirty = true;
    let mut nic_errors_seen = 0u64;
    let mut peers = Arc::new(Peers::read(&mesh, &fleet));
    loop {
        if dirty {
            dirty = false;
            let (dp, replication, site, peers) =
                (dp.clone(), replication.clone(), site.clone(), peers.clone());
            let result = tokio::task::spawn_blocking(move || {
                let sources = replication.policy_sources(&local, &site)?;
                Ok::<_, crate::replication::WriteError>(dp.update(sources, &peers))
            })
            .await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = ?e, "cannot read the route policies"),
                Err(e) => tracing::error!(error = %e, "route-policy compile failed"),
            }
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() { break; }
            }
            changed = config_changes.changed() => {
                if changed.is_err() { break; }
                dirty = true;
            }
            changed = members.changed() => {
                if changed.is_err() { break; }
                peers = Arc::new(Peers::read(&mesh, &fleet));
                dirty = true;
            }
            _ = tick.tick() => {
                ticks += 1;
                dp.export_metrics();
                dp.warn_quota_drops();
                let verdict = dp.health(&mut nic_errors_seen);
                health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert("dataplane".to_string(), verdict);
                // Node info (capabilities) and revocations arrive without a status change:
                // recompile when what the classifier reads of them changed, not on a timer.
                let now = Peers::read(&mesh, &fleet);
                if now != *peers {
                    peers = Arc::new(now);
                    dirty = true;
                }
                if ticks % 5 == 1 {
                    match serde_json::to_string(&dp.summary()) {
                        Ok(json) => mesh.publish(nexus_mesh::wire::KEY_DATAPLANE, &json).await,
                        Err(e) => tracing::warn!(error = %e, "cannot encode the data-plane summary"),
                    }
                }
            }
        }
    }
    dp.export_metrics();
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_dataplane::frame::FrameSpec;
    use nexus_dataplane::nic::memory::MemPacket;

    fn quotas(connections: Option<u64>, mbps: Option<u64>) -> nexus_crdt::TenantQuotas {
        nexus_crdt::TenantQuotas {
            max_connections: connections,
            max_bandwidth_mbps: mbps,
            ..Default::default()
        }
    }

    #[test]
    fn quotas_become_engine_limits_in_bits_per_second() {
        assert_eq!(tenant_limits(&quotas(None, None)), TenantLimits::UNLIMITED);
        assert_eq!(
            tenant_limits(&quotas(Some(100), Some(50))),
            TenantLimits {
                max_connections: Some(100),
                max_bandwidth_bps: Some(50_000_000),
            }
        );
        assert_eq!(
            tenant_limits(&quotas(None, Some(u64::MAX))).max_bandwidth_bps,
            Some(u64::MAX),
            "saturates"
        );
    }

    #[test]
    fn a_quota_warning_comes_at_most_every_ten_seconds_and_only_after_new_drops() {
        let mut r = QuotaReport::default();
        let t0 = Instant::now();
        assert_eq!(
            r.due(QuotaKind::Connections, 0, t0),
            None,
            "nothing dropped"
        );
        assert_eq!(r.due(QuotaKind::Connections, 5, t0), Some(5));
        assert_eq!(
            r.due(QuotaKind::Connections, 9, t0 + Duration::from_secs(9)),
            None
        );
        // The other quota has a clock of its own.
        assert_eq!(
            r.due(QuotaKind::Bandwidth, 3, t0 + Duration::from_secs(9)),
            Some(3)
        );
        // Ten seconds on: what was dropped since the last warning.
        assert_eq!(
            r.due(QuotaKind::Connections, 12, t0 + Duration::from_secs(10)),
            Some(7)
        );
        assert_eq!(
            r.due(QuotaKind::Connections, 12, t0 + Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn the_warning_names_the_quota_its_limit_and_how_to_raise_it() {
        let limits = tenant_limits(&quotas(Some(100), Some(50)));
        let w = quota_warning("acme", QuotaKind::Connections, limits, 7);
        assert!(w.contains("connection quota"), "{w}");
        assert!(w.contains("7 frames dropped, limit 100 connections"), "{w}");
        assert!(
            w.contains(r#"`PATCH /v1/tenants/acme` and {"quotas": {"max_connections": N}}"#),
            "{w}"
        );
        let w = quota_warning("acme", QuotaKind::Bandwidth, limits, 3);
        assert!(
            w.contains("bandwidth quota: 3 frames dropped, limit 50 Mbit/s"),
            "{w}"
        );
        assert!(
            w.contains(r#"{"quotas": {"max_bandwidth_mbps": N}}"#),
            "{w}"
        );
    }

    /// The quotas reach the running engine, and what they drop shows in the summary.
    #[test]
    fn quotas_applied_to_a_running_data_plane_drop_and_show_in_the_summary() {
        let local = NodeId([0xaa; 16]);
        let dp = DataPlane::start(&NicSpec::Memory, local).unwrap();
        assert!(dp.apply_quotas("acme", &quotas(Some(1), None)));
        assert!(
            !dp.apply_quotas("acme", &quotas(Some(1), None)),
            "unchanged"
        );
        let mut frames: Vec<MemPacket> = [1u32, 2, 1]
            .iter()
            .map(|&stream| {
                let mut spec = FrameSpec::new([1; 16], local.0, 1);
                spec.stream_id = stream;
                MemPacket(spec.ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], 100, 0))
            })
            .collect();
        let wire = dp._wire.as_ref().unwrap();
        assert_eq!(wire.lock().unwrap().tx_burst(&mut frames).unwrap(), 3);
        let deadline = Instant::now() + Duration::from_secs(10);
        let summary = loop {
            let s = dp.summary();
            if s.local_packets + s.drops.values().sum::<u64>() >= 3 || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(summary.local_packets, 2, "{summary:?}");
        assert_eq!(
            summary.drops.get("quota_connections"),
            Some(&1),
            "{summary:?}"
        );
        assert_eq!(summary.connections, 1);
        assert_eq!(dp.stats.flows_opened.load(Ordering::Relaxed), 1);
        dp.shutdown();
    }
}
