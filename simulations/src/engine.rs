//! The simulation: a fleet of nodes, each running the real mesh (`nexus_mesh::Mesh`: chitchat
//! pools, the membership table, the gateway reports) and real configuration replicas
//! (`nexus_crdt::ConfigDoc`: signed changes, authorization, automerge sync sessions), spread by
//! the real broadcast and anti-entropy rules (`nexus_mesh::{split_groups, new_trees,
//! AntiEntropy}`), over [`SimNet`] in tokio's paused clock.
//!
//! One tokio current-thread runtime drives everything: when every task waits, the clock jumps
//! to the next timer, so simulated time runs as fast as the CPU allows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_ca::{NodeId, NodeKey, Role};
use nexus_crdt::{
    ActionType, Caller, CallerRole, ChangeHash, ConfigDoc, DocId, EnvelopeSource, FleetDoc,
    KnownAuthor, LocalAuthor, PeerSync, Revocation, RouteAction, RouteMatch, RoutePolicy,
    SignedChange, StreamMode, SyncLimits, TenantDoc,
};
use nexus_mesh::{
    AntiEntropy, Arrival, Clock, Member, MembershipConfig, Mesh, MeshConfig, MeshObserver,
    NodeInfo, NodeStatus, Now, Observer, Pool, PoolSocket, Transition, new_trees, primary_gateway,
    reachable, split_groups,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::net::{Rng, STREAM_FAILURE, SimNet};
use crate::scenario::{Action, Scenario, Selector, parse_skew, site_name};

/// Wall clock of the simulation's start (unix ms): fixed, so reports do not depend on when
/// they ran.
const EPOCH_MS: u64 = 1_800_000_000_000;
/// DER size of a MIC, for the byte counts of configuration messages (which carry the author's
/// certificate).
const MIC_BYTES: usize = 420;
/// Round trips one sync session may take (as on the node).
const MAX_SYNC_ROUNDS: usize = 64;
/// Gossip key of a document's digest (as on the node).
pub(crate) const CFG_PREFIX: &str = "cfg/";

/// A document as the simulation names it: `fleet` or `tenant:<t>`.
fn doc_id(name: &str) -> DocId {
    match name.strip_prefix("tenant:") {
        Some(t) => DocId::Tenant(t.to_string()),
        None => DocId::Fleet,
    }
}

/// The gossip key name of a document (the node's `cfg/<doc id>`).
fn doc_key(id: &DocId) -> String {
    id.to_string()
}

/// Every change ever made, by hash: the envelope store of every replica. A replica only ever
/// sends changes its document holds, so sharing one store changes nothing but memory.
#[derive(Default)]
struct Envelopes(Mutex<HashMap<ChangeHash, SignedChange>>);

impl EnvelopeSource for Envelopes {
    fn envelope(&self, hash: &ChangeHash) -> Option<SignedChange> {
        self.0.lock().ok()?.get(hash).cloned()
    }
}

/// One node's replicated configuration: what its SQLite store holds (it survives crashes).
struct Replica {
    docs: BTreeMap<String, ConfigDoc>,
    /// Pushed changes that arrived before changes they depend on, by document, as the node's
    /// replication holds them: applied (and pushed on) once what they wait for arrives.
    pending: HashMap<String, Vec<(Arc<SignedChange>, Arrival)>>,
}

/// Held pushes per document, as on a node.
const PENDING_PUSHES: usize = 1024;

impl Replica {
    fn advertised(&self) -> HashMap<String, (u64, String)> {
        self.docs
            .iter()
            .map(|(k, d)| (k.clone(), (d.version(), hex(&d.heads_digest()))))
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node of the simulated fleet.
struct Slot {
    name: String,
    id: NodeId,
    site: usize,
    gateway: bool,
    anchor: bool,
    tenant: String,
    author: LocalAuthor,
    site_addr: SocketAddr,
    wan_addr: SocketAddr,
    alive: bool,
    started: bool,
    mesh: Option<Arc<Mesh>>,
    tasks: Vec<JoinHandle<()>>,
    replica: Arc<Mutex<Replica>>,
    skew_ms: Arc<AtomicI64>,
    /// Members remembered at the last crash (what the node's store would restore).
    remembered: Vec<Member>,
    /// The last incarnation number used: as the node's store does, a restart takes
    /// `max(now, last + 1)`, so a clock set back never makes a newer incarnation look older.
    generation: u64,
}

/// A config change and where it went.
pub(crate) struct ChangeRec {
    pub label: String,
    pub document: String,
    pub origin: String,
    pub at: Duration,
    pub targets: HashSet<usize>,
    pub arrivals: HashMap<usize, Duration>,
}

/// A revocation and who refuses the node so far.
pub(crate) struct RevocationRec {
    pub node: usize,
    pub at: Duration,
    pub targets: HashSet<usize>,
    pub refused_at: HashMap<usize, Duration>,
}

/// A crash of one node and who should notice.
pub(crate) struct CrashRec {
    pub node: usize,
    pub at: Duration,
    pub observers: HashSet<usize>,
    pub detected: HashMap<usize, Duration>,
    pub ended: Option<Duration>,
}

/// What the run records for the report.
#[derive(Default)]
pub(crate) struct Record {
    pub changes: Vec<ChangeRec>,
    pub by_hash: HashMap<ChangeHash, usize>,
    pub revocations: Vec<RevocationRec>,
    pub revocation_of: HashMap<ChangeHash, usize>,
    pub crashes: Vec<CrashRec>,
    /// Open crash episode of each node.
    pub down: HashMap<usize, usize>,
    /// When each node last restarted: an offline mark shortly after is about its old
    /// incarnation (transitions carry no generation), not a false alarm.
    pub restarted: HashMap<usize, Duration>,
    pub false_positives: Vec<(usize, usize, Duration)>,
    /// When the network was last impaired (partition, one-way failure, loss burst).
    pub impaired_until: Option<Duration>,
    /// Member count of each node's table.
    pub members: Vec<usize>,
    /// Times the fleet had to converge from: (since, converged at).
    pub convergence: Vec<(Duration, Option<Duration>)>,
    /// Refused pushes and sync packets (authorization or signature failures).
    pub refused_changes: u64,
    /// Sync sessions run.
    pub sessions: u64,
    /// Node names, by index.
    pub names: Vec<String>,
}

/// Everything the tasks share.
pub(crate) struct World {
    pub scenario: Scenario,
    pub net: Arc<SimNet>,
    pub origin: Instant,
    nodes: Mutex<Vec<Slot>>,
    index: Mutex<HashMap<NodeId, usize>>,
    envelopes: Envelopes,
    directory: Mutex<BTreeMap<NodeId, KnownAuthor>>,
    pub record: Mutex<Record>,
    rng: Mutex<Rng>,
    limits: SyncLimits,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    pub fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    fn random(&self, n: usize) -> usize {
        lock(&self.rng).below(n)
    }

    fn node_count(&self) -> usize {
        lock(&self.nodes).len()
    }

    fn mesh(&self, node: usize) -> Option<Arc<Mesh>> {
        let nodes = lock(&self.nodes);
        let slot = nodes.get(node)?;
        slot.alive.then(|| slot.mesh.clone()).flatten()
    }

    pub(crate) fn alive(&self, node: usize) -> bool {
        lock(&self.nodes).get(node).is_some_and(|s| s.alive)
    }

    fn replica(&self, node: usize) -> Arc<Mutex<Replica>> {
        lock(&self.nodes)[node].replica.clone()
    }

    fn index_of(&self, id: &NodeId) -> Option<usize> {
        lock(&self.index).get(id).copied()
    }

    fn by_name(&self, name: &str) -> Option<usize> {
        lock(&self.nodes).iter().position(|s| s.name == name)
    }

    fn site_index(&self, name: &str) -> usize {
        if name == "core" {
            0
        } else {
            name.trim_start_matches('s').parse().unwrap_or(0)
        }
    }

    /// Live nodes that hold `doc`.
    fn holders(&self, doc: &str) -> HashSet<usize> {
        lock(&self.nodes)
            .iter()
            .enumerate()
            .filter(|(_, s)| s.alive && lock(&s.replica).docs.contains_key(doc))
            .map(|(i, _)| i)
            .collect()
    }

    /// Adds a node (not started).
    fn add(&self, site: usize, gateway: bool, anchor: bool, tenant: String, name: String) -> usize {
        let key = NodeKey::from_seed(lock(&self.rng).bytes32());
        let id = key.node_id();
        let site_label = if site == 0 {
            "core".to_string()
        } else {
            site_name(site)
        };
        let facts = nexus_crdt::AuthorFacts {
            node_id: id,
            role: if anchor { Role::Anchor } else { Role::Node },
            tenant: tenant.clone(),
            site: site_label,
        };
        let known = KnownAuthor {
            facts: facts.clone(),
            public_key: key.public_key(),
        };
        let author = LocalAuthor::new(key, facts, "51", 1).expect("facts match the key");
        let mut nodes = lock(&self.nodes);
        let index = nodes.len();
        // 127.<site+1>.<hi>.<lo>: the site pool on port 7000, the WAN pool on 7001.
        let within = nodes.iter().filter(|s| s.site == site).count();
        let ip = Ipv4Addr::new(127, (site + 1) as u8, (within >> 8) as u8, within as u8);
        let site_addr = SocketAddr::V4(SocketAddrV4::new(ip, 7000));
        let wan_addr = SocketAddr::V4(SocketAddrV4::new(ip, 7001));
        let mut docs = BTreeMap::new();
        docs.insert("fleet".to_string(), ConfigDoc::new(DocId::Fleet));
        let tenants: Vec<String> = if anchor {
            (0..self.scenario.fleet.tenants)
                .map(|t| format!("t{t}"))
                .collect()
        } else {
            vec![tenant.clone()]
        };
        for t in tenants {
            docs.insert(format!("tenant:{t}"), ConfigDoc::new(DocId::Tenant(t)));
        }
        nodes.push(Slot {
            name: name.clone(),
            id,
            site,
            gateway,
            anchor,
            tenant,
            author,
            site_addr,
            wan_addr,
            alive: false,
            started: false,
            mesh: None,
            tasks: Vec::new(),
            replica: Arc::new(Mutex::new(Replica {
                docs,
                pending: HashMap::new(),
            })),
            skew_ms: Arc::new(AtomicI64::new(0)),
            remembered: Vec::new(),
            generation: 0,
        });
        drop(nodes);
        lock(&self.index).insert(id, index);
        lock(&self.directory).insert(id, known);
        self.net.add_node(index, site, &[site_addr, wan_addr]);
        let mut record = lock(&self.record);
        record.members.push(0);
        record.names.push(name);
        index
    }

    /// Gossip seeds of a site pool: its gateways.
    fn seeds(&self, site: usize) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let nodes = lock(&self.nodes);
        let site_seeds = nodes
            .iter()
            .filter(|s| s.site == site && s.gateway)
            .map(|s| s.site_addr)
            .collect();
        let wan_seeds = nodes
            .iter()
            .filter(|s| s.anchor)
            .map(|s| s.wan_addr)
            .collect();
        (site_seeds, wan_seeds)
    }

    /// How many members node `node`'s table should hold: its site (every node that ever
    /// started there); gateways and anchors: the whole fleet.
    fn expected_members(&self, node: usize) -> usize {
        let nodes = lock(&self.nodes);
        let me = &nodes[node];
        nodes
            .iter()
            .filter(|s| s.started && (me.gateway || s.site == me.site))
            .count()
    }
}

/// Reports every status change a node's mesh makes to the record.
struct NodeObserver {
    world: std::sync::Weak<World>,
    node: usize,
}

impl MeshObserver for NodeObserver {
    fn folded(&self, _: NodeId, _: Now, transitions: &[Transition], members: usize) {
        let Some(world) = self.world.upgrade() else {
            return;
        };
        let now = world.now();
        let offline: Vec<usize> = transitions
            .iter()
            .filter(|t| t.to == NodeStatus::Offline)
            .filter_map(|t| world.index_of(&t.node_id))
            .collect();
        let refused: Vec<bool> = offline
            .iter()
            .map(|subject| world.net.refuses(self.node, *subject))
            .collect();
        let impaired = world.net.impaired();
        let mut record = lock(&world.record);
        record.members[self.node] = members;
        let offline_after = world.scenario.mesh.offline_after.0;
        for (subject, refused) in offline.into_iter().zip(refused) {
            if let Some(&episode) = record.down.get(&subject) {
                record.crashes[episode]
                    .detected
                    .entry(self.node)
                    .or_insert(now);
                continue;
            }
            // Offline is right for a revoked node (its gossip is refused) and while the
            // network is cut or lossy, or shortly after.
            let recently_impaired = impaired
                || record
                    .impaired_until
                    .is_some_and(|until| now <= until + offline_after * 2);
            let old_incarnation = record.restarted.get(&subject).is_some_and(|at| {
                now.saturating_sub(*at)
                    <= offline_after.max(world.scenario.mesh.detector().worst_detection())
                        + Duration::from_secs(1)
            });
            // Nor is what a revoked node sees: the fleet refuses everything it sends.
            let revoked = refused
                || record
                    .revocations
                    .iter()
                    .any(|r| r.node == subject || r.node == self.node);
            if !recently_impaired && !revoked && !old_incarnation {
                record.false_positives.push((self.node, subject, now));
            }
        }
    }
}

/// A change pushed down a tree.
struct Push {
    change: Arc<SignedChange>,
    relay: Vec<usize>,
    arrival: Arrival,
}

fn push_bytes(push: &Push) -> usize {
    // JSON with the envelope and the author's MIC in base64, and the relay list.
    (push.change.encode().len() + MIC_BYTES) * 4 / 3 + push.relay.len() * 35 + 64
}

/// The simulation of one scenario.
pub(crate) struct Engine {
    pub world: Arc<World>,
}

impl Engine {
    pub fn new(scenario: &Scenario) -> Engine {
        let net = SimNet::new(
            scenario.network.clone(),
            scenario.fleet.sites,
            scenario.seed,
        );
        let world = Arc::new(World {
            scenario: scenario.clone(),
            net,
            origin: Instant::now(),
            nodes: Mutex::new(Vec::new()),
            index: Mutex::new(HashMap::new()),
            envelopes: Envelopes::default(),
            directory: Mutex::new(BTreeMap::new()),
            record: Mutex::new(Record::default()),
            rng: Mutex::new(Rng::new(scenario.seed)),
            limits: SyncLimits::default(),
        });
        let f = &scenario.fleet;
        for a in 0..f.anchors {
            world.add(0, true, true, "t0".into(), format!("anchor-{a}"));
        }
        for site in 1..=f.sites {
            let tenant = format!("t{}", (site - 1) % f.tenants);
            for n in 0..f.nodes_per_site {
                let gateway = n < f.gateways_per_site;
                world.add(
                    site,
                    gateway,
                    false,
                    tenant.clone(),
                    format!("{}-n{n:03}", site_name(site)),
                );
            }
        }
        Engine { world }
    }

    /// Starts node `node` (a first start or a restart).
    pub async fn start(&self, node: usize) {
        start_node(&self.world, node).await;
    }
}

async fn start_node(world: &Arc<World>, node: usize) {
    let scenario = &world.scenario;
    let (site, gateway, anchor, name, tenant, id, site_addr, wan_addr, skew, remembered) = {
        let mut nodes = lock(&world.nodes);
        let s = &mut nodes[node];
        if s.alive {
            return;
        }
        s.alive = true;
        s.started = true;
        (
            s.site,
            s.gateway,
            s.anchor,
            s.name.clone(),
            s.tenant.clone(),
            s.id,
            s.site_addr,
            s.wan_addr,
            s.skew_ms.clone(),
            std::mem::take(&mut s.remembered),
        )
    };
    let (site_seeds, wan_seeds) = world.seeds(site);
    let wall = {
        let origin = world.origin;
        move || {
            let elapsed = Instant::now().saturating_duration_since(origin).as_millis() as i64;
            (EPOCH_MS as i64 + elapsed + skew.load(Ordering::Relaxed)).max(0) as u64
        }
    };
    let generation = {
        let mut nodes = lock(&world.nodes);
        let slot = &mut nodes[node];
        slot.generation = wall().max(slot.generation + 1);
        slot.generation
    };
    let m = &scenario.mesh;
    let config = MeshConfig {
        fleet_id: "sim".into(),
        node_id: id,
        generation,
        gossip_interval: m.gossip_interval.0,
        seeds: site_seeds,
        membership: MembershipConfig {
            suspect_after: m.suspect_after.0,
            offline_after: m.offline_after.0,
            decommission_grace: Duration::from_secs(24 * 3600),
            ..MembershipConfig::default()
        },
        tick_interval: m.tick_interval.0,
        dead_incarnation_grace: nexus_mesh::DEAD_INCARNATION_GRACE,
        wan_seeds: if gateway { wan_seeds } else { Vec::new() },
        clock: Clock::from_fn(wall),
        observer: Some(Observer(Arc::new(NodeObserver {
            world: Arc::downgrade(world),
            node,
        }))),
        detector: scenario.mesh.detector(),
        rumor: scenario.mesh.rumor(),
    };
    let info = NodeInfo {
        hostname: name,
        role: if anchor { Role::Anchor } else { Role::Node },
        site: if site == 0 {
            "core".into()
        } else {
            site_name(site)
        },
        tenant,
        labels: scenario.fleet.labels.clone(),
        api_addr: site_addr,
        quic_addr: site_addr,
        nexlink_version: env!("CARGO_PKG_VERSION").into(),
        nexroute_version: env!("CARGO_PKG_VERSION").into(),
        nic_model: "sim".into(),
        nic_backend: "memory".into(),
        firmware_version: String::new(),
        capabilities: Vec::new(),
        trust_level: 100,
        config_version: 0,
        created_at_ms: EPOCH_MS,
        mic_serial: "51".into(),
        mic_not_after_ms: EPOCH_MS + 90 * 86_400_000,
    };
    let site_pool = PoolSocket {
        transport: Box::new(world.net.transport(node)),
        addr: site_addr,
    };
    let wan_pool = gateway.then(|| PoolSocket {
        transport: Box::new(world.net.transport(node)),
        addr: wan_addr,
    });
    let probe: Option<Box<dyn nexus_mesh::Datagrams>> = scenario.mesh.detector.then(|| {
        let addr = SocketAddr::new(site_addr.ip(), 7002);
        Box::new(world.net.datagrams(node, addr)) as Box<dyn nexus_mesh::Datagrams>
    });
    let mesh = match Mesh::start_pools(config, site_pool, wan_pool, probe, None, &info, remembered)
        .await
    {
        Ok(mesh) => Arc::new(mesh),
        Err(err) => {
            tracing::error!(node, error = %err, "simulated node failed to start");
            lock(&world.nodes)[node].alive = false;
            return;
        }
    };
    publish_digests(world, node, &mesh).await;
    let anti_entropy = tokio::spawn(anti_entropy_loop(world.clone(), node, mesh.clone()));
    let mut nodes = lock(&world.nodes);
    nodes[node].mesh = Some(mesh);
    nodes[node].tasks.push(anti_entropy);
}

/// Stops node `node` at once: no goodbye, tasks gone; its replica (its disk) stays.
async fn crash_node(world: &Arc<World>, node: usize) {
    let (mesh, tasks) = {
        let mut nodes = lock(&world.nodes);
        let s = &mut nodes[node];
        if !s.alive {
            return;
        }
        s.alive = false;
        (s.mesh.take(), std::mem::take(&mut s.tasks))
    };
    for t in tasks {
        t.abort();
    }
    if let Some(mesh) = mesh {
        let members = mesh.members();
        mesh.shutdown();
        lock(&world.nodes)[node].remembered = members;
    }
    let now = world.now();
    // Who should notice: its site pool and every gateway and anchor.
    let observers: HashSet<usize> = {
        let nodes = lock(&world.nodes);
        let site = nodes[node].site;
        nodes
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != node && s.alive && (s.site == site || s.gateway))
            .map(|(i, _)| i)
            .collect()
    };
    let mut record = lock(&world.record);
    let episode = record.crashes.len();
    record.crashes.push(CrashRec {
        node,
        at: now,
        observers,
        detected: HashMap::new(),
        ended: None,
    });
    record.down.insert(node, episode);
}

async fn restart_node(world: &Arc<World>, node: usize) {
    if world.alive(node) {
        return;
    }
    {
        let now = world.now();
        let mut record = lock(&world.record);
        if let Some(episode) = record.down.remove(&node) {
            record.crashes[episode].ended = Some(now);
        }
        record.restarted.insert(node, now);
    }
    start_node(world, node).await;
}

/// Publishes this node's document digests in gossip, as the node does after every commit.
async fn publish_digests(world: &World, node: usize, mesh: &Mesh) {
    let ours = lock(&world.replica(node)).advertised();
    for (doc, (version, digest)) in ours {
        let key = format!("{CFG_PREFIX}{}", doc_key(&doc_id(&doc)));
        mesh.publish(&key, &format!("{version}:{digest}")).await;
    }
}

/// Publishes `node`'s digests from a task of its own (callers hold no await point).
fn spawn_publish(world: &Arc<World>, node: usize) {
    let world = world.clone();
    tokio::spawn(async move {
        if let Some(mesh) = world.mesh(node) {
            publish_digests(&world, node, &mesh).await;
        }
    });
}

/// Nodes revoked so far: out of the fleet, no target of anything any more.
fn revoked_nodes(world: &World) -> HashSet<usize> {
    lock(&world.record)
        .revocations
        .iter()
        .map(|r| r.node)
        .collect()
}

/// Records that `node` now holds `changes` (arrival times, revocations it must enforce).
fn took(world: &World, node: usize, changes: &[ChangeHash]) {
    let now = world.now();
    let mut refuse = Vec::new();
    {
        let mut record = lock(&world.record);
        for hash in changes {
            if let Some(&i) = record.by_hash.get(hash) {
                record.changes[i].arrivals.entry(node).or_insert(now);
            }
            if let Some(&r) = record.revocation_of.get(hash) {
                let rec = &mut record.revocations[r];
                rec.refused_at.entry(node).or_insert(now);
                refuse.push(rec.node);
            }
        }
    }
    for revoked in refuse {
        if revoked != node {
            world.net.refuse(node, revoked);
        }
    }
}

/// The live members of `node`'s `pool` that may hold `doc`, in a seeded random order.
fn tree_peers(
    world: &World,
    node: usize,
    members: &[Member],
    pool: Pool,
    doc: &DocId,
) -> Vec<usize> {
    let self_id = lock(&world.nodes)[node].id;
    let mut peers: Vec<usize> = members
        .iter()
        .filter(|m| m.node_id != self_id && m.in_pool(pool) && reachable(m.status))
        .filter(|m| {
            m.info.as_ref().is_some_and(|info| {
                nexus_crdt::may_replicate(
                    doc,
                    &nexus_crdt::AuthorFacts {
                        node_id: m.node_id,
                        role: info.role,
                        tenant: info.tenant.clone(),
                        site: info.site.clone(),
                    },
                )
            })
        })
        .filter_map(|m| world.index_of(&m.node_id))
        .collect();
    peers.sort_unstable();
    lock(&world.rng).shuffle(&mut peers);
    peers
}

/// Starts the trees [`new_trees`] asks for at `node` for `change`.
fn start_trees(world: &Arc<World>, node: usize, change: &Arc<SignedChange>, arrival: Arrival) {
    let Some(mesh) = world.mesh(node) else {
        return;
    };
    let (gateway, self_id) = {
        let nodes = lock(&world.nodes);
        (nodes[node].gateway, nodes[node].id)
    };
    let members = mesh.members();
    let primary = gateway && primary_gateway(self_id, true, members.iter()) == Some(self_id);
    let trees = new_trees(arrival, gateway, primary);
    let doc = change.doc_id.clone();
    let fanout = world.scenario.mesh.push_fanout;
    for (wanted, pool, kind) in [
        (trees.site, Pool::Site, Arrival::Site),
        (trees.wan, Pool::Wan, Arrival::Wan),
    ] {
        if !wanted {
            continue;
        }
        let peers = tree_peers(world, node, &members, pool, &doc);
        for group in split_groups(peers, fanout) {
            send_push(
                world,
                node,
                group[0],
                Push {
                    change: change.clone(),
                    relay: group[1..].to_vec(),
                    arrival: kind,
                },
            );
        }
    }
}

/// Sends a push; when the head cannot be reached, its group is sent to directly after the
/// failure shows (as the node does).
fn send_push(world: &Arc<World>, from: usize, to: usize, push: Push) {
    let bytes = push_bytes(&push);
    let delay = world.net.stream_delay(from, to, bytes);
    let world = world.clone();
    tokio::spawn(async move {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
            if world.alive(from) && world.alive(to) {
                receive_push(&world, from, to, push);
                return;
            }
        }
        // No answer: the sender notices after the stream times out and sends the head's
        // group directly.
        tokio::time::sleep(STREAM_FAILURE).await;
        if !world.alive(from) {
            return;
        }
        for node in push.relay {
            send_push(
                &world,
                from,
                node,
                Push {
                    change: push.change.clone(),
                    relay: Vec::new(),
                    arrival: push.arrival,
                },
            );
        }
    });
}

