//! Change-to-applied latency of replicated configuration on a loopback fleet of real
//! processes, and the bytes pushed per change.
//!
//! `cargo build --release -p nexus-node -p nexus-tests && \
//!  target/release/nexus-config-bench --nodes 10,50 --fanouts 6,64 --rounds 10 --write docs/benchmarks.md`
//!
//! Each round writes one route policy (`POST /v1/routes`) on a plain node. Every node logs,
//! under the target `nexus_config_applied`, each change it applies with the time since the
//! author committed it (same machine, same clock); the figures come from those lines, so the
//! measurement puts no load on the nodes (a round is done when every log shows it). The
//! write's own latency (validation, fsync, answer) is reported beside it. Fan-outs
//! are set through `PATCH /v1/fleet/settings` (`push_fanout`): 64 means the writer pushes to
//! every peer itself, smaller values push down a tree.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use nexus_tests::Fleet;
use nexus_tests::bench::{free_port, percentile};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Fleet sizes (anchor included), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    nodes: Vec<usize>,
    /// Push fan-outs to compare in the same fleet, comma-separated (1..=64).
    #[arg(long, value_delimiter = ',', default_value = "6,64")]
    fanouts: Vec<u64>,
    /// Writes to time per fleet size and fan-out.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Replace the section between the config-bench markers in this file.
    #[arg(long)]
    write: Option<PathBuf>,
}

struct Figures {
    fanout: u64,
    /// Node-recorded commit-to-applied, ms, one per (node, write).
    applied: Vec<f64>,
    /// The write's latency as its client saw it, ms.
    observed: Vec<f64>,
    /// Push payload bytes per change per receiving node.
    bytes_per_node: f64,
    /// How many (node, write) pairs anti-entropy delivered before the push did.
    by_sync: usize,
}

/// `(lag_ms, by sync)` of every `nexus_config_applied` line naming `object` in `log`.
fn applied_lags(log: &str, object: &str) -> Vec<(f64, bool)> {
    log.lines()
        .filter(|l| l.contains("nexus_config_applied") && l.ends_with(object))
        .filter_map(|l| {
            let rest = &l[l.find("lag_ms=")? + "lag_ms=".len()..];
            let lag = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((lag, l.contains("path=\"sync\"")))
        })
        .collect()
}

async fn push_bytes(fleet: &Fleet) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for node in &fleet.nodes {
        total += fleet
            .metric(&node.api, "nexus_config_push_bytes_total", "")
            .await?;
    }
    Ok(total)
}

