//! The mesh runtime: chitchat over the authenticated transport, plus a ticker that turns gossip
//! state into the membership table.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use nexus_ca::NodeId;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::GossipAuth;
use crate::membership::{Member, Membership, MembershipConfig, NodeStatus, Now, Observation};
use crate::transport::{AuthenticatedTransport, Datagrams, unix_ms};
use crate::wire::{
    KEY_DATAPLANE, KEY_HEALTH, KEY_INFO, KEY_OPERATOR_PREFIX, KEY_STATUS, NodeInfo, OperatorAction,
    SelfStatus, operator_key,
};

/// Default time between gossip rounds: fast enough that a live node's heartbeat reaches a
/// 50-node pool well inside the suspicion window; compressed digests keep it affordable.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(250);

/// Default of [`MeshConfig::dead_incarnation_grace`]: how long chitchat keeps the state of an
/// incarnation it considers dead. Every dead incarnation
/// (each restart leaves one) rides in every digest until then, so it is kept short; `Membership`
/// remembers offline nodes on its own, and chitchat re-admits a returning incarnation whose
/// heartbeat moved on, so a site cut off for longer than this still comes back.
pub const DEAD_INCARNATION_GRACE: Duration = Duration::from_secs(300);

/// Everything the mesh needs to run. Built by the binary from its config tree.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Fleet id: chitchat cluster id; nodes of other fleets are refused.
    pub fleet_id: String,
    /// This node.
    pub node_id: NodeId,
    /// Incarnation number: unix ms at process start.
    pub generation: u64,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Where to start gossiping.
    pub seeds: Vec<SocketAddr>,
    /// Failure detection timing.
    pub membership: MembershipConfig,
    /// How often gossip state is folded into the membership table.
    pub tick_interval: Duration,
    /// How long chitchat keeps a dead incarnation's state (see [`DEAD_INCARNATION_GRACE`]).
    pub dead_incarnation_grace: Duration,
}

/// Failures starting the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// chitchat refused to start (for example its codec sockets could not be bound).
    #[error("gossip could not start: {0}")]
    Start(String),
}

/// A running mesh.
pub struct Mesh {
    chitchat: ChitchatHandle,
    table: Arc<Mutex<Membership>>,
    auth: Arc<Mutex<GossipAuth>>,
    changes: watch::Receiver<u64>,
    evicted: watch::Receiver<bool>,
    ticker: JoinHandle<()>,
    node_id: NodeId,
    gossip_addr: SocketAddr,
}

impl Mesh {
    /// Starts gossip on `datagrams` (already bound), publishing `info`. `restored` are the members
    /// remembered from the last run.
    pub async fn start(
        config: MeshConfig,
        datagrams: Box<dyn Datagrams>,
        auth: GossipAuth,
        info: &NodeInfo,
        restored: Vec<Member>,
    ) -> Result<Mesh, MeshError> {
        let gossip_addr = datagrams.local_addr();
        let auth = Arc::new(Mutex::new(auth));
        let transport = AuthenticatedTransport::new(datagrams, auth.clone());
        let interval = config.gossip_interval;
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(
                config.node_id.to_string(),
                config.generation,
                gossip_addr,
            ),
            cluster_id: config.fleet_id.clone(),
            gossip_interval: interval,
            listen_addr: gossip_addr,
            seed_nodes: config
                .seeds
                .iter()
                .filter(|seed| **seed != gossip_addr)
                .map(|seed| seed.to_string())
                .collect(),
            // chitchat's own detector only decides whom it gossips with and when it forgets a
            // dead incarnation; statuses come from `Membership`. Keep it tolerant so a suspected
            // node still gets gossip (and can prove it is alive).
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: 1000,
                max_interval: Duration::from_secs(10),
                initial_interval: interval,
                dead_node_grace_period: config.dead_incarnation_grace,
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            // Every node of a fleet runs a version that reads the compressed digest.
            protocol_version: ProtocolVersion::V1,
        };
        let info_json = serde_json::to_string(info).expect("NodeInfo serializes");
        let initial = vec![
            (KEY_INFO.to_string(), info_json),
            (KEY_HEALTH.to_string(), "ok".to_string()),
            (
                KEY_STATUS.to_string(),
                SelfStatus::Active.as_str().to_string(),
            ),
        ];
        let chitchat = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(|err| MeshError::Start(format!("{err:#}")))?;

