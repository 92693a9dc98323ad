//! Packets per second per core of the data plane: the classifier alone, DPDK (`net_null`,
//! `net_ring`) with and without route policies, and AF_PACKET over veth, side by side in one run.
//!
//! ```text
//! cargo build --release -p nexus-dataplane --features dpdk --bin nexus-dataplane-bench
//! target/release/nexus-dataplane-bench --huge-pages 64 --write docs/benchmarks.md
//! ```
//!
//! Without `--features dpdk` the DPDK rows are left out (and the output says so). Needs root for
//! the AF_PACKET rows (network namespaces, veth pairs, packet sockets; `ip` from iproute2) and
//! for `--huge-pages`. Without `--write` the section is printed to stdout only; progress goes to
//! stderr.
//!
//! Scenarios, each for every frame size (`--sizes`) and, where policies apply, every rule count
//! (`--rules`); each row runs for `--seconds` (2 s; 0.2 s with `--quick`) in [`SLICES`] slices
//! and reports the median slice:
//!
//! - **classifier only**: [`frame::parse`], [`Classifier::decide`] and the forwarding-table
//!   lookup over frames already in memory: the upper bound, no NIC and no engine.
//! - **DPDK raw I/O**: `rx_burst` + `tx_burst` on `net_null` (the PMD hands out mbufs of the
//!   configured size without touching their bytes) and on `net_ring` (frames circulating
//!   through its software ring), no engine: what the backend alone costs.
//! - **DPDK engine**: [`Engine::poll`] receiving from `net_ring0` and transmitting to
//!   `net_null0`. The ring is filled with 1,023 frames of the traffic mix (untimed), then the
//!   engine is timed while it drains them, and again. Each frame passes the engine once (no hop
//!   limit or redirect feedback), and every frame costs the engine's whole per-frame path:
//!   `rte_eth_rx_burst`, parse, hop check, the flow cache (decision and flow tracking), classification on a miss, the action, the
//!   forwarding table, the header rewrite, `rte_eth_tx_burst` (net_null frees the mbufs).
//!   The DPDK scenarios run in a child process per memory setup (EAL starts once per process):
//!   2 MiB hugepages and 4 KiB pages (`--dpdk-memory`).
//! - **AF_PACKET**: a veth pair between two network namespaces the bench creates (and deletes on
//!   exit, also on error or Ctrl-C); a generator thread pinned to one CPU blasts the traffic mix
//!   into `g0`, the engine pinned to the other receives on `g1` and transmits back out of `g1`
//!   (and, for one row, out of a second veth `o1`). The rate is what the engine received.
//!
//! Rules and traffic are generated from `--seed`: a 256-node fleet with capabilities, 1,000
//! flows over it, and N route policies mixing allow, deny, ratelimit and redirect with
//! source-node, message-type, stream-mode and destination-capability constraints.
// setns(2), sched_setaffinity(2) and sigaction(2) have no std wrapper.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::hint::black_box;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use nexus_ca::NodeId;
use nexus_crdt::{ActionType, RouteAction, RouteMatch, RoutePolicy, StreamMode};
use nexus_dataplane::engine::{DropReason, Engine, EngineConfig, Stats};
use nexus_dataplane::frame::{self, DEFAULT_HOPS, FrameSpec, Mode};
use nexus_dataplane::nic::af_packet::AfPacketPort;
use nexus_dataplane::nic::{BURST, Port};
use nexus_dataplane::policy::{Action, Classifier, KnownNode, PolicyHandle, PolicySet, Scope};

const START_MARKER: &str = "<!-- dataplane-bench:start -->";
const END_MARKER: &str = "<!-- dataplane-bench:end -->";

/// Nodes of the generated fleet: the forwarding table.
const FLEET_NODES: usize = 256;
/// Distinct (source, destination, mode, message type, stream) flows in the traffic.
const FLOWS: usize = 1_000;
/// Message types in use, Zipf-distributed in the traffic.
const MSG_TYPES: usize = 200;
/// Frames in the traffic sequence each scenario cycles through.
const SEQUENCE: usize = 8_192;
const CAPABILITIES: [&str; 6] = ["gpu", "edge", "core", "storage", "ingress", "arm64"];
/// Frames that fit `net_ring`'s ring (1,024 slots, one kept empty).
#[cfg(feature = "dpdk")]
const RING_FILL: usize = 1_023;
/// MiB of DPDK memory a run asks EAL for (the pool is about 19 MiB; the rest is the drivers').
const DPDK_MEMORY_MB: u64 = 128;
/// Prefix of the namespaces the bench makes: `nxbench<pid>-gen`, `nxbench<pid>-dp`.
const NETNS_PREFIX: &str = "nxbench";

#[derive(Parser)]
#[command(
    name = "nexus-dataplane-bench",
    about = "Packets per second per core of the Nexus data plane (classifier, DPDK, AF_PACKET)"
)]
struct Args {
    /// Rule counts to measure, comma-separated (0: no policies).
    #[arg(long, value_delimiter = ',', default_value = "0,10,1000,10000")]
    rules: Vec<usize>,
    /// Frame sizes in bytes (Ethernet header on, no FCS), comma-separated; 62..=2048.
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    sizes: Vec<usize>,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// A short smoke run: 0.2 s per scenario.
    #[arg(long)]
    quick: bool,
    /// Seed of the generated fleet, traffic and rules.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenarios to run, comma-separated: `classifier`, `dpdk-raw`, `dpdk-engine`, `af-packet`
    /// (which needs root and iproute2).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "classifier,dpdk-raw,dpdk-engine,af-packet"
    )]
    scenarios: Vec<Scenario>,
    /// DPDK memory setups to measure, comma-separated (each runs in a child process of its
    /// own, since EAL starts once per process): `huge` (2 MiB hugepages; skipped, saying so,
    /// when none are free) and `no-huge` (4 KiB pages).
    #[arg(long, value_delimiter = ',', default_value = "huge,no-huge")]
    dpdk_memory: Vec<DpdkMemory>,
    /// Reserve this many 2 MiB hugepages for the run (`/proc/sys/vm/nr_hugepages`, put back
    /// afterwards) when fewer are free; 0 uses what the system has.
    #[arg(long, default_value_t = 0)]
    huge_pages: u64,
    /// Internal: run only the DPDK scenarios with this memory setup and write the rows to
    /// `--rows-to` (the parent process starts these).
    #[arg(long, hide = true)]
    dpdk_child: Option<DpdkMemory>,
    /// Internal: where a DPDK child process writes its rows.
    #[arg(long, hide = true)]
    rows_to: Option<PathBuf>,
    /// Replace (or append) the section between the dataplane-bench markers in this file.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// How EAL backs its memory (and so the mbufs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DpdkMemory {
    /// 2 MiB hugepages (`--in-memory`: anonymous hugepages, no hugetlbfs mount needed), as
    /// DPDK is deployed.
    Huge,
    /// 4 KiB pages (`--no-huge`), as CI and the tests run it.
    NoHuge,
}

impl DpdkMemory {
    fn label(self) -> &'static str {
        match self {
            DpdkMemory::Huge => "2 MiB hugepages",
            DpdkMemory::NoHuge => "4 KiB pages (--no-huge)",
        }
    }

    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    fn eal_flags(self) -> String {
        match self {
            DpdkMemory::Huge => format!("--in-memory -m {DPDK_MEMORY_MB}"),
            DpdkMemory::NoHuge => format!("--no-huge -m {DPDK_MEMORY_MB} --no-shconf"),
        }
    }

    fn arg(self) -> &'static str {
        match self {
            DpdkMemory::Huge => "huge",
            DpdkMemory::NoHuge => "no-huge",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Classifier,
    DpdkRaw,
    DpdkEngine,
    AfPacket,
}

type BenchResult<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------------
// Ctrl-C and SIGTERM: stop the current scenario, clean up, exit with an error.

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is plain data (zeroed is a valid empty mask and no flags); the
        // handler only stores to an atomic, which is async-signal-safe. SA_RESETHAND makes a
        // second signal kill the process as usual.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn check_interrupted() -> BenchResult<()> {
    if STOP.load(Ordering::Relaxed) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic generation.