fn receive_push(world: &Arc<World>, from: usize, node: usize, push: Push) {
    if world.net.refuses(node, from) {
        lock(&world.record).refused_changes += 1;
        return;
    }
    let key = doc_name(&push.change.doc_id);
    let replica = world.replica(node);
    let outcome = {
        let directory = lock(&world.directory);
        let mut replica = lock(&replica);
        match replica.docs.get_mut(&key) {
            Some(doc) => Some(doc.apply_remote(&push.change, &*directory)),
            None => None,
        }
    };
    let new = match outcome {
        Some(Ok(nexus_crdt::Applied::New)) => true,
        Some(Ok(_)) => false,
        Some(Err(nexus_crdt::RemoteError::MissingDependencies { .. })) => {
            let mut replica = lock(&replica);
            let held = replica.pending.entry(key.clone()).or_default();
            if held.len() >= PENDING_PUSHES {
                held.remove(0);
            }
            held.push((push.change.clone(), push.arrival));
            false
        }
        Some(Err(err)) => {
            tracing::debug!(node, error = %err, "simulated node refused a pushed change");
            lock(&world.record).refused_changes += 1;
            false
        }
        None => false,
    };
    let fanout = world.scenario.mesh.push_fanout;
    for group in split_groups(push.relay, fanout) {
        send_push(
            world,
            node,
            group[0],
            Push {
                change: push.change.clone(),
                relay: group[1..].to_vec(),
                arrival: push.arrival,
            },
        );
    }
    if new {
        took(world, node, &[push.change.change_hash]);
        start_trees(world, node, &push.change, push.arrival);
        apply_pending(world, node, &key);
        spawn_publish(world, node);
    }
}

