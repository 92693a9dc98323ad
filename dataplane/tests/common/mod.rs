//! The engine over a real NIC: the same checks for every backend. A test supplies how frames
//! go into the engine's ingress and come out of its egress; the engine runs on the test's
//! thread, one `poll` at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_crdt::{ActionType, RouteAction, RouteMatch, RoutePolicy};
use nexus_dataplane::engine::{DropReason, Engine, EngineConfig, Stats};
use nexus_dataplane::frame::{self, FrameSpec};
use nexus_dataplane::nic::Port;
use nexus_dataplane::policy::{Classifier, KnownNode, PolicyHandle, PolicySet, Scope};

pub const LOCAL: [u8; 16] = [0xaa; 16];
pub const SRC: [u8; 16] = [1; 16];
pub const DST: [u8; 16] = [2; 16];
const ALLOWED: u16 = 1;
const DENIED: u16 = 7;
const LIMITED: u16 = 8;
/// Frames per second the rate-limit policy lets through (and its burst).
pub const RATE: u64 = 50;

fn policy(id: &str, kind: ActionType, msg_type: u16) -> (Scope, RoutePolicy) {
    let mut action = RouteAction::new(kind);
    if kind == ActionType::Ratelimit {
        action.rate_limit = Some(RATE);
    }
    let matches = RouteMatch {
        message_types: vec![msg_type],
        ..Default::default()
    };
    (Scope::Tenant, RoutePolicy::new(id, 10, matches, action))
}

/// An engine with a deny policy for type 7 and a rate limit for type 8.
pub fn engine<P: Port>(rx: P, tx: Option<P>) -> Engine<P> {
    let set = PolicySet {
        policies: vec![
            policy("deny-7", ActionType::Deny, DENIED),
            policy("limit-8", ActionType::Ratelimit, LIMITED),
        ],
        nodes: vec![KnownNode {
            id: DST,
            capabilities: vec![],
        }],
        ..Default::default()
    };
    let handle = Arc::new(PolicyHandle::new(Classifier::compile(&set)));
    Engine::new(
        rx,
        tx,
        handle,
        Arc::new(Stats::default()),
        EngineConfig::new(LOCAL),
    )
}

/// A frame to the engine's ingress MAC (the engine ignores frames for other addresses).
fn frame(to: [u8; 6], msg_type: u16, seq: u32, len: usize) -> Vec<u8> {
    let mut spec = FrameSpec::new(SRC, DST, msg_type);
    spec.stream_id = seq;
    spec.ethernet(to, [0x02, 0, 0, 0, 0, 1], len, seq as u8)
}

/// What a backend provides to the checks.
pub trait Rig {
    type P: Port;
    /// The engine under test.
    fn engine(&mut self) -> &mut Engine<Self::P>;
    /// Puts frames on the engine's ingress.
    fn send(&mut self, frames: &[Vec<u8>]);
    /// Takes the frames that came out of the engine's egress so far.
    fn receive(&mut self) -> Vec<Vec<u8>>;
}

/// Polls the engine and collects its output until `want` frames came out or `quiet` passed
/// without any.
fn pump<R: Rig>(rig: &mut R, want: usize, quiet: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut last = Instant::now();
    // Bounded: at most 20 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < want && last.elapsed() < quiet && Instant::now() < deadline {
        let n = rig.engine().poll().expect("engine poll");
        let got = rig.receive();
        if n > 0 || !got.is_empty() {
            last = Instant::now();
        }
        out.extend(got);
    }
    out
}

/// Allowed frames come out intact (but for the hop limit, one less), denied ones never do, and
/// a rate limit holds: at most its burst plus its rate over the time frames kept coming.
pub fn allowed_pass_denied_never_and_limits_hold<R: Rig>(rig: &mut R, big: usize) {
    let to = rig
        .engine()
        .rx_port()
        .info()
        .mac
        .unwrap_or([0x02, 0, 0, 0, 0, 2]);
    let frame = |t, seq, len| frame(to, t, seq, len);
    // A frame for another Ethernet address is not taken in.
    let mut other = frame(ALLOWED, 9999, 64);
    other[..6].copy_from_slice(&[0x02, 0xde, 0xad, 0, 0, 1]);
    let foreign_before = rig
        .engine()
        .stats()
        .foreign_packets
        .load(std::sync::atomic::Ordering::Relaxed);
    if rig.engine().rx_port().info().mac.is_some() {
        rig.send(&[other]);
        assert!(
            pump(rig, 1, Duration::from_millis(300)).is_empty(),
            "a frame for another MAC was forwarded"
        );
        rig.engine().flush();
        let foreign = rig
            .engine()
            .stats()
            .foreign_packets
            .load(std::sync::atomic::Ordering::Relaxed);
        // At least ours: the kernel's own multicast (neighbour discovery) counts too.
        assert!(
            foreign > foreign_before,
            "the frame for another MAC was not counted"
        );
    }
    // Allowed and denied, interleaved, small and large.
    let mut sent_allowed = Vec::new();
    for round in 0..8u32 {
        let mut burst = Vec::new();
        for i in 0..16u32 {
            let seq = round * 16 + i;
            let len = if seq % 2 == 0 { 64 } else { big };
            let f = frame(ALLOWED, seq, len);
            sent_allowed.push(f.clone());
            burst.push(f);
            burst.push(frame(DENIED, seq, len));
        }
        rig.send(&burst);
        let _ = rig.engine().poll().expect("engine poll");
    }
    let out = pump(rig, sent_allowed.len(), Duration::from_millis(500));
    let types: Vec<u16> = out
        .iter()
        .map(|f| frame::parse(f).expect("parses").msg_type)
        .collect();
    assert!(!types.contains(&DENIED), "a denied frame came out");
    assert_eq!(
        out.len(),
        sent_allowed.len(),
        "allowed frames lost: {} of {}",
        out.len(),
        sent_allowed.len()
    );
    for (got, sent) in out.iter().zip(&sent_allowed) {
        let (g, s) = (frame::parse(got).unwrap(), frame::parse(sent).unwrap());
        assert_eq!(g.stream_id, s.stream_id, "in order");
        assert_eq!(g.hops, s.hops - 1);
        let hops_at = s.offset + 6;
        assert_eq!(got[..hops_at], sent[..hops_at]);
        assert_eq!(
            got[hops_at + 1..],
            sent[hops_at + 1..],
            "only the hop limit changed"
        );
    }
    let stats = rig.engine().stats().clone();
    rig.engine().flush();
    assert_eq!(stats.dropped(DropReason::Deny), 128);

    // 400 frames of the limited type over about 0.4 s.
    let started = Instant::now();
    let mut passed = 0usize;
    for round in 0..40u32 {
        let burst: Vec<Vec<u8>> = (0..10)
            .map(|i| frame(LIMITED, 1000 + round * 10 + i, 64))
            .collect();
        rig.send(&burst);
        passed += pump(rig, usize::MAX, Duration::from_millis(10)).len();
    }
    passed += pump(rig, usize::MAX, Duration::from_millis(200)).len();
    let elapsed = started.elapsed().as_secs_f64();
    let ceiling = RATE as f64 + RATE as f64 * elapsed + 1.0;
    assert!(
        passed as f64 <= ceiling,
        "{passed} frames passed a {RATE}/s limit in {elapsed:.2} s (at most {ceiling:.0})"
    );
    assert!(
        passed >= RATE as usize,
        "{passed} frames passed: the burst of {RATE} must"
    );
    rig.engine().flush();
    assert_eq!(stats.dropped(DropReason::Ratelimit) as usize, 400 - passed);
    assert_eq!(stats.hits("limit-8"), 400);
}
