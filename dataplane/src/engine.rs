//! The forwarding loop: receive a burst, decide every frame, rewrite, transmit.
//!
//! One engine owns an ingress port and (optionally) a separate egress port and runs to
//! completion on one thread: no locks and no atomics per frame. Per frame it
//!
//! 1. ignores frames sent to another Ethernet address than the ingress port's (when the port
//!    has one: a promiscuous NIC hears them, and forwarding them would copy each frame once per
//!    node on a shared segment); parses the Nexus header ([`crate::frame::parse`]); malformed
//!    frames are dropped and counted by kind, frames of other protocols are ignored;
//! 2. drops a frame whose hop limit is spent;
//! 3. asks the classifier which policy decides it and applies the action (allow, deny, rate
//!    limit per policy and source node, redirect, weight override);
//! 4. delivers frames addressed to this node locally, drops frames to destinations outside the
//!    forwarding table (`no_route`), and transmits the rest on the egress port with the hop limit
//!    decremented (and the destination rewritten for a redirect). Frames it delivers or
//!    transmits are held to the tenant's quotas first ([`crate::quota`]: concurrent connections
//!    and bandwidth, [`EngineConfig::limits`]). Ethernet addresses are left as
//!    received (no next-hop resolution yet), so a forwarded frame is never taken in again by
//!    another node of the segment. Frames for this node are counted as delivered; there is no
//!    local consumer behind the data plane yet unless [`EngineConfig::local_sink`] is set.
//!
//! Counters are kept in the engine and added to the shared [`Stats`] every 64 bursts and
//! whenever the ingress is idle, so readers see them within milliseconds under load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use foldhash::fast::RandomState;

use crate::frame::{self, ParseError};
use crate::nic::{BURST, NicError, Packet, Port};
use crate::policy::{Action, Classifier, Decision, PolicyHandle};
use crate::quota::{self, Admission, LimitsHandle, Quota};

/// Why the data plane dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Malformed Nexus frame.
    Parse,
    /// A `deny` policy.
    Deny,
    /// Over a `ratelimit` policy's rate.
    Ratelimit,
    /// The destination is not in the forwarding table.
    NoRoute,
    /// The hop limit was spent.
    HopLimit,
    /// The egress NIC did not take the frame (ring full).
    TxFull,
    /// A new connection while the tenant's `max_connections` are open.
    QuotaConnections,
    /// Over the tenant's `max_bandwidth_bps`.
    QuotaBandwidth,
}

impl DropReason {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [DropReason; 8] = [
        DropReason::Parse,
        DropReason::Deny,
        DropReason::Ratelimit,
        DropReason::NoRoute,
        DropReason::HopLimit,
        DropReason::TxFull,
        DropReason::QuotaConnections,
        DropReason::QuotaBandwidth,
    ];

    /// Stable label (`reason` in metrics).
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Parse => "parse",
            DropReason::Deny => "deny",
            DropReason::Ratelimit => "ratelimit",
            DropReason::NoRoute => "no_route",
            DropReason::HopLimit => "hop_limit",
            DropReason::TxFull => "tx_full",
            DropReason::QuotaConnections => "quota_connections",
            DropReason::QuotaBandwidth => "quota_bandwidth",
        }
    }
}

const DROPS: usize = DropReason::ALL.len();
const PARSE_KINDS: usize = ParseError::ALL.len();

/// Counters shared between an engine and its readers (metrics, gossip health, the API).
#[derive(Default)]
pub struct Stats {
    /// Frames received.
    pub rx_packets: AtomicU64,
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Frames transmitted.
    pub tx_packets: AtomicU64,
    /// Bytes transmitted.
    pub tx_bytes: AtomicU64,
    /// Frames delivered to this node.
    pub local_packets: AtomicU64,
    /// Frames of other protocols, ignored.
    pub ignored_packets: AtomicU64,
    /// Frames for another Ethernet address (the NIC hears them in promiscuous mode), ignored:
    /// forwarding them would copy every frame once per node on a shared segment.
    pub foreign_packets: AtomicU64,
    /// Drops by [`DropReason`] (index = position in [`DropReason::ALL`]).
    pub drops: [AtomicU64; DROPS],
    /// Malformed frames by [`ParseError`] kind.
    pub parse_errors: [AtomicU64; PARSE_KINDS],
    /// Frames that matched a redirect policy.
    pub redirected: AtomicU64,
    /// Frames passed with a weight override.
    pub weighted: AtomicU64,
    /// NIC errors (failed bursts).
    pub nic_errors: AtomicU64,
    /// Flows (source, destination, stream mode, message type) seen in the last 30 s;
    /// approximate (counted in the flow cache, which holds at most 8,192).
    pub active_flows: AtomicU64,
    /// Generation of the classifier the engine decides with.
    pub generation: AtomicU64,
    /// When (Unix ms) the first frame was decided by that generation; 0 until one is.
    pub generation_first_packet_ms: AtomicU64,
    /// Hits per policy id, added up across swaps.
    pub policy_hits: Mutex<HashMap<String, u64>>,
    /// Rate-limit buckets in use.
    pub buckets: AtomicU64,
    /// Connections (source node id, stream id) opened since the engine started: a connection
    /// closed for being idle and seen again counts again. Monotonic.
    pub flows_opened: AtomicU64,
    /// Connections open now (a gauge).
    pub connections: AtomicU64,
    /// Frames passed without being tracked as a connection: the connection table was full
    /// ([`quota::MAX_CONNECTIONS`]) and no limit at or below its size was set.
    pub connections_untracked: AtomicU64,
    /// Whether the ingress or egress NIC reports its link down (checked every second).
    pub link_down: AtomicBool,
}

