//! Frames as the data plane receives them from the NIC: `frame::parse` on arbitrary bytes, the
//! in-place header rewrites, and the whole forwarding engine over a memory port.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nexus_ca::NodeId;
use nexus_crdt::{ActionType, RouteAction, RouteMatch, RoutePolicy};
use nexus_dataplane::engine::{DropReason, Engine, EngineConfig, Stats};
use nexus_dataplane::frame::{self, Encap, HEADER_LEN, Header, ParseError};
use nexus_dataplane::nic::Port;
use nexus_dataplane::nic::memory::{self, MemPacket, MemoryPort};
use nexus_dataplane::policy::{Classifier, KnownNode, PolicyHandle, PolicySet, Scope};

/// The engine's own node id: frames to it are delivered locally.
const LOCAL: [u8; 16] = [0xaa; 16];
/// Nodes in the forwarding table besides `LOCAL` (the seeds address `DST`).
const DST: [u8; 16] = [2; 16];
const OTHER: [u8; 16] = [3; 16];
/// Message types the three policies match.
const DENIED: u16 = 7;
const LIMITED: u16 = 8;
const REDIRECTED: u16 = 5;

fuzz_target!(|data: &[u8]| {
    let parsed = frame::parse(data);
    if let Ok(h) = parsed {
        check_header(data, &h);
        check_rewrites(data, &h);
    }
    RIG.with(|rig| rig.borrow_mut().check(data, parsed));
});

fn check_header(data: &[u8], h: &Header) {
    let end = h.offset + HEADER_LEN + h.length as usize;
    assert!(
        end <= data.len(),
        "header at {} + {HEADER_LEN} + payload {} runs past the {}-byte frame",
        h.offset,
        h.length,
        data.len()
    );
    // Every byte a rewrite touches lies inside the frame (and inside the UDP datagram).
    if let Encap::Udp4 { udp_csum } | Encap::Udp6 { udp_csum } = h.encap {
        let udp = udp_csum - 6;
        assert_eq!(h.offset, udp + 8, "the header follows the UDP header");
        assert!(udp + udp_len(data, udp) <= data.len());
        assert!(end <= udp + udp_len(data, udp));
    }
}

