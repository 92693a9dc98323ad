//! Network simulation for Nexus Cloud: thousands of nodes in one process, in virtual time.
//!
//! Every simulated node runs the real code of the fleet: `nexus_mesh::Mesh` (chitchat pools,
//! the membership table and failure detection, the gateway reports that join site pools
//! through the WAN pool) and `nexus_crdt::ConfigDoc` replicas (signed changes, authorization,
//! automerge sync sessions), spread by the mesh's broadcast and anti-entropy rules. Only the
//! network is simulated ([`net`]): latency, loss, MTU, bandwidth, partitions, one-way failures.
//!
//! A scenario file ([`scenario`]) describes the fleet, the network, a timeline and assertions;
//! [`run`] plays it and returns a [`report::Report`].
//!
//! Determinism: every choice the simulator makes (node keys and ids, start times, latencies,
//! losses, writers, tree orders, peers of anti-entropy) comes from the scenario's seed, and
//! time is tokio's paused clock. chitchat picks its gossip peers with its own thread-local
//! generator, which cannot be seeded from outside, so two runs of one scenario exchange
//! gossip with different peers: their figures differ slightly (the report says by how much
//! when a scenario is run more than once), never the pass/fail of a sound assertion.

pub mod net;
mod plot;
pub mod report;
pub mod scenario;

mod engine;

use std::time::Duration;

use crate::engine::Engine;
use crate::report::{
    AssertionResult, ChangeFigures, DetectionFigures, FleetFigures, GossipFigures,
    MembershipFigures, Report, RevocationFigures, TimeFigures, epidemic_curve, percentile, thin,
};
use crate::scenario::{Assertion, Scenario};

/// chitchat's gossip fanout (peers per round), for the epidemic model.
pub const GOSSIP_FANOUT: usize = 3;

/// How a run is shown.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Draw a progress bar on the terminal (stderr).
    pub progress: bool,
}

