//! The simulated network: per-link latency, loss, MTU, uplink bandwidth, partitions, one-way
//! failures, loss bursts and revocation refusals, in virtual time.
//!
//! Gossip runs chitchat's own in-process transport (`ChannelTransport`, which serializes and
//! parses every envelope with chitchat's wire format, so sizes are real); [`SimSocket`] holds
//! each received datagram back for its link's delay, or drops it. Configuration messages (the
//! node's QUIC streams) go through [`SimNet::stream_delay`]: reliable, with a retransmission
//! timeout added for every lost packet.

use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{ChannelTransport, RecvOutcome, SendOutcome, Socket, Transport};
use tokio::time::Instant;

use crate::scenario::Network;

/// Bytes gossip authentication adds to every datagram on a real node: header (magic, flags,
/// sender id, timestamp: 29) and the ed25519 signature (64). The simulation does not sign (it
/// would cost ~60 µs per datagram); it counts the bytes.
pub const AUTH_OVERHEAD: usize = 29 + 64;

/// How long a sender takes to give up on a peer that does not answer (QUIC's idle timeout as
/// the node configures its requests).
pub const STREAM_FAILURE: Duration = Duration::from_secs(2);

/// Most attempts at one stream message before the connection is considered lost.
const STREAM_ATTEMPTS: u32 = 6;

/// A small, fast, seedable generator (SplitMix64); every random choice of the simulator comes
/// from one, seeded by the scenario.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform between `min` and `max`.
    pub fn between(&mut self, min: Duration, max: Duration) -> Duration {
        min + (max - min).mul_f64(self.unit())
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// 32 random bytes.
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }
}

/// What became of one datagram or message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Arrives after this delay.
    Deliver(Duration),
    /// Lost on the way.
    Lost,
    /// Dropped: a partition or one-way failure between the sites.
    Blocked,
    /// Refused by the receiver (the sender is revoked there).
    Refused,
}

/// Traffic counters.
#[derive(Debug, Default, Clone)]
pub struct NetStats {
    /// Gossip bytes sent, per node.
    pub gossip_bytes: Vec<u64>,
    /// Gossip datagrams sent, per node.
    pub gossip_msgs: Vec<u64>,
    /// Configuration bytes sent (pushes and sync sessions), per node.
    pub config_bytes: Vec<u64>,
    /// Gossip bytes sent in each simulated second.
    pub per_second: Vec<u64>,
    /// Largest gossip datagram.
    pub largest: usize,
    /// Gossip datagrams above the MTU.
    pub over_mtu: u64,
    /// Datagrams lost to loss.
    pub dropped_loss: u64,
    /// Datagrams dropped by partitions and one-way failures.
    pub dropped_partition: u64,
    /// Datagrams refused because their sender is revoked at the receiver.
    pub refused: u64,
    /// Of the gossip bytes, those of the failure detector (heartbeats, probes, verdicts).
    pub detector_bytes: u64,
}

struct State {
    /// Detector sockets by address.
    inboxes: HashMap<SocketAddr, tokio::sync::mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>>,
    rng: Rng,
    network: Network,
    origin: Instant,
    /// Gossip addresses (site and WAN) to node index.
    addrs: HashMap<SocketAddr, usize>,
    /// Site of each node (0 = core).
    site: Vec<usize>,
    /// When each node's uplink is free again.
    uplink: Vec<Instant>,
    /// Site positions on a unit square (geographic model).
    position: Vec<(f64, f64)>,
    /// The sites cut off from the rest, if a partition is in force.
    partition: Option<BTreeSet<usize>>,
    /// One-way failures: (from sites, to sites).
    one_way: Vec<(BTreeSet<usize>, BTreeSet<usize>)>,
    /// Loss bursts: (sites, or all when empty; loss; until).
    bursts: Vec<(BTreeSet<usize>, f64, Instant)>,
    /// (receiver, sender) pairs refused because the receiver holds the sender's revocation.
    refused: HashSet<(usize, usize)>,
    stats: NetStats,
}