/// `set_dst` and `set_hops` on a copy: the frame still parses to the same header but for the
/// rewritten fields, no other byte changes but the UDP checksum, and a checksum that was valid
/// stays valid.
fn check_rewrites(data: &[u8], h: &Header) {
    // New values the fuzzer controls: the frame's last 17 bytes (a parsed frame has at least 62).
    let tail = &data[data.len() - 17..];
    let hops = tail[16];
    let dst: [u8; 16] = tail[..16].try_into().unwrap();
    let csum_before = udp_checksum_ok(data, h);

    let mut f = data.to_vec();
    frame::set_dst(&mut f, h, &dst);
    frame::set_hops(&mut f, h, hops);
    let h2 = frame::parse(&f).unwrap_or_else(|e| panic!("a rewritten frame no longer parses: {e}"));
    assert_eq!(h2, Header { dst, hops, ..*h });

    let csum_at = match h.encap {
        Encap::Ethernet => None,
        Encap::Udp4 { udp_csum } | Encap::Udp6 { udp_csum } => Some(udp_csum),
    };
    for (i, (a, b)) in data.iter().zip(&f).enumerate() {
        let rewritten = i == h.offset + 6
            || (h.offset + 24..h.offset + 40).contains(&i)
            || csum_at.is_some_and(|c| (c..c + 2).contains(&i));
        assert!(
            rewritten || a == b,
            "byte {i} changed from {a:#04x} to {b:#04x}"
        );
    }
    if csum_before == Some(true) {
        assert_eq!(
            udp_checksum_ok(&f, h),
            Some(true),
            "a valid UDP checksum is invalid after the rewrite"
        );
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn udp_len(data: &[u8], udp: usize) -> usize {
    usize::from(be16(data, udp + 4))
}

/// Whether the UDP checksum verifies; `None` for a frame over Ethernet, or over IPv4 without a
/// checksum (0).
fn udp_checksum_ok(data: &[u8], h: &Header) -> Option<bool> {
    // Where the IP header starts: after the Ethernet header and an optional 802.1Q tag.
    let ip = if be16(data, 12) == 0x8100 { 18 } else { 14 };
    let (udp, addrs) = match h.encap {
        Encap::Ethernet => return None,
        Encap::Udp4 { udp_csum } => {
            if be16(data, udp_csum) == 0 {
                return None;
            }
            (udp_csum - 6, &data[ip + 12..ip + 20])
        }
        Encap::Udp6 { udp_csum } => (udp_csum - 6, &data[ip + 8..ip + 40]),
    };
    let len = udp_len(data, udp);
    // Pseudo-header: addresses, protocol 17 and the UDP length (the IPv6 one widens both to 32
    // bits, which adds nothing to the sum), then the datagram with its checksum.
    let mut sum = ones_sum(addrs) + 17 + len as u64;
    sum += ones_sum(&data[udp..udp + len]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    Some(sum == 0xffff)
}

fn ones_sum(b: &[u8]) -> u64 {
    b.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

thread_local! {
    /// Built once per fuzzing thread: the engine is `Send` but not `Sync`, and building it
    /// allocates its flow table.
    static RIG: RefCell<Rig> = RefCell::new(Rig::new());
}

/// An engine receiving from (and transmitting back to) `wire`, over a memory link.
struct Rig {
    engine: Engine<MemoryPort>,
    wire: MemoryPort,
    got: Vec<MemPacket>,
}

fn policy(id: &str, msg_type: u16, action: RouteAction) -> (Scope, RoutePolicy) {
    let matches = RouteMatch {
        message_types: vec![msg_type],
        ..Default::default()
    };
    (Scope::Tenant, RoutePolicy::new(id, 1, matches, action))
}

/// The counters one frame can move.
#[derive(Debug)]
struct Counts {
    rx: u64,
    rx_bytes: u64,
    tx: u64,
    local: u64,
    ignored: u64,
    drops: [u64; DropReason::ALL.len()],
    parse: [u64; ParseError::ALL.len()],
    redirected: u64,
}

impl Counts {
    fn of(s: &Stats) -> Counts {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            rx: get(&s.rx_packets),
            rx_bytes: get(&s.rx_bytes),
            tx: get(&s.tx_packets),
            local: get(&s.local_packets),
            ignored: get(&s.ignored_packets),
            drops: std::array::from_fn(|i| get(&s.drops[i])),
            parse: std::array::from_fn(|i| get(&s.parse_errors[i])),
            redirected: get(&s.redirected),
        }
    }

    fn minus(&self, o: &Counts) -> Counts {
        Counts {
            rx: self.rx - o.rx,
            rx_bytes: self.rx_bytes - o.rx_bytes,
            tx: self.tx - o.tx,
            local: self.local - o.local,
            ignored: self.ignored - o.ignored,
            drops: std::array::from_fn(|i| self.drops[i] - o.drops[i]),
            parse: std::array::from_fn(|i| self.parse[i] - o.parse[i]),
            redirected: self.redirected - o.redirected,
        }
    }

    fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

/// What the engine is to do with a frame.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Ignored,
    Dropped(DropReason),
    Local,
    /// Transmitted as these bytes.
    Forwarded(Vec<u8>),
}

impl Rig {
    fn new() -> Rig {
        let (mut wire, mut dp) = memory::pair("fuzz");
        wire.set_wait(Duration::ZERO);
        dp.set_wait(Duration::ZERO);
        let mut redirect = RouteAction::new(ActionType::Redirect);
        redirect.redirect_node_id = Some(NodeId(OTHER));
        let mut limit = RouteAction::new(ActionType::Ratelimit);
        limit.rate_limit = Some(10);
        let set = PolicySet {
            policies: vec![
                policy("deny", DENIED, RouteAction::new(ActionType::Deny)),
                policy("limit", LIMITED, limit),
                policy("redirect", REDIRECTED, redirect),
            ],
            nodes: [DST, OTHER, LOCAL]
                .map(|id| KnownNode {
                    id,
                    capabilities: vec![],
                })
                .to_vec(),
            ..Default::default()
        };
        let classifier = Classifier::compile(&set);
        assert_eq!(classifier.rules().len(), 3, "all three policies compile");
        let mut config = EngineConfig::new(LOCAL);
        config.latency_sample_every = 0;
        let engine = Engine::new(
            dp,
            None,
            Arc::new(PolicyHandle::new(classifier)),
            Arc::new(Stats::default()),
            config,
        );
        Rig {
            engine,
            wire,
            got: Vec::new(),
        }
    }

    /// The engine's decision for `data`, as far as it is fixed: a rate-limited frame may pass or
    /// not (`None`), depending on the time and what came before.
    fn expected(data: &[u8], parsed: Result<Header, ParseError>) -> Option<Fate> {
        let h = match parsed {
            Err(ParseError::NotNexus) => return Some(Fate::Ignored),
            Err(_) => return Some(Fate::Dropped(DropReason::Parse)),
            Ok(h) => h,
        };
        if h.hops == 0 {
            return Some(Fate::Dropped(DropReason::HopLimit));
        }
        let dst = match h.msg_type {
            DENIED => return Some(Fate::Dropped(DropReason::Deny)),
            LIMITED => return None,
            REDIRECTED => OTHER,
            _ => h.dst,
        };
        Some(Self::routed(data, &h, dst))
    }

    fn routed(data: &[u8], h: &Header, dst: [u8; 16]) -> Fate {
        if dst == LOCAL {
            return Fate::Local;
        }
        if dst != DST && dst != OTHER {
            return Fate::Dropped(DropReason::NoRoute);
        }
        let mut out = data.to_vec();
        if h.msg_type == REDIRECTED {
            frame::set_dst(&mut out, h, &dst);
        }
        frame::set_hops(&mut out, h, h.hops - 1);
        Fate::Forwarded(out)
    }

    /// Sends `data` through the engine and checks what came out against the counters and the
    /// expected fate.
    fn check(&mut self, data: &[u8], parsed: Result<Header, ParseError>) {
        let before = Counts::of(self.engine.stats());
        let mut burst = vec![MemPacket(data.to_vec())];
        assert_eq!(self.wire.tx_burst(&mut burst).expect("the link is open"), 1);
        assert_eq!(self.engine.poll().expect("the link is open"), 1);
        self.engine.flush();
        self.got.clear();
        let wire = &mut self.wire;
        while wire.rx_burst(&mut self.got, 4).expect("the link is open") > 0 {}
        let d = Counts::of(self.engine.stats()).minus(&before);

        // Every frame received is accounted for exactly once.
        assert_eq!((d.rx, d.rx_bytes), (1, data.len() as u64), "{d:?}");
        let dropped: u64 = d.drops.iter().sum();
        assert_eq!(d.tx + dropped + d.local + d.ignored, d.rx, "{d:?}");
        assert_eq!(d.dropped(DropReason::TxFull), 0, "{d:?}");
        assert_eq!(self.got.len() as u64, d.tx, "{d:?}");
        assert_eq!(
            d.parse.iter().sum::<u64>(),
            d.dropped(DropReason::Parse),
            "{d:?}"
        );
        if let Err(e) = parsed
            && e != ParseError::NotNexus
        {
            assert_eq!(d.parse[e.index()], 1, "{e:?} not counted: {d:?}");
        }

        let fate = if d.ignored == 1 {
            Fate::Ignored
        } else if d.local == 1 {
            Fate::Local
        } else if let Some(p) = self.got.pop() {
            Fate::Forwarded(p.0)
        } else {
            let reason = DropReason::ALL
                .into_iter()
                .find(|&r| d.dropped(r) == 1)
                .expect("dropped for some reason");
            Fate::Dropped(reason)
        };
        match Self::expected(data, parsed) {
            Some(want) => assert_eq!(fate, want, "{d:?}"),
            None => {
                let h = parsed.expect("a rate-limited frame parsed");
                if fate != Fate::Dropped(DropReason::Ratelimit) {
                    assert_eq!(fate, Self::routed(data, &h, h.dst), "{d:?}");
                }
            }
        }
        let redirected = parsed.is_ok_and(|h| h.hops > 0 && h.msg_type == REDIRECTED);
        assert_eq!(d.redirected, u64::from(redirected), "{d:?}");
    }
}