async fn measure(
    n: usize,
    fanouts: &[u64],
    rounds: usize,
) -> anyhow::Result<(Vec<Figures>, Duration)> {
    let started = Instant::now();
    nexus_tests::set_nexus_env("NEXUS_LOG", "warn,nexus_config_applied=debug");
    let mut fleet = Fleet::init().await?;
    let token = fleet.token(json!({"uses": n, "ttl_seconds": 3600})).await?["token"]
        .as_str()
        .context("token")?
        .to_string();
    for _ in 1..n {
        fleet.join(&token, &[]).await?;
    }
    fleet.converge(n, "online", &[]).await?;
    let boot = started.elapsed();
    let apis: Vec<String> = fleet.nodes.iter().map(|node| node.api.clone()).collect();
    let http = nexus_tests::api_client(&fleet.anchor().dir)?;
    let mut out = Vec::new();
    for &fanout in fanouts {
        let response = http
            .patch(format!("{}/v1/fleet/settings", apis[0]))
            .bearer_auth(&fleet.admin_key)
            .json(&json!({"push_fanout": fanout}))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "setting push_fanout: {}",
            response.text().await?
        );
        // Untimed: every node holds the fleet document with the setting before the first write.
        nexus_tests::wait_until(
            Duration::from_secs(60),
            "the fleet document everywhere",
            || async { fleet.config_converged("fleet", n).await },
        )
        .await?;
        let bytes_before = push_bytes(&fleet).await?;
        let mut observed = Vec::new();
        let logs: Vec<PathBuf> = fleet
            .nodes
            .iter()
            .map(|node| node.dir.with_extension("log"))
            .collect();
        for round in 0..rounds {
            let writer = 1 + round % (n - 1);
            let id = format!("bench-f{fanout}-{round}");
            let object = format!("routes.{id}");
            let body = json!({
                "id": id, "name": id, "priority": 1,
                "match": {"stream_modes": [], "message_types": []},
                "action": {"type": "allow"}
            });
            let sent = Instant::now();
            let deadline = sent + Duration::from_secs(30);
            let (status, answer) = fleet.post_json(&apis[writer], "/v1/routes", &body).await?;
            anyhow::ensure!(status == 201, "write refused: {status} {answer}");
            // The write's own latency, as its client saw it (validation + fsync + answer).
            observed.push(sent.elapsed().as_secs_f64() * 1e3);
            // Done when every other node's log shows the change applied: reading the logs puts
            // no load on the nodes, unlike polling their APIs.
            let mut pending: Vec<usize> = (0..n).filter(|i| *i != writer).collect();
            while !pending.is_empty() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "not applied within 30 s on {pending:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                pending.retain(|&i| {
                    !std::fs::read_to_string(&logs[i]).is_ok_and(|log| {
                        log.lines()
                            .any(|l| l.contains("nexus_config_applied") && l.ends_with(&object))
                    })
                });
            }
        }
        let bytes = push_bytes(&fleet).await? - bytes_before;
        let mut applied = Vec::new();
        let mut by_sync = 0;
        for node in &fleet.nodes {
            let log = node.log();
            for round in 0..rounds {
                for (lag, sync) in applied_lags(&log, &format!("routes.bench-f{fanout}-{round}")) {
                    applied.push(lag);
                    by_sync += usize::from(sync);
                }
            }
        }
        anyhow::ensure!(
            applied.len() >= rounds * (n - 1),
            "only {} applied lines for {} (node, write) pairs: is the nexus binary current?",
            applied.len(),
            rounds * (n - 1),
        );
        applied.sort_by(f64::total_cmp);
        observed.sort_by(f64::total_cmp);
        out.push(Figures {
            fanout,
            applied,
            observed,
            bytes_per_node: bytes / (rounds * (n - 1)) as f64,
            by_sync,
        });
    }
    Ok((out, boot))
}