/// SplitMix64: small, seeded, good enough for a workload.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6A09_E667_F3BC_C909)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn id(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next().to_le_bytes());
        id[8..].copy_from_slice(&self.next().to_le_bytes());
        id
    }
}

/// A Zipf(1) pick among `n` ranks: rank 0 is the most frequent.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut total = 0.0;
        Zipf(
            (0..n)
                .map(|i| {
                    total += 1.0 / (i + 1) as f64;
                    total
                })
                .collect(),
        )
    }

    fn pick(&self, rng: &mut Rng) -> usize {
        let total = self.0.last().copied().unwrap_or(0.0);
        let x = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
        self.0.partition_point(|&c| c <= x).min(self.0.len() - 1)
    }
}

/// The generated fleet and its traffic.
struct Workload {
    seed: u64,
    local: [u8; 16],
    fleet: Vec<KnownNode>,
    msg_types: Vec<u16>,
    msg_zipf: Zipf,
    flows: Vec<FrameSpec>,
    /// Flow index of each frame of the traffic sequence.
    sequence: Vec<usize>,
}

impl Workload {
    fn new(seed: u64) -> Workload {
        let mut rng = Rng::new(seed);
        let local = rng.id();
        let fleet: Vec<KnownNode> = (0..FLEET_NODES)
            .map(|_| {
                let id = rng.id();
                let capabilities = CAPABILITIES
                    .iter()
                    .filter(|_| rng.chance(0.3))
                    .map(|c| c.to_string())
                    .collect();
                KnownNode { id, capabilities }
            })
            .collect();
        let mut msg_types: Vec<u16> = Vec::with_capacity(MSG_TYPES);
        while msg_types.len() < MSG_TYPES {
            let t = (rng.next() >> 48) as u16;
            if !msg_types.contains(&t) {
                msg_types.push(t);
            }
        }
        let msg_zipf = Zipf::new(MSG_TYPES);
        let flows = (0..FLOWS)
            .map(|_| {
                // 95% of sources are fleet nodes, the rest unknown to the policies.
                let src = if rng.chance(0.95) {
                    fleet[rng.below(FLEET_NODES)].id
                } else {
                    rng.id()
                };
                // 90% to a node in the forwarding table, 2% to this node, 8% to unknown nodes.
                let roll = rng.below(100);
                let dst = if roll < 90 {
                    fleet[rng.below(FLEET_NODES)].id
                } else if roll < 92 {
                    local
                } else {
                    rng.id()
                };
                let mode = match rng.below(20) {
                    0..=9 => Mode::Be,
                    10..=14 => Mode::Ro,
                    15..=17 => Mode::Ru,
                    _ => Mode::Pr,
                };
                FrameSpec {
                    mode,
                    msg_type: msg_types[msg_zipf.pick(&mut rng)],
                    hops: DEFAULT_HOPS,
                    src,
                    dst,
                    stream_id: rng.next() as u32,
                }
            })
            .collect();
        let sequence = (0..SEQUENCE).map(|_| rng.below(FLOWS)).collect();
        Workload {
            seed,
            local,
            fleet,
            msg_types,
            msg_zipf,
            flows,
            sequence,
        }
    }

    /// `rules` generated route policies over this fleet, and the fleet as the forwarding table.
    fn policy_set(&self, rules: usize) -> PolicySet {
        let mut rng = Rng::new(self.seed ^ (rules as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let modes = [
            StreamMode::RO,
            StreamMode::RU,
            StreamMode::BE,
            StreamMode::PR,
        ];
        let policies = (0..rules)
            .map(|i| {
                let mut m = RouteMatch::default();
                // Most policies name the nodes they are about; message types come from the
                // traffic's own distribution (policies are written about the traffic there is).
                if rng.chance(0.6) {
                    m.source_node_ids = (0..1 + rng.below(3))
                        .map(|_| NodeId(self.fleet[rng.below(FLEET_NODES)].id))
                        .collect();
                }
                if rng.chance(0.6) {
                    m.message_types = (0..1 + rng.below(4))
                        .map(|_| self.msg_types[self.msg_zipf.pick(&mut rng)])
                        .collect();
                }
                if rng.chance(0.25) {
                    m.stream_modes = (0..1 + rng.below(2)).map(|_| modes[rng.below(4)]).collect();
                }
                if rng.chance(0.15) {
                    m.dest_capabilities =
                        vec![CAPABILITIES[rng.below(CAPABILITIES.len())].to_string()];
                }
                if m == RouteMatch::default() {
                    // A match-everything policy would decide every frame that reaches its
                    // priority; real sets have few, this one none.
                    m.source_node_ids = vec![NodeId(self.fleet[rng.below(FLEET_NODES)].id)];
                }
                let roll = rng.below(100);
                let mut action = match roll {
                    0..=49 => RouteAction::new(ActionType::Allow),
                    50..=69 => RouteAction::new(ActionType::Deny),
                    70..=84 => {
                        let mut a = RouteAction::new(ActionType::Ratelimit);
                        a.rate_limit = Some(100 * (1 + rng.below(100)) as u64);
                        a
                    }
                    _ => {
                        let mut a = RouteAction::new(ActionType::Redirect);
                        a.redirect_node_id = Some(NodeId(self.fleet[rng.below(FLEET_NODES)].id));
                        a
                    }
                };
                if action.kind == ActionType::Allow && rng.chance(0.2) {
                    action.weight_override = BTreeMap::from([("latency".to_string(), 2.0)]);
                }
                let scope = match rng.below(10) {
                    0 => Scope::Fleet,
                    1..=3 => Scope::Site,
                    _ => Scope::Tenant,
                };
                let id = format!("bench-{i:05}");
                (
                    scope,
                    RoutePolicy {
                        name: id.clone(),
                        id,
                        tenant_id: "bench".into(),
                        priority: 1 + rng.below(nexus_crdt::PRIORITY_MAX as usize) as u32,
                        matches: m,
                        action,
                        enabled: true,
                        created_at: 0,
                    },
                )
            })
            .collect();
        PolicySet {
            policies,
            disabled: Default::default(),
            nodes: self.fleet.clone(),
            own_tenant: Default::default(),
            version: format!("bench-{rules}"),
        }
    }

    /// The traffic sequence as Ethernet frames of `len` bytes.
    fn frames(&self, len: usize) -> Vec<Vec<u8>> {
        self.sequence
            .iter()
            .map(|&f| {
                self.flows[f].ethernet(
                    [0x02, 0, 0, 0, 0, 0x02],
                    [0x02, 0, 0, 0, 0, 0x01],
                    len,
                    f as u8,
                )
            })
            .collect()
    }
}

/// What every scenario runs over.
struct Plan<'a> {
    w: &'a Workload,
    /// Rule count and its policy set.
    sets: &'a [(usize, PolicySet)],
    /// Frame size and the traffic sequence as frames of that size.
    frames: &'a [(usize, Vec<Vec<u8>>)],
    cpus: Cpus,
    budget: Duration,
    warmup: Duration,
}

// ---------------------------------------------------------------------------------------------
// Results.

/// What happened to the frames of a run.
#[derive(Clone, Copy, Debug, Default)]
struct Mix {
    rx: u64,
    forwarded: u64,
    deny: u64,
    ratelimit: u64,
    no_route: u64,
    local: u64,
    redirected: u64,
    other: u64,
}

impl Mix {
    fn of(s: &Stats) -> Mix {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Mix {
            rx: get(&s.rx_packets),
            forwarded: get(&s.tx_packets),
            deny: s.dropped(DropReason::Deny),
            ratelimit: s.dropped(DropReason::Ratelimit),
            no_route: s.dropped(DropReason::NoRoute),
            local: get(&s.local_packets),
            redirected: get(&s.redirected),
            other: s.dropped(DropReason::Parse)
                + s.dropped(DropReason::HopLimit)
                + s.dropped(DropReason::TxFull)
                + get(&s.ignored_packets),
        }
    }

