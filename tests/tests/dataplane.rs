//! The data plane with real processes and real packets: a node drives a veth interface through
//! AF_PACKET, a route policy written on *another* node is enforced on its wire, the fleet view
//! shows the NIC and the counters, and a NIC that cannot be opened stops the node with a clear
//! error.
//!
//! Everything runs inside one site (a network namespace the test creates, see
//! `nexus_tests::netns`): the nodes bind the site's address, and a veth pair `dp0`/`dp1` made
//! inside the site carries the data-plane traffic. The node under test owns `dp0`; the test sends
//! and receives Nexus frames on `dp1`. The node forwards frames back out of `dp0` (one port is
//! its ingress and egress), so what the test receives is what the node let through.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nexus_dataplane::frame::{self, FrameSpec};
use nexus_dataplane::nic::Port;
use nexus_dataplane::nic::af_packet::AfPacketPort;
use nexus_tests::netns::Sites;
use nexus_tests::{Fleet, wait_until};
use serde_json::{Value, json};

const ALLOWED_TYPE: u16 = 1;
/// The node's data-plane interface address (set by the test; frames are sent to it).
const DP0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd0];
const DENIED_TYPE: u16 = 7;

fn id_bytes(hex_id: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut id).expect("a node id is 32 hex characters");
    id
}

fn deny_route(id: &str, msg_type: u16) -> Value {
    json!({
        "id": id,
        "name": format!("deny message type {msg_type}"),
        "priority": 10,
        "match": {"message_types": [msg_type]},
        "action": {"type": "deny"},
    })
}

/// What came back on the test's end of the wire: (message type, sequence number) per frame.
#[derive(Default)]
struct Seen {
    frames: Vec<(u16, u32, Instant)>,
    /// Frames that came back with more changed than the hop limit.
    altered: Vec<u32>,
}

/// The probe frame of type `t` numbered `seq`, as the sender builds it.
fn probe(src: [u8; 16], dst: [u8; 16], t: u16, seq: u32) -> Vec<u8> {
    let mut spec = FrameSpec::new(src, dst, t);
    spec.stream_id = seq;
    spec.ethernet(DP0_MAC, [0x02, 0, 0, 0, 0, 0x42], 128, 0)
}

/// Sends a frame of each type every `every`, numbering them in the stream id, and records what
/// the node sends back, until `stop`.
struct Traffic {
    stop: Arc<AtomicBool>,
    sender: Option<std::thread::JoinHandle<Vec<(u16, u32, Instant)>>>,
    receiver: Option<std::thread::JoinHandle<Seen>>,
}

impl Traffic {
    fn start(mut tx: AfPacketPort, mut rx: AfPacketPort, src: [u8; 16], dst: [u8; 16]) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                let mut seq = 0u32;
                // Bounded: at most 60 s of traffic at 500 pairs a second.
                while !stop.load(Ordering::Relaxed) && seq < 60_000 {
                    let mut burst = Vec::new();
                    for t in [ALLOWED_TYPE, DENIED_TYPE] {
                        let f = probe(src, dst, t, seq);
                        burst.push(tx.alloc(&f).expect("frame buffer"));
                        sent.push((t, seq, Instant::now()));
                    }
                    let n = tx.tx_burst(&mut burst).expect("send on dp1");
                    assert_eq!(n, 2, "the test's own port refused a frame");
                    seq += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                sent
            })
        };
        let receiver = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let mut burst = Vec::new();
                let mut idle_after_stop = 0;
                loop {
                    burst.clear();
                    let n = rx.rx_burst(&mut burst, 32).expect("receive on dp1");
                    let now = Instant::now();
                    for p in &burst {
                        let data = nexus_dataplane::nic::Packet::data(p);
                        if let Ok(h) = frame::parse(data) {
                            seen.frames.push((h.msg_type, h.stream_id, now));
                            // Intact but for the hop limit, one less than sent.
                            let mut want = probe(src, dst, h.msg_type, h.stream_id);
                            let hops = h.offset + 6;
                            want[hops] -= 1;
                            if data != want.as_slice() {
                                seen.altered.push(h.stream_id);
                            }
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        idle_after_stop += usize::from(n == 0);
                        if idle_after_stop >= 3 {
                            return seen;
                        }
                    }
                }
            })
        };
        Traffic {
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
        }
    }

    fn finish(mut self) -> (Vec<(u16, u32, Instant)>, Seen) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .sender
            .take()
            .expect("sender")
            .join()
            .expect("sender thread");
        let seen = self
            .receiver
            .take()
            .expect("receiver")
            .join()
            .expect("receiver thread");
        (sent, seen)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A node's API and id.