        let origin = Instant::now();
        let now = move || Now {
            mono: origin.elapsed(),
            wall_ms: unix_ms(),
        };
        let mut membership = Membership::new(config.membership.clone(), config.node_id);
        for member in restored {
            if member.node_id != config.node_id {
                membership.restore(member, now());
            }
        }
        let table = Arc::new(Mutex::new(membership));
        let (changes_tx, changes) = watch::channel(0u64);
        let (evicted_tx, evicted) = watch::channel(false);
        let ticker = tokio::spawn(tick_loop(
            Folding {
                chitchat: chitchat.chitchat(),
                table: table.clone(),
                auth: auth.clone(),
                self_id: config.node_id,
                changes: changes_tx,
                evicted: evicted_tx,
            },
            config.tick_interval,
            now,
        ));
        Ok(Mesh {
            chitchat,
            table,
            auth,
            changes,
            evicted,
            ticker,
            node_id: config.node_id,
            gossip_addr,
        })
    }

    /// The gossip address this node advertises.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// All members, ordered by node id.
    pub fn members(&self) -> Vec<Member> {
        lock(&self.table).members().cloned().collect()
    }

    /// One member.
    pub fn member(&self, node_id: &NodeId) -> Option<Member> {
        lock(&self.table).get(node_id).cloned()
    }

    /// Bumped whenever a status changes; lets the node persist membership only when it changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Starts one gossip exchange with `addr` now, outside the regular rounds.
    pub fn gossip_with(&self, addr: SocketAddr) {
        // Fails only once gossip has stopped, when there is nobody left to tell.
        let _ = self.chitchat.gossip(addr);
    }

    /// Incarnations (live and dead) in this node's gossip state; each one rides in every digest.
    pub async fn incarnations(&self) -> usize {
        self.chitchat.with_chitchat(|c| c.node_states().len()).await
    }

    /// Turns true when gossip says an operator decommissioned this node.
    pub fn evicted(&self) -> watch::Receiver<bool> {
        self.evicted.clone()
    }

    /// Publishes a new health summary (`ok` or the failing check).
    pub async fn set_health(&self, health: &str) {
        let health = health.to_string();
        self.chitchat
            .with_chitchat(|c| c.self_node_state().set(KEY_HEALTH, &health))
            .await;
    }

    /// Records an operator action on `target` and publishes it so every node applies it.
    pub async fn operator_action(&self, target: NodeId, action: OperatorAction) {
        let at = unix_ms();
        {
            let mut table = lock(&self.table);
            table.apply_operator(target, action, at);
        }
        if action == OperatorAction::Decommission && target != self.node_id {
            lock(&self.auth).deny(target);
        }
        let key = operator_key(&target);
        let value = action.encode(at);
        self.chitchat
            .with_chitchat(|c| c.self_node_state().set(&key, &value))
            .await;
    }

    /// Publishes `value` under `key` in this node's gossip state (a key of its own choosing;
    /// the keys in [`crate::wire`] are managed by the mesh).
    pub async fn publish(&self, key: &str, value: &str) {
        let (key, value) = (key.to_string(), value.to_string());
        self.chitchat
            .with_chitchat(|c| c.self_node_state().set(&key, &value))
            .await;
    }

    /// What every node (this one included) currently publishes under `key`, by node id.
    pub async fn published(&self, key: &str) -> Vec<(NodeId, String)> {
        let key = key.to_string();
        self.chitchat
            .with_chitchat(|c| {
                // From each node's newest incarnation only: a restarted node's old state is stale.
                let mut newest: std::collections::HashMap<NodeId, (u64, Option<String>)> =
                    std::collections::HashMap::new();
                for (id, state) in c.node_states() {
                    let Ok(node) = id.node_id.parse::<NodeId>() else {
                        continue;
                    };
                    if newest
                        .get(&node)
                        .is_some_and(|(g, _)| *g > id.generation_id)
                    {
                        continue;
                    }
                    newest.insert(
                        node,
                        (id.generation_id, state.get(&key).map(str::to_string)),
                    );
                }
                newest
                    .into_iter()
                    .filter_map(|(node, (_, value))| Some((node, value?)))
                    .collect()
            })
            .await
    }

    /// Every `(node, key, value)` published under a key starting with `prefix`, by any node
    /// (from each node's newest incarnation only: a restarted node's old state is stale).
    pub async fn published_prefix(&self, prefix: &str) -> Vec<(NodeId, String, String)> {
        let prefix = prefix.to_string();
        self.chitchat
            .with_chitchat(|c| {
                let mut newest: std::collections::HashMap<NodeId, (u64, Vec<(String, String)>)> =
                    std::collections::HashMap::new();
                for (id, state) in c.node_states() {
                    let Ok(node) = id.node_id.parse::<NodeId>() else {
                        continue;
                    };
                    if newest
                        .get(&node)
                        .is_some_and(|(g, _)| *g > id.generation_id)
                    {
                        continue;
                    }
                    let entries = state
                        .iter_prefix(&prefix)
                        .map(|(key, value)| (key.to_string(), value.value.clone()))
                        .collect();
                    newest.insert(node, (id.generation_id, entries));
                }
                newest
                    .into_iter()
                    .flat_map(|(node, (_, entries))| {
                        entries.into_iter().map(move |(k, v)| (node, k, v))
                    })
                    .collect()
            })
            .await
    }

    /// Publishes a changed [`NodeInfo`] (for example after a certificate renewal).
    pub async fn set_info(&self, info: &NodeInfo) {
        let json = serde_json::to_string(info).expect("NodeInfo serializes");
        self.chitchat
            .with_chitchat(|c| c.self_node_state().set(KEY_INFO, &json))
            .await;
    }

    /// Uses a renewed certificate for gossip from now on.
    pub fn set_certificate(&self, mic_der: Vec<u8>) {
        lock(&self.auth).set_certificate(mic_der);
    }

    /// Stops gossip (idempotent).
    pub fn shutdown(&self) {
        self.ticker.abort();
        // An error only means chitchat already stopped.
        let _ = self.chitchat.initiate_shutdown();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Held only for short, panic-free sections; a poisoned lock still holds consistent data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the ticker reads gossip state from and reports membership to.
struct Folding {
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    table: Arc<Mutex<Membership>>,
    auth: Arc<Mutex<GossipAuth>>,
    self_id: NodeId,
    changes: watch::Sender<u64>,
    evicted: watch::Sender<bool>,
}

async fn tick_loop(folding: Folding, interval: Duration, now: impl Fn() -> Now) {
    let Folding {
        chitchat,
        table,
        auth,
        self_id,
        changes,
        evicted,
    } = folding;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut self_draining = false;
    // Version of the info each incarnation last published that was parsed: the JSON is parsed
    // again only when it changes, not on every tick.
    let mut parsed_info: std::collections::HashMap<ChitchatId, u64> = Default::default();
    loop {
        ticker.tick().await;
        let mut observations = Vec::new();
        let mut actions = Vec::new();
        let mut published = std::collections::HashMap::new();
        {
            let chitchat = chitchat.lock().await;
            let me = chitchat.self_chitchat_id().clone();
            let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
            parsed_info.retain(|id, _| chitchat.node_state(id).is_some());
            // Live and dead incarnations alike ride in every digest: the gossip cost driver.
            metrics::gauge!("nexus_gossip_incarnations").set(chitchat.node_states().len() as f64);
            for (id, state) in chitchat.node_states() {
                let Ok(node_id) = id.node_id.parse::<NodeId>() else {
                    continue;
                };
                observations.push(Observation {
                    node_id,
                    generation: id.generation_id,
                    gossip_addr: id.gossip_advertise_addr,
                    heartbeat: u64::from(state.heartbeat()),
                    info: state.get_versioned(KEY_INFO).and_then(|info| {
                        let version = info.version;
                        (parsed_info.insert(id.clone(), version) != Some(version))
                            .then(|| serde_json::from_str(&info.value).ok())
                            .flatten()
                    }),
                    health: state.get(KEY_HEALTH).map(str::to_string),
                    dataplane: state.get(KEY_DATAPLANE).map(str::to_string),
                    self_status: state
                        .get(KEY_STATUS)
                        .map_or(SelfStatus::Active, SelfStatus::parse),
                    accrual_live: live.contains(id),
                });
                for (key, value) in state.iter_prefix(KEY_OPERATOR_PREFIX) {
                    let target = key[KEY_OPERATOR_PREFIX.len()..].parse::<NodeId>();
                    if let (Ok(target), Some((action, at))) =
                        (target, OperatorAction::decode(&value.value))
                    {
                        if *id == me {
                            published.insert(target, value.value.clone());
                        }
                        actions.push((target, action, at));
                    }
                }
            }
        }
        let now = now();
        let (transitions, forgotten, counts, drain_self, grew, to_publish) = {
            let mut table = lock(&table);
            let before = table.members().count();
            for obs in observations {
                table.observe(obs, now);
            }
            for (target, action, at) in actions {
                table.apply_operator(target, action, at);
            }
            let (transitions, forgotten) = table.tick(now);
            let drain_self = table
                .get(&self_id)
                .is_some_and(|m| matches!(m.operator, Some((OperatorAction::Drain, _))));
            let notified_by = lock(&auth).evicted_by();
            let decommissioned = table
                .get(&self_id)
                .is_some_and(|m| m.status == NodeStatus::Decommissioned);
            if (notified_by.is_some() || decommissioned)
                && evicted.send_if_modified(|e| !std::mem::replace(e, true))
            {
                tracing::error!(notified_by = ?notified_by, "an operator decommissioned this node");
            }
            let grew = table.members().count() != before;
            // Every node carries every operator action in its own state, so an action outlives
            // the node it was sent to and reaches nodes that join later.
            let to_publish: Vec<(NodeId, String)> = table
                .members()
                .filter_map(|m| {
                    let (action, at) = m.operator?;
                    let value = action.encode(at);
                    (published.get(&m.node_id) != Some(&value)).then_some((m.node_id, value))
                })
                .collect();
            (
                transitions,
                forgotten,
                table.counts(),
                drain_self,
                grew,
                to_publish,
            )
        };
        if !to_publish.is_empty() {
            let mut chitchat = chitchat.lock().await;
            for (target, value) in &to_publish {
                chitchat.self_node_state().set(operator_key(target), value);
            }
        }
        for t in &transitions {
            tracing::info!(node = %t.node_id, from = %t.from, to = %t.to, "node status changed");
            metrics::counter!("nexus_node_status_transitions_total", "to" => t.to.as_str())
                .increment(1);
            if t.to == NodeStatus::Decommissioned && t.node_id != self_id {
                lock(&auth).deny(t.node_id);
            }
        }
        for id in &forgotten {
            tracing::info!(node = %id, "decommissioned node forgotten after its grace period");
        }
        for (status, count) in counts {
            metrics::gauge!("nexus_peers", "status" => status.as_str()).set(count as f64);
        }
        if drain_self && !self_draining {
            self_draining = true;
            chitchat
                .lock()
                .await
                .self_node_state()
                .set(KEY_STATUS, SelfStatus::Draining.as_str());
        }
        if grew || !transitions.is_empty() || !forgotten.is_empty() {
            changes.send_modify(|n| *n += 1);
        }
    }
}
