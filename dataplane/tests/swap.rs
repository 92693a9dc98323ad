//! Policy swaps under traffic: the control plane publishes new classifiers while the engine
//! forwards on its own thread. No frame that every classifier allows may be lost, and no frame
//! that every classifier denies may pass, whatever the timing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nexus_ca::NodeId;
use nexus_crdt::{ActionType, RouteAction, RouteMatch, RoutePolicy};
use nexus_dataplane::engine::{DropReason, Engine, EngineConfig, Stats};
use nexus_dataplane::frame::{self, FrameSpec};
use nexus_dataplane::nic::Port;
use nexus_dataplane::nic::memory::{self, MemPacket};
use nexus_dataplane::policy::{Classifier, KnownNode, PolicyHandle, PolicySet, Scope};

const LOCAL: [u8; 16] = [0xaa; 16];
const SRC: [u8; 16] = [1; 16];
const DST: [u8; 16] = [2; 16];
/// Always allowed (by a rule in every set, or by no rule matching).
const KEEP: u16 = 1;
/// Denied in every set.
const NEVER: u16 = 9;
/// Denied in every other set.
const TOGGLED: u16 = 7;

fn policy(id: &str, priority: u32, kind: ActionType, types: &[u16]) -> (Scope, RoutePolicy) {
    let matches = RouteMatch {
        message_types: types.to_vec(),
        ..Default::default()
    };
    (
        Scope::Tenant,
        RoutePolicy::new(id, priority, matches, RouteAction::new(kind)),
    )
}

/// Generation `g`'s rules: 500 filler rules for other traffic, a deny for [`NEVER`], an allow for
/// [`KEEP`] in even generations, and a deny for [`TOGGLED`] in odd ones.
fn set(g: usize) -> PolicySet {
    let mut policies: Vec<(Scope, RoutePolicy)> = (0..500u16)
        .map(|i| {
            let mut p = policy(
                &format!("filler-{g}-{i}"),
                100 + u32::from(i),
                ActionType::Deny,
                &[1000 + i],
            );
            p.1.matches.source_node_ids = vec![NodeId([0x30 + (i % 7) as u8; 16])];
            p
        })
        .collect();
    policies.push(policy("never", 5, ActionType::Deny, &[NEVER]));
    if g.is_multiple_of(2) {
        policies.push(policy("keep", 6, ActionType::Allow, &[KEEP]));
    } else {
        policies.push(policy("toggled", 6, ActionType::Deny, &[TOGGLED]));
    }
    PolicySet {
        policies,
        nodes: vec![KnownNode {
            id: DST,
            capabilities: vec![],
        }],
        ..Default::default()
    }
}

#[test]
fn swaps_under_traffic_lose_no_allowed_frame_and_pass_no_denied_one() {
    const FRAMES: u32 = 60_000;
    let (mut wire, mut dp) = memory::pair("swap");
    dp.set_wait(Duration::from_millis(5));
    wire.set_wait(Duration::from_millis(5));
    let handle = Arc::new(PolicyHandle::new(Classifier::compile(&set(0))));
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));

    let engine = {
        let (handle, stats, stop) = (handle.clone(), stats.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut engine = Engine::new(dp, None, handle, stats, EngineConfig::new(LOCAL));
            engine.run(&stop).expect("engine");
        })
    };
    // Swaps as fast as the classifiers compile, bounded in count.
    let publisher = {
        let (handle, stop) = (handle.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut swaps = 0;
            // Bounded: stops with the traffic, or after 10,000 swaps.
            for g in 1..=10_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                handle.publish(Classifier::compile(&set(g)));
                swaps += 1;
            }
            swaps
        })
    };

    // Frames numbered in the stream id: KEEP, NEVER and TOGGLED in turn. The sender keeps at most
    // 1,024 frames in flight so the memory link (4,096 frames) never overflows.
    let mut kept = BTreeSet::new();
    let mut sent = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rx = Vec::new();
    let mut quiet = 0;
    while Instant::now() < deadline {
        // Frames the engine has taken so far (its counters lag by at most a few bursts).
        let taken = stats.rx_packets.load(Ordering::Relaxed);
        if sent < FRAMES && u64::from(sent) < taken + 1024 {
            let mut burst: Vec<MemPacket> = (sent..(sent + 32).min(FRAMES))
                .map(|seq| {
                    let t = [KEEP, NEVER, TOGGLED][seq as usize % 3];
                    let mut spec = FrameSpec::new(SRC, DST, t);
                    spec.stream_id = seq;
                    MemPacket(spec.ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], 64, 0))
                })
                .collect();
            let n = burst.len() as u32;
            assert_eq!(
                wire.tx_burst(&mut burst).unwrap() as u32,
                n,
                "the link dropped"
            );
            sent += n;
        }
        rx.clear();
        let got = wire.rx_burst(&mut rx, 256).unwrap();
        for p in &rx {
            let h = frame::parse(&p.0).expect("forwarded frames parse");
            assert_ne!(
                h.msg_type, NEVER,
                "frame {} passed a deny every classifier has",
                h.stream_id
            );
            if h.msg_type == KEEP {
                assert!(
                    kept.insert(h.stream_id),
                    "frame {} forwarded twice",
                    h.stream_id
                );
            }
        }
        if sent == FRAMES && taken == u64::from(FRAMES) {
            quiet += usize::from(got == 0);
            if quiet >= 3 {
                break;
            }
        }
    }
    // Generations the engine decided frames with while the traffic ran.
    let seen_generation = stats.generation.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let swaps = publisher.join().unwrap();
    engine.join().unwrap();
    let want: BTreeSet<u32> = (0..FRAMES).filter(|s| s % 3 == 0).collect();
    let missing: Vec<&u32> = want.difference(&kept).take(10).collect();
    assert!(
        missing.is_empty(),
        "allowed frames lost across {swaps} swaps: {missing:?}…"
    );
    assert!(
        seen_generation >= 10,
        "the engine picked up only {seen_generation} classifiers during the traffic"
    );
    assert_eq!(stats.dropped(DropReason::TxFull), 0);
    eprintln!(
        "{FRAMES} frames, {swaps} swaps, generation {seen_generation} in force at the end, {} denied, {} forwarded",
        stats.dropped(DropReason::Deny),
        stats.tx_packets.load(Ordering::Relaxed)
    );
}