struct Ids {
    api: String,
    node_id: String,
}

async fn node_view(fleet: &Fleet, api: &str, node: &str) -> Value {
    fleet
        .get(api, &format!("/v1/nodes/{node}"))
        .await
        .expect("GET node")
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_written_on_another_node_is_enforced_on_the_wire() {
    let sites = Sites::create(1).expect("sites");
    let site = sites.site(0);
    let ns = sites.namespace(0).to_string();
    sites
        .add_veth(0, "dp0", "dp1", "02:00:00:00:00:d0")
        .expect("the data-plane veth");

    let mut fleet = Fleet::init_in(&site, &[]).await.expect("init");
    let token = fleet
        .token(json!({"uses": 3, "ttl_seconds": 600}))
        .await
        .expect("token");
    let token = token["token"].as_str().expect("token string").to_string();
    fleet
        .join_in(&site, &token, &["--nic", "af_packet:dp0"])
        .await
        .expect("join the NIC node");
    fleet
        .join_in(&site, &token, &[])
        .await
        .expect("join the writer");
    fleet.converge(3, "online", &[]).await.unwrap();
    let ids = |i: usize| Ids {
        api: fleet.nodes[i].api.clone(),
        node_id: fleet.nodes[i].node_id.clone(),
    };
    let (anchor, dp_node, writer) = (ids(0), ids(1), ids(2));

    // The fleet view shows the NIC.
    let view = node_view(&fleet, &writer.api, &dp_node.node_id).await;
    assert_eq!(view["nic_backend"], "af_packet", "{view}");
    assert_eq!(view["nic_model"], "veth", "{view}");
    let plain = node_view(&fleet, &writer.api, &writer.node_id).await;
    assert_eq!(plain["nic_backend"], "memory", "{plain}");

    // Frames from the writer to the anchor: both members, so both are in the forwarding table.
    let ports = sites
        .run_in(0, || (AfPacketPort::open("dp1"), AfPacketPort::open("dp1")))
        .expect("enter the site");
    let (tx, rx) = (ports.0.expect("open dp1"), ports.1.expect("open dp1"));
    let traffic = Traffic::start(tx, rx, id_bytes(&writer.node_id), id_bytes(&anchor.node_id));

    // Before the policy: both types come back. Members reach the fleet document a moment after
    // they join, so allow for the forwarding table to fill.
    wait_until(
        Duration::from_secs(20),
        "frames of both types come back",
        || async {
            fleet
                .metric(
                    &dp_node.api,
                    "nexus_dataplane_packets_total",
                    "direction=\"tx\"",
                )
                .await
                .unwrap_or(0.0)
                > 50.0
        },
    )
    .await
    .unwrap();

    // Written on another node; enforced on this one.
    let written = Instant::now();
    let (status, body) = fleet
        .post_json(
            &writer.api,
            "/v1/routes",
            &deny_route("deny-7", DENIED_TYPE),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let acked = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "the deny policy takes effect",
        || async {
            fleet
                .metric(
                    &dp_node.api,
                    "nexus_dataplane_drops_total",
                    "reason=\"deny\"",
                )
                .await
                .unwrap_or(0.0)
                > 100.0
        },
    )
    .await
    .unwrap();

    // Malformed frames on the wire are dropped and counted, the node carries on.
    let bad = sites
        .run_in(0, || {
            let mut port = AfPacketPort::open("dp1")?;
            let good =
                FrameSpec::new([1; 16], [2; 16], 1).ethernet(DP0_MAC, [2, 0, 0, 0, 0, 9], 100, 0);
            let mut bad_magic = good.clone();
            bad_magic[14] = 0;
            let frames = [good[..40].to_vec(), bad_magic];
            let mut burst: Vec<_> = frames
                .iter()
                .map(|f| port.alloc(f))
                .collect::<Result<_, _>>()?;
            port.tx_burst(&mut burst)
        })
        .expect("enter the site")
        .expect("send malformed frames");
    assert_eq!(bad, 2);
    std::thread::sleep(Duration::from_millis(500));
    let (sent, seen) = traffic.finish();

    // Every allowed frame came back, intact but for the hop limit; denied frames stopped.
    let back_allowed: BTreeSet<u32> = seen
        .frames
        .iter()
        .filter(|f| f.0 == ALLOWED_TYPE)
        .map(|f| f.1)
        .collect();
    let sent_allowed: Vec<u32> = sent
        .iter()
        .filter(|f| f.0 == ALLOWED_TYPE)
        .map(|f| f.1)
        .collect();
    let first_forwarded = *back_allowed.first().expect("allowed frames came back");
    let lost: Vec<u32> = sent_allowed
        .iter()
        .copied()
        .filter(|s| *s >= first_forwarded && !back_allowed.contains(s))
        .collect();
    assert!(
        seen.altered.is_empty(),
        "frames came back altered: {:?}",
        seen.altered
    );
    assert!(
        lost.is_empty(),
        "allowed frames lost across the policy swap: {lost:?}"
    );
    let denied_back: Vec<u32> = seen
        .frames
        .iter()
        .filter(|f| f.0 == DENIED_TYPE)
        .map(|f| f.1)
        .collect();
    let last_denied_back = *denied_back
        .iter()
        .max()
        .expect("denied-type frames passed before the policy");
    let enforced_from = sent
        .iter()
        .find(|f| f.0 == DENIED_TYPE && f.1 > last_denied_back)
        .expect("a denied-type frame was dropped");
    assert!(
        sent.iter()
            .filter(|f| f.0 == DENIED_TYPE && f.1 > last_denied_back)
            .count()
            > 100,
        "denied-type frames kept being dropped"
    );
    eprintln!(
        "policy written on another node at t=0 (acknowledged after {:?}); first frame treated \
         under it was sent {:?} after the write; {} allowed frames all forwarded",
        acked - written,
        enforced_from.2.saturating_duration_since(written),
        sent_allowed.len() - lost.len(),
    );

    // Counters: on /metrics, and in the fleet view (published every few seconds).
    // /metrics is refreshed from the engine's counters every second.
    wait_until(
        Duration::from_secs(10),
        "the deny policy's hits are exported",
        || async {
            fleet
                .metric(
                    &dp_node.api,
                    "nexus_dataplane_policy_hits_total",
                    "policy=\"deny-7\"",
                )
                .await
                .unwrap_or(0.0)
                > 100.0
        },
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        "malformed frames are counted",
        || async {
            fleet
                .metric(
                    &dp_node.api,
                    "nexus_dataplane_drops_total",
                    "reason=\"parse\"",
                )
                .await
                .unwrap_or(0.0)
                >= 2.0
        },
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(15),
        "the fleet view shows the data plane's counters",
        || async {
            let view = node_view(&fleet, &anchor.api, &dp_node.node_id).await;
            view["dataplane"]["drops"]["deny"].as_u64().unwrap_or(0) > 100
                && view["dataplane"]["rules"] == 1
                && view["dataplane"]["tx_packets"].as_u64().unwrap_or(0) > 100
        },
    )
    .await
    .unwrap();
    assert!(
        fleet.nodes.iter_mut().all(|n| n.exited().is_none()),
        "every node still runs"
    );

    // The NIC disappears: the node keeps running and the fleet sees it degraded, saying why.
    let status = Command::new("ip")
        .args(["-n", &ns, "link", "del", "dp1"])
        .status()
        .expect("ip");
    assert!(status.success());
    wait_until(
        Duration::from_secs(20),
        "the fleet sees the node degraded by its data plane",
        || async {
            let view = node_view(&fleet, &anchor.api, &dp_node.node_id).await;
            view["status"] == "degraded"
                && view["health"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("dataplane:")
        },
    )
    .await
    .unwrap_or_else(|e| {
        let log = fleet.nodes[1].log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!("{e}; the node's log ends:\n{}", tail.join("\n"))
    });
    let view = node_view(&fleet, &anchor.api, &dp_node.node_id).await;
    eprintln!(
        "after the NIC went away: {} — {}",
        view["status"], view["health"]
    );
    assert!(fleet.nodes[1].exited().is_none(), "the node still runs");
}

#[tokio::test]
async fn a_nic_that_cannot_be_opened_stops_the_node_with_what_to_do() {
    let mut fleet = Fleet::init().await.expect("init");
    let token = fleet.token(json!({"uses": 1})).await.expect("token");
    let token = token["token"].as_str().expect("token string").to_string();
    let err = fleet
        .join(&token, &["--nic", "af_packet:nxmissing0"])
        .await
        .err()
        .expect("a node without its NIC does not serve");
    let log = std::fs::read_to_string(fleet.root.path().join("node-1.log")).unwrap_or_default();
    assert!(
        log.contains("no interface named `nxmissing0`") && log.contains("--nic"),
        "the error names the interface and the flag: {err}\n{log}"
    );
    let out = nexus_tests::nexus()
        .args([
            "run",
            "--data-dir",
            fleet.anchor().dir.to_str().unwrap(),
            "--nic",
            "ethernet0",
        ])
        .output()
        .expect("run nexus");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown NIC backend") && stderr.contains("af_packet:<iface>"),
        "{stderr}"
    );
}
