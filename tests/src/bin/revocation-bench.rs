//! Revocation-to-enforcement time on a loopback fleet of real processes: from the revoke call on
//! the anchor until every other node reports the certificate revoked (the moment its gossip, QUIC
//! and API checks refuse it: they all consult the same revocation set).
//!
//! `cargo build --release -p nexus-node -p nexus-tests && \
//!  target/release/nexus-revocation-bench --nodes 10 --rounds 5 --write docs/benchmarks.md`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use nexus_tests::Fleet;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Fleet size, anchor included.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Revocations to time (each revokes a different node).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Replace the section between the revocation-bench markers in this file.
    #[arg(long)]
    write: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.nodes >= 3 && args.rounds < args.nodes - 1,
        "need at least 3 nodes and fewer rounds than non-anchor nodes"
    );
    let mut fleet = Fleet::init().await?;
    for _ in 1..args.nodes {
        let token = fleet.token(json!({})).await?["token"]
            .as_str()
            .context("token")?
            .to_string();
        fleet.join(&token, &[]).await?;
    }
    fleet.converge(args.nodes, "online", &[]).await?;
    let anchor = fleet.anchor().api.clone();
    let mut samples = Vec::new();
    for round in 0..args.rounds {
        let victim = fleet.nodes[1 + round].node_id.clone();
        let (_, node) = fleet.get(&anchor, &format!("/v1/nodes/{victim}")).await?;
        let serial = node["certificate_serial"]
            .as_str()
            .context("certificate_serial")?
            .to_string();
        // Nodes revoked in earlier rounds are out of the fleet and hear nothing more.
        let observers: Vec<String> = fleet
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i == 0 || *i > round + 1)
            .map(|(_, n)| n)
            .map(|n| n.api.clone())
            .collect();
        let started = Instant::now();
        let (status, body) = fleet
            .post(&anchor, &format!("/v1/mics/{serial}/revoke"))
            .await?;
        anyhow::ensure!(status == 200, "revoke answered {status}: {body}");
        let acknowledged = started.elapsed();
        let mut pending = observers.clone();
        let mut last = Duration::ZERO;
        let limit = Instant::now() + Duration::from_secs(30);
        while !pending.is_empty() {
            anyhow::ensure!(
                Instant::now() < limit,
                "not enforced within 30 s: {pending:?}"
            );
            let mut still = Vec::new();
            for api in pending {
                let seen = fleet
                    .get(&api, &format!("/v1/nodes/{victim}"))
                    .await
                    .is_ok_and(|(_, n)| n["certificate_revoked"] == true);
                if seen {
                    last = started.elapsed();
                } else {
                    still.push(api);
                }
            }
            pending = still;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "round {round}: acknowledged {:.1} ms, enforced on all {} other nodes {:.1} ms",
            acknowledged.as_secs_f64() * 1e3,
            observers.len(),
            last.as_secs_f64() * 1e3
        );
        samples.push((acknowledged, last));
    }
    let mut enforced: Vec<f64> = samples.iter().map(|s| s.1.as_secs_f64() * 1e3).collect();
    enforced.sort_by(f64::total_cmp);
    let acked: f64 =
        samples.iter().map(|s| s.0.as_secs_f64() * 1e3).sum::<f64>() / samples.len() as f64;
    let cpu = nexus_tests::bench::cpu_model();
    let section = format!(
        "<!-- revocation-bench:start -->\n## Revocation to enforcement\n\n\
         Command: `cargo build --release -p nexus-node -p nexus-tests && target/release/nexus-revocation-bench --nodes {} --rounds {} --write docs/benchmarks.md`\n\
         (debug builds work too but are slower). Machine: {} cores, {cpu}.\n\n\
         A {}-process fleet on loopback (release binaries, HTTPS API). Each round revokes one node's MIC on the anchor \
         (`POST /v1/mics/{{serial}}/revoke`) and polls every other node still in the fleet's `GET /v1/nodes/{{id}}` until all report \
         `certificate_revoked` (the revocation set that gossip, QUIC and API checks consult). Polling adds up to a few ms.\n\n\
         | rounds | revoke acknowledged (mean) | enforced on every other node: p50 | max | goal |\n|---|---|---|---|---|\n\
         | {} | {:.1} ms | {:.1} ms | {:.1} ms | ≤ 1000 ms |\n<!-- revocation-bench:end -->\n",
        args.nodes,
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.nodes,
        samples.len(),
        acked,
        enforced[enforced.len() / 2],
        enforced[enforced.len() - 1],
    );
    print!("{section}");
    if let Some(path) = args.write {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let updated = match (
            text.find("<!-- revocation-bench:start -->"),
            text.find("<!-- revocation-bench:end -->"),
        ) {
            (Some(a), Some(b)) => {
                let end = b + "<!-- revocation-bench:end -->\n".len();
                format!("{}{section}{}", &text[..a], text.get(end..).unwrap_or(""))
            }
            _ => format!("{text}\n{section}"),
        };
        std::fs::write(&path, updated)?;
    }
    Ok(())
}