/// Applies the held pushes of document `key` on `node` whose dependencies are there now
/// (repeatedly: one may unblock the next), and pushes them on like any new push.
fn apply_pending(world: &Arc<World>, node: usize, key: &str) {
    let replica = world.replica(node);
    loop {
        let applied: Vec<(Arc<SignedChange>, Arrival)> = {
            let directory = lock(&world.directory);
            let mut replica = lock(&replica);
            let waiting = replica.pending.remove(key).unwrap_or_default();
            let Some(doc) = replica.docs.get_mut(key) else {
                return;
            };
            let mut applied = Vec::new();
            let mut still = Vec::new();
            for (change, arrival) in waiting {
                match doc.apply_remote(&change, &*directory) {
                    Ok(nexus_crdt::Applied::New) => applied.push((change, arrival)),
                    Ok(_) => {}
                    Err(nexus_crdt::RemoteError::MissingDependencies { .. }) => {
                        still.push((change, arrival));
                    }
                    Err(_) => lock(&world.record).refused_changes += 1,
                }
            }
            if !still.is_empty() {
                replica.pending.insert(key.to_string(), still);
            }
            applied
        };
        if applied.is_empty() {
            return;
        }
        let hashes: Vec<ChangeHash> = applied.iter().map(|(c, _)| c.change_hash).collect();
        took(world, node, &hashes);
        for (change, arrival) in &applied {
            start_trees(world, node, change, *arrival);
        }
    }
}