impl Stats {
    /// Drops for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// Total drops.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    /// Hits of policy `id`.
    pub fn hits(&self, id: &str) -> u64 {
        self.policy_hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node's id: frames addressed to it are delivered locally.
    pub local: [u8; 16],
    /// Where local frames go (a copy of each); `None` counts them only.
    pub local_sink: Option<SyncSender<Vec<u8>>>,
    /// Record the forwarding latency of every n-th burst in the
    /// `nexus_dataplane_forward_latency_seconds` histogram (0: never).
    pub latency_sample_every: u32,
    /// The tenant's quotas (unlimited until set); keep a clone to change them while the engine
    /// runs.
    pub limits: Arc<LimitsHandle>,
}

impl EngineConfig {
    /// Settings for node `local`.
    pub fn new(local: [u8; 16]) -> EngineConfig {
        EngineConfig {
            local,
            local_sink: None,
            latency_sample_every: 64,
            limits: Arc::new(LimitsHandle::default()),
        }
    }
}

/// Rate-limit buckets kept at most; beyond, sources share one bucket per policy.
pub const MAX_BUCKETS: usize = 65_536;
/// Frames ahead of the one being decided whose first bytes are prefetched.
const PREFETCH: usize = 3;
/// Flow-cache slots (direct-mapped; a power of two).
const FLOW_SLOTS: usize = 1 << 13;
const FLOW_WINDOW_S: u32 = 30;
/// Least time between additions of per-policy hits to [`Stats`] under load (their table can be
/// long); they are also added when the ingress is idle and at every swap.
const HITS_EVERY: Duration = Duration::from_millis(100);
const OVERFLOW_SOURCE: [u8; 16] = [0xff; 16];

/// Rate-limit state: one GCRA theoretical arrival time (ns since the engine's epoch) per
/// (rule uid, source node), in a slab the flow cache indexes into.
struct Buckets {
    index: HashMap<(u64, [u8; 16]), u32, RandomState>,
    keys: Vec<(u64, [u8; 16])>,
    tat: Vec<u64>,
    /// Bumped whenever slab indices change (a sweep); flow-cache entries of older epochs look
    /// their bucket up again.
    epoch: u32,
}

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets {
            index: HashMap::with_hasher(RandomState::default()),
            keys: Vec::new(),
            tat: Vec::new(),
            epoch: 1,
        }
    }
}

impl Buckets {
    /// The slab index of (uid, src)'s bucket, made if new. At [`MAX_BUCKETS`], new sources
    /// share one bucket per policy until the once-a-second sweep frees idle ones: never a sweep
    /// here, so sources made up by the frame's sender cannot make every frame pay for one.
    fn find(&mut self, uid: u64, src: [u8; 16], now: u64) -> usize {
        if let Some(&i) = self.index.get(&(uid, src)) {
            return i as usize;
        }
        let key = if self.tat.len() >= MAX_BUCKETS {
            let overflow = (uid, OVERFLOW_SOURCE);
            if let Some(&i) = self.index.get(&overflow) {
                return i as usize;
            }
            overflow
        } else {
            (uid, src)
        };
        let i = self.tat.len();
        self.index.insert(key, i as u32);
        self.keys.push(key);
        self.tat.push(now);
        i
    }

    /// Forgets buckets that have refilled completely (they behave like new ones) and renumbers
    /// the rest.
    fn sweep(&mut self, now: u64) {
        let (keys, tat) = (
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.tat),
        );
        self.index.clear();
        for (key, t) in keys.into_iter().zip(tat) {
            if t > now {
                self.index.insert(key, self.tat.len() as u32);
                self.keys.push(key);
                self.tat.push(t);
            }
        }
        self.epoch = self.epoch.wrapping_add(1).max(1);
    }
}

/// A flow's decision under one classifier generation. One cache line each, so a lookup
/// touches one line.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct FlowEntry {
    src: [u8; 16],
    dst: [u8; 16],
    msg_type: u16,
    mode: u8,
    dst_known: bool,
    /// Low 32 bits of the classifier generation; 0 (never published) marks an empty slot.
    generation: u32,
    /// Deciding rule, `u32::MAX` for none.
    rule: u32,
    /// Seconds since the engine started, + 1 (0: never).
    last_seen: u32,
    /// Index of the flow's rate-limit bucket in [`Buckets`], valid in `bucket_epoch`.
    bucket: u32,
    bucket_epoch: u32,
    /// Where the flow's last connection is in the quota's table (a hint, checked on use).
    conn: u32,
}

const _: () = assert!(std::mem::size_of::<FlowEntry>() == 64, "one cache line");

impl FlowEntry {
    #[inline(always)]
    fn decision(&self) -> Decision {
        Decision {
            rule: (self.rule != u32::MAX).then_some(self.rule),
            dst_known: self.dst_known,
        }
    }
}

/// Per-engine counters, added to [`Stats`] in batches.
#[derive(Default)]
struct Local {
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    local_packets: u64,
    ignored: u64,
    foreign: u64,
    drops: [u64; DROPS],
    parse: [u64; PARSE_KINDS],
    redirected: u64,
    weighted: u64,
    nic_errors: u64,
    flows_opened: u64,
    untracked: u64,
    hits: Vec<u64>,
}

