//! Simulation benchmark: plays the large scenarios (the real mesh and configuration code of
//! thousands of nodes in virtual time) and writes their figures, the goals they are held to and
//! their plots into `docs/benchmarks.md` (section `sim-bench`) and `docs/img/`.
//!
//! ```text
//! cargo build --release -p nexus-tests --bin nexus-sim-bench
//! target/release/nexus-sim-bench --write docs/benchmarks.md simulations/scenarios/steady-1000.toml simulations/scenarios/fleet-10000.toml
//! ```
//!
//! A scenario given as `FILE=DIR` is not played again: its figures are read from the report
//! `nexus simulate FILE --out DIR` wrote (so long runs can be played one per core, side by
//! side, and written up together).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use nexus_sim::report::Report;
use nexus_sim::scenario::Scenario;
use nexus_tests::bench::{cores, cpu_model, write_section};

fn main() -> anyhow::Result<()> {
    let mut write: Option<PathBuf> = None;
    let mut scenarios: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--write" => {
                write = Some(
                    args.next()
                        .map(PathBuf::from)
                        .ok_or_else(|| anyhow::anyhow!("--write needs a file"))?,
                )
            }
            "-h" | "--help" => {
                println!("usage: nexus-sim-bench [--write docs/benchmarks.md] SCENARIO...");
                return Ok(());
            }
            _ => scenarios.push(PathBuf::from(arg)),
        }
    }
    if scenarios.is_empty() {
        anyhow::bail!(
            "name at least one scenario file (e.g. simulations/scenarios/fleet-10000.toml)"
        );
    }
    let mut reports = Vec::new();
    let mut commands = Vec::new();
    for arg in &scenarios {
        let arg = arg.display().to_string();
        if let Some((file, dir)) = arg.split_once('=') {
            let (path, out) = (PathBuf::from(file), PathBuf::from(dir));
            let scenario = Scenario::load(&path)?;
            let json = out.join("report.json");
            let report: Report = serde_json::from_slice(
                &std::fs::read(&json).map_err(|e| anyhow::anyhow!("{}: {e}", json.display()))?,
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", json.display()))?;
            if report.scenario != scenario.name || report.seed != scenario.seed {
                anyhow::bail!(
                    "{} holds a report of {} (seed {}), not of {} (seed {})",
                    json.display(),
                    report.scenario,
                    report.seed,
                    scenario.name,
                    scenario.seed
                );
            }
            println!("{}\n", report.summary());
            commands.push(format!(
                "`target/release/nexus simulate {file} --out {dir}`"
            ));
            reports.push((path, scenario, report, out));
            continue;
        }
        let path = PathBuf::from(&arg);
        let scenario = Scenario::load(&path)?;
        eprintln!(
            "playing {} ({} nodes)…",
            scenario.name,
            scenario.initial_nodes()
        );
        let report = nexus_sim::run(
            &scenario,
            &nexus_sim::RunOptions {
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            },
        )?;
        println!("{}\n", report.summary());
        let out = Path::new("target/sim-bench").join(&scenario.name);
        report.write(&out)?;
        reports.push((path.clone(), scenario, report, out));
    }
    if let Some(doc) = write {
        let img = doc
            .parent()
            .map(|d| d.join("img"))
            .unwrap_or_else(|| PathBuf::from("img"));
        std::fs::create_dir_all(&img)?;
        let mut section = String::from(
            "<!-- sim-bench:start -->\n## Simulation: the real mesh and configuration code at scale\n\n",
        );
        writeln!(
            section,
            "Every node runs the real `nexus_mesh::Mesh` (site and WAN pools, the membership table, the failure detector) and real `nexus_crdt` replicas spread by the mesh's broadcast and anti-entropy rules, over a simulated network in virtual time (`docs/simulation.md`). Figures from one run each; chitchat's peer choice is not seeded, so gossip figures vary a little between runs.\n"
        )?;
        let bench = format!(
            "`cargo build --release -p nexus-node -p nexus-tests && target/release/nexus-sim-bench --write docs/benchmarks.md {}`",
            scenarios
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        if commands.is_empty() {
            writeln!(section, "Command: {bench}  ")?;
        } else {
            writeln!(
                section,
                "Commands: {}, each on a core of its own; then {bench}  ",
                commands.join(", ")
            )?;
        }
        writeln!(
            section,
            "Machine: {} ({} cores); one process, one thread, tokio's paused clock.\n",
            cpu_model(),
            cores()
        )?;
        for (path, scenario, report, out) in &reports {
            write_report(&mut section, path, scenario, report)?;
            for plot in ["propagation.svg", "detection.svg"] {
                let name = format!("sim-{}-{plot}", scenario.name);
                std::fs::copy(out.join(plot), img.join(&name))?;
                writeln!(section, "![{} {plot}](img/{name})", scenario.name)?;
            }
            writeln!(section)?;
        }
        section.push_str("<!-- sim-bench:end -->\n");
        write_section(&doc, "sim-bench", &section)?;
        eprintln!("wrote {} and plots in {}", doc.display(), img.display());
    }
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    v.map_or("never".into(), |v| {
        if v >= 1000.0 {
            format!("{:.2} s", v / 1000.0)
        } else {
            format!("{v:.0} ms")
        }
    })
}

fn write_report(
    out: &mut String,
    path: &Path,
    scenario: &Scenario,
    report: &Report,
) -> std::fmt::Result {
    let m = &scenario.mesh;
    let n = &scenario.network;
    writeln!(out, "#### {} (`{}`)\n", report.scenario, path.display())?;
    if !scenario.description.is_empty() {
        writeln!(out, "{}\n", scenario.description.trim())?;
    }
    writeln!(
        out,
        "{} nodes in {} sites ({} gateways, {} anchors; largest pool {}); WAN {}–{} ms, site {}–{} ms, loss {:.0}% / {:.0}%; gossip every {} ms, detector heartbeats every {} ms to {} monitors, {} probes {} ms apart; seed {}.\n",
        report.fleet.nodes,
        report.fleet.sites,
        report.fleet.gateways,
        report.fleet.anchors,
        report.fleet.largest_pool,
        n.wan_latency.min.0.as_millis(),
        n.wan_latency.max.0.as_millis(),
        n.site_latency.min.0.as_millis(),
        n.site_latency.max.0.as_millis(),
        n.site_loss * 100.0,
        n.wan_loss * 100.0,
        m.gossip_interval.0.as_millis(),
        m.heartbeat_interval.0.as_millis(),
        m.monitors,
        m.probes,
        m.probe_gap.0.as_millis(),
        report.seed
    )?;
    writeln!(out, "| figure | measured |")?;
    writeln!(out, "|---|---|")?;
    writeln!(
        out,
        "| simulated / wall time | {:.0} s / {:.0} s ({:.2}× real time) |",
        report.time.simulated_s, report.time.wall_s, report.time.speed
    )?;
    writeln!(
        out,
        "| peak memory | {:.1} GiB |",
        report.time.peak_rss_bytes as f64 / (1u64 << 30) as f64
    )?;
    writeln!(
        out,
        "| membership converged (boot) | {} |",
        report
            .membership
            .converged_at_s
            .map_or("not within the run".into(), |s| format!("{s:.1} s"))
    )?;
    let g = &report.gossip;
    writeln!(
        out,
        "| membership traffic per node, steady | {} |",
        g.steady_bits_per_node_per_s
            .map_or("no steady window".into(), |b| format!(
                "{:.1} kbit/s",
                b / 1000.0
            ))
    )?;
    writeln!(
        out,
        "| membership traffic per node, whole run | {:.1} kbit/s, {:.1} datagrams/s |",
        g.bytes_per_node_per_s * 8.0 / 1000.0,
        g.messages_per_node_per_s
    )?;
    writeln!(
        out,
        "| largest datagram; over the {} B MTU | {} B; {} |",
        n.mtu, g.largest_datagram, g.over_mtu
    )?;
    writeln!(
        out,
        "| config traffic per node (pushes, sync sessions) | {:.2} kbit/s |",
        g.config_bytes_per_node_per_s * 8.0 / 1000.0
    )?;
    let d = &report.detection;
    writeln!(
        out,
        "| failure detection ({} crashed) p50 / p99 / everywhere | {} / {} / {} ({} pairs undetected) |",
        d.crashed,
        ms(d.p50_ms),
        ms(d.p99_ms),
        ms(d.everywhere_ms),
        d.undetected
    )?;
    writeln!(out, "| false offline | {} |", d.false_positives)?;
    for c in &report.changes {
        let model = c.model.iter().find(|(_, f)| *f >= 0.999).map(|(t, _)| *t);
        writeln!(
            out,
            "| change `{}` to {} nodes: 50% / 99% / 99.9% / 100% | {} / {} / {} / {} (gossip epidemic model, fanout {}, every {} ms: 99.9% at {}) |",
            c.label,
            c.targets,
            ms(c.p50_ms),
            ms(c.p99_ms),
            ms(c.p999_ms),
            ms(c.p100_ms),
            g.fanout,
            g.interval_ms,
            ms(model)
        )?;
    }
    for r in &report.revocations {
        writeln!(
            out,
            "| revocation of {}: refused everywhere | {} ({} of {}) |",
            r.node,
            ms(r.everywhere_ms),
            r.refused_by,
            r.targets
        )?;
    }
    writeln!(out)?;
    if !report.assertions.is_empty() {
        writeln!(out, "| goal | result |")?;
        writeln!(out, "|---|---|")?;
        for a in &report.assertions {
            writeln!(
                out,
                "| {} | {} ({}) |",
                a.text,
                if a.passed { "**met**" } else { "**missed**" },
                a.detail
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}
