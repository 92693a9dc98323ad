//! Policy change to enforcement: from a route policy's API write to the first frame the data
//! plane of a node treats under it, with real processes and real packets.
//!
//! `cargo build --release -p nexus-node -p nexus-tests && \
//!  target/release/nexus-enforce-bench --rounds 20 --write docs/benchmarks.md`
//!
//! One site (a network namespace this bench creates): an anchor, a node driving the veth `dp0`
//! through AF_PACKET, and a writer. The bench sends a probe frame every 250 µs on `dp1` (the other
//! end) and records what the node forwards back. Each round probes a fresh message type, waits
//! until its frames flow, then writes a route policy denying that type — on the writer (another
//! node: the change travels over QUIC first) or on the node itself — and finds the first probe
//! that never came back. Enforcement time = that probe's send time − the moment the write was
//! sent. Resolution: the 250 µs probe interval.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use nexus_dataplane::frame::{self, FrameSpec};
use nexus_dataplane::nic::af_packet::AfPacketPort;
use nexus_dataplane::nic::{Packet, Port};
use nexus_tests::bench::{cores, cpu_model, percentile, write_section};
use nexus_tests::netns::Sites;
use nexus_tests::{Fleet, wait_until};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Policy writes to time, alternating between the writer and the node itself.
    #[arg(long, default_value_t = 20)]
    rounds: u16,
    /// Replace the section between the enforce-bench markers in this file.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// The node's data-plane interface address (set by the bench; frames are sent to it).
const DP0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd0];
const PROBE_EVERY: Duration = Duration::from_micros(250);

/// Probe frames sent and received: (message type, sequence) → when.
#[derive(Default)]
struct Log {
    sent: BTreeMap<u32, (u16, Instant)>,
    back: BTreeMap<u32, u16>,
}

impl Log {
    /// The first sequence number after the last probe of type `t` that came back.
    fn after_last_back(&self, t: u16) -> u32 {
        self.back
            .iter()
            .rev()
            .find(|(_, v)| **v == t)
            .map_or(0, |(s, _)| s + 1)
    }
}