fn doc_name(id: &DocId) -> String {
    match id {
        DocId::Fleet => "fleet".into(),
        DocId::Tenant(t) => format!("tenant:{t}"),
    }
}

/// Anti-entropy: each interval, the node asks [`AntiEntropy`] whom to sync with (from the
/// digests its peers publish in gossip) and runs a session with one peer per document.
async fn anti_entropy_loop(world: Arc<World>, node: usize, mesh: Arc<Mesh>) {
    let interval = world.scenario.mesh.anti_entropy_interval.0;
    // A random phase, so the fleet's sessions do not start in lockstep.
    let phase = interval.mul_f64(world.random(1000) as f64 / 1000.0);
    tokio::time::sleep(phase).await;
    let mut rule = AntiEntropy::new();
    let self_id = lock(&world.nodes)[node].id;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<u64> = None;
    let mut advertised: Vec<nexus_mesh::Advertised> = Vec::new();
    loop {
        ticker.tick().await;
        let ours: HashMap<String, (u64, String)> = lock(&world.replica(node))
            .advertised()
            .into_iter()
            .map(|(doc, v)| (doc_key(&doc_id(&doc)), v))
            .collect();
        // What peers publish is read again only when gossip state moved.
        let version = mesh.state_version();
        if seen != Some(version) {
            seen = Some(version);
            advertised = mesh
                .published_prefix(CFG_PREFIX)
                .await
                .into_iter()
                .filter_map(|(peer, key, value)| {
                    let doc = key.strip_prefix(CFG_PREFIX)?;
                    let (version, digest) = value.split_once(':')?;
                    Some(nexus_mesh::Advertised {
                        node: peer,
                        doc: doc.to_string(),
                        version: version.parse().ok()?,
                        digest: digest.to_string(),
                    })
                })
                .collect();
        }
        // Peers that agree with us, or are behind us, are no candidates: only the others are
        // handed over.
        let differing = advertised
            .iter()
            .filter(|ad| {
                ours.get(&ad.doc)
                    .is_some_and(|(v, d)| *d != ad.digest && ad.version >= *v)
            })
            .cloned();
        let now = world.now();
        let candidates = rule.candidates(self_id, now, &ours, differing);
        for (doc, peers) in candidates {
            let peers: Vec<usize> = peers
                .iter()
                .filter_map(|p| world.index_of(p))
                .filter(|p| !world.net.refuses(node, *p))
                .collect();
            if peers.is_empty() {
                continue;
            }
            let peer = peers[world.random(peers.len())];
            let peer_id = lock(&world.nodes)[peer].id;
            rule.synced(peer_id, &doc, now);
            let name = doc.replace("tenant/", "tenant:");
            let new = sync_session(&world, node, peer, &name).await;
            if new > 0 {
                publish_digests(&world, node, &mesh).await;
            }
        }
    }
}

