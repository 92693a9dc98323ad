//! The mesh runtime: chitchat over the authenticated transport, plus a ticker that turns gossip
//! state into the membership table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use nexus_ca::NodeId;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::GossipAuth;
use crate::detector::{Action, Datagram, Detector, DetectorConfig, Signal};
use crate::membership::{
    ForgetReason, Member, Membership, MembershipConfig, NodeStatus, Now, Observation, Pool, Report,
    Transition,
};
use crate::transport::{AuthenticatedTransport, Datagrams, unix_ms};
use crate::wire::{
    KEY_DATAPLANE, KEY_HEALTH, KEY_INFO, KEY_OPERATOR_PREFIX, KEY_PROBE, KEY_SITE_PREFIX,
    KEY_STATUS, NodeInfo, OperatorAction, SelfStatus, operator_key, site_report_key,
};

/// Default time between gossip rounds: fast enough that a live node's heartbeat reaches a
/// 50-node pool well inside the suspicion window; compressed digests keep it affordable.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(250);

/// Default of [`MeshConfig::dead_incarnation_grace`]: how long chitchat keeps the state of an
/// incarnation it considers dead. Every dead incarnation
/// (each restart leaves one) rides in every digest until then (until half of it, in fact: then
/// chitchat leaves it out of digests), so it is kept short; `Membership` remembers offline nodes
/// on its own (for `forget_offline_after`), and chitchat re-admits a returning incarnation whose
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
    /// How long chitchat keeps a dead incarnation's state (see [`DEAD_INCARNATION_GRACE`]); a
    /// forgotten member's tombstone lasts twice this.
    pub dead_incarnation_grace: Duration,
    /// Where to start gossiping in the WAN pool (gateways and anchors only).
    pub wan_seeds: Vec<SocketAddr>,
    /// The wall clock (unix ms). Monotonic time is tokio's, so a paused runtime drives both.
    pub clock: Clock,
    /// Told about every status change this node sees (simulations and tests).
    pub observer: Option<Observer>,
    /// Timing of the failure detector (runs when the mesh is given a probe socket).
    pub detector: DetectorConfig,
    /// Extra exchanges when gossip state changes between regular rounds.
    pub rumor: RumorConfig,
}

/// News-triggered gossip: as soon as a node's gossip state gains a key value (its own, or one
/// a peer brought), it runs one extra exchange with `fanout` random live members of that pool,
/// at most once per `gap`. Every node that learns something passes it on the same way, so a
/// change crosses a pool in a few network round trips while the regular rounds (the push-pull
/// backstop) can run slowly. A pool without news sends nothing extra. Off when `fanout` is 0
/// or when regular rounds are not slower than `gap` anyway.
///
/// Keys under a `quiet` prefix are not news: they change often on every node (the data-plane
/// summary, configuration digests after each write) and travel with the next exchange that
/// happens anyway. Rumoring them would turn every configuration write into a gossip round of
/// the whole fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RumorConfig {
    /// Members one piece of news is exchanged with.
    pub fanout: usize,
    /// Least time between two news-triggered rounds in one pool.
    pub gap: Duration,
    /// Key prefixes whose changes are not news.
    pub quiet: Vec<String>,
}

impl Default for RumorConfig {
    fn default() -> RumorConfig {
        RumorConfig {
            fanout: 3,
            gap: Duration::from_secs(1),
            quiet: vec![KEY_DATAPLANE.to_string()],
        }
    }
}

impl RumorConfig {
    /// The default, with `prefixes` quiet as well.
    pub fn quiet_also(prefixes: &[&str]) -> RumorConfig {
        let mut config = RumorConfig::default();
        config.quiet.extend(prefixes.iter().map(|p| p.to_string()));
        config
    }
}

impl RumorConfig {
    /// Whether news-triggered rounds run with regular rounds every `gossip_interval`.
    pub fn active(&self, gossip_interval: Duration) -> bool {
        self.fanout > 0 && gossip_interval > self.gap
    }
}

/// A source of wall-clock time in unix milliseconds.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Arc::new(unix_ms))
    }

    /// A clock read from `f` (a simulation's virtual clock, with its skew).
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    /// Unix milliseconds now.
    pub fn wall_ms(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({} ms)", self.wall_ms())
    }
}

/// Receives what a node's membership table does; see [`MeshConfig::observer`].
pub trait MeshObserver: Send + Sync {
    /// Called after a fold that changed something: the statuses that changed and how many
    /// members the table holds now.
    fn folded(&self, node: NodeId, now: Now, transitions: &[Transition], members: usize);
}

