//! The benchmark's baseline: N plain chitchat nodes in this process — no Nexus, no datagram
//! authentication — with the chitchat settings Nexus runs (same interval, compressed V1 digests,
//! same phi-accrual settings) and key-values of the same size. It answers two questions about the
//! figures Nexus reports: what authentication costs on the wire, and what chitchat's own failure
//! detector would have given instead of Nexus's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion, spawn_chitchat,
};

/// What the baseline measured.
#[derive(Debug, Default)]
pub struct Baseline {
    /// Bytes per second each node sent in steady state.
    pub bytes_per_sec: Vec<f64>,
    /// Seconds from stopping a node until an observer dropped it from its live nodes, one entry
    /// per (victim, observer).
    pub detection_secs: Vec<f64>,
}

/// UDP transport that counts the bytes it sends.
struct Counting(Arc<AtomicU64>);

struct CountingSocket {
    inner: Box<dyn Socket>,
    sent: Arc<AtomicU64>,
}

#[async_trait]
impl Transport for Counting {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(CountingSocket {
            inner: UdpTransport.open(listen_addr).await?,
            sent: self.0.clone(),
        }))
    }
}

#[async_trait]
impl Socket for CountingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }
    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let outcome = self.inner.send(to, envelope).await?;
        self.sent
            .fetch_add(outcome.num_bytes_sent as u64, Ordering::Relaxed);
        Ok(outcome)
    }
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.inner.recv().await
    }
}

struct Node {
    handle: Option<ChitchatHandle>,
    id: ChitchatId,
    sent: Arc<AtomicU64>,
}

/// 32 hex chars that look random (splitmix64), like a NodeId.
fn node_id_like(i: u64) -> String {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    format!("{:016x}{:016x}", mix(2 * i), mix(2 * i + 1))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn free_udp_addr() -> anyhow::Result<SocketAddr> {
    // Bound and released: a tiny race with other processes, acceptable for a benchmark.
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// Key-values the size of what a Nexus node publishes (its `NodeInfo` JSON, health, status).
fn key_values(i: usize) -> Vec<(String, String)> {
    let info = format!(
        r#"{{"hostname":"baseline-{i}","role":"node","site":"edge-1","tenant":"default","labels":{{}},"api_addr":"127.0.0.1:{p}","quic_addr":"127.0.0.1:{q}","nexlink_version":"0.1.0","nexroute_version":"","nic_model":"","firmware_version":"","capabilities":[],"trust_level":1,"config_version":0,"created_at_ms":1795617573836}}"#,
        p = 20000 + i,
        q = 30000 + i
    );
    vec![
        ("node".to_string(), info),
        ("health".to_string(), "ok".to_string()),
        ("status".to_string(), "active".to_string()),
    ]
}

async fn live_count(handle: &ChitchatHandle) -> usize {
    handle.with_chitchat(|c| c.live_nodes().count()).await
}

/// Runs `n` chitchat nodes at `interval`; measures bytes over `window` after `settle`, then stops
/// `victims` nodes one by one and times chitchat's own detector.
pub async fn run(
    n: usize,
    interval: Duration,
    settle: Duration,
    window: Duration,
    victims: usize,
) -> anyhow::Result<Baseline> {
    let mut nodes = Vec::with_capacity(n);
    let mut seed = None;
    for i in 0..n {
        let addr = free_udp_addr()?;
        let seed_addr = *seed.get_or_insert(addr);
        // Ids and generations shaped like real ones: the V1 digest compresses, so sequential ids
        // like 000…001 would flatter the baseline.
        let id = ChitchatId::new(node_id_like(i as u64), unix_ms(), addr);
        let sent = Arc::new(AtomicU64::new(0));
        let config = ChitchatConfig {
            chitchat_id: id.clone(),
            cluster_id: "baseline".to_string(),
            gossip_interval: interval,
            listen_addr: addr,
            seed_nodes: if i == 0 {
                vec![]
            } else {
                vec![seed_addr.to_string()]
            },
            // As nexus-mesh configures it.
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: 1000,
                max_interval: Duration::from_secs(10),
                initial_interval: interval,
                dead_node_grace_period: Duration::from_secs(3600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        let handle = spawn_chitchat(config, key_values(i), &Counting(sent.clone()))
            .await
            .with_context(|| format!("starting baseline chitchat node {i}"))?;
        nodes.push(Node {
            handle: Some(handle),
            id,
            sent,
        });
    }
    let result = measure(&mut nodes, n, settle, window, victims).await;
    for node in &mut nodes {
        if let Some(handle) = node.handle.take() {
            let _ = handle.shutdown().await;
        }
    }
    result
}

async fn measure(
    nodes: &mut [Node],
    n: usize,
    settle: Duration,
    window: Duration,
    victims: usize,
) -> anyhow::Result<Baseline> {
    let started = Instant::now();
    let limit = Duration::from_secs(30) + Duration::from_millis(500 * n as u64);
    'converge: loop {
        if started.elapsed() > limit {
            bail!("baseline chitchat nodes did not all see {n} live nodes within {limit:?}");
        }
        for node in nodes.iter() {
            if live_count(node.handle.as_ref().expect("running")).await != n {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'converge;
            }
        }
        break;
    }
    tokio::time::sleep(settle).await;
    let before: Vec<u64> = nodes
        .iter()
        .map(|n| n.sent.load(Ordering::Relaxed))
        .collect();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let mut baseline = Baseline {
        bytes_per_sec: nodes
            .iter()
            .zip(before)
            .map(|(node, b0)| (node.sent.load(Ordering::Relaxed) - b0) as f64 / elapsed)
            .collect(),
        ..Baseline::default()
    };

    for victim in (n - victims.min(n - 1)..n).rev() {
        let id = nodes[victim].id.clone();
        if let Some(handle) = nodes[victim].handle.take() {
            handle.shutdown().await?;
        }
        let stopped = Instant::now();
        let mut pending: Vec<usize> = (0..n).filter(|i| nodes[*i].handle.is_some()).collect();
        while !pending.is_empty() {
            if stopped.elapsed() > Duration::from_secs(120) {
                bail!("chitchat's detector did not drop a stopped node within 120 s");
            }
            let mut still = Vec::new();
            for i in pending {
                let handle = nodes[i].handle.as_ref().expect("running");
                let live = handle
                    .with_chitchat(|c| c.live_nodes().any(|l| *l == id))
                    .await;
                if live {
                    still.push(i);
                } else {
                    baseline
                        .detection_secs
                        .push(stopped.elapsed().as_secs_f64());
                }
            }
            pending = still;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(baseline)
}