/// One automerge sync session between `a` (which started it) and `b`, over the simulated
/// streams: packets alternate until both sides have nothing to say. Returns the changes `a`
/// took.
async fn sync_session(world: &Arc<World>, a: usize, b: usize, doc: &str) -> usize {
    lock(&world.record).sessions += 1;
    let (ra, rb) = (world.replica(a), world.replica(b));
    if !lock(&rb).docs.contains_key(doc) {
        return 0;
    }
    let mut state = [PeerSync::new(), PeerSync::new()];
    let mut taken_by_a = 0;
    for _ in 0..MAX_SYNC_ROUNDS {
        let mut sent = false;
        for (from, to) in [(a, b), (b, a)] {
            let (rf, rt, sf, st) = if from == a {
                let (x, y) = state.split_at_mut(1);
                (&ra, &rb, &mut x[0], &mut y[0])
            } else {
                let (x, y) = state.split_at_mut(1);
                (&rb, &ra, &mut y[0], &mut x[0])
            };
            let packet = {
                let mut replica = lock(rf);
                let Some(d) = replica.docs.get_mut(doc) else {
                    return taken_by_a;
                };
                match d.generate_sync_message(sf, &world.envelopes, &world.limits) {
                    Ok(p) => p,
                    Err(err) => {
                        tracing::debug!(error = %err, "simulated sync session failed");
                        return taken_by_a;
                    }
                }
            };
            let Some(packet) = packet else {
                continue;
            };
            sent = true;
            let bytes = (packet.encode().len() + packet.changes.len() * MIC_BYTES) * 4 / 3 + 64;
            let Some(delay) = world.net.stream_delay(from, to, bytes) else {
                return taken_by_a;
            };
            tokio::time::sleep(delay).await;
            if !world.alive(a) || !world.alive(b) {
                return taken_by_a;
            }
            let received = {
                let directory = lock(&world.directory);
                let mut replica = lock(rt);
                let Some(d) = replica.docs.get_mut(doc) else {
                    return taken_by_a;
                };
                d.receive_sync_message(st, &packet, &*directory)
            };
            match received {
                Ok(new) => {
                    let hashes: Vec<ChangeHash> = new.iter().map(|c| c.change_hash).collect();
                    if to == a {
                        taken_by_a += hashes.len();
                    }
                    if !hashes.is_empty() {
                        took(world, to, &hashes);
                        // What sync brought may be what held pushes were waiting for.
                        apply_pending(world, to, doc);
                        if to == b {
                            spawn_publish(world, b);
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "simulated sync packet refused");
                    lock(&world.record).refused_changes += 1;
                    return taken_by_a;
                }
            }
        }
        if !sent {
            break;
        }
    }
    taken_by_a
}

/// Writes one change on `node` and pushes it; the write is acknowledged (on the node's disk)
/// before the push starts.
fn write(world: &Arc<World>, node: usize, document: &str, label: &str, seq: usize) -> Option<()> {
    let id = doc_id(document);
    let (author, name, tenant) = {
        let nodes = lock(&world.nodes);
        (
            nodes[node].author.clone(),
            nodes[node].name.clone(),
            nodes[node].tenant.clone(),
        )
    };
    let ts = (EPOCH_MS + world.now().as_millis() as u64) as i64;
    let policy_id = format!("{label}-{seq}");
    let policy = |tenant: &str| RoutePolicy {
        id: policy_id.clone(),
        name: format!("simulated {label} #{seq}"),
        tenant_id: tenant.to_string(),
        priority: 100 + (seq % 1000) as u32,
        matches: RouteMatch {
            source_node_ids: vec![],
            dest_capabilities: vec![],
            stream_modes: vec![StreamMode::BE],
            message_types: vec![(seq % 200) as u16],
            source_tenant: None,
        },
        action: RouteAction::new(ActionType::Allow),
        enabled: true,
        created_at: ts,
    };
    let change = {
        let replica = world.replica(node);
        let mut replica = lock(&replica);
        let doc = replica.docs.get_mut(document)?;
        let result = match &id {
            DocId::Fleet => doc.apply_local::<FleetDoc, std::convert::Infallible>(
                &author,
                &Caller {
                    identity: "api-key:simulation".into(),
                    role: CallerRole::FleetAdmin,
                },
                ts,
                |m| {
                    m.policies.insert(policy_id.clone(), policy(""));
                    Ok(())
                },
            ),
            DocId::Tenant(t) => doc.apply_local::<TenantDoc, std::convert::Infallible>(
                &author,
                &Caller {
                    identity: "api-key:simulation".into(),
                    role: CallerRole::TenantAdmin { tenant: t.clone() },
                },
                ts,
                |m| {
                    m.routes.insert(policy_id.clone(), policy(t));
                    Ok(())
                },
            ),
        };
        match result {
            Ok(Some(change)) => change,
            Ok(None) => return None,
            Err(err) => {
                tracing::warn!(node = %name, tenant, error = %err, "simulated write refused");
                return None;
            }
        }
    };
    commit_and_push(world, node, change, document, label, &name);
    Some(())
}

fn commit_and_push(
    world: &Arc<World>,
    node: usize,
    change: SignedChange,
    document: &str,
    label: &str,
    origin: &str,
) {
    let hash = change.change_hash;
    lock(&world.envelopes.0).insert(hash, change.clone());
    // A revoked node is out of the fleet: nobody sends it anything any more.
    let revoked = revoked_nodes(world);
    let targets: HashSet<usize> = world
        .holders(document)
        .into_iter()
        .filter(|n| !revoked.contains(n) || *n == node)
        .collect();
    {
        let mut record = lock(&world.record);
        let i = record.changes.len();
        record.changes.push(ChangeRec {
            label: label.to_string(),
            document: document.to_string(),
            origin: origin.to_string(),
            at: world.now(),
            targets,
            arrivals: HashMap::new(),
        });
        record.by_hash.insert(hash, i);
    }
    took(world, node, &[hash]);
    let change = Arc::new(change);
    start_trees(world, node, &change, Arrival::Origin);
    spawn_publish(world, node);
}

/// An anchor revokes `target`: a fleet-document change.
fn revoke(world: &Arc<World>, target: usize) {
    let Some(anchor) = (0..world.node_count()).find(|i| {
        let nodes = lock(&world.nodes);
        nodes[*i].anchor && nodes[*i].alive
    }) else {
        tracing::warn!("no live anchor to revoke through");
        return;
    };
    let (author, anchor_name) = {
        let nodes = lock(&world.nodes);
        (nodes[anchor].author.clone(), nodes[anchor].name.clone())
    };
    let target_id = lock(&world.nodes)[target].id;
    let ts = (EPOCH_MS + world.now().as_millis() as u64) as i64;
    let change = {
        let replica = world.replica(anchor);
        let mut replica = lock(&replica);
        let doc = replica
            .docs
            .get_mut("fleet")
            .expect("anchors hold the fleet document");
        doc.apply_local::<FleetDoc, std::convert::Infallible>(
            &author,
            &Caller {
                identity: "api-key:simulation".into(),
                role: CallerRole::FleetAdmin,
            },
            ts,
            |m| {
                m.revocations.insert(
                    format!("{:x}", 0x5100 + target),
                    Revocation {
                        node_id: target_id,
                        reason: "keyCompromise".into(),
                        revoked_at: ts,
                    },
                );
                Ok(())
            },
        )
    };
    let Ok(Some(change)) = change else {
        tracing::warn!("the revocation could not be written");
        return;
    };
    let revoked = revoked_nodes(world);
    let targets: HashSet<usize> = world
        .holders("fleet")
        .into_iter()
        .filter(|n| *n != target && !revoked.contains(n))
        .collect();
    {
        let mut record = lock(&world.record);
        let r = record.revocations.len();
        record.revocations.push(RevocationRec {
            node: target,
            at: world.now(),
            targets,
            refused_at: HashMap::new(),
        });
        record.revocation_of.insert(change.change_hash, r);
    }
    commit_and_push(world, anchor, change, "fleet", "revocation", &anchor_name);
}

/// Resolves a selector to node indexes (seeded for fractions and counts).
fn select(world: &World, sel: &Selector) -> Vec<usize> {
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    for name in &sel.nodes {
        match world.by_name(name) {
            Some(i) => {
                chosen.insert(i);
            }
            None => tracing::warn!(node = %name, "the scenario names an unknown node"),
        }
    }
    let sites: Vec<usize> = sel.sites.iter().map(|s| world.site_index(s)).collect();
    {
        let nodes = lock(&world.nodes);
        for (i, s) in nodes.iter().enumerate() {
            if sites.contains(&s.site) {
                chosen.insert(i);
            }
        }
    }
    let pool: Vec<usize> = {
        let nodes = lock(&world.nodes);
        (0..nodes.len()).filter(|i| !nodes[*i].anchor).collect()
    };
    let take = match (sel.fraction, sel.count) {
        (Some(f), _) => (pool.len() as f64 * f).round() as usize,
        (None, Some(c)) => c.min(pool.len()),
        (None, None) => 0,
    };
    if take > 0 {
        let mut pool = pool;
        lock(&world.rng).shuffle(&mut pool);
        chosen.extend(pool.into_iter().take(take));
    }
    if sel.nodes.is_empty() && sel.sites.is_empty() && sel.fraction.is_none() && sel.count.is_none()
    {
        return (0..world.node_count()).collect();
    }
    chosen.into_iter().collect()
}

/// The longest time over which the fleet's nodes start.
const BOOT_SPREAD: Duration = Duration::from_secs(5);

/// Runs the timeline; returns when the scenario's duration has passed.
pub(crate) async fn run_timeline(engine: &Engine, progress: &dyn Fn(Duration)) {
    let world = &engine.world;
    let scenario = world.scenario.clone();
    // Boot: every node starts at a random moment within one gossip interval (at most 5 s), so
    // rounds do not run in lockstep.
    let spread = scenario.mesh.gossip_interval.0.min(BOOT_SPREAD);
    let mut boot: Vec<(Duration, usize)> = (0..world.node_count())
        .map(|i| {
            let at = spread.mul_f64(world.random(10_000) as f64 / 10_000.0);
            (at, i)
        })
        .collect();
    boot.sort();
    lock(&world.record).convergence.push((Duration::ZERO, None));
    for (at, node) in boot {
        tokio::time::sleep_until(world.origin + at).await;
        engine.start(node).await;
    }
    let sampler = tokio::spawn(sample_convergence(world.clone()));
    let mut events: Vec<(Duration, usize)> = scenario
        .timeline
        .iter()
        .enumerate()
        .map(|(i, e)| (e.at.0, i))
        .collect();
    events.sort();
    // Expanded actions: (at, what), processed in time order.
    let mut queue: BTreeMap<(Duration, u64), Step> = BTreeMap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BTreeMap<(Duration, u64), Step>, at: Duration, step: Step| {
        seq += 1;
        queue.insert((at, seq), step);
    };
    for (at, i) in events {
        push(&mut queue, at, Step::Event(i));
    }
    let end = scenario.duration.0;
    let mut next_progress = Duration::ZERO;
    loop {
        let next = queue.keys().next().copied();
        let until = next.map_or(end, |(at, _)| at.min(end));
        while next_progress <= until {
            tokio::time::sleep_until(world.origin + next_progress).await;
            progress(next_progress);
            next_progress += Duration::from_secs(1);
        }
        tokio::time::sleep_until(world.origin + until).await;
        let Some(key) = next.filter(|(at, _)| *at <= end) else {
            break;
        };
        let step = queue.remove(&key).expect("peeked");
        let now = key.0;
        match step {
            Step::Event(i) => {
                let event = scenario.timeline[i].clone();
                apply_event(world, &event.action, now, &mut |at, step| {
                    push(&mut queue, at, step)
                })
                .await
            }
            Step::Write {
                node,
                document,
                label,
                seq,
            } => {
                write(world, node, &document, &label, seq);
            }
            Step::Start(node) => {
                let first = !lock(&world.nodes)[node].started;
                if first {
                    engine.start(node).await;
                } else {
                    restart_node(world, node).await;
                }
            }
        }
    }
    sampler.abort();
    progress(end);
}

/// A scheduled step.
enum Step {
    Event(usize),
    Write {
        node: usize,
        document: String,
        label: String,
        seq: usize,
    },
    Start(usize),
}

fn mark_impaired(world: &World, until: Duration) {
    let mut record = lock(&world.record);
    record.impaired_until = Some(record.impaired_until.map_or(until, |u| u.max(until)));
}

fn disturbance(world: &World, at: Duration) {
    lock(&world.record).convergence.push((at, None));
}

async fn apply_event(
    world: &Arc<World>,
    action: &Action,
    now: Duration,
    schedule: &mut dyn FnMut(Duration, Step),
) {
    let sites =
        |list: &[String]| -> BTreeSet<usize> { list.iter().map(|s| world.site_index(s)).collect() };
    match action {
        Action::Change {
            label,
            document,
            count,
            from,
            every,
        } => {
            let label = label
                .clone()
                .unwrap_or_else(|| format!("change@{}s", now.as_secs()));
            for seq in 0..*count {
                let node = if from == "random" {
                    random_writer(world, document)
                } else {
                    world.by_name(from)
                };
                let Some(node) = node else {
                    tracing::warn!(from = %from, "no node to write from");
                    continue;
                };
                schedule(
                    now + every.0 * seq as u32,
                    Step::Write {
                        node,
                        document: document.clone(),
                        label: label.clone(),
                        seq,
                    },
                );
            }
        }
        Action::Crash(sel) => {
            for node in select(world, sel) {
                crash_node(world, node).await;
            }
        }
        Action::Restart(sel) => {
            disturbance(world, now);
            for node in select(world, sel) {
                restart_node(world, node).await;
            }
        }
        Action::PowerCut {
            select: nodes,
            down,
            spread,
        } => {
            let chosen = select(world, nodes);
            for node in &chosen {
                crash_node(world, *node).await;
            }
            let n = chosen.len().max(1) as u32;
            for (i, node) in chosen.into_iter().enumerate() {
                schedule(now + down.0 + spread.0 * i as u32 / n, Step::Start(node));
            }
            disturbance(world, now + down.0 + spread.0);
        }
        Action::Partition { sites: list } => {
            world.net.partition(sites(list));
            mark_impaired(world, world.scenario.duration.0);
        }
        Action::Heal => {
            world.net.heal();
            lock(&world.record).impaired_until = Some(now);
            disturbance(world, now);
        }
        Action::Asymmetric { from, to } => {
            world.net.one_way(sites(from), sites(to));
            mark_impaired(world, world.scenario.duration.0);
        }
        Action::LossBurst {
            loss,
            duration,
            sites: list,
        } => {
            world.net.burst(sites(list), *loss, duration.0);
            mark_impaired(world, now + duration.0);
        }
        Action::ClockSkew {
            select: nodes,
            skew,
        } => {
            let skew = parse_skew(skew).unwrap_or(0);
            let chosen = select(world, nodes);
            let slots = lock(&world.nodes);
            for node in chosen {
                slots[node].skew_ms.store(skew, Ordering::Relaxed);
            }
        }
        Action::Revoke { node } => match world.by_name(node) {
            Some(target) => revoke(world, target),
            None => tracing::warn!(node = %node, "the scenario revokes an unknown node"),
        },
        Action::Join { count, site, over } => {
            let f = &world.scenario.fleet;
            for i in 0..*count {
                let site = match site {
                    Some(s) => world.site_index(s),
                    None => 1 + i % f.sites,
                };
                let tenant = if site == 0 {
                    "t0".to_string()
                } else {
                    format!("t{}", (site - 1) % f.tenants)
                };
                let within = lock(&world.nodes).iter().filter(|s| s.site == site).count();
                let name = format!(
                    "{}-n{within:03}",
                    if site == 0 {
                        "core".into()
                    } else {
                        site_name(site)
                    }
                );
                let node = world.add(site, false, false, tenant, name);
                schedule(
                    now + over.0 * i as u32 / (*count as u32).max(1),
                    Step::Start(node),
                );
            }
            disturbance(world, now + over.0);
        }
    }
}

fn random_writer(world: &World, document: &str) -> Option<usize> {
    let nodes = lock(&world.nodes);
    let candidates: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, s)| s.alive)
        .filter(|(_, s)| match document.strip_prefix("tenant:") {
            None => s.anchor,
            Some(t) => !s.anchor && s.tenant == t,
        })
        .map(|(i, _)| i)
        .collect();
    drop(nodes);
    if candidates.is_empty() {
        return None;
    }
    Some(candidates[world.random(candidates.len())])
}