/// Plays `scenario` to its end and reports.
pub fn run(scenario: &Scenario, options: &RunOptions) -> anyhow::Result<Report> {
    scenario.check()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let started = std::time::Instant::now();
    let bar = options.progress.then(|| {
        let bar = indicatif::ProgressBar::new(scenario.duration.0.as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:40}] {pos}/{len} simulated s, {elapsed_precise} wall, {msg}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_prefix(scenario.name.clone());
        bar
    });
    let report = runtime.block_on(async {
        let engine = Engine::new(scenario);
        let world = engine.world.clone();
        let progress = |at: Duration| {
            if let Some(bar) = &bar {
                bar.set_position(at.as_secs());
                bar.set_message(format!("{} live nodes", engine::live(&world)));
            }
        };
        engine::run_timeline(&engine, &progress).await;
        let report = build_report(&engine, started.elapsed());
        engine::stop_all(&engine.world);
        report
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // Tasks of stopped nodes are dropped with the runtime.
    drop(runtime);
    Ok(report)
}

/// The seconds whose traffic counts as steady, from the quiet ones (after the boot, away from
/// events): the longest unbroken run of them, cut to a whole number of gossip intervals so
/// that it holds as many regular rounds as a node runs in that time (the fleet boots within a
/// few seconds, so rounds come in bursts). Runs shorter than one interval are all taken
/// together instead; the report then says the window may miss a round.
fn steady_window(quiet: &[(usize, u64)], interval_s: usize) -> Vec<u64> {
    let mut best: &[(usize, u64)] = &[];
    let mut start = 0;
    for i in 1..=quiet.len() {
        if i == quiet.len() || quiet[i].0 != quiet[i - 1].0 + 1 {
            if i - start > best.len() {
                best = &quiet[start..i];
            }
            start = i;
        }
    }
    if best.len() >= interval_s {
        let whole = best.len() / interval_s * interval_s;
        best[..whole].iter().map(|(_, b)| *b).collect()
    } else {
        quiet.iter().map(|(_, b)| *b).collect()
    }
}

fn build_report(engine: &Engine, wall: Duration) -> Report {
    let world = &engine.world;
    let scenario = &world.scenario;
    let stats = world.net.stats();
    let simulated = scenario.duration.0.as_secs_f64();
    let (nodes, anchors, gateways) = engine::counts(world);
    let record = world.record.lock().unwrap_or_else(|p| p.into_inner());
    let per_node_s = |total: u64| total as f64 / nodes.max(1) as f64 / simulated.max(1e-9);

    // Steady state: seconds after the boot, with no event within the 10 s before.
    let warmup = (simulated / 3.0).min(10.0) as usize;
    let busy: Vec<f64> = scenario
        .timeline
        .iter()
        .map(|e| e.at.0.as_secs_f64())
        .collect();
    let quiet: Vec<(usize, u64)> = stats
        .per_second
        .iter()
        .copied()
        .enumerate()
        .filter(|(s, _)| *s >= warmup && (*s as f64) < simulated.floor())
        .filter(|(s, _)| {
            !busy
                .iter()
                .any(|at| (*s as f64) + 1.0 > *at && (*s as f64) < at + 10.0)
        })
        .collect();
    let interval_s = scenario
        .mesh
        .gossip_interval
        .0
        .as_secs_f64()
        .ceil()
        .max(1.0) as usize;
    let steady = steady_window(&quiet, interval_s);
    let short_window = !steady.is_empty() && steady.len() < interval_s;
    let steady_bits = (!steady.is_empty()).then(|| {
        steady.iter().sum::<u64>() as f64 * 8.0 / steady.len() as f64 / nodes.max(1) as f64
    });
    let gossip = GossipFigures {
        interval_ms: scenario.mesh.gossip_interval.0.as_millis() as u64,
        fanout: GOSSIP_FANOUT,
        bytes_per_node_per_s: per_node_s(stats.gossip_bytes.iter().sum()),
        messages_per_node_per_s: per_node_s(stats.gossip_msgs.iter().sum()),
        steady_bits_per_node_per_s: steady_bits,
        largest_datagram: stats.largest,
        over_mtu: stats.over_mtu,
        dropped_loss: stats.dropped_loss,
        dropped_partition: stats.dropped_partition,
        config_bytes_per_node_per_s: per_node_s(stats.config_bytes.iter().sum()),
    };

    let converged_at = record.convergence.first().and_then(|(_, done)| *done);
    let membership = MembershipFigures {
        converged_at_s: converged_at.map(|d| d.as_secs_f64()),
    };

    let mut samples = Vec::new();
    let mut undetected = 0;
    let mut undetected_examples: Vec<String> = Vec::new();
    let mut everywhere: Option<f64> = Some(0.0);
    for crash in &record.crashes {
        let mut worst = 0.0f64;
        for observer in &crash.observers {
            // Pairs whose observer died, or whose subject came back first, prove nothing.
            let observer_alive = !record
                .crashes
                .iter()
                .any(|c| c.node == *observer && c.at >= crash.at);
            match crash.detected.get(observer) {
                Some(at) => {
                    let ms = (*at - crash.at).as_secs_f64() * 1000.0;
                    samples.push(ms);
                    worst = worst.max(ms);
                }
                None if observer_alive && crash.ended.is_none() => {
                    undetected += 1;
                    if undetected_examples.len() < 5 {
                        undetected_examples.push(format!(
                            "{} never saw {} (crashed at {:.2} s) offline",
                            record.names[*observer],
                            record.names[crash.node],
                            crash.at.as_secs_f64()
                        ));
                    }
                }
                None => {}
            }
        }
        everywhere = everywhere.map(|e| e.max(worst));
    }
    if undetected > 0 || record.crashes.is_empty() {
        everywhere = None;
    }
    samples.sort_by(f64::total_cmp);
    let names = &record.names;
    let detection = DetectionFigures {
        crashed: record.crashes.len(),
        p50_ms: percentile(&samples, 50.0),
        p99_ms: percentile(&samples, 99.0),
        max_ms: samples.last().copied(),
        everywhere_ms: everywhere,
        undetected,
        false_positives: record.false_positives.len(),
        false_positive_examples: record
            .false_positives
            .iter()
            .take(10)
            .map(|(o, s, at)| {
                format!(
                    "{} saw {} offline at {:.2} s",
                    names[*o],
                    names[*s],
                    at.as_secs_f64()
                )
            })
            .collect(),
        samples_ms: samples,
    };

    let interval_ms = scenario.mesh.gossip_interval.ms();
    let changes: Vec<ChangeFigures> = record
        .changes
        .iter()
        .filter(|c| c.label != "revocation")
        .map(|c| {
            // A node that crashed before the change reached it is no longer a target.
            let targets: Vec<usize> = c
                .targets
                .iter()
                .copied()
                .filter(|t| c.arrivals.contains_key(t) || world.alive(*t))
                .collect();
            let mut arrivals: Vec<f64> = targets
                .iter()
                .filter_map(|t| c.arrivals.get(t))
                .map(|at| (*at - c.at).as_secs_f64() * 1000.0)
                .collect();
            arrivals.sort_by(f64::total_cmp);
            let targets = targets.len();
            let at_fraction = |f: f64| -> Option<f64> {
                let need = ((targets as f64) * f).ceil().max(1.0) as usize;
                arrivals.get(need - 1).copied()
            };
            let curve: Vec<(f64, usize)> = arrivals
                .iter()
                .enumerate()
                .map(|(i, ms)| (*ms, i + 1))
                .collect();
            let until = arrivals
                .last()
                .copied()
                .unwrap_or(0.0)
                .max(interval_ms * 40.0);
            ChangeFigures {
                label: c.label.clone(),
                document: c.document.clone(),
                origin: c.origin.clone(),
                at_s: c.at.as_secs_f64(),
                targets,
                curve: thin(curve, 500),
                p50_ms: at_fraction(0.5),
                p99_ms: at_fraction(0.99),
                p999_ms: at_fraction(0.999),
                p100_ms: (arrivals.len() == targets)
                    .then(|| arrivals.last().copied())
                    .flatten(),
                model: epidemic_curve(targets, GOSSIP_FANOUT as f64, interval_ms, until, 200),
            }
        })
        .collect();

    let revocations: Vec<RevocationFigures> = record
        .revocations
        .iter()
        .map(|r| {
            let refused: Vec<f64> = r
                .targets
                .iter()
                .filter_map(|t| r.refused_at.get(t))
                .map(|at| (*at - r.at).as_secs_f64() * 1000.0)
                .collect();
            RevocationFigures {
                node: names[r.node].clone(),
                at_s: r.at.as_secs_f64(),
                everywhere_ms: (refused.len() == r.targets.len())
                    .then(|| refused.iter().copied().fold(0.0, f64::max)),
                refused_by: refused.len(),
                targets: r.targets.len(),
            }
        })
        .collect();
    let convergence = record.convergence.clone();
    drop(record);

    let mut report = Report {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        fleet: FleetFigures {
            nodes,
            sites: scenario.fleet.sites,
            anchors,
            gateways,
            largest_pool: engine::largest_pool(world),
        },
        time: TimeFigures {
            simulated_s: simulated,
            wall_s: wall.as_secs_f64(),
            speed: simulated / wall.as_secs_f64().max(1e-9),
            peak_rss_bytes: peak_rss(),
        },
        gossip,
        membership,
        detection,
        changes,
        revocations,
        assertions: Vec::new(),
        notes: undetected_examples
            .into_iter()
            .chain(short_window.then(|| {
                format!(
                    "the steady window ({} s) is shorter than one gossip interval ({interval_s} s): its figure may miss a round",
                    steady.len()
                )
            }))
            .chain([
            "chitchat picks gossip peers with its own unseeded generator: repeated runs differ slightly in gossip figures".into(),
            format!(
                "gossip datagrams are not signed in the simulation; each counts the {} bytes signing adds",
                net::AUTH_OVERHEAD
            ),
        ])
            .collect(),
    };
    report.assertions = scenario
        .assertions
        .iter()
        .map(|a| check(a, &report, &convergence, world))
        .collect();
    report
}

fn check(
    assertion: &Assertion,
    report: &Report,
    convergence: &[(Duration, Option<Duration>)],
    world: &engine::World,
) -> AssertionResult {
    let ms = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.0} ms"));
    match assertion {
        Assertion::ConvergeWithin { within } => {
            let worst = convergence
                .iter()
                .map(|(since, done)| done.map(|d| d.saturating_sub(*since)))
                .try_fold(Duration::ZERO, |w, d| d.map(|d| w.max(d)));
            AssertionResult {
                text: format!("membership converges within {} ms", within.0.as_millis()),
                passed: worst.is_some_and(|w| w <= within.0),
                detail: match worst {
                    Some(w) => format!("slowest convergence {} ms", w.as_millis()),
                    None => "did not converge before the end".into(),
                },
            }
        }
        Assertion::ChangeReaches { fraction, within } => {
            let worst = report
                .changes
                .iter()
                .map(|c| {
                    let need = ((c.targets as f64) * fraction).ceil().max(1.0) as usize;
                    c.curve.iter().find(|(_, n)| *n >= need).map(|(t, _)| *t)
                })
                .try_fold(0.0f64, |w, t| t.map(|t| w.max(t)));
            AssertionResult {
                text: format!(
                    "every change reaches {:.1}% of its nodes within {} ms",
                    fraction * 100.0,
                    within.0.as_millis()
                ),
                passed: !report.changes.is_empty() && worst.is_some_and(|w| w <= within.ms()),
                detail: format!("slowest: {}", ms(worst)),
            }
        }
        Assertion::NoAcknowledgedWriteLost => {
            let missing = engine::missing_writes(world);
            AssertionResult {
                text: "no acknowledged write lost".into(),
                passed: missing.is_empty(),
                detail: if missing.is_empty() {
                    format!(
                        "every live node holds all {} changes",
                        report.changes.len() + report.revocations.len()
                    )
                } else {
                    format!(
                        "{} missing, e.g. {}",
                        missing.len(),
                        missing
                            .iter()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                },
            }
        }
        Assertion::DetectedWithin { within } => {
            let d = &report.detection;
            AssertionResult {
                text: format!(
                    "every crashed node is offline everywhere within {} ms",
                    within.0.as_millis()
                ),
                passed: d.crashed > 0
                    && !d.samples_ms.is_empty()
                    && d.everywhere_ms.is_some_and(|e| e <= within.ms()),
                detail: format!(
                    "{} crashed, everywhere after {}, {} pairs undetected",
                    d.crashed,
                    ms(d.everywhere_ms),
                    d.undetected
                ),
            }
        }
        Assertion::NoFalseOffline => {
            let d = &report.detection;
            AssertionResult {
                text: "no live, reachable node marked offline".into(),
                passed: d.false_positives == 0,
                detail: if d.false_positives == 0 {
                    "0 false positives".into()
                } else {
                    format!(
                        "{} false positives, e.g. {}",
                        d.false_positives,
                        d.false_positive_examples.join("; ")
                    )
                },
            }
        }
        Assertion::RevokedRefusedWithin { within } => {
            let worst = report
                .revocations
                .iter()
                .map(|r| r.everywhere_ms)
                .try_fold(0.0f64, |w, t| t.map(|t| w.max(t)));
            AssertionResult {
                text: format!(
                    "a revoked node is refused everywhere within {} ms",
                    within.0.as_millis()
                ),
                passed: !report.revocations.is_empty() && worst.is_some_and(|w| w <= within.ms()),
                detail: format!("slowest: {}", ms(worst)),
            }
        }
        Assertion::GossipBelow { bits_per_s } => {
            let steady = report.gossip.steady_bits_per_node_per_s;
            AssertionResult {
                text: format!(
                    "steady gossip at most {:.1} kbit/s per node",
                    bits_per_s / 1000.0
                ),
                passed: steady.is_some_and(|s| s <= *bits_per_s),
                detail: match steady {
                    Some(s) => format!("{:.2} kbit/s per node", s / 1000.0),
                    None => "no steady window in the run".into(),
                },
            }
        }
    }
}

/// Peak resident memory of this process (Linux `VmHWM`), 0 if unknown.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::steady_window;

    #[test]
    fn the_steady_window_is_the_longest_quiet_run_cut_to_whole_intervals() {
        // Quiet seconds 10..=19 (10 s) and 30..=64 (35 s), one byte each, with gossip every 30 s.
        let quiet: Vec<(usize, u64)> = (10..20).chain(30..65).map(|s| (s, 1)).collect();
        assert_eq!(steady_window(&quiet, 30).len(), 30);
        // No run holds a whole interval: every quiet second counts.
        assert_eq!(steady_window(&quiet, 60).len(), 45);
        assert_eq!(steady_window(&quiet, 5).len(), 35);
        assert!(steady_window(&[], 30).is_empty());
    }
}
