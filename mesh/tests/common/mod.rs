//! Shared fixtures of the mesh integration tests: a fleet PKI made with nexus-ca, node identities,
//! fast mesh configs and bounded polling.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use nexus_ca::{CertificateAuthority, MicProfile, NodeId, NodeKey, Role, TrustStore};
use nexus_mesh::{
    Datagrams, GossipAuth, GossipAuthConfig, MembershipConfig, MemoryNetwork, Mesh, MeshConfig,
    NodeInfo, NodeStatus, UdpDatagrams,
};

/// Longest any test waits for a condition.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Gossip timings of the test meshes.
#[derive(Debug)]
pub struct Timing {
    pub gossip_interval: Duration,
    pub suspect_after: Duration,
    pub offline_after: Duration,
    pub tick_interval: Duration,
}

/// The fast test timings (50 ms rounds, suspected after 300 ms, offline after 600 ms), slowed down
/// when signature verification is slow. Every gossip datagram is verified; a round of 4 nodes
/// gossiping with 3 peers each is 12 SYN/SYN-ACK/ACK exchanges, 36 verifications. In an
/// unoptimized build ed25519 verification (curve25519-dalek at opt-level 0) takes ~10 ms, so
/// 50 ms rounds would need ~8 cores and live nodes would look dead. The rounds are stretched so a
/// cluster needs at most about one core; with optimized crypto the timings stay the fast ones.
/// chitchat's dead-incarnation grace in these tests.
pub const DEAD_GRACE: Duration = Duration::from_secs(1);

pub fn timing() -> &'static Timing {
    static TIMING: OnceLock<Timing> = OnceLock::new();
    TIMING.get_or_init(|| {
        let key = NodeKey::generate();
        let msg = [0x42u8; 512];
        let signature = key.sign(&msg);
        let public = key.public_key();
        let mut samples: Vec<Duration> = (0..5)
            .map(|_| {
                let start = Instant::now();
                assert!(nexus_ca::verify_signature(&public, &msg, &signature));
                start.elapsed()
            })
            .collect();
        samples.sort();
        let verify = samples[samples.len() / 2];
        let gossip_interval = Duration::from_millis(50).max(verify * 36);
        let timing = Timing {
            gossip_interval,
            suspect_after: Duration::from_millis(300).max(gossip_interval * 4),
            offline_after: Duration::from_millis(600).max(gossip_interval * 8),
            tick_interval: Duration::from_millis(25).max(gossip_interval / 4),
        };
        eprintln!("ed25519 verify takes {verify:?}: test timings {timing:?}");
        timing
    })
}

/// Held by every test that runs a cluster: one cluster at a time keeps the CPU budget above.
pub async fn one_cluster_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// A fleet root with one anchor intermediate, and the trust store its nodes hold.
pub struct Fleet {
    pub id: String,
    intermediate: CertificateAuthority,
    trust: TrustStore,
}

/// A node's key and MIC.
#[derive(Clone)]
pub struct Identity {
    pub key: Arc<NodeKey>,
    pub mic: Vec<u8>,
}

impl Identity {
    pub fn node_id(&self) -> NodeId {
        self.key.node_id()
    }
}

impl Fleet {
    /// A new fleet PKI (fleet ids may repeat: every call makes a distinct root).
    pub fn new(id: &str) -> Fleet {
        let root = CertificateAuthority::new_fleet_root(id).unwrap();
        let intermediate = root
            .new_intermediate(id, NodeKey::generate().node_id())
            .unwrap();
        let trust = TrustStore::new(
            root.cert_der().to_vec(),
            vec![intermediate.cert_der().to_vec()],
        )
        .unwrap();
        Fleet {
            id: id.to_string(),
            intermediate,
            trust,
        }
    }

    /// A new node key with a MIC of this fleet.
    pub fn enroll(&self) -> Identity {
        let key = NodeKey::generate();
        let mic = self
            .intermediate
            .issue_mic(
                &key.public_key(),
                &MicProfile {
                    fleet_id: self.id.clone(),
                    node_id: key.node_id(),
                    tenant: String::new(),
                    site: "lab-1".to_string(),
                    role: Role::Node,
                    validity: Duration::from_secs(3600),
                },
            )
            .unwrap();
        Identity {
            key: Arc::new(key),
            mic,
        }
    }

    pub fn auth(&self, identity: &Identity) -> GossipAuth {
        GossipAuth::new(
            identity.key.clone(),
            identity.mic.clone(),
            self.trust.clone(),
            GossipAuthConfig::default(),
        )
    }

    /// Starts a mesh node with the fast test timings.
    pub async fn start(
        &self,
        identity: &Identity,
        generation: u64,
        datagrams: Box<dyn Datagrams>,
        seeds: Vec<SocketAddr>,
    ) -> Mesh {
        self.start_with(identity, generation, datagrams, seeds, |_| {})
            .await
    }