/// The forwarding loop over a port type.
pub struct Engine<P: Port> {
    rx: P,
    tx: Option<P>,
    policy: Arc<PolicyHandle>,
    stats: Arc<Stats>,
    config: EngineConfig,
    classifier: Arc<Classifier>,
    local: Local,
    /// Rate-limit state: (rule uid, source) → theoretical arrival time, ns since `epoch`.
    buckets: Buckets,
    /// Tenant quotas: open connections and the bandwidth bucket.
    quota: Quota,
    /// Time since `epoch` set by hand ([`Engine::set_manual_time`]), instead of the clock.
    manual_ns: Option<u64>,
    /// Decisions by flow, valid for one classifier generation; also what active flows are
    /// counted from.
    flows: Box<[FlowEntry]>,
    dropped: Vec<P::Packet>,
    epoch: Instant,
    in_burst: Vec<P::Packet>,
    out_burst: Vec<P::Packet>,
    bursts: u64,
    last_flow_count: Instant,
    /// When per-policy hits were last added to [`Stats`] under load.
    last_hits: Instant,
    first_packet_pending: bool,
    /// The ingress port's Ethernet address, when it has one: only frames sent to it are
    /// forwarded.
    mac: Option<[u8; 6]>,
}

impl<P: Port> Engine<P> {
    /// An engine receiving on `rx` and transmitting on `tx` (or on `rx` when `None`).
    pub fn new(
        rx: P,
        tx: Option<P>,
        policy: Arc<PolicyHandle>,
        stats: Arc<Stats>,
        config: EngineConfig,
    ) -> Engine<P> {
        let classifier = policy.load();
        stats
            .generation
            .store(classifier.generation(), Ordering::Relaxed);
        let rx_mac = rx.info().mac;
        Engine {
            rx,
            tx,
            local: Local {
                hits: vec![0; classifier.rules().len()],
                ..Default::default()
            },
            classifier,
            policy,
            stats,
            config,
            buckets: Buckets::default(),
            quota: Quota::new(),
            manual_ns: None,
            flows: vec![FlowEntry::default(); FLOW_SLOTS].into_boxed_slice(),
            dropped: Vec::with_capacity(BURST),
            epoch: Instant::now(),
            in_burst: Vec::with_capacity(BURST),
            out_burst: Vec::with_capacity(BURST),
            bursts: 0,
            last_flow_count: Instant::now(),
            last_hits: Instant::now(),
            first_packet_pending: true,
            mac: rx_mac,
        }
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Drives the engine's clock by hand from now on: rate limits, quotas and flow ages read
    /// `now` (time since the engine started) instead of the monotonic clock, so tests and
    /// simulations do not depend on how fast they run. Time never goes back: an earlier `now`
    /// than the last one set is ignored.
    pub fn set_manual_time(&mut self, now: Duration) {
        let now = now.as_nanos() as u64;
        self.manual_ns = Some(self.manual_ns.map_or(now, |t| t.max(now)));
    }

    /// Nanoseconds since the engine started at `at` (or as set by hand).
    #[inline]
    fn clock_ns(&self, at: Instant) -> u64 {
        match self.manual_ns {
            Some(ns) => ns,
            None => at.duration_since(self.epoch).as_nanos() as u64,
        }
    }

    /// The ingress port.
    pub fn rx_port(&mut self) -> &mut P {
        &mut self.rx
    }

    /// The egress port.
    pub fn tx_port(&mut self) -> &mut P {
        self.tx.as_mut().unwrap_or(&mut self.rx)
    }

    /// Runs until `stop` is set. A NIC error is counted and logged (once a second at most) and
    /// the loop goes on, unless the port is gone for good ([`NicError::Closed`]).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), NicError> {
        let mut last_error_log: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            match self.poll() {
                Ok(_) => {}
                Err(NicError::Closed) => {
                    self.flush();
                    return Err(NicError::Closed);
                }
                Err(e) => {
                    self.local.nic_errors += 1;
                    // Readers (metrics, health) see failing NICs at once; a NIC that fails every
                    // burst is retried every millisecond, not in a tight loop.
                    self.flush_counters();
                    if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "data plane NIC error");
                        last_error_log = Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        self.flush();
        Ok(())
    }

    /// Receives and forwards one burst; returns the number of frames received.
    pub fn poll(&mut self) -> Result<usize, NicError> {
        let mut burst = std::mem::take(&mut self.in_burst);
        let n = self.rx.rx_burst(&mut burst, BURST);
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.in_burst = burst;
                return Err(e);
            }
        };
        if n == 0 {
            self.in_burst = burst;
            self.flush();
            return Ok(0);
        }
        let started = Instant::now();
        self.refresh_classifier();
        let now_ns = self.clock_ns(started);
        let now_s = (now_ns / 1_000_000_000) as u32 + 1;
        self.quota
            .begin_burst(self.config.limits.get(), now_ns, now_s);
        let mut out = std::mem::take(&mut self.out_burst);
        let mut dropped = std::mem::take(&mut self.dropped);
        // Descriptors first (their address is known), then each frame's first bytes a few
        // frames ahead (finding them reads the descriptor).
        for p in burst.iter() {
            p.prefetch_descriptor();
        }
        for p in burst.iter().take(PREFETCH) {
            p.prefetch();
        }
        let mut keep = [false; BURST];
        for i in 0..burst.len() {
            if let Some(ahead) = burst.get(i + PREFETCH) {
                ahead.prefetch();
            }
            keep[i] = self.forward(&mut burst[i], now_ns, now_s);
        }
        for (pkt, keep) in burst.drain(..).zip(keep) {
            if keep {
                out.push(pkt);
            } else {
                dropped.push(pkt);
            }
        }
        self.in_burst = burst;
        self.rx.free_burst(&mut dropped);
        self.dropped = dropped;
        if !out.is_empty() {
            let want = out.len();
            let bytes: u64 = out.iter().map(|p| p.data().len() as u64).sum();
            let port = self.tx.as_mut().unwrap_or(&mut self.rx);
            let result = port.tx_burst(&mut out);
            out.clear();
            self.out_burst = out;
            let sent = match result {
                Ok(sent) => sent,
                Err(e) => {
                    // The burst is gone with the error: count it.
                    self.local.drops[DropReason::TxFull as usize] += want as u64;
                    self.bursts += 1;
                    return Err(e);
                }
            };
            self.local.tx_packets += sent as u64;
            // Bytes of the frames the NIC took; a partial burst is rare, so approximate it.
            self.local.tx_bytes += if sent == want {
                bytes
            } else {
                bytes * sent as u64 / want as u64
            };
            self.local.drops[DropReason::TxFull as usize] += (want - sent) as u64;
        } else {
            self.out_burst = out;
        }
        self.bursts += 1;
        let every = u64::from(self.config.latency_sample_every);
        if every > 0 && self.bursts.is_multiple_of(every) {
            metrics::histogram!("nexus_dataplane_forward_latency_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        if self.bursts.is_multiple_of(64) {
            self.flush_counters();
            if started.duration_since(self.last_hits) >= HITS_EVERY {
                self.last_hits = started;
                self.flush_hits();
            }
        }
        Ok(n)
    }