    fn since(self, before: Mix) -> Mix {
        Mix {
            rx: self.rx - before.rx,
            forwarded: self.forwarded - before.forwarded,
            deny: self.deny - before.deny,
            ratelimit: self.ratelimit - before.ratelimit,
            no_route: self.no_route - before.no_route,
            local: self.local - before.local,
            redirected: self.redirected - before.redirected,
            other: self.other - before.other,
        }
    }

    fn share(&self, n: u64) -> f64 {
        if self.rx == 0 {
            0.0
        } else {
            100.0 * n as f64 / self.rx as f64
        }
    }

    fn forwarded_pct(&self) -> Option<f64> {
        (self.rx > 0).then(|| self.share(self.forwarded))
    }

    /// "deny 20.1%, rate-limited 3.0%, …", leaving out what did not happen.
    fn describe(&self, ratelimit_label: &str) -> String {
        let parts: Vec<String> = [
            ("deny", self.deny),
            (ratelimit_label, self.ratelimit),
            ("no route", self.no_route),
            ("local", self.local),
            ("other", self.other),
            ("redirected (forwarded)", self.redirected),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what} {:.1}%", self.share(n)))
        .collect();
        parts.join(", ")
    }
}

struct Row {
    scenario: String,
    backend: String,
    size: usize,
    /// `None`: no engine, no policies.
    rules: Option<usize>,
    /// Median slice, `None`: not measured (the notes say why).
    mpps: Option<f64>,
    /// Slowest and fastest slice.
    spread: Option<(f64, f64)>,
    forwarded: Option<f64>,
    notes: String,
}

impl Row {
    /// One line of tab-separated fields, how a DPDK child process hands its rows back.
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    fn to_tsv(&self) -> String {
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.scenario,
            self.backend,
            self.size,
            self.rules.map_or(String::new(), |r| r.to_string()),
            opt(self.mpps),
            opt(self.spread.map(|s| s.0)),
            opt(self.spread.map(|s| s.1)),
            opt(self.forwarded),
            self.notes.replace(['\t', '\n'], " ")
        )
    }

    fn from_tsv(line: &str) -> Option<Row> {
        let f: Vec<&str> = line.split('\t').collect();
        let [
            scenario,
            backend,
            size,
            rules,
            mpps,
            low,
            high,
            forwarded,
            notes,
        ] = f[..]
        else {
            return None;
        };
        let opt = |v: &str| (!v.is_empty()).then(|| v.parse::<f64>().ok()).flatten();
        Some(Row {
            scenario: scenario.into(),
            backend: backend.into(),
            size: size.parse().ok()?,
            rules: (!rules.is_empty()).then(|| rules.parse().ok()).flatten(),
            mpps: opt(mpps),
            spread: opt(low).zip(opt(high)),
            forwarded: opt(forwarded),
            notes: notes.into(),
        })
    }

    fn markdown(&self) -> String {
        let rules = self.rules.map_or("–".to_string(), |r| r.to_string());
        let (mpps, gbps) = match (self.mpps, self.spread) {
            (Some(m), spread) => (
                match spread {
                    Some((low, high)) => format!("{m:.2} ({low:.2}–{high:.2})"),
                    None => format!("{m:.2}"),
                },
                format!("{:.1}", m * self.size as f64 * 8.0 / 1e3),
            ),
            (None, _) => ("–".into(), "–".into()),
        };
        let fwd = self
            .forwarded
            .map_or("–".to_string(), |f| format!("{f:.1}%"));
        format!(
            "| {} | {} | {} B | {rules} | {mpps} | {gbps} | {fwd} | {} |",
            self.scenario, self.backend, self.size, self.notes
        )
    }
}

fn rate(packets: u64, elapsed: Duration) -> f64 {
    packets as f64 / elapsed.as_secs_f64() / 1e6
}

/// Slices a row's measurement is cut into.
const SLICES: u32 = 5;

/// A measurement in [`SLICES`] equal slices of time: the table shows the median slice's rate,
/// which a neighbour's burst of work on a shared machine moves less than the mean, and the
/// range of all slices.
struct Slicer {
    slice: Duration,
    rates: Vec<f64>,
    packets: u64,
    elapsed: Duration,
}

impl Slicer {
    fn new(budget: Duration) -> Slicer {
        Slicer {
            slice: budget / SLICES,
            rates: Vec::new(),
            packets: 0,
            elapsed: Duration::ZERO,
        }
    }

    /// Counts `packets` that took `elapsed`; true once every slice is measured.
    fn add(&mut self, packets: u64, elapsed: Duration) -> bool {
        self.packets += packets;
        self.elapsed += elapsed;
        if self.elapsed >= self.slice {
            self.rates.push(rate(self.packets, self.elapsed));
            self.packets = 0;
            self.elapsed = Duration::ZERO;
        }
        self.rates.len() >= SLICES as usize
    }

    /// (median, min, max) Mpps.
    fn result(&self) -> Option<(f64, f64, f64)> {
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        Some((*r.get(r.len() / 2)?, *r.first()?, *r.last()?))
    }
}

// ---------------------------------------------------------------------------------------------
// CPUs.

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain bits (zeroed: empty); sched_getaffinity writes at most its size;
    // CPU_ISSET reads within it for every index below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`.
fn pin_thread(cpu: usize) -> BenchResult<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("CPU {cpu} is beyond CPU_SETSIZE"));
    }
    // SAFETY: as in allowed_cpus; cpu is below CPU_SETSIZE; pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(format!(
            "pinning a thread to CPU {cpu}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Where the engine and the AF_PACKET generator run.
#[derive(Clone, Copy)]
struct Cpus {
    engine: usize,
    generator: usize,
}