/// The simulated network shared by every node.
pub struct SimNet {
    state: Mutex<State>,
    broker: ChannelTransport,
}

impl SimNet {
    /// A network with the scenario's link model; `sites` edge sites plus `core`.
    pub fn new(network: Network, sites: usize, seed: u64) -> Arc<SimNet> {
        let mut rng = Rng::new(seed ^ 0x6e65_7477_6f72_6b00);
        let position = (0..=sites).map(|_| (rng.unit(), rng.unit())).collect();
        Arc::new(SimNet {
            state: Mutex::new(State {
                inboxes: HashMap::new(),
                rng,
                network,
                origin: Instant::now(),
                addrs: HashMap::new(),
                site: Vec::new(),
                uplink: Vec::new(),
                position,
                partition: None,
                one_way: Vec::new(),
                bursts: Vec::new(),
                refused: HashSet::new(),
                stats: NetStats::default(),
            }),
            broker: ChannelTransport::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers node `node` of `site` with its gossip addresses.
    pub fn add_node(&self, node: usize, site: usize, addrs: &[SocketAddr]) {
        let mut s = self.lock();
        if s.site.len() <= node {
            let now = Instant::now();
            s.site.resize(node + 1, 0);
            s.uplink.resize(node + 1, now);
            s.stats.gossip_bytes.resize(node + 1, 0);
            s.stats.gossip_msgs.resize(node + 1, 0);
            s.stats.config_bytes.resize(node + 1, 0);
        }
        s.site[node] = site;
        for addr in addrs {
            s.addrs.insert(*addr, node);
        }
    }

    /// A failure-detector socket for node `node` at `addr`.
    pub fn datagrams(self: &Arc<Self>, node: usize, addr: SocketAddr) -> SimDatagrams {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut s = self.lock();
        s.inboxes.insert(addr, tx);
        s.addrs.insert(addr, node);
        SimDatagrams {
            net: self.clone(),
            node,
            addr,
            rx: tokio::sync::Mutex::new(rx),
        }
    }

    /// The chitchat transport of node `node`.
    pub fn transport(self: &Arc<Self>, node: usize) -> SimTransport {
        SimTransport {
            net: self.clone(),
            node,
        }
    }

    /// Cuts `sites` off from the rest of the fleet (replacing an earlier partition).
    pub fn partition(&self, sites: BTreeSet<usize>) {
        self.lock().partition = Some(sites);
    }

    /// Drops traffic from `from` sites to `to` sites.
    pub fn one_way(&self, from: BTreeSet<usize>, to: BTreeSet<usize>) {
        self.lock().one_way.push((from, to));
    }

    /// Ends every partition and one-way failure.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.partition = None;
        s.one_way.clear();
    }

    /// Adds `loss` to every datagram touching `sites` (all if empty) for `duration`.
    pub fn burst(&self, sites: BTreeSet<usize>, loss: f64, duration: Duration) {
        let until = Instant::now() + duration;
        self.lock().bursts.push((sites, loss, until));
    }

    /// From now on `receiver` refuses everything `sender` sends (it holds its revocation).
    pub fn refuse(&self, receiver: usize, sender: usize) {
        self.lock().refused.insert((receiver, sender));
    }

    /// Whether `receiver` refuses `sender`.
    pub fn refuses(&self, receiver: usize, sender: usize) -> bool {
        self.lock().refused.contains(&(receiver, sender))
    }

    /// Whether traffic from `from` to `to` is blocked by a partition or one-way failure now.
    pub fn blocked(&self, from: usize, to: usize) -> bool {
        let s = self.lock();
        blocked(&s, from, to)
    }

    /// Whether a partition or one-way failure is in force.
    pub fn impaired(&self) -> bool {
        let s = self.lock();
        let now = Instant::now();
        s.partition.is_some() || !s.one_way.is_empty() || s.bursts.iter().any(|b| b.2 > now)
    }

    /// A copy of the counters.
    pub fn stats(&self) -> NetStats {
        self.lock().stats.clone()
    }

    /// Counts configuration bytes sent by `node`.
    pub fn count_config(&self, node: usize, bytes: usize) {
        let mut s = self.lock();
        if let Some(c) = s.stats.config_bytes.get_mut(node) {
            *c += bytes as u64;
        }
    }

    /// The fate of one gossip datagram of `bytes` from `from` to `to`, sent now.
    fn datagram(&self, from: usize, to: usize, bytes: usize) -> Verdict {
        let mut s = self.lock();
        if s.refused.contains(&(to, from)) {
            s.stats.refused += 1;
            return Verdict::Refused;
        }
        if blocked(&s, from, to) {
            s.stats.dropped_partition += 1;
            return Verdict::Blocked;
        }
        let fragments = bytes.div_ceil(s.network.mtu).max(1);
        let p = loss(&s, from, to);
        let survive = (1.0 - p).powi(fragments as i32);
        if s.rng.unit() >= survive {
            s.stats.dropped_loss += 1;
            return Verdict::Lost;
        }
        let latency = latency(&mut s, from, to);
        let queued = uplink(&mut s, from, bytes);
        Verdict::Deliver(queued + latency)
    }

    /// How long a reliable message (a QUIC stream) of `bytes` from `from` to `to` takes, with a
    /// retransmission timeout for every lost attempt; `None` if it cannot get through (blocked,
    /// refused, or lost [`STREAM_ATTEMPTS`] times in a row).
    pub fn stream_delay(&self, from: usize, to: usize, bytes: usize) -> Option<Duration> {
        let mut s = self.lock();
        if let Some(c) = s.stats.config_bytes.get_mut(from) {
            *c += bytes as u64;
        }
        if s.refused.contains(&(to, from)) || blocked(&s, from, to) {
            return None;
        }
        let packets = bytes
            .div_ceil(s.network.mtu.saturating_sub(60).max(500))
            .max(1);
        let p = loss(&s, from, to);
        let mut total = uplink(&mut s, from, bytes);
        for _ in 0..STREAM_ATTEMPTS {
            let one_way = latency(&mut s, from, to);
            // Each packet is retransmitted on its own; the message waits for the slowest.
            let lost = (0..packets).any(|_| s.rng.unit() < p);
            if !lost {
                return Some(total + one_way);
            }
            // QUIC's probe timeout: about one round trip and a half, plus the ack delay.
            total += one_way * 3 + Duration::from_millis(25);
        }
        None
    }

    /// Picks a uniform index below `n` from the network's generator.
    pub fn pick(&self, n: usize) -> usize {
        self.lock().rng.below(n)
    }

    fn origin(&self) -> Instant {
        self.lock().origin
    }
}

impl State {
    /// Counts one membership datagram (gossip or detector) of `bytes` sent by `node`.
    fn count_membership(&mut self, node: usize, bytes: usize) {
        let second = Instant::now()
            .saturating_duration_since(self.origin)
            .as_secs() as usize;
        let mtu = self.network.mtu;
        let stats = &mut self.stats;
        stats.gossip_bytes[node] += bytes as u64;
        stats.gossip_msgs[node] += 1;
        if stats.per_second.len() <= second {
            stats.per_second.resize(second + 1, 0);
        }
        stats.per_second[second] += bytes as u64;
        stats.largest = stats.largest.max(bytes);
        if bytes > mtu {
            stats.over_mtu += 1;
        }
    }
}

fn blocked(s: &State, from: usize, to: usize) -> bool {
    let (a, b) = (s.site[from], s.site[to]);
    if let Some(cut) = &s.partition
        && cut.contains(&a) != cut.contains(&b)
    {
        return true;
    }
    s.one_way
        .iter()
        .any(|(f, t)| f.contains(&a) && t.contains(&b))
}

fn loss(s: &State, from: usize, to: usize) -> f64 {
    let (a, b) = (s.site[from], s.site[to]);
    let base = if a == b {
        s.network.site_loss
    } else {
        s.network.wan_loss
    };
    let now = Instant::now();
    s.bursts
        .iter()
        .filter(|(sites, _, until)| {
            *until > now && (sites.is_empty() || sites.contains(&a) || sites.contains(&b))
        })
        .fold(base, |p, (_, extra, _)| 1.0 - (1.0 - p) * (1.0 - extra))
}

fn latency(s: &mut State, from: usize, to: usize) -> Duration {
    let (a, b) = (s.site[from], s.site[to]);
    if a == b {
        let l = s.network.site_latency;
        return s.rng.between(l.min.0, l.max.0);
    }
    let l = s.network.wan_latency;
    if s.network.geographic {
        let (pa, pb) = (s.position[a], s.position[b]);
        let distance = ((pa.0 - pb.0).powi(2) + (pa.1 - pb.1).powi(2)).sqrt() / 2f64.sqrt();
        let base = l.min.0 + (l.max.0 - l.min.0).mul_f64(distance);
        let jitter = 0.9 + 0.2 * s.rng.unit();
        return base.mul_f64(jitter);
    }
    s.rng.between(l.min.0, l.max.0)
}

/// Serialization delay on `from`'s uplink, waiting for what is queued before.
fn uplink(s: &mut State, from: usize, bytes: usize) -> Duration {
    let bps = s.network.bandwidth_bps;
    if bps == 0 {
        return Duration::ZERO;
    }
    let now = Instant::now();
    let tx = Duration::from_secs_f64(bytes as f64 * 8.0 / bps as f64);
    let start = s.uplink[from].max(now);
    s.uplink[from] = start + tx;
    (start + tx) - now
}

/// One node's failure-detector socket: datagrams through the link model.
pub struct SimDatagrams {
    net: Arc<SimNet>,
    node: usize,
    addr: SocketAddr,
    rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, SocketAddr)>>,
}

impl Drop for SimDatagrams {
    fn drop(&mut self) {
        self.net.lock().inboxes.remove(&self.addr);
    }
}

#[async_trait]
impl nexus_mesh::Datagrams for SimDatagrams {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> std::io::Result<()> {
        let size = bytes.len() + AUTH_OVERHEAD;
        let (dest, inbox) = {
            let mut s = self.net.lock();
            s.count_membership(self.node, size);
            s.stats.detector_bytes += size as u64;
            match (s.addrs.get(&to).copied(), s.inboxes.get(&to).cloned()) {
                (Some(dest), Some(inbox)) => (dest, inbox),
                _ => return Ok(()),
            }
        };
        if let Verdict::Deliver(delay) = self.net.datagram(self.node, dest, size) {
            let bytes = bytes.to_vec();
            let from = self.addr;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = inbox.send((bytes, from));
            });
        }
        Ok(())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        let mut rx = self.rx.lock().await;
        let (bytes, from) = rx.recv().await.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "simulated network gone")
        })?;
        let len = bytes.len().min(buf.len());
        buf[..len].copy_from_slice(&bytes[..len]);
        Ok((len, from))
    }
}