    fn refresh_classifier(&mut self) {
        let current = self.policy.load();
        if current.generation() != self.classifier.generation() {
            self.flush_hits();
            self.local.hits = vec![0; current.rules().len()];
            self.classifier = current;
            self.stats
                .generation
                .store(self.classifier.generation(), Ordering::Relaxed);
            self.first_packet_pending = true;
        }
        if self.first_packet_pending {
            self.first_packet_pending = false;
            self.stats
                .generation_first_packet_ms
                .store(unix_ms(), Ordering::Relaxed);
            tracing::debug!(
                target: "nexus_policy_enforced",
                generation = self.classifier.generation(),
                version = self.classifier.version(),
                rules = self.classifier.rules().len(),
                "first frame decided by a new route-policy classifier"
            );
        }
    }

    /// Decides one frame; true when it is to be transmitted.
    #[inline]
    fn forward(&mut self, pkt: &mut P::Packet, now_ns: u64, now_s: u32) -> bool {
        let data = pkt.data();
        let len = data.len();
        self.local.rx_packets += 1;
        self.local.rx_bytes += len as u64;
        if let Some(mac) = &self.mac
            && data.get(..6).is_some_and(|dst| dst != mac)
        {
            self.local.foreign += 1;
            return false;
        }
        let h = match frame::parse(data) {
            Ok(h) => h,
            Err(ParseError::NotNexus) => {
                self.local.ignored += 1;
                return false;
            }
            Err(e) => {
                self.local.parse[e.index()] += 1;
                self.local.drops[DropReason::Parse as usize] += 1;
                return false;
            }
        };
        if h.hops == 0 {
            self.local.drops[DropReason::HopLimit as usize] += 1;
            return false;
        }
        let (decision, slot) = self.decide(&h, now_s);
        let mut dst = h.dst;
        let mut redirected = false;
        if let Some(i) = decision.rule {
            let i = i as usize;
            self.local.hits[i] += 1;
            let v = *self.classifier.verdict(i);
            match v.action {
                Action::Allow => {}
                Action::Deny => {
                    self.local.drops[DropReason::Deny as usize] += 1;
                    return false;
                }
                Action::RateLimit {
                    interval_ns,
                    tolerance_ns,
                    ..
                } => {
                    if !self.conforms(slot, v.uid, h.src, now_ns, interval_ns, tolerance_ns) {
                        self.local.drops[DropReason::Ratelimit as usize] += 1;
                        return false;
                    }
                }
                Action::Redirect(to) => {
                    dst = to;
                    redirected = true;
                    self.local.redirected += 1;
                }
            }
            if v.weighted {
                self.local.weighted += 1;
            }
        }
        if dst == self.config.local {
            if !self.admit(&h, slot, len, now_s) {
                return false;
            }
            self.local.local_packets += 1;
            if let Some(sink) = &self.config.local_sink {
                let _ = sink.try_send(pkt.data().to_vec());
            }
            return false;
        }
        let routable = if redirected {
            self.classifier.has_route(&dst)
        } else {
            decision.dst_known
        };
        if !routable {
            self.local.drops[DropReason::NoRoute as usize] += 1;
            return false;
        }
        if !self.admit(&h, slot, len, now_s) {
            return false;
        }
        let data = pkt.data_mut();
        if redirected {
            frame::set_dst(data, &h, &dst);
        }
        frame::set_hops(data, &h, h.hops - 1);
        true
    }