impl Cpus {
    fn pick() -> Cpus {
        let cpus = allowed_cpus();
        let engine = cpus.last().copied().unwrap_or(0);
        let generator = cpus.first().copied().unwrap_or(0);
        Cpus { engine, generator }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario 1: the classifier alone.

#[derive(Default)]
struct Decisions {
    frames: u64,
    forwarded: u64,
    deny: u64,
    ratelimit_rule: u64,
    no_route: u64,
    local: u64,
    redirected: u64,
    bad: u64,
}

#[inline]
fn decide(c: &Classifier, local: &[u8; 16], data: &[u8], d: &mut Decisions) {
    let Ok(h) = frame::parse(data) else {
        d.bad += 1;
        return;
    };
    let decision = c.decide(&h);
    let mut dst = h.dst;
    let mut redirected = false;
    if let Some(i) = decision.rule {
        match c.verdict(i as usize).action {
            Action::Allow => {}
            Action::Deny => {
                d.deny += 1;
                return;
            }
            Action::RateLimit { .. } => d.ratelimit_rule += 1,
            Action::Redirect(to) => {
                dst = to;
                redirected = true;
                d.redirected += 1;
            }
        }
    }
    let routable = if redirected {
        c.has_route(&dst)
    } else {
        decision.dst_known
    };
    if dst == *local {
        d.local += 1;
    } else if routable {
        d.forwarded += 1;
    } else {
        d.no_route += 1;
    }
}

fn classifier_only(
    w: &Workload,
    set: &PolicySet,
    rules: usize,
    frames: &[Vec<u8>],
    size: usize,
    budget: Duration,
) -> BenchResult<Row> {
    let c = Classifier::compile(set);
    let mut d = Decisions::default();
    // Warm the caches and the branch predictors.
    for f in frames {
        decide(&c, &w.local, f, &mut Decisions::default());
    }
    let mut slicer = Slicer::new(budget);
    let mut last = Instant::now();
    loop {
        for f in frames {
            decide(&c, &w.local, black_box(f), &mut d);
        }
        d.frames += frames.len() as u64;
        let now = Instant::now();
        if slicer.add(frames.len() as u64, now - last) {
            break;
        }
        last = now;
        check_interrupted()?;
    }
    let (mpps, low, high) = slicer.result().ok_or("no slice measured")?;
    let mix = Mix {
        rx: d.frames,
        forwarded: d.forwarded,
        deny: d.deny,
        ratelimit: d.ratelimit_rule,
        no_route: d.no_route,
        local: d.local,
        redirected: d.redirected,
        other: d.bad,
    };
    Ok(Row {
        scenario: "classifier only".into(),
        backend: "none (frames in memory)".into(),
        size,
        rules: Some(rules),
        mpps: Some(mpps),
        spread: Some((low, high)),
        forwarded: mix.forwarded_pct(),
        notes: mix.describe("rate-limit rule (not applied, counted forwarded)"),
    })
}

// ---------------------------------------------------------------------------------------------
// Scenarios 2 and 3: DPDK.

#[cfg(feature = "dpdk")]
mod dpdk_runs {
    use super::*;
    use nexus_dataplane::nic::dpdk::{DpdkPacket, DpdkPort, Eal};

    pub struct Setup {
        pub eal_args: Vec<String>,
    }

    impl Setup {
        pub fn new(sizes: &[usize], lcore: usize, memory: DpdkMemory) -> Setup {
            let mut args = format!(
                "-l {lcore} {} --no-pci --no-telemetry --file-prefix=nexus-dp-bench-{} \
                 --log-level=lib.eal:warning --vdev=net_ring0",
                memory.eal_flags(),
                std::process::id()
            );
            for (i, s) in sizes.iter().enumerate() {
                let _ = write!(args, " --vdev=net_null{i},size={s}");
            }
            Setup {
                eal_args: args.split_whitespace().map(str::to_string).collect(),
            }
        }
    }

    fn port_id(eal: &Eal, name: &str) -> BenchResult<u16> {
        eal.ports()
            .into_iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| id)
            .ok_or_else(|| format!("EAL has no {name}: {:?}", eal.ports()))
    }

    fn nic(e: nexus_dataplane::nic::NicError) -> String {
        e.to_string()
    }

    /// rx_burst + tx_burst on one port for `budget`; returns frames received and sent and the
    /// rate by slice.
    fn raw_loop(port: &mut DpdkPort, budget: Duration) -> BenchResult<(u64, u64, Slicer)> {
        let mut burst: Vec<DpdkPacket> = Vec::with_capacity(BURST);
        let (mut rx, mut tx) = (0u64, 0u64);
        let mut slicer = Slicer::new(budget);
        let mut last = Instant::now();
        loop {
            let before = rx;
            for _ in 0..1024 {
                rx += port.rx_burst(&mut burst, BURST).map_err(nic)? as u64;
                tx += port.tx_burst(&mut burst).map_err(nic)? as u64;
            }
            let now = Instant::now();
            if slicer.add(rx - before, now - last) {
                return Ok((rx, tx, slicer));
            }
            last = now;
            check_interrupted()?;
        }
    }

    /// Receives and frees whatever the port holds.
    fn drain(port: &mut DpdkPort) -> BenchResult<()> {
        let mut burst = Vec::new();
        while port.rx_burst(&mut burst, BURST).map_err(nic)? > 0 {
            burst.clear();
        }
        Ok(())
    }

    fn fill(port: &mut DpdkPort, frames: &[Vec<u8>], cursor: &mut usize) -> BenchResult<usize> {
        let mut burst = Vec::with_capacity(RING_FILL);
        for _ in 0..RING_FILL {
            burst.push(port.alloc(&frames[*cursor]).map_err(nic)?);
            *cursor = (*cursor + 1) % frames.len();
        }
        port.tx_burst(&mut burst).map_err(nic)
    }

    /// Runs every DPDK scenario. Call on the thread that is to run them: EAL pins it.
    pub fn run(
        setup: &Setup,
        plan: &Plan<'_>,
        (raw, engine): (bool, bool),
        memory: DpdkMemory,
    ) -> BenchResult<Vec<Row>> {
        let Plan {
            w,
            sets,
            frames,
            budget,
            warmup,
            ..
        } = *plan;
        let eal = Eal::init(&setup.eal_args).map_err(nic)?;
        let ring = port_id(eal, "net_ring0")?;
        let mut rows = Vec::new();

        // Raw I/O, no engine: net_null (the PMD's cost only) and net_ring (a software ring).
        for (i, (size, sequence)) in frames.iter().enumerate().filter(|_| raw) {
            let null = port_id(eal, &format!("net_null{i}"))?;
            let mut port = DpdkPort::open(eal, null).map_err(nic)?;
            raw_loop(&mut port, warmup)?;
            let (rx, tx, slices) = raw_loop(&mut port, budget)?;
            let (mpps, low, high) = slices.result().ok_or("no slice measured")?;
            eprintln!(
                "dpdk ({}) raw net_null {size} B: {mpps:.2} Mpps",
                memory.arg()
            );
            rows.push(Row {
                scenario: "DPDK raw I/O (no engine, no policies)".into(),
                backend: format!("DPDK net_null, {}", memory.label()),
                size: *size,
                rules: None,
                mpps: Some(mpps),
                spread: Some((low, high)),
                forwarded: Some(100.0 * tx as f64 / rx.max(1) as f64),
                notes: "rx_burst + tx_burst: the PMD allocates mbufs and frees them, frame bytes \
                        never touched"
                    .into(),
            });
            drop(port);

            let mut port = DpdkPort::open(eal, ring).map_err(nic)?;
            let mut cursor = 0;
            fill(&mut port, sequence, &mut cursor)?;
            raw_loop(&mut port, warmup)?;
            let (rx, tx, slices) = raw_loop(&mut port, budget)?;
            drain(&mut port)?;
            let (mpps, low, high) = slices.result().ok_or("no slice measured")?;
            eprintln!(
                "dpdk ({}) raw net_ring {size} B: {mpps:.2} Mpps",
                memory.arg()
            );
            rows.push(Row {
                scenario: "DPDK raw I/O (no engine, no policies)".into(),
                backend: format!("DPDK net_ring, {}", memory.label()),
                size: *size,
                rules: None,
                mpps: Some(mpps),
                spread: Some((low, high)),
                forwarded: Some(100.0 * tx as f64 / rx.max(1) as f64),
                notes: "rx_burst + tx_burst back into the ring; 1,023 frames circulating, bytes \
                        not touched"
                    .into(),
            });
        }

        // The engine: net_ring0 in, net_null0 out.
        let null0 = port_id(eal, "net_null0")?;
        for (size, sequence) in frames.iter().filter(|_| engine) {
            for (rules, set) in sets {
                let handle = Arc::new(PolicyHandle::new(Classifier::compile(set)));
                let stats = Arc::new(Stats::default());
                let rx = DpdkPort::open(eal, ring).map_err(nic)?;
                let tx = DpdkPort::open(eal, null0).map_err(nic)?;
                let mut engine = Engine::new(
                    rx,
                    Some(tx),
                    handle,
                    stats.clone(),
                    EngineConfig::new(w.local),
                );
                let mut cursor = 0;
                let window = |engine: &mut Engine<DpdkPort>,
                              cursor: &mut usize|
                 -> BenchResult<(u64, Duration)> {
                    let filled = fill(engine.rx_port(), sequence, cursor)?;
                    let start = Instant::now();
                    let mut got = 0;
                    while got < filled {
                        let n = engine.poll().map_err(nic)?;
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    Ok((got as u64, start.elapsed()))
                };
                let warm_until = Instant::now() + warmup;
                while Instant::now() < warm_until {
                    window(&mut engine, &mut cursor)?;
                }
                engine.flush();
                let before = Mix::of(&stats);
                let mut slicer = Slicer::new(budget);
                loop {
                    let (n, t) = window(&mut engine, &mut cursor)?;
                    if slicer.add(n, t) {
                        break;
                    }
                    check_interrupted()?;
                }
                let (mpps, low, high) = slicer.result().ok_or("no slice measured")?;
                engine.flush();
                let mix = Mix::of(&stats).since(before);
                drain(engine.rx_port())?;
                drop(engine);
                eprintln!(
                    "dpdk ({}) engine {size} B, {rules} rules: {mpps:.2} Mpps, forwarded {:.1}%",
                    memory.arg(),
                    mix.forwarded_pct().unwrap_or(0.0)
                );
                rows.push(Row {
                    scenario: if *rules == 0 {
                        "DPDK engine, no policies"
                    } else {
                        "DPDK engine with policies"
                    }
                    .into(),
                    backend: format!("DPDK net_ring → net_null, {}", memory.label()),
                    size: *size,
                    rules: Some(*rules),
                    mpps: Some(mpps),
                    spread: Some((low, high)),
                    forwarded: mix.forwarded_pct(),
                    notes: mix.describe("rate-limited"),
                });
            }
        }
        Ok(rows)
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario 4: AF_PACKET over veth.

fn ip(args: &[&str]) -> BenchResult<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running `ip {}`: {e} (install iproute2)", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// A network namespace the bench made; deleted (with the interfaces inside) when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new(suffix: &str) -> BenchResult<Netns> {
        let name = format!("{NETNS_PREFIX}{}-{suffix}", std::process::id());
        ip(&["netns", "add", &name])?;
        Ok(Netns { name })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("could not delete network namespace {}: {e}", self.name);
        }
    }
}

/// Deletes namespaces left by bench processes that are gone (killed without cleaning up).
fn sweep_stale_netns() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Moves the calling thread into network namespace `name`.
fn enter_netns(name: &str) -> BenchResult<()> {
    let path = format!("/var/run/netns/{name}");
    let file = File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
    // SAFETY: setns(2) takes a descriptor we own (open across the call) and a flag; it changes
    // only this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "entering network namespace {name}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Two namespaces and two veth pairs:
///
/// ```text
///  netns nxbench<pid>-gen           netns nxbench<pid>-dp
///  g0 (generator)  ◄── veth ──►  g1 (engine: ingress, and egress by default)
///  o0 (no listener) ◄── veth ──  o1 (engine egress when separate)
/// ```
struct VethRig {
    generator: Netns,
    engine: Netns,
}

impl VethRig {
    fn new() -> BenchResult<VethRig> {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "the AF_PACKET rows need root (network namespaces, veth pairs, packet \
                        sockets); run as root or leave `af_packet` out of `--scenarios`"
                    .into(),
            );
        }
        sweep_stale_netns();
        let rig = VethRig {
            generator: Netns::new("gen")?,
            engine: Netns::new("dp")?,
        };
        let (g, e) = (rig.generator.name.as_str(), rig.engine.name.as_str());
        for (a, b) in [("g0", "g1"), ("o0", "o1")] {
            ip(&[
                "link", "add", "name", a, "netns", g, "type", "veth", "peer", "name", b, "netns", e,
            ])?;
            ip(&["-n", g, "link", "set", a, "up"])?;
            ip(&["-n", e, "link", "set", b, "up"])?;
        }
        // The traffic is addressed to this MAC (see `Workload::frames`): the engine forwards only
        // frames sent to its port's address.
        ip(&["-n", e, "link", "set", "g1", "address", "02:00:00:00:00:02"])?;
        Ok(rig)
    }
}