/// Every 100 ms: has every live node's table reached the members it should hold? Closes the
/// open convergence windows.
async fn sample_convergence(world: Arc<World>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        ticker.tick().await;
        let now = world.now();
        let open = lock(&world.record)
            .convergence
            .iter()
            .any(|(since, done)| *since <= now && done.is_none());
        if !open {
            continue;
        }
        let live: Vec<usize> = (0..world.node_count())
            .filter(|n| world.alive(*n))
            .collect();
        let counts = lock(&world.record).members.clone();
        let converged = live
            .iter()
            .all(|n| counts[*n] >= world.expected_members(*n));
        if converged {
            for (since, done) in lock(&world.record).convergence.iter_mut() {
                if *since <= now && done.is_none() {
                    *done = Some(now);
                }
            }
        }
    }
}

/// Changes a live holder of a document lacks at the end: acknowledged writes lost.
pub(crate) fn missing_writes(world: &World) -> Vec<String> {
    let revoked = revoked_nodes(world);
    let record = lock(&world.record);
    let mut missing = Vec::new();
    let nodes = lock(&world.nodes);
    for (hash, &i) in &record.by_hash {
        let change = &record.changes[i];
        for (n, slot) in nodes.iter().enumerate() {
            // A revoked node is out of the fleet: nobody sends it anything any more.
            if !slot.alive || revoked.contains(&n) {
                continue;
            }
            let replica = lock(&slot.replica);
            if let Some(doc) = replica.docs.get(&change.document)
                && !doc.has_change(hash)
            {
                missing.push(format!("{} lacks {} ({})", slot.name, change.label, hash));
            }
        }
    }
    missing.sort();
    missing
}

