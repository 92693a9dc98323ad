//! The node's data plane: opens the NIC, runs the forwarding engine on a thread of its own, and
//! keeps its route-policy classifier in step with the replicated configuration.
//!
//! - The engine thread (`nexus-dataplane`) opens the NIC itself (DPDK's EAL pins the thread
//!   that initialises it to the first core of `-l`), reports whether that worked, then forwards
//!   until the node stops. Packets never reach the async runtime.
//! - [`run`] recompiles the classifier whenever the configuration or the membership changes
//!   (off the runtime's threads) and publishes it atomically; it also exports the counters as
//!   metrics every second and publishes a summary in gossip every five seconds.

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
        let thread = {
            let (spec, handle, stats, stop) =
                (spec.clone(), handle.clone(), stats.clone(), stop.clone());
            let config = EngineConfig::new(local.0);
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
        })
    }

    /// What the NIC is.
    pub fn info(&self) -> &NicInfo {
        &self.info
    }

    /// Compiles `sources` (with the destinations' capabilities) and publishes the classifier,
    /// unless the inputs are the ones in force. Returns the new generation.
    pub fn update(&self, sources: PolicySources, peers: &Peers) -> Option<u64> {
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
        let hits = s
            .policy_hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (policy, n) in hits {
            metrics::counter!("nexus_dataplane_policy_hits_total", "policy" => policy).absolute(n);
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