struct AfPacketFigures {
    /// What the engine did in the measured window.
    engine_rx: Mix,
    /// The engine's receive rate by slice.
    slices: Slicer,
    /// Frames the generator got into the kernel in the measured window.
    offered: u64,
    /// And over the whole run, warm-up included.
    offered_total: u64,
    elapsed: Duration,
    /// Frames the engine's receive socket dropped (queue full) over the whole run.
    kernel_drops: u64,
}

/// The engine on `g1`, transmitting back on `g1` or, with `egress`, on that interface.
fn af_packet_run(
    rig: &VethRig,
    plan: &Plan<'_>,
    set: &PolicySet,
    frames: &[Vec<u8>],
    egress: Option<&str>,
) -> BenchResult<AfPacketFigures> {
    let Plan {
        w,
        cpus,
        budget,
        warmup,
        ..
    } = *plan;
    let stop = AtomicBool::new(false);
    let engine_up = AtomicBool::new(false);
    let offered = AtomicU64::new(0);
    let stats = Arc::new(Stats::default());
    let handle = Arc::new(PolicyHandle::new(Classifier::compile(set)));
    let nic = |e: nexus_dataplane::nic::NicError| e.to_string();
    std::thread::scope(|s| {
        let engine = s.spawn(|| -> BenchResult<u64> {
            let result = (|| -> BenchResult<u64> {
                pin_thread(cpus.engine)?;
                enter_netns(&rig.engine.name)?;
                let rx = AfPacketPort::open("g1").map_err(nic)?;
                let tx = egress
                    .map(|name| AfPacketPort::open(name).map_err(nic))
                    .transpose()?;
                let mut engine = Engine::new(
                    rx,
                    tx,
                    handle.clone(),
                    stats.clone(),
                    EngineConfig::new(w.local),
                );
                engine_up.store(true, Ordering::Release);
                engine.run(&stop).map_err(nic)?;
                Ok(engine.rx_port().stats().rx_kernel_drops)
            })();
            stop.store(true, Ordering::Relaxed);
            result
        });
        let generator = s.spawn(|| -> BenchResult<()> {
            let result = (|| -> BenchResult<()> {
                pin_thread(cpus.generator)?;
                enter_netns(&rig.generator.name)?;
                let mut port = AfPacketPort::open("g0").map_err(nic)?;
                while !engine_up.load(Ordering::Acquire) {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut burst = Vec::with_capacity(BURST);
                let mut cursor = 0;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..BURST {
                        burst.push(port.alloc(&frames[cursor]).map_err(nic)?);
                        cursor = (cursor + 1) % frames.len();
                    }
                    let sent = port.tx_burst(&mut burst).map_err(nic)?;
                    offered.fetch_add(sent as u64, Ordering::Relaxed);
                }
                Ok(())
            })();
            stop.store(true, Ordering::Relaxed);
            result
        });

        // The first frames through a fresh veth take a moment; then warm up and measure.
        let measured = (|| -> BenchResult<(Mix, u64, Duration, Slicer)> {
            let deadline = Instant::now() + Duration::from_secs(10);
            while stats.rx_packets.load(Ordering::Relaxed) == 0 {
                if stop.load(Ordering::Relaxed) {
                    return Err("the engine or the generator stopped early".to_string());
                }
                if Instant::now() > deadline {
                    return Err("no frame crossed the veth within 10 s".into());
                }
                check_interrupted()?;
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(warmup);
            let (before, offered_before, start) = (
                Mix::of(&stats),
                offered.load(Ordering::Relaxed),
                Instant::now(),
            );
            let mut slicer = Slicer::new(budget);
            let (mut last, mut last_rx) = (start, before.rx);
            loop {
                check_interrupted()?;
                if stop.load(Ordering::Relaxed) {
                    return Err("the engine or the generator stopped early".to_string());
                }
                std::thread::sleep(Duration::from_millis(10));
                // The engine adds its counters to Stats every 64 bursts: a few ms at most.
                let (now, rx) = (Instant::now(), stats.rx_packets.load(Ordering::Relaxed));
                if slicer.add(rx - last_rx, now - last) {
                    break;
                }
                (last, last_rx) = (now, rx);
            }
            Ok((
                Mix::of(&stats).since(before),
                offered.load(Ordering::Relaxed) - offered_before,
                start.elapsed(),
                slicer,
            ))
        })();
        stop.store(true, Ordering::Relaxed);
        let kernel_drops = engine.join().map_err(|_| "the engine thread panicked")??;
        generator
            .join()
            .map_err(|_| "the generator thread panicked")??;
        let (engine_rx, offered_measured, elapsed, slices) = measured?;
        Ok(AfPacketFigures {
            engine_rx,
            slices,
            offered: offered_measured,
            offered_total: offered.load(Ordering::Relaxed),
            elapsed,
            kernel_drops,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// DPDK child processes and hugepages.

/// The child side: runs the DPDK scenarios on this (main) thread, which EAL pins, and writes
/// the EAL arguments and the rows to `--rows-to`.
fn dpdk_child(
    args: &Args,
    memory: DpdkMemory,
    which: (bool, bool),
    plan: &Plan<'_>,
) -> BenchResult<()> {
    let path = args
        .rows_to
        .as_ref()
        .ok_or("--dpdk-child needs --rows-to")?;
    #[cfg(feature = "dpdk")]
    {
        let setup = dpdk_runs::Setup::new(&args.sizes, plan.cpus.engine, memory);
        let rows = dpdk_runs::run(&setup, plan, which, memory)?;
        let mut out = format!("#eal\t{}\n", setup.eal_args.join(" "));
        for row in &rows {
            out.push_str(&row.to_tsv());
            out.push('\n');
        }
        std::fs::write(path, out).map_err(|e| format!("writing {}: {e}", path.display()))
    }
    #[cfg(not(feature = "dpdk"))]
    {
        let _ = (memory, which, plan, path);
        Err("this binary was built without `--features dpdk`".into())
    }
}

/// The parent side: runs this binary again for the DPDK scenarios with `memory`, its output
/// going to stderr; returns the EAL arguments it used and its rows.
fn dpdk_child_process(
    args: &Args,
    memory: DpdkMemory,
    (raw, engine): (bool, bool),
) -> BenchResult<(String, Vec<Row>)> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let path = std::env::temp_dir().join(format!(
        "nexus-dataplane-bench-{}-{}.tsv",
        std::process::id(),
        memory.arg()
    ));
    let join = |v: &[usize]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let scenarios: Vec<&str> = [(raw, "dpdk-raw"), (engine, "dpdk-engine")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
    let mut cmd = Command::new(&exe);
    cmd.args(["--dpdk-child", memory.arg(), "--rows-to"])
        .arg(&path)
        .args(["--rules", &join(&args.rules), "--sizes", &join(&args.sizes)])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .args(["--scenarios", &scenarios.join(",")]);
    if args.quick {
        cmd.arg("--quick");
    }
    // EAL logs to stderr and prints its usage to stdout: keep stdout for the report.
    let stderr = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating stderr: {e}"))?;
    let status = cmd
        .stdout(std::process::Stdio::from(stderr))
        .status()
        .map_err(|e| format!("running {}: {e}", exe.display()))?;
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    if !status.success() {
        return Err(format!(
            "the DPDK run on {} failed ({status}); its output is above",
            memory.label()
        ));
    }
    let text = text.map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut eal = String::new();
    let mut rows = Vec::new();
    for line in text.lines() {
        if let Some(args) = line.strip_prefix("#eal\t") {
            eal = args.to_string();
        } else if let Some(row) = Row::from_tsv(line) {
            rows.push(row);
        } else {
            return Err(format!("a DPDK child wrote an unreadable row: {line:?}"));
        }
    }
    Ok((eal, rows))
}

const NR_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
const FREE_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

/// 2 MiB hugepages the bench reserved; the previous reservation is put back when dropped.
struct HugePages {
    previous: u64,
}

impl HugePages {
    fn read(path: &str) -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Free 2 MiB hugepages.
    fn free() -> u64 {
        HugePages::read(FREE_HUGEPAGES)
    }

    /// Makes at least `pages` free, if fewer are; `None` when enough already are.
    fn reserve(pages: u64) -> BenchResult<Option<HugePages>> {
        let free = HugePages::free();
        if free >= pages {
            return Ok(None);
        }
        let previous = HugePages::read(NR_HUGEPAGES);
        let want = previous + (pages - free);
        std::fs::write(NR_HUGEPAGES, want.to_string()).map_err(|e| {
            format!("reserving {want} hugepages in {NR_HUGEPAGES}: {e} (needs root)")
        })?;
        let reserved = HugePages { previous };
        let now = HugePages::free();
        eprintln!("reserved 2 MiB hugepages: {now} free (were {free}; put back at exit)");
        Ok(Some(reserved))
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(NR_HUGEPAGES, self.previous.to_string()) {
            eprintln!(
                "could not put {NR_HUGEPAGES} back to {}: {e}",
                self.previous
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Whether /proc/cpuinfo reports a hypervisor.
fn is_virtual_machine() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

struct Report<'a> {
    args: &'a Args,
    rows: &'a [Row],
    budget: Duration,
    cpus: Cpus,
    loads: (String, String),
    eal_args: Vec<(DpdkMemory, String)>,
    skipped: Vec<String>,
    set_sizes: Vec<(usize, usize)>,
}

fn section(r: &Report<'_>) -> String {
    let cli: Vec<String> = std::env::args().skip(1).collect();
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into());
    let nproc = command_output("nproc", &[]).unwrap_or_else(|| "?".into());
    let kernel = command_output("uname", &["-r"]).unwrap_or_else(|| "?".into());
    let dpdk = command_output("pkg-config", &["--modversion", "libdpdk"])
        .unwrap_or_else(|| "not found".into());
    let built_with_dpdk = cfg!(feature = "dpdk");
    let mut out = String::new();
    let _ = writeln!(out, "{START_MARKER}");
    let _ = writeln!(out, "## Data plane: packets per second per core\n");
    let _ = writeln!(
        out,
        "Command: `cargo build --release -p nexus-dataplane --features dpdk --bin \
         nexus-dataplane-bench && target/release/nexus-dataplane-bench {}`\n",
        cli.join(" ")
    );
    let _ = writeln!(out, "- Date: {date}");
    let _ = writeln!(
        out,
        "- Machine: {nproc} CPUs (nproc), {}{}, Linux {kernel}; 1-minute load average {} \
         before, {} after. The engine runs pinned to CPU {}; the AF_PACKET generator to CPU {}.",
        cpu_model(),
        if is_virtual_machine() {
            " (virtual machine)"
        } else {
            ""
        },
        r.loads.0,
        r.loads.1,
        r.cpus.engine,
        r.cpus.generator
    );
    let _ = writeln!(
        out,
        "- DPDK: {dpdk} (`pkg-config --modversion libdpdk`), virtual devices only; {}",
        if !built_with_dpdk {
            "**this build has no DPDK backend: DPDK figures need `--features dpdk`**".to_string()
        } else if r.eal_args.is_empty() {
            "not run".to_string()
        } else {
            r.eal_args
                .iter()
                .map(|(memory, eal)| format!("{}: EAL `{eal}`", memory.label()))
                .collect::<Vec<_>>()
                .join("; ")
        }
    );
    let sets: Vec<String> = r
        .set_sizes
        .iter()
        .map(|(rules, compiled)| format!("{rules} → {compiled}"))
        .collect();
    let _ = writeln!(
        out,
        "- Traffic (seed {}): {FLOWS} flows over a {FLEET_NODES}-node fleet, a sequence of \
         {SEQUENCE} frames drawn uniformly from them. Sources: 95% fleet nodes, 5% nodes the \
         policies do not know. Destinations: 90% fleet nodes (the forwarding table), 2% this \
         node (delivered locally, not transmitted), 8% unknown (dropped: no route). Modes BE 50%, \
         RO 25%, RU 15%, PR 10%; message types Zipf-distributed over {MSG_TYPES} types. Ethernet \
         frames (EtherType 0x88B5) of exactly the stated size, FCS not included.",
        r.args.seed
    );
    let _ = writeln!(
        out,
        "- Rules: N route policies, priorities 1..=1000 and scopes fleet/site/tenant at random; \
         each names 1–3 source nodes (60%), 1–4 message types drawn like the traffic's (60%), \
         1–2 stream modes (25%), a destination capability (15%), at least one of these; actions \
         allow 50% (a fifth with a weight override), deny 20%, ratelimit 15% (100–10,000 \
         frames/s per source), redirect 15% (to a fleet node). Compiled rules per N: {}. Which \
         share each action decides depends on N (more rules, more frames matched), so the \
         forwarded share differs between rows; the notes give the mix.",
        sets.join(", ")
    );
    let _ = writeln!(
        out,
        "- Method: release build; each row runs {:.1} s after a warm-up, measured in {SLICES} \
         equal slices. Mpps = frames the engine (or classifier, or raw loop) took in, per \
         second, on one core: the median slice, with the slowest and fastest in brackets. Gbit/s = Mpps × \
         frame bytes × 8 (L2 bytes as the data plane sees them; on the wire add 4 bytes FCS and \
         20 bytes preamble and gap: 10 GbE carries at most 14.2 Mpps of these 64-byte frames, \
         0.82 Mpps of 1,500-byte ones). Forwarded = frames transmitted ÷ frames received.",
        r.budget.as_secs_f64()
    );
    let _ = writeln!(out, "- Scenarios:");
    let _ = writeln!(
        out,
        "  - *classifier only*: `frame::parse` + `Classifier::decide` (rule and forwarding-table lookup) + the action's verdict \
         over the {SEQUENCE} pre-built frames in memory; no NIC, no \
         engine (no flow cache: every frame is classified; no counters, rate-limit state or rewrite)."
    );
    let _ = writeln!(
        out,
        "  - *DPDK raw I/O*: `rx_burst` + `tx_burst` of 32 with no engine. net_null allocates \
         mbufs of the configured size on receive and frees them on transmit without touching \
         their bytes (its frames are not Nexus frames, so the engine would only ignore them); \
         net_ring moves 1,023 frames round its software ring."
    );
    let _ = writeln!(
        out,
        "  - Every DPDK scenario runs twice, each time in a child process of its own (EAL \
         starts once per process): on 2 MiB hugepages (`--in-memory`, anonymous hugepages, as \
         DPDK is deployed; run with `--huge-pages 64` or reserve them beforehand) and on 4 KiB \
         pages (`--no-huge`, as CI and the tests run it, where every mbuf touch can miss the \
         TLB)."
    );
    let _ = writeln!(
        out,
        "  - *DPDK engine*: `Engine::poll` receiving from net_ring0 and transmitting to \
         net_null0. The ring (1,024 slots) is filled with 1,023 frames of the traffic sequence \
         (mbuf alloc + copy, untimed), then the engine is timed while it drains them, again and \
         again: each frame passes the engine once, through its whole per-frame path (parse, hop \
         limit, the flow cache (classify on a miss), action incl. GCRA rate limits, route, hop-limit rewrite, \
         counters, tx). Rules 0 is the engine with an empty policy set (the forwarding table \
         only). The traffic's 1,000 flows fit the engine's flow cache (8,192 slots), so after \
         the first pass a frame is classified only when its flow's slot was taken by another; \
         traffic with far more flows pays the classifier-only cost per frame on top."
    );
    let _ = writeln!(
        out,
        "  - *AF_PACKET*: a veth pair between two network namespaces made (and deleted) by \
         the bench: a generator thread pinned to the other CPU blasts the traffic into `g0` \
         (`sendmmsg` of 32, as fast as the kernel takes it); the engine receives on `g1` and \
         transmits back out of `g1` (`af_packet:g1`, a node's usual setup; the generator's \
         socket does not read, so the kernel drops those frames once its queue is full). One \
         row uses a separate egress veth (`af_packet:g1,o1`; `o0` has no listener). Mpps is \
         what the engine received (its `rx_packets`); the notes give what the generator got \
         into the kernel and what share of it the engine's socket dropped (queue full)."
    );
    if !r.skipped.is_empty() {
        let _ = writeln!(out, "- Not measured: {}", r.skipped.join("; "));
    }
    let _ = writeln!(out);
    let goal: Vec<String> = r
        .rows
        .iter()
        .filter(|row| {
            row.scenario == "DPDK engine with policies" && row.size == 64 && row.rules == Some(1000)
        })
        .filter_map(|row| {
            let m = row.mpps?;
            let verdict = if m >= 10.0 { "met" } else { "**missed**" };
            Some(format!("{verdict} on {} ({m:.2} Mpps)", row.backend))
        })
        .collect();
    let _ = writeln!(
        out,
        "**Goal:** ≥ 10 Mpps per core with 1,000 rules on DPDK (64-byte frames): {}\n",
        if !goal.is_empty() {
            goal.join("; ")
        } else if !built_with_dpdk {
            "not measured (built without `--features dpdk`)".into()
        } else {
            "not measured in this run".into()
        }
    );
    let per_frame: Vec<String> = r
        .rows
        .iter()
        .filter(|row| row.size == 64 && row.rules == Some(1000))
        .filter_map(|row| {
            let m = row.mpps.filter(|m| *m > 0.0)?;
            let what = if row.scenario.starts_with("classifier") {
                "classifier only"
            } else {
                row.backend.as_str()
            };
            Some(format!("{what}: {:.0} ns", 1e3 / m))
        })
        .collect();
    if !per_frame.is_empty() {
        let _ = writeln!(
            out,
            "Time per frame (one core; 64-byte frames, 1,000 rules): {}.\n",
            per_frame.join("; ")
        );
    }
    let _ = writeln!(
        out,
        "| scenario | backend | frame | rules | Mpps | Gbit/s | forwarded | notes |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for row in r.rows {
        let _ = writeln!(out, "{}", row.markdown());
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "What these figures are and are not. net_ring and net_null are DPDK software devices, \
         not NICs: there are no descriptors, no DMA and no PCIe. The engine reads frames the \
         refill copied into their mbufs a moment before on the same core, so they are in its \
         caches about as a NIC's DMA into the last-level cache would leave them; at 1,500 bytes \
         the refill's 1.5 MB of copying pushes much of the mbufs out of L2 first, which is mostly \
         why those rows are slower although the engine reads only the first 62 bytes of a frame. \
         The DPDK engine rows are therefore the data plane's own per-frame work plus DPDK's \
         mbuf handling, an upper bound for one core behind a real NIC (whose PMD adds \
         descriptor work); the raw rows are what the backend alone costs. Gbit/s at 1,500 bytes \
         is bytes *handled*, not bytes moved over a wire. The AF_PACKET figures include the \
         kernel's veth path, a copy into and out of the kernel per frame (`recvmmsg` / \
         `sendmmsg`, see `nic/af_packet.rs`) and the generator, which runs on this machine too: \
         on 2 cores it owns the other CPU, where the softirq work of delivering its frames to \
         the engine's socket also runs, while the engine's CPU does the kernel work of its own \
         receive and transmit. So the AF_PACKET figure is the engine's rate with a kernel on \
         both sides, not a NIC's, and the gap to DPDK is mostly the kernel. Rate-limit verdicts \
         depend on how fast frames arrive (GCRA per rule and source): a faster backend sees \
         more frames over the limits, so the rate-limited and forwarded shares differ between \
         backends at the same rule count. {}",
        if is_virtual_machine() {
            "This machine is a virtual machine: its CPUs may be shared with other guests, which \
             shows as run-to-run spread of 10–30%."
        } else {
            ""
        }
    );
    let _ = writeln!(out, "{END_MARKER}");
    out
}

fn write_section(path: &PathBuf, section: &str) -> BenchResult<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let updated = match (text.find(START_MARKER), text.find(END_MARKER)) {
        (Some(a), Some(b)) if a < b => {
            let mut end = b + END_MARKER.len();
            if text[end..].starts_with('\n') {
                end += 1;
            }
            format!("{}{section}{}", &text[..a], &text[end..])
        }
        _ if text.is_empty() => section.to_string(),
        _ => format!("{}\n\n{section}", text.trim_end_matches('\n')),
    };
    std::fs::write(path, updated).map_err(|e| format!("writing {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------

fn main() {
    if let Err(e) = run() {
        eprintln!("nexus-dataplane-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> BenchResult<()> {
    let args = Args::parse();
    for &s in &args.sizes {
        if !(62..=2048).contains(&s) {
            return Err(format!(
                "--sizes: {s} bytes is outside 62..=2048 (the Nexus Ethernet header and a DPDK \
                 mbuf)"
            ));
        }
    }
    if args.sizes.is_empty() || args.rules.is_empty() {
        return Err("--sizes and --rules need at least one value each".into());
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err("--seconds must be a positive number".into());
    }
    install_signal_handlers();
    let budget = Duration::from_secs_f64(if args.quick { 0.2 } else { args.seconds });
    let warmup = if args.quick {
        Duration::from_millis(50)
    } else {
        Duration::from_millis(300)
    };
    let load_before = load_average();
    let cpus = Cpus::pick();

    let w = Workload::new(args.seed);
    let sets: Vec<(usize, PolicySet)> = args.rules.iter().map(|&n| (n, w.policy_set(n))).collect();
    let set_sizes: Vec<(usize, usize)> = sets
        .iter()
        .map(|(n, s)| (*n, Classifier::compile(s).rules().len()))
        .collect();
    let frames: Vec<(usize, Vec<Vec<u8>>)> = args.sizes.iter().map(|&s| (s, w.frames(s))).collect();
    let plan = Plan {
        w: &w,
        sets: &sets,
        frames: &frames,
        cpus,
        budget,
        warmup,
    };
    let mut rows = Vec::new();
    let mut skipped = Vec::new();

    let wants = |sc: Scenario| args.scenarios.contains(&sc);

    if let Some(memory) = args.dpdk_child {
        let which = (wants(Scenario::DpdkRaw), wants(Scenario::DpdkEngine));
        return dpdk_child(&args, memory, which, &plan);
    }

    // 1. The classifier alone, on a pinned thread.
    if wants(Scenario::Classifier) {
        let classifier_rows = std::thread::scope(|s| {
            s.spawn(|| -> BenchResult<Vec<Row>> {
                pin_thread(cpus.engine)?;
                let mut rows = Vec::new();
                for (size, sequence) in plan.frames {
                    for (rules, set) in plan.sets {
                        let row = classifier_only(&w, set, *rules, sequence, *size, budget)?;
                        eprintln!(
                            "classifier {size} B, {rules} rules: {:.2} Mpps",
                            row.mpps.unwrap_or(0.0)
                        );
                        rows.push(row);
                    }
                }
                Ok(rows)
            })
            .join()
            .map_err(|_| "the classifier thread panicked".to_string())?
        })?;
        rows.extend(classifier_rows);
    } else {
        skipped.push("classifier only (not in `--scenarios`)".to_string());
    }

    // 2 and 3. DPDK, in a child process per memory setup: EAL starts once per process.
    let mut eal_args: Vec<(DpdkMemory, String)> = Vec::new();
    let (dpdk_raw, dpdk_engine) = (wants(Scenario::DpdkRaw), wants(Scenario::DpdkEngine));
    if !dpdk_raw {
        skipped.push("DPDK raw I/O (not in `--scenarios`)".to_string());
    }
    if !dpdk_engine {
        skipped.push("DPDK engine (not in `--scenarios`)".to_string());
    }
    if (dpdk_raw || dpdk_engine) && cfg!(feature = "dpdk") {
        let needed = DPDK_MEMORY_MB / 2;
        let _reserved = if args.dpdk_memory.contains(&DpdkMemory::Huge) && args.huge_pages > 0 {
            HugePages::reserve(args.huge_pages.max(needed))?
        } else {
            None
        };
        for &memory in &args.dpdk_memory {
            if memory == DpdkMemory::Huge {
                let free = HugePages::free();
                if free < needed {
                    skipped.push(format!(
                        "DPDK on hugepages ({free} free 2 MiB hugepages, {needed} needed: pass \
                         `--huge-pages {needed}` or reserve them with `echo {needed} > \
                         /proc/sys/vm/nr_hugepages`)"
                    ));
                    continue;
                }
            }
            let (eal, child_rows) = dpdk_child_process(&args, memory, (dpdk_raw, dpdk_engine))?;
            // A signal to this process alone (not its group) leaves the child running to the end.
            check_interrupted()?;
            rows.extend(child_rows);
            eal_args.push((memory, eal));
        }
    } else if dpdk_raw || dpdk_engine {
        eprintln!(
            "nexus-dataplane-bench: built without the `dpdk` feature: no DPDK figures. Build with \
             `cargo build --release -p nexus-dataplane --features dpdk --bin \
             nexus-dataplane-bench` for them."
        );
        skipped.push(
            "DPDK (this binary was built without `--features dpdk`; DPDK figures need it)".into(),
        );
        for &size in &args.sizes {
            rows.push(Row {
                scenario: "DPDK".into(),
                backend: "DPDK".into(),
                size,
                rules: None,
                mpps: None,
                spread: None,
                forwarded: None,
                notes: "not built: DPDK figures need `--features dpdk`".into(),
            });
        }
    }

    // 4. AF_PACKET over veth.
    if !wants(Scenario::AfPacket) {
        skipped.push("AF_PACKET (not in `--scenarios`)".into());
    } else {
        let rig = VethRig::new()?;
        // Every size and rule count with the engine sending back out of its ingress interface
        // (`af_packet:g1`, a node's usual setup); one with a separate egress interface
        // (`af_packet:g1,o1`), which moves each frame's buffer from one port to the other.
        // (frame size, frames, rule count, rules, separate egress interface)
        type Case<'a> = (
            usize,
            &'a [Vec<u8>],
            usize,
            &'a PolicySet,
            Option<&'static str>,
        );
        let mut runs: Vec<Case<'_>> = Vec::new();
        for (size, sequence) in plan.frames {
            for (rules, set) in plan.sets {
                runs.push((*size, sequence, *rules, set, None));
            }
        }
        if let (Some((size, sequence)), Some((rules, set))) = (
            plan.frames.first(),
            plan.sets.iter().min_by_key(|(n, _)| n.abs_diff(1000)),
        ) {
            runs.push((*size, sequence, *rules, set, Some("o1")));
        }
        for (size, sequence, rules, set, egress) in runs {
            check_interrupted()?;
            let f = af_packet_run(&rig, &plan, set, sequence, egress)?;
            let (mpps, low, high) = f.slices.result().ok_or("no slice measured")?;
            eprintln!(
                "af_packet {size} B, {rules} rules, egress {}: {mpps:.2} Mpps (offered {:.2})",
                egress.unwrap_or("g1"),
                rate(f.offered, f.elapsed)
            );
            let mut notes = format!(
                "generator got {:.2} Mpps into the kernel; the engine's socket dropped {:.1}% of \
                 what it sent",
                rate(f.offered, f.elapsed),
                100.0 * f.kernel_drops as f64 / f.offered_total.max(1) as f64
            );
            let mix = f.engine_rx.describe("rate-limited");
            if !mix.is_empty() {
                let _ = write!(notes, "; {mix}");
            }
            rows.push(Row {
                scenario: match (rules, egress) {
                    (_, Some(_)) => "AF_PACKET engine, separate egress interface",
                    (0, None) => "AF_PACKET engine, no policies",
                    _ => "AF_PACKET engine with policies",
                }
                .into(),
                backend: match egress {
                    Some(out) => format!("AF_PACKET veth g1 → {out}"),
                    None => "AF_PACKET veth g1 → g1".into(),
                },
                size,
                rules: Some(rules),
                mpps: Some(mpps),
                spread: Some((low, high)),
                forwarded: f.engine_rx.forwarded_pct(),
                notes,
            });
        }
    }

    let report = Report {
        args: &args,
        rows: &rows,
        budget,
        cpus,
        loads: (load_before, load_average()),
        eal_args,
        skipped,
        set_sizes,
    };
    let text = section(&report);
    print!("{text}");
    if let Some(path) = &args.write {
        write_section(path, &text)?;
        eprintln!("wrote the dataplane-bench section of {}", path.display());
    }
    Ok(())
}