/// One node's gossip transport: chitchat's in-process transport plus the link model.
pub struct SimTransport {
    net: Arc<SimNet>,
    node: usize,
}

#[async_trait]
impl Transport for SimTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.net.broker.open(listen_addr).await?;
        Ok(Box::new(SimSocket {
            inner,
            net: self.net.clone(),
            node: self.node,
            held: BinaryHeap::new(),
            seq: 0,
        }))
    }
}

/// A datagram held back until its arrival time.
struct Held {
    due: Instant,
    seq: u64,
    outcome: RecvOutcome,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    // A max-heap of reversed keys: the earliest arrival (then the earliest sent) first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// One node's gossip socket.
pub struct SimSocket {
    inner: Box<dyn Socket>,
    net: Arc<SimNet>,
    node: usize,
    held: BinaryHeap<Held>,
    seq: u64,
}

#[async_trait]
impl Socket for SimSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let outcome = self.inner.send(to, envelope).await?;
        let bytes = outcome.num_bytes_sent + AUTH_OVERHEAD;
        self.net.lock().count_membership(self.node, bytes);
        Ok(outcome)
    }

    // Cancel-safe: chitchat drops this future whenever its gossip tick fires first. Datagrams
    // taken from the inner channel are moved into `held` before any await.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(head) = self.held.peek()
                && head.due <= Instant::now()
            {
                let held = self.held.pop().expect("peeked");
                return Ok(held.outcome);
            }
            let wake = self.held.peek().map(|h| h.due);
            tokio::select! {
                received = self.inner.recv() => {
                    let outcome = received?;
                    let Some(from) = self.net.lock().addrs.get(&outcome.from_addr).copied() else {
                        continue;
                    };
                    let bytes = outcome.num_bytes_received + AUTH_OVERHEAD;
                    if let Verdict::Deliver(delay) = self.net.datagram(from, self.node, bytes) {
                        self.seq += 1;
                        self.held.push(Held { due: Instant::now() + delay, seq: self.seq, outcome });
                    }
                }
                _ = sleep_until_or_forever(wake) => {}
            }
        }
    }
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Simulated time since the network was made.
pub fn elapsed(net: &SimNet) -> Duration {
    Instant::now().saturating_duration_since(net.origin())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Dur, Latency};

    #[tokio::test(start_paused = true)]
    async fn loss_partitions_and_streams_follow_the_model() {
        let network = Network {
            site_latency: Latency {
                min: Dur(Duration::from_millis(1)),
                max: Dur(Duration::from_millis(2)),
            },
            wan_latency: Latency {
                min: Dur(Duration::from_millis(20)),
                max: Dur(Duration::from_millis(80)),
            },
            wan_loss: 0.1,
            ..Network::default()
        };
        let net = SimNet::new(network, 2, 9);
        net.add_node(0, 1, &[]);
        net.add_node(1, 1, &[]);
        net.add_node(2, 2, &[]);
        let mut lost = 0;
        for _ in 0..10_000 {
            match net.datagram(0, 2, 200) {
                Verdict::Lost => lost += 1,
                Verdict::Deliver(d) => {
                    assert!(d >= Duration::from_millis(20) && d <= Duration::from_millis(80))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((800..1200).contains(&lost), "{lost} of 10000 lost at 10%");
        // Within a site: no loss, short delays.
        assert!(
            matches!(net.datagram(0, 1, 200), Verdict::Deliver(d) if d <= Duration::from_millis(2))
        );
        // Datagrams over the MTU lose more (every fragment must arrive).
        let big_lost = (0..10_000)
            .filter(|_| net.datagram(0, 2, 5000) == Verdict::Lost)
            .count();
        assert!(big_lost > 2500, "{big_lost}");
        net.partition([2].into_iter().collect());
        assert_eq!(net.datagram(0, 2, 100), Verdict::Blocked);
        assert_eq!(net.stream_delay(0, 2, 100), None);
        assert!(net.datagram(0, 1, 100) != Verdict::Blocked);
        net.heal();
        net.one_way([1].into_iter().collect(), [2].into_iter().collect());
        assert_eq!(net.datagram(0, 2, 100), Verdict::Blocked);
        assert!(net.datagram(2, 0, 100) != Verdict::Blocked);
        net.heal();
        assert!(net.stream_delay(0, 2, 100).is_some());
        net.refuse(2, 0);
        assert_eq!(net.datagram(0, 2, 100), Verdict::Refused);
        assert!(net.refuses(2, 0) && !net.refuses(0, 2));
    }

    #[test]
    fn the_generator_is_seeded() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(4);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(4);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let mut r = Rng::new(1);
        let mut v: Vec<usize> = (0..50).collect();
        r.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