/// Size of the largest pool: a site pool or the WAN pool.
pub(crate) fn largest_pool(world: &World) -> usize {
    let nodes = lock(&world.nodes);
    let mut per_site: HashMap<usize, usize> = HashMap::new();
    for s in nodes.iter() {
        *per_site.entry(s.site).or_default() += 1;
    }
    let wan = nodes.iter().filter(|s| s.gateway).count();
    per_site.into_values().chain([wan]).max().unwrap_or(0)
}

/// Counts for the report: (nodes, anchors, gateways).
pub(crate) fn counts(world: &World) -> (usize, usize, usize) {
    let nodes = lock(&world.nodes);
    (
        nodes.len(),
        nodes.iter().filter(|s| s.anchor).count(),
        nodes.iter().filter(|s| s.gateway && !s.anchor).count(),
    )
}

/// Live nodes now.
pub(crate) fn live(world: &World) -> usize {
    lock(&world.nodes).iter().filter(|s| s.alive).count()
}

/// Stops every node (end of the run).
pub(crate) fn stop_all(world: &World) {
    let mut nodes = lock(&world.nodes);
    for s in nodes.iter_mut() {
        for t in s.tasks.drain(..) {
            t.abort();
        }
        if let Some(mesh) = s.mesh.take() {
            mesh.shutdown();
        }
    }
}