fn id_bytes(hex_id: &str) -> anyhow::Result<[u8; 16]> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut id).context("node id")?;
    Ok(id)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.rounds >= 2, "at least 2 rounds");
    let sites = Sites::create(1).context("creating the site namespace (run as root)")?;
    let site = sites.site(0);
    sites.add_veth(0, "dp0", "dp1", "02:00:00:00:00:d0")?;

    let mut fleet = Fleet::init_in(&site, &[]).await?;
    let token = fleet.token(json!({"uses": 2, "ttl_seconds": 600})).await?;
    let token = token["token"].as_str().context("token")?.to_string();
    fleet
        .join_in(&site, &token, &["--nic", "af_packet:dp0"])
        .await?;
    fleet.join_in(&site, &token, &[]).await?;
    fleet.converge(3, "online", &[]).await?;
    wait_until(
        Duration::from_secs(20),
        "every node holds the fleet document",
        || fleet.config_converged("fleet", 3),
    )
    .await?;
    let dp_api = fleet.nodes[1].api.clone();
    let writer_api = fleet.nodes[2].api.clone();
    let (src, dst) = (
        id_bytes(&fleet.nodes[2].node_id)?,
        id_bytes(&fleet.nodes[0].node_id)?,
    );

    let ports = sites.run_in(0, || (AfPacketPort::open("dp1"), AfPacketPort::open("dp1")))?;
    let (mut tx, mut rx) = (ports.0?, ports.1?);
    let log = Arc::new(Mutex::new(Log::default()));
    let probe_type = Arc::new(AtomicU16::new(100));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (log, probe_type, stop) = (log.clone(), probe_type.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut seq = 0u32;
            let mut next = Instant::now();
            // Bounded: at most 10 minutes of probes.
            while !stop.load(Ordering::Relaxed) && seq < 2_400_000 {
                let t = probe_type.load(Ordering::Relaxed);
                let mut spec = FrameSpec::new(src, dst, t);
                spec.stream_id = seq;
                let f = spec.ethernet(DP0_MAC, [0x02, 0, 0, 0, 0, 0x42], 64, 0);
                let mut burst = vec![tx.alloc(&f)?];
                let at = Instant::now();
                tx.tx_burst(&mut burst)?;
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sent
                    .insert(seq, (t, at));
                seq += 1;
                next += PROBE_EVERY;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            Ok(())
        })
    };
    let receiver = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut burst = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                burst.clear();
                rx.rx_burst(&mut burst, 32)?;
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                for p in &burst {
                    if let Ok(h) = frame::parse(p.data()) {
                        log.back.insert(h.stream_id, h.msg_type);
                    }
                }
            }
            Ok(())
        })
    };

    let mut remote = Vec::new();
    let mut local = Vec::new();
    let mut acks = Vec::new();
    for round in 0..args.rounds {
        let t = 100 + round;
        probe_type.store(t, Ordering::Relaxed);
        let flowing = |log: &Log| {
            log.back
                .values()
                .rev()
                .take(64)
                .filter(|v| **v == t)
                .count()
                >= 20
        };
        wait_until(
            Duration::from_secs(20),
            "probes of the new type come back",
            || {
                let ok = flowing(&log.lock().unwrap_or_else(|p| p.into_inner()));
                async move { ok }
            },
        )
        .await?;
        let on_self = round % 2 == 1;
        let api = if on_self { &dp_api } else { &writer_api };
        let body = json!({
            "id": format!("probe-{round}"),
            "name": format!("deny probe type {t}"),
            "priority": 10,
            "match": {"message_types": [t]},
            "action": {"type": "deny"},
        });
        let written = Instant::now();
        let (status, answer) = fleet.post_json(api, "/v1/routes", &body).await?;
        if status != 201 {
            bail!("writing the policy answered {status}: {answer}");
        }
        acks.push(written.elapsed().as_secs_f64() * 1e3);
        // Done when 200 ms of probes of this type after the write are all missing.
        let enforced = wait_until(Duration::from_secs(20), "the policy takes effect", || {
            let log = log.lock().unwrap_or_else(|p| p.into_inner());
            let missing_after = log
                .sent
                .range(log.after_last_back(t)..)
                .filter(|(_, (ty, at))| *ty == t && *at > written)
                .count();
            let done = missing_after >= 800;
            async move { done }
        })
        .await;
        enforced?;
        let log = log.lock().unwrap_or_else(|p| p.into_inner());
        let first_denied = log
            .sent
            .range(log.after_last_back(t)..)
            .find(|(_, (ty, _))| *ty == t)
            .map(|(_, (_, at))| *at)
            .context("no probe was denied")?;
        let ms = first_denied
            .saturating_duration_since(written)
            .as_secs_f64()
            * 1e3;
        eprintln!(
            "round {round}: written on {}, enforced after {ms:.2} ms",
            if on_self { "the node" } else { "another node" }
        );
        if on_self {
            local.push(ms)
        } else {
            remote.push(ms)
        }
    }
    stop.store(true, Ordering::Relaxed);
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;

    for v in [&mut remote, &mut local, &mut acks] {
        v.sort_by(f64::total_cmp);
    }
    let row = |what: &str, v: &[f64]| {
        format!(
            "| {what} | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
            v.len(),
            percentile(v, 50.0),
            percentile(v, 99.0),
            v.last().copied().unwrap_or(f64::NAN)
        )
    };
    let rows = [
        row(
            "written on another node → enforced on this node's wire",
            &remote,
        ),
        row("written on the node itself → enforced on its wire", &local),
        row("the write's answer (validated, signed, fsynced)", &acks),
    ]
    .concat();
    let nexus = nexus_tests::nexus_bin();
    let section = format!(
        "<!-- enforce-bench:start -->\n## Route policy change to enforcement\n\n\
         Command: `cargo build --release -p nexus-node -p nexus-tests && target/release/nexus-enforce-bench --rounds {} --write docs/benchmarks.md` \
         (as root: it creates a network namespace). Machine: {} cores, {}. Binary: `{}`.\n\n\
         Three real processes in one site namespace; one drives the veth `dp0` through AF_PACKET. A probe frame goes \
         in on `dp1` every 250 µs and the node forwards it back. Each round writes a `deny` route for the probe's \
         message type (`POST /v1/routes`) and measures from sending the write to the first probe the node dropped \
         (resolution 250 µs). Rounds alternate between writing on another node (push over QUIC, verify, apply, recompile) \
         and on the node itself. The recompile and swap happen without pausing traffic (that no allowed frame is lost \
         across a swap is tested in `tests/tests/dataplane.rs` and `dataplane/tests/swap.rs`). On the writing node \
         enforcement can come before the write's answer: the classifier is rebuilt as soon as the change is applied in \
         memory, while the answer waits for the fsync.\n\n\
         | path | rounds | p50 | p99 | max |\n|---|---|---|---|---|\n{rows}<!-- enforce-bench:end -->\n",
        args.rounds,
        cores(),
        cpu_model(),
        nexus.display(),
    );
    print!("{section}");
    if let Some(path) = args.write {
        write_section(&path, "enforce-bench", &section)?;
    }
    Ok(())
}