/// The baseline an operator would pick instead: one etcd member (Debian's `etcd-server`,
/// default durability) and `watchers` watch streams on one key over its JSON gateway. Each
/// round puts a value and times until every watcher has received it. `None` when there is no
/// `etcd` binary.
async fn etcd_baseline(watchers: usize, rounds: usize) -> anyhow::Result<Option<Vec<f64>>> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let Some(etcd) = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("no etcd binary: `apt-get install etcd-server` to measure the etcd baseline");
        return Ok(None);
    };
    let dir = tempfile::tempdir()?;
    let (client, peer) = (free_port()?, free_port()?);
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut child = std::process::Command::new(etcd)
        .args([
            "--name",
            "bench",
            "--data-dir",
            dir.path().to_str().context("utf-8 path")?,
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("bench={peer_url}"),
            "--log-level",
            "error",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting etcd")?;
    let http = reqwest::Client::new();
    let result = async {
        nexus_tests::wait_until(Duration::from_secs(20), "etcd serves", || async {
            http.get(format!("{url}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await?;
        let key = b64("bench/key");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String, Instant)>();
        let mut streams = Vec::new();
        for w in 0..watchers {
            let mut response = http
                .post(format!("{url}/v3/watch"))
                .json(&json!({"create_request": {"key": key}}))
                .send()
                .await?;
            let tx = tx.clone();
            streams.push(tokio::spawn(async move {
                let mut buffer = String::new();
                while let Ok(Some(chunk)) = response.chunk().await {
                    let at = Instant::now();
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buffer.find('\n') {
                        let line: String = buffer.drain(..=end).collect();
                        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                            continue;
                        };
                        for event in v["result"]["events"].as_array().into_iter().flatten() {
                            if let Some(value) = event["kv"]["value"].as_str() {
                                let _ = tx.send((w, value.to_string(), at));
                            }
                        }
                    }
                }
            }));
        }
        // Let every watch be registered before the first put.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut samples = Vec::new();
        for round in 0..rounds {
            let value = b64(&format!("round-{round}"));
            let sent = Instant::now();
            let put = http
                .post(format!("{url}/v3/kv/put"))
                .json(&json!({"key": key, "value": value}))
                .send()
                .await?;
            anyhow::ensure!(put.status().is_success(), "etcd put: {}", put.status());
            let mut seen = std::collections::HashSet::new();
            while seen.len() < watchers {
                let (w, v, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .context("etcd watchers did not all hear the put within 10 s")?
                    .context("watch streams ended")?;
                if v == value && seen.insert(w) {
                    samples.push((at - sent).as_secs_f64() * 1e3);
                }
            }
        }
        for s in streams {
            s.abort();
        }
        samples.sort_by(f64::total_cmp);
        anyhow::Ok(samples)
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result.map(Some)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cpu = nexus_tests::bench::cpu_model();
    let mut rows = String::new();
    for &n in &args.nodes {
        anyhow::ensure!(n >= 3, "at least 3 nodes");
        let (figures, boot) = measure(n, &args.fanouts, args.rounds).await?;
        for f in figures {
            let row = format!(
                "| {n} | {} | {} ({} by sync) | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} B | {:.1} s |\n",
                if f.fanout >= n as u64 - 1 {
                    format!("{} (direct)", f.fanout)
                } else {
                    format!("{} (tree)", f.fanout)
                },
                f.applied.len(),
                f.by_sync,
                percentile(&f.applied, 50.0),
                percentile(&f.applied, 99.0),
                f.applied.last().copied().unwrap_or(f64::NAN),
                percentile(&f.observed, 50.0),
                percentile(&f.observed, 99.0),
                f.bytes_per_node,
                boot.as_secs_f64()
            );
            print!("{row}");
            rows.push_str(&row);
        }
        if let Some(etcd) = etcd_baseline(n - 1, args.rounds).await? {
            let row = format!(
                "| {n} | etcd 3.4, 1 member, {} watchers | {} | {:.1} ms | {:.1} ms | {:.1} ms | | | | |\n",
                n - 1,
                etcd.len(),
                percentile(&etcd, 50.0),
                percentile(&etcd, 99.0),
                etcd.last().copied().unwrap_or(f64::NAN),
            );
            print!("{row}");
            rows.push_str(&row);
        }
    }
    let section = format!(
        "<!-- config-bench:start -->\n## Configuration change to applied\n\n\
         Command: `cargo build --release -p nexus-node -p nexus-tests && target/release/nexus-config-bench --nodes {} --fanouts {} --rounds {} --write docs/benchmarks.md`. \
         Machine: {} cores, {cpu}.\n\n\
         Each round writes one route policy (`POST /v1/routes`) on a plain node. **applied** is what every other node \
         recorded: from the author committing the change to this node having verified and applied it and serving it (its store thread writes it to disk a moment later) \
         (logged under `nexus_config_applied`, same clock; the bench reads the logs, so it puts no load on the nodes). \
         **write** is the `POST` as its client saw it (validation, commit, fsync, answer) on the writing node. **bytes** is the push payload (JSON request bodies, before QUIC/TLS \
         framing) per change per receiving node, relays included. Fan-out is `push_fanout` in the fleet settings: \
         direct = the writer sends to every peer itself; tree = each receiver relays to its share of the rest. \
         Goal: p99 < 250 ms at 50 nodes. **etcd** is the baseline measured in the same run: one `etcd` 3.4 member (Debian \
         `etcd-server`, default fsync) on loopback with N-1 watch streams on one key over its JSON gateway; applied = from \
         sending the put to each watcher receiving the event. It is a central store notifying watchers; Nexus is N full \
         replicas each verifying the author's signature and MIC and storing the change, all N processes on these 2 cores.\n\n\
         | nodes | fan-out | samples (node × write) | applied p50 | applied p99 | applied max | write p50 | write p99 | bytes | fleet boot |\n\
         |---|---|---|---|---|---|---|---|---|---|\n{rows}<!-- config-bench:end -->\n",
        args.nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.fanouts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    print!("{section}");
    if let Some(path) = args.write {
        nexus_tests::bench::write_section(&path, "config-bench", &section)?;
    }
    Ok(())
}
