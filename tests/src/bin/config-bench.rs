//! Change-to-applied latency of replicated configuration on a loopback fleet of real
//! processes: from the moment a route write is sent to one node until each other node serves
//! it from `GET /v1/routes/{id}`.
//!
//! `cargo build --release -p nexus-node -p nexus-tests && \
//!  target/release/nexus-config-bench --nodes 10,50 --rounds 10 --write docs/benchmarks.md`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use nexus_tests::Fleet;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Fleet sizes (anchor included), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    nodes: Vec<usize>,
    /// Writes to time per fleet size.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Replace the section between the config-bench markers in this file.
    #[arg(long)]
    write: Option<PathBuf>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn measure(n: usize, rounds: usize) -> anyhow::Result<(Vec<f64>, Duration)> {
    let started = Instant::now();
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
    // Untimed: every node holds the fleet document (it registers the tenant, so writes
    // validate) before the first write.
    nexus_tests::wait_until(
        Duration::from_secs(60),
        "the fleet document everywhere",
        || async { fleet.config_converged("fleet", n).await },
    )
    .await?;
    let apis: Vec<String> = fleet.nodes.iter().map(|node| node.api.clone()).collect();
    let mut samples = Vec::new();
    for round in 0..rounds {
        let writer = 1 + round % (n - 1);
        let id = format!("bench-{round}");
        let body = json!({
            "id": id, "name": id, "tenant_id": "", "priority": 1,
            "match": {"source_node_ids": [], "dest_capabilities": [], "stream_modes": [], "message_types": []},
            "action": {"type": "allow"}, "enabled": true, "created_at": 0
        });
        let sent = Instant::now();
        let deadline = sent + Duration::from_secs(30);
        let (status, answer) = fleet.post_json(&apis[writer], "/v1/routes", &body).await?;
        anyhow::ensure!(status == 201, "write refused: {status} {answer}");
        let mut pending: Vec<usize> = (0..n).filter(|i| *i != writer).collect();
        while !pending.is_empty() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "not applied within 30 s on {pending:?}"
            );
            // Poll every pending node at once, so the sweep itself adds little.
            let polls = pending.iter().map(|&i| {
                let (fleet, api, id) = (&fleet, apis[i].clone(), id.clone());
                async move {
                    let seen = fleet
                        .get(&api, &format!("/v1/routes/{id}"))
                        .await
                        .is_ok_and(|(s, _)| s == 200);
                    (i, seen, sent.elapsed())
                }
            });
            let mut still = Vec::new();
            for (i, seen, at) in futures::future::join_all(polls).await {
                if seen {
                    samples.push(at.as_secs_f64() * 1e3);
                } else {
                    still.push(i);
                }
            }
            pending = still;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok((samples, boot))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let mut rows = String::new();
    for &n in &args.nodes {
        anyhow::ensure!(n >= 3, "at least 3 nodes");
        let (mut samples, boot) = measure(n, args.rounds).await?;
        samples.sort_by(f64::total_cmp);
        let row = format!(
            "| {n} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} s |\n",
            samples.len(),
            percentile(&samples, 50.0),
            percentile(&samples, 99.0),
            samples.last().copied().unwrap_or(f64::NAN),
            boot.as_secs_f64()
        );
        print!("{row}");
        rows.push_str(&row);
    }
    let section = format!(
        "<!-- config-bench:start -->\n## Configuration change to applied\n\n\
         Command: `cargo build --release -p nexus-node -p nexus-tests && target/release/nexus-config-bench --nodes {} --rounds {} --write docs/benchmarks.md`. \
         Machine: {} cores, {cpu}.\n\n\
         Each round writes one route policy (`POST /v1/routes`) on a plain node and polls every other node's `GET /v1/routes/{{id}}` \
         (HTTPS, all pending nodes polled concurrently every few ms) until it serves it. \
         The time counts from sending the write: it includes the write's own validation and fsync. Timing starts once every node holds the fleet document. Goal: p99 < 250 ms at 50 nodes.\n\n\
         | nodes | samples (node × write) | p50 | p99 | max | fleet boot |\n|---|---|---|---|---|---|\n{rows}<!-- config-bench:end -->\n",
        args.nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    print!("{section}");
    if let Some(path) = args.write {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let updated = match (
            text.find("<!-- config-bench:start -->"),
            text.find("<!-- config-bench:end -->"),
        ) {
            (Some(a), Some(b)) => {
                let end = b + "<!-- config-bench:end -->\n".len();
                format!("{}{section}{}", &text[..a], text.get(end..).unwrap_or(""))
            }
            _ => format!("{text}\n{section}"),
        };
        std::fs::write(&path, updated)?;
    }
    Ok(())
}