    /// Holds a frame the policies let through to the tenant's quotas; false (counted) when one
    /// drops it.
    #[inline]
    fn admit(&mut self, h: &frame::Header, slot: usize, len: usize, now_s: u32) -> bool {
        let hint = &mut self.flows[slot].conn;
        match self.quota.admit(h.src, h.stream_id, len, hint, now_s) {
            Ok(Admission::Existing) => true,
            Ok(Admission::Opened) => {
                self.local.flows_opened += 1;
                true
            }
            Ok(Admission::Untracked) => {
                self.local.untracked += 1;
                true
            }
            Err(reason) => {
                self.local.drops[reason as usize] += 1;
                false
            }
        }
    }

    /// GCRA: a frame conforms when it arrives no earlier than its bucket's theoretical arrival
    /// time minus the burst tolerance. The bucket's index is remembered in the flow cache
    /// (`slot`), so a flow finds its bucket without a hash lookup.
    #[inline]
    fn conforms(
        &mut self,
        slot: usize,
        uid: u64,
        src: [u8; 16],
        now: u64,
        interval: u64,
        tolerance: u64,
    ) -> bool {
        let e = &self.flows[slot];
        let b = if e.bucket_epoch == self.buckets.epoch
            && (e.bucket as usize) < self.buckets.tat.len()
        {
            e.bucket as usize
        } else {
            let b = self.buckets.find(uid, src, now);
            let e = &mut self.flows[slot];
            e.bucket = b as u32;
            e.bucket_epoch = self.buckets.epoch;
            b
        };
        let tat = &mut self.buckets.tat[b];
        if now + tolerance < *tat {
            return false;
        }
        *tat = (*tat).max(now) + interval;
        true
    }

    /// The classifier's decision for a frame, from the flow cache when this flow was decided
    /// by the same classifier before. Marks the flow as seen.
    #[inline]
    fn decide(&mut self, h: &frame::Header, now_s: u32) -> (Decision, usize) {
        let word = |b: &[u8; 16], i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let mix = word(&h.src, 0)
            ^ word(&h.src, 8).rotate_left(17)
            ^ word(&h.dst, 0).rotate_left(31)
            ^ word(&h.dst, 8).rotate_left(47)
            ^ (u64::from(h.msg_type) << 8 | h.mode as u64);
        let slot = (mix.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 51) as usize & (FLOW_SLOTS - 1);
        let generation = self.classifier.generation() as u32;
        let e = &mut self.flows[slot];
        let same_flow =
            e.src == h.src && e.dst == h.dst && e.msg_type == h.msg_type && e.mode == h.mode as u8;
        if same_flow && e.generation == generation {
            e.last_seen = now_s;
            return (e.decision(), slot);
        }
        let d = self.classifier.decide(h);
        // A new generation keeps the flow's connection hint.
        let conn = if same_flow { e.conn } else { quota::NIL };
        *e = FlowEntry {
            src: h.src,
            dst: h.dst,
            msg_type: h.msg_type,
            mode: h.mode as u8,
            dst_known: d.dst_known,
            generation,
            rule: d.rule.unwrap_or(u32::MAX),
            last_seen: now_s,
            bucket: u32::MAX,
            bucket_epoch: 0,
            conn,
        };
        (d, slot)
    }

    fn flush_hits(&mut self) {
        if self.local.hits.iter().all(|&h| h == 0) {
            return;
        }
        let mut hits = self
            .stats
            .policy_hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (i, n) in self.local.hits.iter_mut().enumerate() {
            if *n > 0 {
                *hits.entry(self.classifier.rule(i).id.clone()).or_default() += *n;
                *n = 0;
            }
        }
    }

    /// Adds the engine's counters, per-policy hits included, to the shared [`Stats`].
    pub fn flush(&mut self) {
        self.flush_counters();
        self.flush_hits();
    }