/// A shared [`MeshObserver`].
#[derive(Clone)]
pub struct Observer(pub Arc<dyn MeshObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// One gossip pool's socket: a chitchat transport that hands out one socket at `addr`.
pub struct PoolSocket {
    /// The transport (authenticated UDP in production, a simulated network in simulations).
    pub transport: Box<dyn Transport>,
    /// The address the socket is bound to and advertised at.
    pub addr: SocketAddr,
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
    chitchat: Arc<ChitchatHandle>,
    detector: Option<JoinHandle<()>>,
    wan: Option<Arc<ChitchatHandle>>,
    rumors: Vec<JoinHandle<()>>,
    table: Arc<Mutex<Membership>>,
    auth: Option<Arc<Mutex<GossipAuth>>>,
    changes: watch::Receiver<u64>,
    moved: Arc<std::sync::atomic::AtomicU64>,
    evicted: watch::Receiver<bool>,
    ticker: JoinHandle<()>,
    node_id: NodeId,
    gossip_addr: SocketAddr,
}

impl Mesh {
    /// Starts gossip on `datagrams` (already bound), publishing `info`. `restored` are the members
    /// remembered from the last run. A gateway or anchor also passes `wan`, its WAN pool socket;
    /// with `probe`, the failure detector runs on that socket. Every datagram is authenticated.
    pub async fn start(
        config: MeshConfig,
        datagrams: Box<dyn Datagrams>,
        wan: Option<Box<dyn Datagrams>>,
        probe: Option<Box<dyn Datagrams>>,
        auth: GossipAuth,
        info: &NodeInfo,
        restored: Vec<Member>,
    ) -> Result<Mesh, MeshError> {
        let auth = Arc::new(Mutex::new(auth));
        let site = PoolSocket {
            addr: datagrams.local_addr(),
            transport: Box::new(AuthenticatedTransport::new(datagrams, auth.clone())),
        };
        let wan = wan.map(|datagrams| PoolSocket {
            addr: datagrams.local_addr(),
            transport: Box::new(AuthenticatedTransport::new(datagrams, auth.clone())),
        });
        Mesh::start_pools(config, site, wan, probe, Some(auth), info, restored).await
    }

    /// Starts gossip over any chitchat transport: the site pool on `site` and, for a gateway,
    /// the WAN pool on `wan`; with `probe`, the failure detector ([`crate::detector`]) on that
    /// socket. Without `auth` datagrams are not authenticated (simulations, which model the
    /// check).
    pub async fn start_pools(
        config: MeshConfig,
        site: PoolSocket,
        wan: Option<PoolSocket>,
        probe: Option<Box<dyn Datagrams>>,
        auth: Option<Arc<Mutex<GossipAuth>>>,
        info: &NodeInfo,
        restored: Vec<Member>,
    ) -> Result<Mesh, MeshError> {
        let gossip_addr = site.addr;
        let info_json = serde_json::to_string(info).expect("NodeInfo serializes");
        let probe_addr = probe.as_ref().map(|p| p.local_addr());
        let chitchat = spawn_pool(
            &config,
            &site,
            config.fleet_id.clone(),
            &config.seeds,
            &info_json,
            probe_addr,
        )
        .await?;
        let wan = match &wan {
            Some(wan) => Some(
                spawn_pool(
                    &config,
                    wan,
                    wan_cluster(&config.fleet_id),
                    &config.wan_seeds,
                    &info_json,
                    probe_addr,
                )
                .await?,
            ),
            None => None,
        };
        let chitchat = Arc::new(chitchat);
        let wan = wan.map(Arc::new);
        let mut rumors = Vec::new();
        if config.rumor.active(config.gossip_interval) {
            for (index, pool) in std::iter::once(&chitchat).chain(&wan).enumerate() {
                let seed = u64::from_le_bytes(config.node_id.0[..8].try_into().expect("8 bytes"))
                    ^ config.generation.rotate_left(17)
                    ^ index as u64;
                rumors.push(spawn_rumors(pool.clone(), config.rumor.clone(), seed).await);
            }
        }

        let origin = Instant::now();
        let clock = config.clock.clone();
        let now = Arc::new(move || Now {
            mono: origin.elapsed(),
            wall_ms: clock.wall_ms(),
        });
        let mut membership = Membership::new(config.membership.clone(), config.node_id);
        membership.set_tombstone_ttl(config.dead_incarnation_grace.saturating_mul(2));
        for member in restored {
            if member.node_id != config.node_id {
                membership.restore(member, now());
            }
        }
        let table = Arc::new(Mutex::new(membership));
        let (changes_tx, changes) = watch::channel(0u64);
        let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (evicted_tx, evicted) = watch::channel(false);
        let mut pools = vec![(Pool::Site, chitchat.chitchat())];
        if let Some(wan) = &wan {
            pools.push((Pool::Wan, wan.chitchat()));
        }
        let poke = Arc::new(tokio::sync::Notify::new());
        let detector = probe.map(|probe| {
            tokio::spawn(detector_loop(
                Probing {
                    detector: Detector::new(
                        config.detector.clone(),
                        config.node_id,
                        config.generation,
                    )
                    .relaying(wan.is_some()),
                    datagrams: Arc::from(probe),
                    table: table.clone(),
                    auth: auth.clone(),
                    poke: poke.clone(),
                    changes: changes.clone(),
                    gateway: wan.is_some(),
                    clock: config.clock.clone(),
                },
                now.clone(),
            ))
        });
        let ticker = tokio::spawn(tick_loop(
            Folding {
                pools,
                table: table.clone(),
                auth: auth.clone(),
                self_id: config.node_id,
                changes: changes_tx,
                moved: moved.clone(),
                evicted: evicted_tx,
                observer: config.observer.clone(),
                poke,
            },
            config.tick_interval,
            now,
        ));
        Ok(Mesh {
            chitchat,
            detector,
            wan,
            rumors,
            table,
            auth,
            changes,
            moved,
            evicted,
            ticker,
            node_id: config.node_id,
            gossip_addr,
        })
    }

    /// Runs `f` on the chitchat state of every pool this node is in (site first).
    async fn each_pool<T: Send + 'static>(
        &self,
        f: impl Fn(&mut chitchat::Chitchat) -> T + Send + Clone + 'static,
    ) -> Vec<T> {
        let mut out = vec![self.chitchat.with_chitchat(f.clone()).await];
        if let Some(wan) = &self.wan {
            out.push(wan.with_chitchat(f).await);
        }
        out
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Whether this node is in the WAN pool (a gateway or an anchor).
    pub fn is_gateway(&self) -> bool {
        self.wan.is_some()
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

    /// Moves whenever a fold saw gossip state change (a key value, an incarnation coming or
    /// going, liveness). While it stands still, [`Mesh::published`] and
    /// [`Mesh::published_prefix`] answer what they answered before, as of the last fold (at
    /// most one tick interval ago): a caller polling them can keep its last answer.
    pub fn state_version(&self) -> u64 {
        self.moved.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts one gossip exchange with `addr` now, outside the regular rounds.
    pub fn gossip_with(&self, addr: SocketAddr) {
        // Fails only once gossip has stopped, when there is nobody left to tell.
        let _ = self.chitchat.gossip(addr);
    }

    /// Incarnations (live and dead) in this node's gossip state; each one rides in every digest.
    pub async fn incarnations(&self) -> usize {
        self.each_pool(|c| c.node_states().len())
            .await
            .into_iter()
            .sum()
    }

    /// Turns true when gossip says an operator decommissioned this node.
    pub fn evicted(&self) -> watch::Receiver<bool> {
        self.evicted.clone()
    }

    /// Publishes a new health summary (`ok` or the failing check).
    pub async fn set_health(&self, health: &str) {
        let health = health.to_string();
        self.each_pool(move |c| c.self_node_state().set(KEY_HEALTH, &health))
            .await;
    }

    /// Records an operator action on `target` and publishes it so every node applies it.
    pub async fn operator_action(&self, target: NodeId, action: OperatorAction) {
        let at = unix_ms();
        {
            let mut table = lock(&self.table);
            table.apply_operator(target, action, at);
        }
        if action == OperatorAction::Decommission
            && target != self.node_id
            && let Some(auth) = &self.auth
        {
            lock(auth).deny(target);
        }
        let key = operator_key(&target);
        let value = action.encode(at);
        self.each_pool(move |c| c.self_node_state().set(&key, &value))
            .await;
    }

    /// Publishes `value` under `key` in this node's gossip state (a key of its own choosing;
    /// the keys in [`crate::wire`] are managed by the mesh).
    pub async fn publish(&self, key: &str, value: &str) {
        let (key, value) = (key.to_string(), value.to_string());
        self.each_pool(move |c| c.self_node_state().set(&key, &value))
            .await;
    }

    /// What every node (this one included) currently publishes under `key`, by node id.
    pub async fn published(&self, key: &str) -> Vec<(NodeId, String)> {
        let key = key.to_string();
        let per_pool = self
            .each_pool(move |c| newest_states(c, |state| state.get(&key).map(str::to_string)))
            .await;
        merge_pools(per_pool)
            .into_iter()
            .filter_map(|(node, value)| Some((node, value?)))
            .collect()
    }

    /// Every `(node, key, value)` published under a key starting with `prefix`, by any node
    /// (from each node's newest incarnation only: a restarted node's old state is stale).
    pub async fn published_prefix(&self, prefix: &str) -> Vec<(NodeId, String, String)> {
        let prefix = prefix.to_string();
        let per_pool = self
            .each_pool(move |c| {
                newest_states(c, |state| {
                    state
                        .iter_prefix(&prefix)
                        .map(|(key, value)| (key.to_string(), value.value.clone()))
                        .collect::<Vec<_>>()
                })
            })
            .await;
        merge_pools(per_pool)
            .into_iter()
            .flat_map(|(node, entries)| entries.into_iter().map(move |(k, v)| (node, k, v)))
            .collect()
    }

    /// Publishes a changed [`NodeInfo`] (for example after a certificate renewal).
    pub async fn set_info(&self, info: &NodeInfo) {
        let json = serde_json::to_string(info).expect("NodeInfo serializes");
        self.each_pool(move |c| c.self_node_state().set(KEY_INFO, &json))
            .await;
    }

    /// Uses a renewed certificate for gossip from now on.
    pub fn set_certificate(&self, mic_der: Vec<u8>) {
        if let Some(auth) = &self.auth {
            lock(auth).set_certificate(mic_der);
        }
    }

    /// Stops gossip (idempotent).
    pub fn shutdown(&self) {
        self.ticker.abort();
        for rumors in &self.rumors {
            rumors.abort();
        }
        if let Some(detector) = &self.detector {
            detector.abort();
        }
        // An error only means chitchat already stopped.
        let _ = self.chitchat.initiate_shutdown();
        if let Some(wan) = &self.wan {
            let _ = wan.initiate_shutdown();
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // The news-triggered rounds hold the pools' handles: without them gone, a mesh dropped
        // without `shutdown` would keep chitchat's command channel, and so its gossip, alive.
        for rumors in &self.rumors {
            rumors.abort();
        }
    }
}

/// Subscribes to `pool`'s key changes and starts its news-triggered rounds ([`RumorConfig`]).
async fn spawn_rumors(pool: Arc<ChitchatHandle>, config: RumorConfig, seed: u64) -> JoinHandle<()> {
    let news = Arc::new(tokio::sync::Notify::new());
    let tell = news.clone();
    let quiet = config.quiet.clone();
    // Called with the pool's state locked: only wake the task.
    pool.with_chitchat(|c| {
        let (tell, quiet) = (tell.clone(), quiet.clone());
        c.subscribe_event("", move |event| {
            if !quiet.iter().any(|q| event.key.starts_with(q.as_str())) {
                tell.notify_one();
            }
        })
        .forever();
    })
    .await;
    tokio::spawn(rumor_loop(pool, news, config, seed))
}

async fn rumor_loop(
    pool: Arc<ChitchatHandle>,
    news: Arc<tokio::sync::Notify>,
    config: RumorConfig,
    seed: u64,
) {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut last: Option<Instant> = None;
    // A round started by news is followed by one more: the peers of one round may all have had
    // the news already, and a node that nobody tells waits for the next regular round.
    let mut follow_up = false;
    loop {
        // A node that knows nobody yet (its seeds were not up when it started) asks its seeds
        // again every gap instead of waiting for the next regular round.
        let lonely = pool.with_chitchat(|c| c.node_states().len() <= 1).await;
        if lonely || follow_up {
            follow_up = tokio::select! {
                _ = news.notified() => true,
                _ = tokio::time::sleep(config.gap) => false,
            };
        } else {
            news.notified().await;
            follow_up = true;
        }
        if let Some(last) = last {
            tokio::time::sleep_until(last + config.gap).await;
        }
        let peers = pool
            .with_chitchat(|c| {
                let me = c.self_chitchat_id();
                if c.node_states().len() <= 1 {
                    // Sorted: the choice among them then comes from the seeded generator alone.
                    let mut seeds: Vec<SocketAddr> = c
                        .seed_nodes()
                        .into_iter()
                        .filter(|addr| *addr != me.gossip_advertise_addr)
                        .collect();
                    seeds.sort();
                    return seeds;
                }
                let live: Vec<SocketAddr> = c
                    .live_nodes()
                    .filter(|id| *id != me)
                    .map(|id| id.gossip_advertise_addr)
                    .collect();
                if !live.is_empty() {
                    return live;
                }
                // Nobody is live yet (a new node): whoever is known, as chitchat does.
                c.node_states()
                    .keys()
                    .filter(|id| *id != me)
                    .map(|id| id.gossip_advertise_addr)
                    .collect()
            })
            .await;
        for addr in peers.choose_multiple(&mut rng, config.fanout) {
            // Fails only once gossip has stopped.
            let _ = pool.gossip(*addr);
        }
        metrics::counter!("nexus_gossip_rumor_rounds_total").increment(1);
        last = Some(Instant::now());
    }
}

/// The WAN pool's chitchat cluster id: another cluster, so a site pool never merges into it.
fn wan_cluster(fleet_id: &str) -> String {
    format!("{fleet_id}/wan")
}

async fn spawn_pool(
    config: &MeshConfig,
    socket: &PoolSocket,
    cluster_id: String,
    seeds: &[SocketAddr],
    info_json: &str,
    probe_addr: Option<SocketAddr>,
) -> Result<ChitchatHandle, MeshError> {
    let interval = config.gossip_interval;
    let chitchat_config = ChitchatConfig {
        chitchat_id: ChitchatId::new(config.node_id.to_string(), config.generation, socket.addr),
        cluster_id,
        gossip_interval: interval,
        listen_addr: socket.addr,
        seed_nodes: seeds
            .iter()
            .filter(|seed| **seed != socket.addr)
            .map(|seed| seed.to_string())
            .collect(),
        // chitchat's own detector only decides whom it gossips with and when it forgets a
        // dead incarnation; statuses come from `Membership`. Keep it tolerant so a suspected
        // node still gets gossip (and can prove it is alive).
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: 8.0,
            sampling_window_size: 100,
            // Heartbeats arrive relayed, about as often as rounds run somewhere in the pool;
            // with slow rounds, gaps longer than 10 s are normal and still worth sampling.
            max_interval: interval.saturating_mul(3).max(Duration::from_secs(10)),
            initial_interval: interval,
            dead_node_grace_period: config.dead_incarnation_grace,
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        // Every node of a fleet runs a version that reads the compressed digest.
        protocol_version: ProtocolVersion::V1,
    };
    let mut initial = vec![
        (KEY_INFO.to_string(), info_json.to_string()),
        (KEY_HEALTH.to_string(), "ok".to_string()),
        (
            KEY_STATUS.to_string(),
            SelfStatus::Active.as_str().to_string(),
        ),
    ];
    if let Some(addr) = probe_addr {
        initial.push((KEY_PROBE.to_string(), addr.to_string()));
    }
    spawn_chitchat(chitchat_config, initial, &*socket.transport)
        .await
        .map_err(|err| MeshError::Start(format!("{err:#}")))
}

/// `value` of each node's newest incarnation in one pool's state (a restarted node's old state
/// is stale).
fn newest_states<T>(
    chitchat: &chitchat::Chitchat,
    value: impl Fn(&chitchat::NodeState) -> T,
) -> HashMap<NodeId, (u64, T)> {
    let mut newest: HashMap<NodeId, (u64, T)> = HashMap::new();
    for (id, state) in chitchat.node_states() {
        let Ok(node) = id.node_id.parse::<NodeId>() else {
            continue;
        };
        if newest
            .get(&node)
            .is_some_and(|(g, _)| *g > id.generation_id)
        {
            continue;
        }
        newest.insert(node, (id.generation_id, value(state)));
    }
    newest
}

/// One value per node across pools: the newest incarnation wins, the site pool on a tie.
fn merge_pools<T>(per_pool: Vec<HashMap<NodeId, (u64, T)>>) -> HashMap<NodeId, T> {
    let mut merged: HashMap<NodeId, (u64, T)> = HashMap::new();
    for pool in per_pool {
        for (node, (generation, value)) in pool {
            if merged.get(&node).is_none_or(|(g, _)| *g < generation) {
                merged.insert(node, (generation, value));
            }
        }
    }
    merged.into_iter().map(|(n, (_, v))| (n, v)).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Held only for short, panic-free sections; a poisoned lock still holds consistent data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a fold woken early (by a detector verdict) waits for the rest of a burst.
const POKE_COALESCE: Duration = Duration::from_millis(20);

/// What the ticker reads gossip state from and reports membership to.
struct Folding {
    pools: Vec<(Pool, Arc<tokio::sync::Mutex<chitchat::Chitchat>>)>,
    table: Arc<Mutex<Membership>>,
    auth: Option<Arc<Mutex<GossipAuth>>>,
    self_id: NodeId,
    changes: watch::Sender<u64>,
    moved: Arc<std::sync::atomic::AtomicU64>,
    evicted: watch::Sender<bool>,
    observer: Option<Observer>,
    /// Wakes the fold early (a detector verdict).
    poke: Arc<tokio::sync::Notify>,
}

/// What one fold read from one pool.
#[derive(Default)]
struct Read {
    observations: Vec<Observation>,
    actions: Vec<(NodeId, OperatorAction, u64)>,
    /// Operator actions this node already publishes in the pool, by target.
    published: HashMap<NodeId, String>,
    /// WAN pool: the site reports this node already publishes, by subject.
    reported: HashMap<NodeId, String>,
    /// Whether any state moved (new keys or liveness) since the last fold.
    moved: bool,
}

/// What the fold remembers of one incarnation's gossip state, so a state that has not moved
/// costs one lookup instead of a parse of every key.
struct Seen {
    node_id: NodeId,
    heartbeat: u64,
    max_version: u64,
    live: bool,
    info_version: Option<u64>,
    self_status: SelfStatus,
    /// Operator actions it publishes: (target, action, at, value).
    actions: Vec<(NodeId, OperatorAction, u64, String)>,
    /// Site reports it publishes (WAN pool).
    reports: Vec<PublishedReport>,
}

/// What the fold remembers per incarnation of one pool. Looked up for every incarnation on
/// every fold (on a gateway, hundreds of them): hashed with foldhash, not SipHash.
type FoldCache = HashMap<ChitchatId, Seen, foldhash::fast::RandomState>;

/// One `site/<subject>` key as a gateway publishes it: the subject, the value, and the value
/// decoded (status, generation).
type PublishedReport = (NodeId, String, Option<(NodeStatus, u64)>);

fn read_pool(chitchat: &chitchat::Chitchat, pool: Pool, cache: &mut FoldCache) -> Read {
    let mut read = Read::default();
    let me = chitchat.self_chitchat_id();
    let live: std::collections::HashSet<&ChitchatId, foldhash::fast::RandomState> =
        chitchat.live_nodes().collect();
    // Incarnations of the state that have an entry in the cache.
    let mut cached = 0;
    for (id, state) in chitchat.node_states() {
        let heartbeat = u64::from(state.heartbeat());
        let max_version = state.max_version();
        let is_live = live.contains(id);
        let fresh = match cache.get_mut(id) {
            Some(seen) if seen.max_version == max_version => {
                if seen.heartbeat != heartbeat || seen.live != is_live {
                    read.moved |= seen.live != is_live;
                    seen.heartbeat = heartbeat;
                    seen.live = is_live;
                    // Only the heartbeat or liveness moved: the rest is already in the table.
                    read.observations.push(Observation {
                        node_id: seen.node_id,
                        generation: id.generation_id,
                        gossip_addr: id.gossip_advertise_addr,
                        heartbeat,
                        info: None,
                        health: None,
                        dataplane: None,
                        self_status: seen.self_status,
                        accrual_live: is_live,
                        pool,
                        probe_addr: None,
                    });
                }
                false
            }
            _ => true,
        };
        if fresh {
            read.moved = true;
            let Ok(node_id) = id.node_id.parse::<NodeId>() else {
                continue;
            };
            let info = state.get_versioned(KEY_INFO);
            let info_version = info.map(|i| i.version);
            // The JSON is parsed again only when its version moves.
            let parsed = info
                .filter(|_| {
                    cache
                        .get(id)
                        .is_none_or(|seen| seen.info_version != info_version)
                })
                .and_then(|i| serde_json::from_str(&i.value).ok());
            let self_status = state
                .get(KEY_STATUS)
                .map_or(SelfStatus::Active, SelfStatus::parse);
            read.observations.push(Observation {
                node_id,
                generation: id.generation_id,
                gossip_addr: id.gossip_advertise_addr,
                heartbeat,
                info: parsed,
                health: state.get(KEY_HEALTH).map(str::to_string),
                dataplane: state.get(KEY_DATAPLANE).map(str::to_string),
                self_status,
                accrual_live: is_live,
                pool,
                probe_addr: state.get(KEY_PROBE).and_then(|a| a.parse().ok()),
            });
            let actions = state
                .iter_prefix(KEY_OPERATOR_PREFIX)
                .filter_map(|(key, value)| {
                    let target = key[KEY_OPERATOR_PREFIX.len()..].parse::<NodeId>().ok()?;
                    let (action, at) = OperatorAction::decode(&value.value)?;
                    Some((target, action, at, value.value.clone()))
                })
                .collect();
            let reports = if pool == Pool::Wan {
                state
                    .iter_prefix(KEY_SITE_PREFIX)
                    .filter_map(|(key, value)| {
                        let subject = key[KEY_SITE_PREFIX.len()..].parse::<NodeId>().ok()?;
                        Some((subject, value.value.clone(), decode_report(&value.value)))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            cache.insert(
                id.clone(),
                Seen {
                    node_id,
                    heartbeat,
                    max_version,
                    live: is_live,
                    info_version,
                    self_status,
                    actions,
                    reports,
                },
            );
        }
        let Some(seen) = cache.get(id) else {
            continue;
        };
        cached += 1;
        for (target, action, at, value) in &seen.actions {
            if id == me {
                read.published.insert(*target, value.clone());
            }
            read.actions.push((*target, *action, *at));
        }
        if id == me {
            for (subject, value, _) in &seen.reports {
                read.reported.insert(*subject, value.clone());
            }
        }
    }
    // The cache holds more entries than the state's incarnations only when incarnations left
    // the state (chitchat dropped a dead one).
    if cache.len() != cached {
        cache.retain(|id, _| chitchat.node_state(id).is_some());
        read.moved = true;
    }
    read
}

/// Every gateway's reports on its site's members, from a WAN pool's fold cache (the fold
/// keeps it current). Only a live reporter speaks for its site: `Membership::set_reports`
/// checks the reporter's status (chitchat's own liveness is refreshed only by regular rounds,
/// which may be slow).
fn cached_reports(cache: &FoldCache, self_id: NodeId) -> Vec<Report> {
    // Only each gateway's newest incarnation: chitchat keeps a restarted gateway's old state
    // (and its old reports) for a while.
    let mut newest: HashMap<NodeId, (u64, &Seen), foldhash::fast::RandomState> = HashMap::default();
    for (id, seen) in cache {
        if seen.node_id == self_id {
            continue;
        }
        if newest
            .get(&seen.node_id)
            .is_none_or(|(g, _)| *g < id.generation_id)
        {
            newest.insert(seen.node_id, (id.generation_id, seen));
        }
    }
    newest
        .into_values()
        .flat_map(|(_, seen)| {
            seen.reports.iter().filter_map(|(subject, _, decoded)| {
                let (status, generation) = (*decoded)?;
                Some(Report {
                    subject: *subject,
                    reporter: seen.node_id,
                    status,
                    generation,
                })
            })
        })
        .collect()
}

/// A site report's value: `<status>:<generation>`.
fn encode_report(status: NodeStatus, generation: u64) -> String {
    format!("{status}:{generation}")
}

fn decode_report(value: &str) -> Option<(NodeStatus, u64)> {
    let (status, generation) = value.split_once(':')?;
    Some((status.parse().ok()?, generation.parse().ok()?))
}

async fn tick_loop(folding: Folding, interval: Duration, now: Arc<impl Fn() -> Now>) {
    let Folding {
        pools,
        table,
        auth,
        self_id,
        changes,
        moved: moved_count,
        evicted,
        observer,
        poke,
    } = folding;
    let gateway = pools.iter().any(|(pool, _)| *pool == Pool::Wan);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut self_draining = false;
    let mut caches: Vec<FoldCache> = pools.iter().map(|_| FoldCache::default()).collect();
    // What is published is compared with the table when something moved, and every few
    // folds regardless (a restart can change a generation without a status change).
    let mut folds: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = poke.notified() => {
                // Verdicts come in bursts (several crashes, copies from several gateways): one
                // fold takes them all.
                tokio::time::sleep(POKE_COALESCE).await;
            }
        }
        let mut reads = Vec::with_capacity(pools.len());
        let mut incarnations = 0;
        for ((pool, chitchat), cache) in pools.iter().zip(&mut caches) {
            let chitchat = chitchat.lock().await;
            // Live and dead incarnations alike ride in every digest: the gossip cost driver.
            incarnations += chitchat.node_states().len();
            reads.push((*pool, read_pool(&chitchat, *pool, cache)));
        }
        metrics::gauge!("nexus_gossip_incarnations").set(incarnations as f64);
        let now = now();
        folds += 1;
        let moved = reads.iter().any(|(_, read)| read.moved);
        if moved {
            moved_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let wan_moved = reads
            .iter()
            .any(|(pool, read)| *pool == Pool::Wan && read.moved);
        let (transitions, forgotten, counts, drain_self, grew, members, to_publish, to_report) = {
            let mut table = lock(&table);
            let before = table.members().count();
            for (_, read) in &mut reads {
                for obs in read.observations.drain(..) {
                    table.observe(obs, now);
                }
            }
            if gateway && (wan_moved || folds % 8 == 1) {
                let reports = pools
                    .iter()
                    .zip(&caches)
                    .filter(|((pool, _), _)| *pool == Pool::Wan)
                    .flat_map(|(_, cache)| cached_reports(cache, self_id))
                    .collect::<Vec<_>>();
                table.set_reports(reports, now);
            }
            for (_, read) in &reads {
                for (target, action, at) in &read.actions {
                    table.apply_operator(*target, *action, *at);
                }
            }
            let (transitions, forgotten) = table.tick(now);
            let drain_self = table
                .get(&self_id)
                .is_some_and(|m| matches!(m.operator, Some((OperatorAction::Drain, _))));
            let notified_by = auth.as_ref().and_then(|auth| lock(auth).evicted_by());
            let decommissioned = table
                .get(&self_id)
                .is_some_and(|m| m.status == NodeStatus::Decommissioned);
            if (notified_by.is_some() || decommissioned)
                && evicted.send_if_modified(|e| !std::mem::replace(e, true))
            {
                tracing::error!(notified_by = ?notified_by, "an operator decommissioned this node");
            }
            let members = table.members().count();
            let grew = members != before;
            let compare = moved || grew || !transitions.is_empty() || folds % 8 == 1;
            // Every node carries every operator action in its own state (in every pool it is
            // in), so an action outlives the node it was sent to and reaches nodes that join
            // later.
            let to_publish: Vec<Vec<(String, String)>> = reads
                .iter()
                .filter(|_| compare)
                .map(|(_, read)| {
                    table
                        .members()
                        .filter_map(|m| {
                            let (action, at) = m.operator?;
                            let value = action.encode(at);
                            (read.published.get(&m.node_id) != Some(&value))
                                .then(|| (operator_key(&m.node_id), value))
                        })
                        .collect()
                })
                .collect();
            // A gateway reports what it sees first-hand of its site's members into the WAN pool.
            let to_report: Vec<(String, String)> = reads
                .iter()
                .filter(|_| compare)
                .find(|(pool, _)| *pool == Pool::Wan)
                .map(|(_, read)| {
                    table
                        .members()
                        .filter(|m| m.node_id != self_id && m.in_pool(Pool::Site))
                        .filter_map(|m| {
                            let value = encode_report(m.status, m.generation);
                            (read.reported.get(&m.node_id) != Some(&value))
                                .then(|| (site_report_key(&m.node_id), value))
                        })
                        .collect()
                })
                .unwrap_or_default();
            (
                transitions,
                forgotten,
                table.counts(),
                drain_self,
                grew,
                members,
                to_publish,
                to_report,
            )
        };
        for ((pool, chitchat), keys) in pools.iter().zip(&to_publish) {
            let report = if *pool == Pool::Wan {
                &to_report[..]
            } else {
                &[]
            };
            if keys.is_empty() && report.is_empty() {
                continue;
            }
            let mut chitchat = chitchat.lock().await;
            for (key, value) in keys.iter().chain(report) {
                chitchat.self_node_state().set(key, value);
            }
        }
        for t in &transitions {
            tracing::info!(node = %t.node_id, from = %t.from, to = %t.to, "node status changed");
            metrics::counter!("nexus_node_status_transitions_total", "to" => t.to.as_str())
                .increment(1);
            if t.to == NodeStatus::Decommissioned
                && t.node_id != self_id
                && let Some(auth) = &auth
            {
                lock(auth).deny(t.node_id);
            }
        }
        if !forgotten.is_empty() {
            for gone in &forgotten {
                match gone.reason {
                    ForgetReason::Decommissioned => tracing::info!(
                        node = %gone.node_id,
                        "decommissioned node forgotten after its grace period"
                    ),
                    ForgetReason::Offline => tracing::info!(
                        node = %gone.node_id,
                        "node forgotten after being offline for membership.forget_offline_after"
                    ),
                }
                metrics::counter!("nexus_members_forgotten_total", "reason" => gone.reason.as_str())
                    .increment(1);
            }
            // Its site report goes too, so the WAN pool forgets it as well.
            if let Some((_, wan)) = pools.iter().find(|(pool, _)| *pool == Pool::Wan) {
                let mut wan = wan.lock().await;
                for gone in &forgotten {
                    let key = site_report_key(&gone.node_id);
                    if wan.self_node_state().get(&key).is_some() {
                        wan.self_node_state().delete(&key);
                    }
                }
            }
        }
        for (status, count) in counts {
            metrics::gauge!("nexus_peers", "status" => status.as_str()).set(count as f64);
        }
        if drain_self && !self_draining {
            self_draining = true;
            for (_, chitchat) in &pools {
                chitchat
                    .lock()
                    .await
                    .self_node_state()
                    .set(KEY_STATUS, SelfStatus::Draining.as_str());
            }
        }
        if grew || !transitions.is_empty() || !forgotten.is_empty() {
            changes.send_modify(|n| *n += 1);
            if let Some(observer) = &observer {
                observer.0.folded(self_id, now, &transitions, members);
            }
        }
    }
}

/// What the failure detector's loop works with.
struct Probing {
    detector: Detector,
    datagrams: Arc<dyn Datagrams>,
    table: Arc<Mutex<Membership>>,
    auth: Option<Arc<Mutex<GossipAuth>>>,
    poke: Arc<tokio::sync::Notify>,
    changes: watch::Receiver<u64>,
    gateway: bool,
    clock: Clock,
}

/// The live members of each pool this node is in (sorted, this node included), their
/// incarnations and detector addresses.
struct Rings {
    rings: Vec<Vec<NodeId>>,
    generation: HashMap<NodeId, u64>,
    addr: HashMap<NodeId, SocketAddr>,
    pools: HashMap<NodeId, [bool; 2]>,
}

fn rings(table: &Membership, self_id: NodeId, gateway: bool) -> Rings {
    let pools: &[Pool] = if gateway {
        &[Pool::Site, Pool::Wan]
    } else {
        &[Pool::Site]
    };
    let mut out = Rings {
        rings: vec![Vec::new(); pools.len()],
        generation: HashMap::new(),
        addr: HashMap::new(),
        pools: HashMap::new(),
    };
    for m in table.members() {
        let in_pools = [m.in_pool(Pool::Site), m.in_pool(Pool::Wan)];
        if !in_pools.iter().any(|p| *p) {
            continue;
        }
        out.generation.insert(m.node_id, m.generation);
        out.pools.insert(m.node_id, in_pools);
        if let Some(addr) = m.probe_addr {
            out.addr.insert(m.node_id, addr);
        }
        let live = m.node_id == self_id
            || matches!(
                m.status,
                NodeStatus::Online | NodeStatus::Degraded | NodeStatus::Draining
            );
        if !live || (m.probe_addr.is_none() && m.node_id != self_id) {
            continue;
        }
        for (i, pool) in pools.iter().enumerate() {
            if m.in_pool(*pool) {
                out.rings[i].push(m.node_id);
            }
        }
    }
    for ring in &mut out.rings {
        if !ring.contains(&self_id) {
            ring.push(self_id);
        }
        ring.sort_unstable();
    }
    out
}

async fn detector_loop(probing: Probing, now: Arc<impl Fn() -> Now>) {
    let Probing {
        mut detector,
        datagrams,
        table,
        auth,
        poke,
        mut changes,
        gateway,
        clock,
    } = probing;
    let self_id = detector.datagram(Signal::Heartbeat).sender;
    let mut ticker = tokio::time::interval(detector.config().probe_gap);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut view = rings(&lock(&table), self_id, gateway);
    let mut polls: u64 = 0;
    let mut buf = vec![0u8; 2048];
    loop {
        let actions = tokio::select! {
            _ = ticker.tick() => {
                polls += 1;
                // On every status change, and every 10 polls regardless: a quick restart moves
                // a member's generation and probe port without changing its status.
                if changes.has_changed().unwrap_or(false) || polls.is_multiple_of(10) {
                    changes.mark_unchanged();
                    view = rings(&lock(&table), self_id, gateway);
                }
                let generation = &view.generation;
                let at = now().mono;
                let actions = detector.poll(at, &view.rings, |n| generation.get(n).copied());
                for action in &actions {
                    if let Action::Down(node, generation) = action {
                        tracing::info!(
                            subject = %node,
                            generation,
                            heard_ago = ?detector.heard_ago(node, at),
                            addr = ?view.addr.get(node),
                            "failure detector: no answer to probes, declaring the node down"
                        );
                    }
                }
                actions
            }
            received = datagrams.recv_from(&mut buf) => {
                let (len, from) = match received {
                    Ok(received) => received,
                    Err(err) => {
                        // ICMP errors from a dead peer's port and the like: the socket works.
                        if !matches!(
                            err.kind(),
                            std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::ConnectionReset
                        ) {
                            tracing::warn!(error = %err, "failure detector socket receive failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        continue;
                    }
                };
                let payload = match &auth {
                    Some(auth) => {
                        let mut auth = lock(auth);
                        match auth.open_from(&buf[..len], clock.wall_ms(), from) {
                            Ok(opened) => Datagram::decode(opened.payload)
                                .filter(|d| d.sender == opened.sender),
                            Err(_) => None,
                        }
                    }
                    None => Datagram::decode(&buf[..len]),
                };
                let Some(datagram) = payload else {
                    metrics::counter!("nexus_detector_datagrams_dropped_total").increment(1);
                    continue;
                };
                // Answer where it came from: a new member may not be in the table yet.
                view.addr.entry(datagram.sender).or_insert(from);
                detector.receive(now().mono, datagram)
            }
        };
        let mut poked = false;
        let mut sends: Vec<(SocketAddr, Signal)> = Vec::new();
        {
            let mut table = lock(&table);
            let at = now();
            for action in actions {
                match action {
                    Action::Send(to, signal) => {
                        if let Some(addr) = view
                            .addr
                            .get(&to)
                            .copied()
                            .or_else(|| table.get(&to).and_then(|m| m.probe_addr))
                        {
                            sends.push((addr, signal));
                        }
                    }
                    Action::Broadcast {
                        about,
                        signal,
                        passed_on,
                    } => {
                        // Everyone sharing a pool with the subject; a gateway also passes
                        // verdicts on its site's members to the WAN pool.
                        let about_pools = view.pools.get(&about).copied().unwrap_or([false; 2]);
                        for (node, in_pools) in &view.pools {
                            if *node == self_id || *node == about {
                                continue;
                            }
                            let shares = (about_pools[0] && in_pools[0])
                                || (about_pools[1] && in_pools[1])
                                || (gateway && about_pools[0] && in_pools[1]);
                            // Passing on a verdict heard from the site: about a member of
                            // this gateway's site, to the WAN pool only.
                            let shares = shares
                                && (!passed_on
                                    || about == self_id
                                    || (about_pools[0] && in_pools[1]));
                            if shares && let Some(addr) = view.addr.get(node) {
                                sends.push((*addr, signal));
                            }
                        }
                        if about == self_id {
                            // A refutation goes to every pool this node is in.
                            for (node, _) in view.pools.iter().filter(|(n, _)| **n != self_id) {
                                if let Some(addr) = view.addr.get(node) {
                                    sends.push((*addr, signal));
                                }
                            }
                        }
                    }
                    Action::Heard(node, generation) => table.heard(node, generation, at),
                    Action::Down(node, generation) => {
                        // Copies of a verdict already applied do not wake the fold again
                        // (on a gateway a fold walks the whole fleet's members).
                        if table.declare_down(node, generation, at) {
                            metrics::counter!("nexus_detector_verdicts_total").increment(1);
                            poked = true;
                        }
                    }
                    Action::Alive(node, generation) => {
                        poked |= table.declare_alive(node, generation, at);
                    }
                }
            }
        }
        if poked {
            poke.notify_one();
        }
        sends.sort_unstable_by_key(|(addr, _)| *addr);
        sends.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        for (addr, signal) in sends {
            let payload = detector.datagram(signal).encode();
            // Heartbeats travel without the certificate (peers hold it from gossip); probes,
            // answers and verdicts carry it, so a peer that lacks it learns it from them.
            let bare = matches!(signal, Signal::Heartbeat);
            let bytes = match &auth {
                Some(auth) => match if bare {
                    lock(auth).seal_bare(&payload, clock.wall_ms())
                } else {
                    lock(auth).seal(&payload, clock.wall_ms())
                } {
                    Some(sealed) => sealed,
                    None => continue,
                },
                None => payload,
            };
            // A failed send is a lost datagram: the protocol tolerates it.
            let _ = datagrams.send_to(&bytes, addr).await;
        }
    }
}