    /// Starts a mesh node with the fast test timings, changed by `tweak`.
    pub async fn start_with(
        &self,
        identity: &Identity,
        generation: u64,
        datagrams: Box<dyn Datagrams>,
        seeds: Vec<SocketAddr>,
        tweak: impl FnOnce(&mut MeshConfig),
    ) -> Mesh {
        let timing = timing();
        let mut config = MeshConfig {
            fleet_id: self.id.clone(),
            node_id: identity.node_id(),
            generation,
            gossip_interval: timing.gossip_interval,
            seeds,
            membership: MembershipConfig {
                suspect_after: timing.suspect_after,
                offline_after: timing.offline_after,
                decommission_grace: Duration::from_secs(3600),
                forget_offline_after: Duration::from_secs(3600),
            },
            tick_interval: timing.tick_interval,
            // Short, so partition tests also cover chitchat forgetting and re-admitting a node.
            dead_incarnation_grace: DEAD_GRACE,
            wan_seeds: Vec::new(),
            clock: nexus_mesh::Clock::system(),
            observer: None,
            detector: nexus_mesh::DetectorConfig::default(),
            rumor: nexus_mesh::RumorConfig::default(),
        };
        tweak(&mut config);
        Mesh::start(
            config,
            datagrams,
            None,
            None,
            self.auth(identity),
            &info(),
            Vec::new(),
        )
        .await
        .unwrap()
    }
}

pub fn info() -> NodeInfo {
    NodeInfo {
        hostname: "test-host".to_string(),
        role: Role::Node,
        site: "lab-1".to_string(),
        tenant: "default".to_string(),
        labels: BTreeMap::new(),
        api_addr: "127.0.0.1:1".parse().unwrap(),
        quic_addr: "127.0.0.1:2".parse().unwrap(),
        nexlink_version: "0.0.0-test".to_string(),
        nexroute_version: "0.0.0-test".to_string(),
        nic_model: String::new(),
        nic_backend: String::new(),
        firmware_version: String::new(),
        capabilities: Vec::new(),
        trust_level: 1,
        config_version: 1,
        created_at_ms: 0,
        mic_serial: String::new(),
        mic_not_after_ms: 0,
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// How a test makes gossip sockets: the conformance suite runs once per implementation.
pub trait Net: Send + Sync + 'static {
    /// A new socket at a fresh address.
    fn socket(&self) -> Box<dyn Datagrams>;
}

/// Real UDP on loopback, ephemeral ports.
pub struct Udp;

impl Net for Udp {
    fn socket(&self) -> Box<dyn Datagrams> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        Box::new(UdpDatagrams::new(socket).unwrap())
    }
}

/// The in-memory network; sockets get 127.0.0.N:7000 with N counting up.
#[derive(Default)]
pub struct Memory {
    pub network: MemoryNetwork,
    next: AtomicU8,
}

impl Net for Memory {
    fn socket(&self) -> Box<dyn Datagrams> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let addr = SocketAddr::from(([127, 0, 0, n], 7000));
        Box::new(self.network.bind(addr).unwrap())
    }
}

/// Polls `check` every 25 ms until it returns `Ok`, panicking with its last complaint once
/// `DEADLINE` has passed.
pub async fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => {
                eprintln!("{:>6} ms until {what}", start.elapsed().as_millis());
                return;
            }
            Err(last) if start.elapsed() > DEADLINE => {
                panic!("timed out after {DEADLINE:?} waiting until {what}: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// `mesh`'s view: status by node id.
pub fn view(mesh: &Mesh) -> BTreeMap<NodeId, NodeStatus> {
    mesh.members()
        .into_iter()
        .map(|m| (m.node_id, m.status))
        .collect()
}

/// Ok when `mesh` lists exactly `expected` with the given statuses.
pub fn sees(mesh: &Mesh, expected: &BTreeMap<NodeId, NodeStatus>) -> Result<(), String> {
    let actual = view(mesh);
    if &actual == expected {
        Ok(())
    } else {
        Err(format!("expected {expected:?}, node sees {actual:?}"))
    }
}

/// Counts every counter increment, by name and labels.
#[derive(Default)]
pub struct Counters {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Counters {
    pub fn get(&self, name_and_labels: &str) -> u64 {
        let counters = self.counters.lock().unwrap();
        counters
            .get(name_and_labels)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

struct CountingRecorder(&'static Counters);

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let counter = self
            .0
            .counters
            .lock()
            .unwrap()
            .entry(name)
            .or_default()
            .clone();
        Counter::from_arc(counter)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// The process-wide counting recorder, installed on first use: a binary that calls this holds
/// only tests that tolerate each other's counts.
pub fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<&'static Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let counters: &'static Counters = Box::leak(Box::default());
        metrics::set_global_recorder(CountingRecorder(counters))
            .expect("no other recorder in this test binary");
        counters
    })
}