    /// Adds the engine's counters, but not the per-policy hits (their table can be long), to
    /// the shared [`Stats`].
    fn flush_counters(&mut self) {
        let s = &self.stats;
        let l = &mut self.local;
        let add = |a: &AtomicU64, v: &mut u64| {
            if *v > 0 {
                a.fetch_add(*v, Ordering::Relaxed);
                *v = 0;
            }
        };
        add(&s.rx_packets, &mut l.rx_packets);
        add(&s.rx_bytes, &mut l.rx_bytes);
        add(&s.tx_packets, &mut l.tx_packets);
        add(&s.tx_bytes, &mut l.tx_bytes);
        add(&s.local_packets, &mut l.local_packets);
        add(&s.ignored_packets, &mut l.ignored);
        add(&s.foreign_packets, &mut l.foreign);
        add(&s.redirected, &mut l.redirected);
        add(&s.weighted, &mut l.weighted);
        add(&s.nic_errors, &mut l.nic_errors);
        add(&s.flows_opened, &mut l.flows_opened);
        add(&s.connections_untracked, &mut l.untracked);
        for (a, v) in s.drops.iter().zip(l.drops.iter_mut()) {
            add(a, v);
        }
        for (a, v) in s.parse_errors.iter().zip(l.parse.iter_mut()) {
            add(a, v);
        }
        if self.last_flow_count.elapsed() >= Duration::from_secs(1) {
            self.last_flow_count = Instant::now();
            let now_ns = self.clock_ns(Instant::now());
            let now_s = (now_ns / 1_000_000_000) as u32 + 1;
            // Idle connections close even when no burst comes.
            self.quota.expire(now_s);
            let live = self
                .flows
                .iter()
                .filter(|e| e.last_seen != 0 && e.last_seen + FLOW_WINDOW_S > now_s)
                .count();
            self.stats
                .active_flows
                .store(live as u64, Ordering::Relaxed);
            self.stats
                .buckets
                .store(self.buckets.tat.len() as u64, Ordering::Relaxed);
            let down = self.rx.link_down() || self.tx.as_ref().is_some_and(|t| t.link_down());
            self.stats.link_down.store(down, Ordering::Relaxed);
            if self.buckets.tat.len() > MAX_BUCKETS / 2 {
                self.buckets.sweep(now_ns);
            }
        }
        self.stats
            .connections
            .store(self.quota.connections() as u64, Ordering::Relaxed);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameSpec;
    use crate::nic::memory::{self, MemPacket, MemoryPort};
    use crate::policy::{KnownNode, PolicySet, Scope};
    use crate::quota::TenantLimits;
    use nexus_ca::NodeId;
    use nexus_crdt::{ActionType, RouteAction, RouteMatch, RoutePolicy};
    use std::collections::HashSet;

    const LOCAL: [u8; 16] = [0xaa; 16];
    const SRC: [u8; 16] = [1; 16];
    const DST: [u8; 16] = [2; 16];
    const OTHER: [u8; 16] = [3; 16];

    fn policy(id: &str, priority: u32, action: RouteAction, m: RouteMatch) -> (Scope, RoutePolicy) {
        (Scope::Tenant, RoutePolicy::new(id, priority, m, action))
    }

    fn types(t: &[u16]) -> RouteMatch {
        RouteMatch {
            message_types: t.to_vec(),
            ..Default::default()
        }
    }

    fn set(policies: Vec<(Scope, RoutePolicy)>) -> PolicySet {
        PolicySet {
            policies,
            nodes: [DST, OTHER, LOCAL]
                .map(|id| KnownNode {
                    id,
                    capabilities: vec![],
                })
                .to_vec(),
            ..Default::default()
        }
    }

    struct Rig {
        engine: Engine<MemoryPort>,
        wire: MemoryPort,
        handle: Arc<PolicyHandle>,
        limits: Arc<LimitsHandle>,
    }

    fn rig(set: &PolicySet) -> Rig {
        let (mut wire, mut dp) = memory::pair("test");
        wire.set_wait(Duration::from_millis(20));
        dp.set_wait(Duration::from_millis(20));
        let handle = Arc::new(PolicyHandle::new(Classifier::compile(set)));
        let config = EngineConfig::new(LOCAL);
        let limits = config.limits.clone();
        let engine = Engine::new(dp, None, handle.clone(), Arc::new(Stats::default()), config);
        Rig {
            engine,
            wire,
            handle,
            limits,
        }
    }

    impl Rig {
        fn send(&mut self, frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
            let mut burst: Vec<MemPacket> = frames.into_iter().map(MemPacket).collect();
            let want = burst.len();
            assert_eq!(self.wire.tx_burst(&mut burst).unwrap(), want);
            while self.engine.poll().unwrap() > 0 {}
            self.engine.flush();
            let mut got = Vec::new();
            while self.wire.rx_burst(&mut got, 1024).unwrap() > 0 {}
            got.into_iter().map(|p| p.0).collect()
        }
    }

    fn frame(src: [u8; 16], dst: [u8; 16], t: u16) -> Vec<u8> {
        FrameSpec::new(src, dst, t).ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], 128, t as u8)
    }

    /// A frame of connection (`src`, `stream`) to DST, `len` bytes long.
    fn conn_frame(src: [u8; 16], stream: u32, len: usize) -> Vec<u8> {
        let mut spec = FrameSpec::new(src, DST, 1);
        spec.stream_id = stream;
        spec.ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], len, stream as u8)
    }

    fn limits(max_connections: Option<u64>, max_bandwidth_bps: Option<u64>) -> TenantLimits {
        TenantLimits {
            max_connections,
            max_bandwidth_bps,
        }
    }

    fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    #[test]
    fn allowed_frames_pass_intact_but_for_the_hop_limit_and_denied_ones_never_do() {
        let mut r = rig(&set(vec![policy(
            "deny-7",
            1,
            RouteAction::new(ActionType::Deny),
            types(&[7]),
        )]));
        let sent = vec![frame(SRC, DST, 1), frame(SRC, DST, 7), frame(SRC, DST, 2)];
        let got = r.send(sent.clone());
        assert_eq!(got.len(), 2);
        for (g, s) in got.iter().zip([&sent[0], &sent[2]]) {
            let (hg, hs) = (frame::parse(g).unwrap(), frame::parse(s).unwrap());
            assert_eq!(hg.hops, hs.hops - 1);
            assert_eq!(g[..20], s[..20]);
            assert_eq!(g[22..], s[22..], "only the hop limit changes");
        }
        let st = r.engine.stats();
        assert_eq!(st.dropped(DropReason::Deny), 1);
        assert_eq!(st.hits("deny-7"), 1);
        assert_eq!(st.rx_packets.load(Ordering::Relaxed), 3);
        assert_eq!(st.tx_packets.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn malformed_unknown_and_spent_frames_are_dropped_by_reason() {
        let mut r = rig(&set(vec![]));
        let mut bad_magic = frame(SRC, DST, 1);
        bad_magic[14] = 0;
        let mut spent = frame(SRC, DST, 1);
        spent[14 + 6] = 0;
        let mut arp = frame(SRC, DST, 1);
        arp[12] = 0x08;
        arp[13] = 0x06;
        let got = r.send(vec![
            bad_magic,
            frame(SRC, [9; 16], 1),
            spent,
            arp,
            frame(SRC, LOCAL, 1),
        ]);
        assert!(got.is_empty());
        let st = r.engine.stats();
        assert_eq!(st.dropped(DropReason::Parse), 1);
        assert_eq!(
            st.parse_errors[ParseError::BadMagic.index()].load(Ordering::Relaxed),
            1
        );
        assert_eq!(st.dropped(DropReason::NoRoute), 1);
        assert_eq!(st.dropped(DropReason::HopLimit), 1);
        assert_eq!(st.ignored_packets.load(Ordering::Relaxed), 1);
        assert_eq!(st.local_packets.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn redirect_rewrites_the_destination() {
        let mut action = RouteAction::new(ActionType::Redirect);
        action.redirect_node_id = Some(NodeId(OTHER));
        let mut r = rig(&set(vec![policy("to-other", 1, action, types(&[5]))]));
        let got = r.send(vec![frame(SRC, DST, 5)]);
        assert_eq!(frame::parse(&got[0]).unwrap().dst, OTHER);
        assert_eq!(r.engine.stats().redirected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_rate_limit_holds_per_source() {
        let mut action = RouteAction::new(ActionType::Ratelimit);
        action.rate_limit = Some(10);
        let mut r = rig(&set(vec![policy("ten", 1, action, RouteMatch::default())]));
        // 50 frames from each of two sources at once: each source gets its burst of 10.
        let frames: Vec<Vec<u8>> = (0..100)
            .map(|i| frame(if i % 2 == 0 { SRC } else { OTHER }, DST, 1))
            .collect();
        let got = r.send(frames);
        assert_eq!(got.len(), 20, "a burst of `rate` frames per source");
        assert_eq!(r.engine.stats().dropped(DropReason::Ratelimit), 80);
    }

    #[test]
    fn a_swap_applies_from_the_next_burst_and_keeps_counting() {
        let mut r = rig(&set(vec![]));
        assert_eq!(r.send(vec![frame(SRC, DST, 7)]).len(), 1);
        r.handle.publish(Classifier::compile(&set(vec![policy(
            "deny-7",
            1,
            RouteAction::new(ActionType::Deny),
            types(&[7]),
        )])));
        assert!(r.send(vec![frame(SRC, DST, 7)]).is_empty());
        assert_eq!(r.engine.stats().generation.load(Ordering::Relaxed), 2);
        assert!(
            r.engine
                .stats()
                .generation_first_packet_ms
                .load(Ordering::Relaxed)
                > 0
        );
    }

    #[test]
    fn the_connection_past_the_limit_is_dropped_while_the_first_ones_pass() {
        let mut r = rig(&set(vec![]));
        r.engine.set_manual_time(Duration::ZERO);
        r.limits.set(limits(Some(3), None));
        // Three connections: two streams of SRC, one of OTHER; then a fourth, twice.
        let first = vec![
            conn_frame(SRC, 1, 100),
            conn_frame(SRC, 2, 100),
            conn_frame(OTHER, 1, 100),
        ];
        assert_eq!(r.send(first.clone()).len(), 3);
        let fourth = conn_frame(SRC, 3, 100);
        assert!(r.send(vec![fourth.clone(), fourth.clone()]).is_empty());
        // The first three keep passing, mixed with the refused one.
        let mut mixed = first.clone();
        mixed.insert(1, fourth);
        let got = r.send(mixed);
        assert_eq!(got.len(), 3);
        let streams: Vec<u32> = got
            .iter()
            .map(|g| frame::parse(g).unwrap().stream_id)
            .collect();
        assert_eq!(streams, [1, 2, 1]);
        let st = r.engine.stats();
        assert_eq!(st.dropped(DropReason::QuotaConnections), 3);
        assert_eq!(st.dropped_total(), 3);
        assert_eq!(get(&st.flows_opened), 3);
        assert_eq!(get(&st.connections), 3);
    }

    #[test]
    fn a_connection_idle_past_the_window_frees_its_slot() {
        let mut r = rig(&set(vec![]));
        r.engine.set_manual_time(Duration::ZERO);
        r.limits.set(limits(Some(2), None));
        assert_eq!(
            r.send(vec![conn_frame(SRC, 1, 100), conn_frame(SRC, 2, 100)])
                .len(),
            2
        );
        // Stream 2 stays busy; stream 1 goes quiet.
        r.engine.set_manual_time(Duration::from_secs(20));
        assert_eq!(r.send(vec![conn_frame(SRC, 2, 100)]).len(), 1);
        r.engine.set_manual_time(Duration::from_secs(29));
        assert!(
            r.send(vec![conn_frame(SRC, 3, 100)]).is_empty(),
            "29 s idle: still open"
        );
        r.engine.set_manual_time(Duration::from_secs(32));
        assert_eq!(r.send(vec![conn_frame(SRC, 3, 100)]).len(), 1);
        assert_eq!(get(&r.engine.stats().connections), 2);
        // Stream 1 is back but over the limit now: it is a new connection.
        assert!(r.send(vec![conn_frame(SRC, 1, 100)]).is_empty());
        let st = r.engine.stats();
        assert_eq!(st.dropped(DropReason::QuotaConnections), 2);
        assert_eq!(get(&st.flows_opened), 3);
    }

    #[test]
    fn a_bandwidth_cap_drops_the_excess() {
        let mut r = rig(&set(vec![]));
        r.engine.set_manual_time(Duration::ZERO);
        // 8 Mbit/s: 1,000,000 bytes a second, a burst of as much.
        r.limits.set(limits(None, Some(8_000_000)));
        let offer = |n: usize| (0..n).map(|_| conn_frame(SRC, 1, 1_000)).collect();
        assert_eq!(r.send(offer(1_500)).len(), 1_000, "the burst");
        let mut passed = 0;
        // Then 2 s at twice the rate, in 20 ms steps: each earns 20 frames.
        for step in 1..=100u64 {
            r.engine.set_manual_time(Duration::from_millis(20 * step));
            passed += r.send(offer(40)).len();
        }
        assert_eq!(passed, 2_000);
        let st = r.engine.stats();
        assert_eq!(st.dropped(DropReason::QuotaBandwidth), 500 + 2_000);
        assert_eq!(get(&st.tx_bytes), 3_000 * 1_000);
        assert_eq!(get(&st.flows_opened), 1, "one connection throughout");
    }

    #[test]
    fn limits_changed_at_runtime_take_effect_at_the_next_burst() {
        let mut r = rig(&set(vec![]));
        r.engine.set_manual_time(Duration::ZERO);
        let streams =
            |range: std::ops::Range<u32>| range.map(|s| conn_frame(SRC, s, 500)).collect();
        assert_eq!(r.send(streams(0..10)).len(), 10);
        r.limits.set(limits(Some(12), None));
        assert_eq!(r.send(streams(10..20)).len(), 2);
        // Lowered below what is open: the open ones go on, new ones wait.
        r.limits.set(limits(Some(5), None));
        assert_eq!(r.send(streams(0..12)).len(), 12);
        assert!(r.send(streams(20..21)).is_empty());
        // A bandwidth cap added: 40,000 bit/s has a burst of one jumbo frame's worth (9,216
        // bytes: 18 frames of 500), and the clock stands still.
        r.limits.set(limits(Some(5), Some(40_000)));
        assert_eq!(r.send(streams(0..12)).len(), 12);
        assert_eq!(r.send(streams(0..12)).len(), 6);
        r.limits.set(TenantLimits::UNLIMITED);
        assert_eq!(r.send(streams(0..40)).len(), 40);
        let st = r.engine.stats();
        assert_eq!(get(&st.flows_opened), 40);
        assert_eq!(st.dropped(DropReason::QuotaConnections), 8 + 1);
        assert_eq!(st.dropped(DropReason::QuotaBandwidth), 6);
    }

    #[test]
    fn without_limits_nothing_is_dropped_and_connections_are_counted() {
        let mut r = rig(&set(vec![]));
        let frames: Vec<Vec<u8>> = (0..2_000u32)
            .map(|i| conn_frame(if i % 2 == 0 { SRC } else { OTHER }, i / 4, 1_500))
            .collect();
        assert_eq!(r.send(frames).len(), 2_000);
        let st = r.engine.stats();
        assert_eq!(st.dropped_total(), 0);
        // (source, stream): 500 streams from each source.
        assert_eq!(get(&st.flows_opened), 1_000);
        assert_eq!(get(&st.connections), 1_000);
        assert_eq!(get(&st.connections_untracked), 0);
    }

    #[test]
    fn frames_the_policies_or_routing_drop_use_no_quota_and_local_ones_do() {
        let mut r = rig(&set(vec![policy(
            "deny-7",
            1,
            RouteAction::new(ActionType::Deny),
            types(&[7]),
        )]));
        r.limits.set(limits(Some(1), None));
        let mut denied = FrameSpec::new(SRC, DST, 7);
        denied.stream_id = 1;
        let mut lost = FrameSpec::new(SRC, [9; 16], 1);
        lost.stream_id = 2;
        let mut local = FrameSpec::new(SRC, LOCAL, 1);
        local.stream_id = 4;
        let eth = |f: &FrameSpec| f.ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], 128, 0);
        let got = r.send(vec![
            eth(&denied),
            eth(&lost),
            conn_frame(SRC, 3, 128),
            eth(&local),
        ]);
        assert_eq!(got.len(), 1, "stream 3 took the one slot");
        let st = r.engine.stats();
        assert_eq!(st.dropped(DropReason::Deny), 1);
        assert_eq!(st.dropped(DropReason::NoRoute), 1);
        assert_eq!(
            st.dropped(DropReason::QuotaConnections),
            1,
            "the local frame"
        );
        assert_eq!(get(&st.local_packets), 0);
        assert_eq!(get(&st.flows_opened), 1);
    }

    #[test]
    fn every_drop_reason_has_its_own_label() {
        let labels: HashSet<&str> = DropReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), DropReason::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL is in declaration order");
        }
        assert!(labels.contains("quota_connections") && labels.contains("quota_bandwidth"));
    }
}
