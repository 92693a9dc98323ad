//! Run reports for the Nexus Cloud network simulation.
//!
//! A [`Report`] gathers the figures of one simulated run: the fleet's shape, time and memory,
//! gossip traffic, membership convergence, failure detection, config change propagation,
//! revocations and the scenario's assertions. [`Report::summary`] renders it for a terminal;
//! [`Report::write`] stores it as `report.json` next to two SVG charts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plot;

/// Everything measured in one simulated run of a scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed the run was started with.
    pub seed: u64,
    /// Shape of the simulated fleet.
    pub fleet: FleetFigures,
    /// Simulated and wall-clock time, memory.
    pub time: TimeFigures,
    /// Gossip (and config push) traffic.
    pub gossip: GossipFigures,
    /// Membership convergence.
    pub membership: MembershipFigures,
    /// Failure detection of crashed nodes.
    pub detection: DetectionFigures,
    /// One entry per config change made during the run.
    pub changes: Vec<ChangeFigures>,
    /// One entry per node revoked during the run.
    pub revocations: Vec<RevocationFigures>,
    /// The scenario's assertions and whether they held.
    pub assertions: Vec<AssertionResult>,
    /// Free text notes (e.g. sources of nondeterminism), printed at the end of the summary.
    pub notes: Vec<String>,
}

/// Shape of the simulated fleet.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FleetFigures {
    /// Nodes in the fleet.
    pub nodes: usize,
    /// Sites the nodes are spread over.
    pub sites: usize,
    /// Anchor nodes.
    pub anchors: usize,
    /// Gateway nodes.
    pub gateways: usize,
    /// Largest gossip pool (members of one site pool or of the WAN pool).
    pub largest_pool: usize,
}

/// Simulated and wall-clock time of the run, and its memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TimeFigures {
    /// Virtual seconds simulated.
    pub simulated_s: f64,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
    /// Simulated seconds per wall second.
    pub speed: f64,
    /// Peak resident memory of the process, in bytes (0: not measured).
    pub peak_rss_bytes: u64,
}

/// Gossip traffic of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GossipFigures {
    /// Gossip interval in milliseconds.
    pub interval_ms: u64,
    /// Peers gossiped to per interval.
    pub fanout: usize,
    /// Gossip bytes sent per live node per second, over the whole run.
    pub bytes_per_node_per_s: f64,
    /// Gossip datagrams sent per live node per second, over the whole run.
    pub messages_per_node_per_s: f64,
    /// Over the steady window (no timeline event in progress); None if the run had none.
    pub steady_bits_per_node_per_s: Option<f64>,
    /// Largest gossip datagram sent, in bytes.
    pub largest_datagram: usize,
    /// Datagrams larger than the link MTU (they would be fragmented).
    pub over_mtu: u64,
    /// Datagrams dropped by simulated packet loss.
    pub dropped_loss: u64,
    /// Datagrams dropped by simulated partitions.
    pub dropped_partition: u64,
    /// Config push / sync traffic (the "QUIC" side), in bytes per node per second.
    pub config_bytes_per_node_per_s: f64,
}

/// Membership convergence of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MembershipFigures {
    /// Time from start until every live node's table held every member it should (its site pool
    /// and, on gateways/anchors, the whole fleet). None = never within the run.
    pub converged_at_s: Option<f64>,
}

/// Failure detection of the nodes crashed during the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DetectionFigures {
    /// Nodes crashed during the run.
    pub crashed: usize,
    /// One sample per (observer, crashed node) pair: ms from the crash to the observer marking it offline.
    pub samples_ms: Vec<f64>,
    /// Median of `samples_ms`.
    pub p50_ms: Option<f64>,
    /// 99th percentile of `samples_ms`.
    pub p99_ms: Option<f64>,
    /// Largest of `samples_ms`.
    pub max_ms: Option<f64>,
    /// Time until every observer had marked every crashed node offline.
    pub everywhere_ms: Option<f64>,
    /// Pairs that never marked the crashed node offline by the end of the run.
    pub undetected: usize,
    /// Live, reachable nodes marked offline by someone.
    pub false_positives: usize,
    /// Up to 10 examples "observer saw X offline at t=..s".
    pub false_positive_examples: Vec<String>,
}

/// Propagation of one config change through the fleet.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChangeFigures {
    /// Label of the change in the scenario.
    pub label: String,
    /// Document changed (e.g. `fleet`).
    pub document: String,
    /// Node the change was made on.
    pub origin: String,
    /// Simulated time of the change, in seconds since the start.
    pub at_s: f64,
    /// Nodes that should receive it.
    pub targets: usize,
    /// Fraction-informed curve: (ms since the change, nodes holding it), monotone, one point per
    /// distinct arrival time (may be thinned to <= 500 points).
    pub curve: Vec<(f64, usize)>,
    /// Time until half of the targets held the change.
    pub p50_ms: Option<f64>,
    /// Time until 99% of the targets held the change.
    pub p99_ms: Option<f64>,
    /// Time until 99.9% of the targets held the change.
    pub p999_ms: Option<f64>,
    /// Time until every target held the change.
    pub p100_ms: Option<f64>,
    /// Epidemic (Serf) model for the same N, fanout and interval: (ms, fraction informed).
    pub model: Vec<(f64, f64)>,
}

/// Spread of one node revocation through the fleet.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RevocationFigures {
    /// Node revoked.
    pub node: String,
    /// Simulated time of the revocation, in seconds since the start.
    pub at_s: f64,
    /// ms until every live node refused the revoked node's gossip (None: not within the run)
    pub everywhere_ms: Option<f64>,
    /// Live nodes refusing the revoked node's gossip at the end of the run.
    pub refused_by: usize,
    /// Live nodes that should refuse it.
    pub targets: usize,
}

/// Outcome of one scenario assertion.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AssertionResult {
    /// The assertion as written in the scenario.
    pub text: String,
    /// Whether it held.
    pub passed: bool,
    /// The measured figure behind the verdict.
    pub detail: String,
}

/// Fraction of `n` nodes informed after `rounds` gossip rounds at `fanout`, by the epidemic
/// model Serf uses: `1 / (1 + (n + 1) * e^(-fanout * rounds / 2))`, clamped to `[0, 1]`.
///
/// It is about `1 / (n + 2)` at 0 rounds and tends to 1. Inputs that make it undefined (NaN)
/// give 0.
#[must_use]
pub fn epidemic_fraction(n: usize, fanout: f64, rounds: f64) -> f64 {
    let fraction = 1.0 / (1.0 + (n as f64 + 1.0) * (-0.5 * fanout * rounds).exp());
    if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    }
}

/// The epidemic model as a curve of `points` evenly spaced `(ms, fraction informed)` pairs from
/// 0 to `until_ms` inclusive, one gossip round every `interval_ms`.
///
/// Empty if `points` is 0, `interval_ms` is not a positive finite number or `until_ms` is not
/// a finite number >= 0; a single point at 0 ms if `points` is 1.
#[must_use]
pub fn epidemic_curve(
    n: usize,
    fanout: f64,
    interval_ms: f64,
    until_ms: f64,
    points: usize,
) -> Vec<(f64, f64)> {
    let valid =
        interval_ms.is_finite() && interval_ms > 0.0 && until_ms.is_finite() && until_ms >= 0.0;
    if points == 0 || !valid {
        return Vec::new();
    }
    if points == 1 {
        return vec![(0.0, epidemic_fraction(n, fanout, 0.0))];
    }
    let last = (points - 1) as f64;
    (0..points)
        .map(|i| {
            let ms = until_ms * i as f64 / last;
            (ms, epidemic_fraction(n, fanout, ms / interval_ms))
        })
        .collect()
}

/// Nearest-rank percentile `p` (0..=100, clamped) of an ascending slice: `p = 100` gives the
/// largest value, `p = 0` the smallest. None if the slice is empty or `p` is NaN.
#[must_use]
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || p.is_nan() {
        return None;
    }
    let n = sorted.len();
    // p * n / 100 is exact for whole percentages; the epsilon absorbs rounding of e.g. 99.9.
    let rank = (p.clamp(0.0, 100.0) * n as f64 / 100.0 - 1e-9).ceil();
    let index = (rank.max(1.0) as usize).min(n) - 1;
    Some(sorted[index])
}

/// Thins a curve to at most `max_points` points (at least 2): keeps the first and the last
/// point and evenly spaced points in between. A curve that is short enough is returned as is.
#[must_use]
pub fn thin(curve: Vec<(f64, usize)>, max_points: usize) -> Vec<(f64, usize)> {
    let max_points = max_points.max(2);
    if curve.len() <= max_points {
        return curve;
    }
    let last = curve.len() - 1;
    let slots = max_points - 1;
    (0..max_points).map(|i| curve[i * last / slots]).collect()
}

impl Report {
    /// Whether every assertion passed (true when there are none).
    #[must_use]
    pub fn passed(&self) -> bool {
        self.assertions.iter().all(|a| a.passed)
    }

    /// A readable terminal summary of the run, lines separated by `\n` (no trailing newline).
    #[must_use]
    pub fn summary(&self) -> String {
        let mut lines = Vec::new();
        let f = &self.fleet;
        lines.push(format!(
            "scenario {} (seed {}): {} in {}, {}, {}; largest pool {}",
            self.scenario,
            self.seed,
            plural(f.nodes, "node"),
            plural(f.sites, "site"),
            plural(f.anchors, "anchor"),
            plural(f.gateways, "gateway"),
            fmt_count(f.largest_pool as u64),
        ));

        let t = &self.time;
        let speed = if t.speed.is_finite() {
            format!("{:.2}x", t.speed)
        } else {
            "n/a".to_owned()
        };
        let memory = if t.peak_rss_bytes == 0 {
            "peak memory not measured".to_owned()
        } else {
            format!("peak memory {}", fmt_bytes(t.peak_rss_bytes))
        };
        lines.push(format!(
            "simulated {:.1} s in {:.1} s wall ({speed}), {memory}",
            t.simulated_s, t.wall_s
        ));

        lines.push(match self.membership.converged_at_s {
            Some(s) => format!("membership converged after {}", fmt_ms(s * 1000.0)),
            None => "membership did not converge within the run".to_owned(),
        });

        lines.push(self.gossip_line());
        lines.push(format!(
            "config traffic: {} per node",
            fmt_kbit(self.gossip.config_bytes_per_node_per_s * 8.0)
        ));

        self.detection_lines(&mut lines);
        self.change_lines(&mut lines);
        self.revocation_lines(&mut lines);
        self.assertion_lines(&mut lines);

        if !self.notes.is_empty() {
            lines.push("notes:".to_owned());
            lines.extend(self.notes.iter().map(|n| format!("  {n}")));
        }
        lines.join("\n")
    }

    /// Writes `report.json` (pretty JSON of the whole report), `propagation.svg` and
    /// `detection.svg` into `dir`, creating it if missing, and returns the paths written.
    ///
    /// Both charts are written even when there is nothing to plot (they then say so).
    ///
    /// # Errors
    ///
    /// Any error creating the directory, serializing the report or writing a file.
    pub fn write(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fs::create_dir_all(dir)?;
        let mut json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        json.push('\n');
        let files = [
            ("report.json", json),
            (
                "propagation.svg",
                plot::propagation_svg(&self.changes, self.gossip.fanout),
            ),
            ("detection.svg", plot::detection_svg(&self.detection)),
        ];
        let mut written = Vec::with_capacity(files.len());
        for (name, contents) in files {
            let path = dir.join(name);
            fs::write(&path, contents)?;
            written.push(path);
        }
        Ok(written)
    }

    fn gossip_line(&self) -> String {
        let g = &self.gossip;
        let run = fmt_kbit(g.bytes_per_node_per_s * 8.0);
        let rate = match g.steady_bits_per_node_per_s {
            Some(bits) => format!("{} per node steady ({run} over the run)", fmt_kbit(bits)),
            None => format!("{run} per node over the run (no steady window)"),
        };
        format!(
            "gossip: every {} to {}; {rate}, {:.1} msgs/s, largest datagram {} B, {} over MTU; \
             dropped {} by loss, {} by partitions",
            fmt_ms(g.interval_ms as f64),
            plural(g.fanout, "peer"),
            g.messages_per_node_per_s,
            fmt_count(g.largest_datagram as u64),
            fmt_count(g.over_mtu),
            fmt_count(g.dropped_loss),
            fmt_count(g.dropped_partition),
        )
    }

    fn detection_lines(&self, lines: &mut Vec<String>) {
        let d = &self.detection;
        let false_positives = plural(d.false_positives, "false positive");
        if d.crashed == 0 && d.samples_ms.is_empty() {
            lines.push(format!("failure detection: no crashes; {false_positives}"));
        } else {
            let everywhere = match d.everywhere_ms {
                Some(ms) => format!("everywhere {}", fmt_ms(ms)),
                None => "not everywhere within the run".to_owned(),
            };
            lines.push(format!(
                "failure detection: {} crashed; p50 {}, p99 {}, max {}, {everywhere}; {} undetected; \
                 {false_positives}",
                fmt_count(d.crashed as u64),
                fmt_opt_ms(d.p50_ms),
                fmt_opt_ms(d.p99_ms),
                fmt_opt_ms(d.max_ms),
                fmt_count(d.undetected as u64),
            ));
        }
        lines.extend(
            d.false_positive_examples
                .iter()
                .take(10)
                .map(|e| format!("  {e}")),
        );
    }

    fn change_lines(&self, lines: &mut Vec<String>) {
        let rows: Vec<(String, [String; 4], String)> = self
            .changes
            .iter()
            .map(|c| {
                let head = format!(
                    "change \"{}\" ({}, from {} at {:.2} s) to {}:",
                    c.label,
                    c.document,
                    c.origin,
                    c.at_s,
                    plural(c.targets, "node"),
                );
                let cells = [c.p50_ms, c.p99_ms, c.p999_ms, c.p100_ms].map(fmt_opt_ms);
                let mut tail = String::new();
                let reached = c.curve.last().map_or(0, |&(_, n)| n);
                if reached < c.targets {
                    tail.push_str(&format!(
                        "; reached {} of {}",
                        fmt_count(reached as u64),
                        fmt_count(c.targets as u64)
                    ));
                }
                if !c.model.is_empty() {
                    let model = c
                        .model
                        .iter()
                        .find(|&&(_, fraction)| fraction >= 0.999)
                        .map_or_else(
                            || "not reached".to_owned(),
                            |&(ms, _)| format!("at {}", fmt_ms(ms)),
                        );
                    tail.push_str(&format!("  (model: 99.9% {model})"));
                }
                (head, cells, tail)
            })
            .collect();
        let head_width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let mut cell_width = [0; 4];
        for (_, cells, _) in &rows {
            for (width, cell) in cell_width.iter_mut().zip(cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for (head, cells, tail) in rows {
            let [p50, p99, p999, p100] = cells;
            let [w50, w99, w999, w100] = cell_width;
            lines.push(format!(
                "{head:<head_width$} 50% {p50:>w50$}, 99% {p99:>w99$}, 99.9% {p999:>w999$}, \
                 100% {p100:>w100$}{tail}"
            ));
        }
    }

    fn revocation_lines(&self, lines: &mut Vec<String>) {
        let rows: Vec<(String, String)> = self
            .revocations
            .iter()
            .map(|r| {
                let head = format!("revocation of {} at {:.1} s:", r.node, r.at_s);
                let body = match r.everywhere_ms {
                    Some(ms) => format!(
                        "refused by all {} in {}",
                        fmt_count(r.targets as u64),
                        fmt_ms(ms)
                    ),
                    None => format!(
                        "refused by {} of {}, not everywhere within the run",
                        fmt_count(r.refused_by as u64),
                        fmt_count(r.targets as u64)
                    ),
                };
                (head, body)
            })
            .collect();
        let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        lines.extend(
            rows.into_iter()
                .map(|(head, body)| format!("{head:<width$} {body}")),
        );
    }

    fn assertion_lines(&self, lines: &mut Vec<String>) {
        if self.assertions.is_empty() {
            lines.push("assertions: none".to_owned());
            return;
        }
        lines.push("assertions:".to_owned());
        // Align the details, but do not let one long assertion push every detail far right.
        let width = self
            .assertions
            .iter()
            .map(|a| a.text.chars().count())
            .max()
            .unwrap_or(0)
            .min(60);
        for a in &self.assertions {
            let verdict = if a.passed { "PASS" } else { "FAIL" };
            if a.detail.is_empty() {
                lines.push(format!("  {verdict}  {}", a.text));
            } else {
                lines.push(format!("  {verdict}  {:<width$}  ({})", a.text, a.detail));
            }
        }
        let passed = self.assertions.iter().filter(|a| a.passed).count();
        lines.push(format!(
            "result: {}, {} of {} assertions passed",
            if self.passed() { "PASS" } else { "FAIL" },
            fmt_count(passed as u64),
            fmt_count(self.assertions.len() as u64),
        ));
    }
}

/// `n` with thousands separators: `1234567` gives `1,234,567`.
pub(crate) fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A duration given in ms, in ms below a second (`120 ms`, `0.4 ms`) and in seconds above
/// (`2.10 s`); `n/a` if not finite.
pub(crate) fn fmt_ms(ms: f64) -> String {
    if !ms.is_finite() {
        "n/a".to_owned()
    } else if ms.abs() < 9.95 {
        format!("{ms:.1} ms")
    } else if ms.abs() < 999.5 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn fmt_opt_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "never".to_owned(), fmt_ms)
}

/// `count` and `noun`, with thousands separators and a plural `s` unless the count is 1.
fn plural(count: usize, noun: &str) -> String {
    let s = if count == 1 { "" } else { "s" };
    format!("{} {noun}{s}", fmt_count(count as u64))
}

/// Bytes in binary units: `512 B`, `8.5 KiB`, `812 MiB`.
fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 9.95 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// A rate given in bits per second, in kbit/s.
fn fmt_kbit(bits_per_s: f64) -> String {
    let k = bits_per_s / 1000.0;
    if !k.is_finite() {
        "n/a kbit/s".to_owned()
    } else if k >= 99.95 {
        format!("{k:.0} kbit/s")
    } else if k > 0.0 && k < 0.095 {
        format!("{k:.2} kbit/s")
    } else {
        format!("{k:.1} kbit/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let curve: Vec<(f64, usize)> = vec![
            (0.0, 1),
            (50.0, 40),
            (120.0, 520),
            (310.0, 990),
            (330.0, 999),
            (350.0, 1000),
        ];
        Report {
            scenario: "steady-1000".to_owned(),
            seed: 7,
            fleet: FleetFigures {
                nodes: 1000,
                sites: 10,
                anchors: 3,
                gateways: 20,
                largest_pool: 103,
            },
            time: TimeFigures {
                simulated_s: 60.0,
                wall_s: 41.25,
                speed: 1.46,
                peak_rss_bytes: 812 * 1024 * 1024,
            },
            gossip: GossipFigures {
                interval_ms: 250,
                fanout: 3,
                bytes_per_node_per_s: 750.0,
                messages_per_node_per_s: 3.25,
                steady_bits_per_node_per_s: Some(5100.0),
                largest_datagram: 1204,
                over_mtu: 0,
                dropped_loss: 1203,
                dropped_partition: 0,
                config_bytes_per_node_per_s: 50.0,
            },
            membership: MembershipFigures {
                converged_at_s: Some(2.41),
            },
            detection: DetectionFigures {
                crashed: 100,
                samples_ms: (0..400)
                    .map(|i| 2000.0 + f64::from(i % 80) * 10.0)
                    .collect(),
                p50_ms: Some(2100.0),
                p99_ms: Some(2610.0),
                max_ms: Some(2800.0),
                everywhere_ms: Some(2800.0),
                undetected: 0,
                false_positives: 1,
                false_positive_examples: vec![
                    "node-s1-2 saw node-s1-9 offline at t=12.50s".to_owned(),
                ],
            },
            changes: vec![ChangeFigures {
                label: "policy-1".to_owned(),
                document: "fleet".to_owned(),
                origin: "anchor-0".to_owned(),
                at_s: 10.0,
                targets: 1000,
                curve,
                p50_ms: Some(120.0),
                p99_ms: Some(310.0),
                p999_ms: Some(330.0),
                p100_ms: Some(350.0),
                model: vec![(0.0, 0.001), (900.0, 0.5), (1800.0, 0.9995), (2700.0, 1.0)],
            }],
            revocations: vec![RevocationFigures {
                node: "node-s3-7".to_owned(),
                at_s: 30.0,
                everywhere_ms: Some(420.0),
                refused_by: 999,
                targets: 999,
            }],
            assertions: vec![
                AssertionResult {
                    text: "all nodes converge within 5s".to_owned(),
                    passed: true,
                    detail: "converged after 2.41 s".to_owned(),
                },
                AssertionResult {
                    text: "no false positives".to_owned(),
                    passed: false,
                    detail: "1 false positive".to_owned(),
                },
            ],
            notes: vec!["thread scheduling does not affect results".to_owned()],
        }
    }

    fn unique_dir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!(
            "nexus-sim-report-{tag}-{}-{nanos}",
            std::process::id()
        ))
    }

    #[test]
    fn epidemic_fraction_starts_small_and_rises_to_one() {
        let n = 1000;
        let start = epidemic_fraction(n, 3.0, 0.0);
        assert!((start - 1.0 / 1002.0).abs() < 1e-12, "{start}");
        let mut previous = start;
        for step in 1..=100 {
            let f = epidemic_fraction(n, 3.0, f64::from(step) * 0.25);
            assert!(
                f > previous || f == 1.0,
                "not rising at {step}: {f} <= {previous}"
            );
            assert!((0.0..=1.0).contains(&f));
            previous = f;
        }
        assert!(epidemic_fraction(n, 3.0, 20.0) > 0.999);
        assert!(epidemic_fraction(n, 3.0, 1e9) <= 1.0);
        assert!(epidemic_fraction(n, 3.0, -1e9) >= 0.0);
        assert_eq!(epidemic_fraction(n, 0.0, f64::INFINITY), 0.0);
    }

    #[test]
    fn epidemic_curve_spans_zero_to_until() {
        let curve = epidemic_curve(1000, 3.0, 250.0, 5000.0, 21);
        assert_eq!(curve.len(), 21);
        assert_eq!(curve[0].0, 0.0);
        assert_eq!(curve[20].0, 5000.0);
        assert_eq!(curve[1].0, 250.0);
        assert_eq!(curve[4].1, epidemic_fraction(1000, 3.0, 4.0));
        assert!(curve.windows(2).all(|w| w[1].1 >= w[0].1));
        assert!(epidemic_curve(1000, 3.0, 0.0, 5000.0, 21).is_empty());
        assert!(epidemic_curve(1000, 3.0, 250.0, f64::NAN, 21).is_empty());
        assert!(epidemic_curve(1000, 3.0, 250.0, 5000.0, 0).is_empty());
        assert_eq!(epidemic_curve(1000, 3.0, 250.0, 5000.0, 1).len(), 1);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 99.9), Some(100.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&values, 250.0), Some(100.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&values, f64::NAN), None);
        let thousand: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&thousand, 99.9), Some(999.0));
        assert_eq!(percentile(&[4.0], 50.0), Some(4.0));
    }

    #[test]
    fn thin_keeps_ends_and_spacing() {
        let curve: Vec<(f64, usize)> = (0..1000).map(|i| (f64::from(i), i as usize)).collect();
        let thinned = thin(curve.clone(), 500);
        assert_eq!(thinned.len(), 500);
        assert_eq!(thinned[0], (0.0, 0));
        assert_eq!(thinned[499], (999.0, 999));
        assert!(thinned.windows(2).all(|w| w[1].0 > w[0].0));
        let gaps: Vec<f64> = thinned.windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert!(gaps.iter().all(|&g| (1.0..=3.0).contains(&g)), "{gaps:?}");
        assert_eq!(thin(curve[..10].to_vec(), 500), curve[..10].to_vec());
        assert_eq!(thin(curve.clone(), 0), vec![(0.0, 0), (999.0, 999)]);
    }

    #[test]
    fn fmt_helpers() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1000), "1,000");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_ms(120.0), "120 ms");
        assert_eq!(fmt_ms(0.4), "0.4 ms");
        assert_eq!(fmt_ms(2100.0), "2.10 s");
        assert_eq!(fmt_bytes(812 * 1024 * 1024), "812 MiB");
        assert_eq!(fmt_bytes(1204), "1.2 KiB");
        assert_eq!(fmt_kbit(5100.0), "5.1 kbit/s");
        assert_eq!(plural(1, "site"), "1 site");
        assert_eq!(plural(1000, "node"), "1,000 nodes");
    }

    #[test]
    fn passed_requires_every_assertion() {
        let mut report = sample();
        assert!(!report.passed());
        report.assertions[1].passed = true;
        assert!(report.passed());
        report.assertions.clear();
        assert!(report.passed());
    }

    #[test]
    fn summary_shows_key_figures() {
        let summary = sample().summary();
        for expected in [
            "scenario steady-1000 (seed 7): 1,000 nodes in 10 sites, 3 anchors, 20 gateways; largest pool 103",
            "simulated 60.0 s in 41.2 s wall (1.46x), peak memory 812 MiB",
            "membership converged after 2.41 s",
            "every 250 ms to 3 peers",
            "5.1 kbit/s per node steady (6.0 kbit/s over the run)",
            "3.2 msgs/s",
            "largest datagram 1,204 B, 0 over MTU; dropped 1,203 by loss, 0 by partitions",
            "config traffic: 0.4 kbit/s per node",
            "failure detection: 100 crashed; p50 2.10 s, p99 2.61 s, max 2.80 s, everywhere 2.80 s; 0 undetected; 1 false positive",
            "  node-s1-2 saw node-s1-9 offline at t=12.50s",
            "change \"policy-1\" (fleet, from anchor-0 at 10.00 s) to 1,000 nodes: 50% 120 ms, 99% 310 ms, 99.9% 330 ms, 100% 350 ms  (model: 99.9% at 1.80 s)",
            "revocation of node-s3-7 at 30.0 s: refused by all 999 in 420 ms",
            "  PASS  all nodes converge within 5s  (converged after 2.41 s)",
            "  FAIL  no false positives            (1 false positive)",
            "result: FAIL, 1 of 2 assertions passed",
            "notes:\n  thread scheduling does not affect results",
        ] {
            assert!(
                summary.contains(expected),
                "missing {expected:?} in\n{summary}"
            );
        }
        assert!(!summary.ends_with('\n'));
    }

    #[test]
    fn summary_of_partial_run() {
        let mut report = sample();
        report.membership.converged_at_s = None;
        report.gossip.steady_bits_per_node_per_s = None;
        report.changes[0].curve.truncate(4);
        report.changes[0].p999_ms = None;
        report.changes[0].p100_ms = None;
        report.changes[0].model.truncate(2);
        report.revocations[0].everywhere_ms = None;
        report.revocations[0].refused_by = 500;
        report.detection = DetectionFigures::default();
        let summary = report.summary();
        for expected in [
            "membership did not converge within the run",
            "6.0 kbit/s per node over the run (no steady window)",
            "99.9% never, 100% never; reached 990 of 1,000  (model: 99.9% not reached)",
            "refused by 500 of 999, not everywhere within the run",
            "failure detection: no crashes; 0 false positives",
        ] {
            assert!(
                summary.contains(expected),
                "missing {expected:?} in\n{summary}"
            );
        }
        let empty = Report::default().summary();
        assert!(empty.contains("assertions: none"), "{empty}");
        assert!(!empty.contains("NaN"), "{empty}");
    }

    #[test]
    fn summary_aligns_columns() {
        let mut report = sample();
        let mut second = report.changes[0].clone();
        second.label = "site-policy-long".to_owned();
        second.p100_ms = Some(1350.0);
        report.changes.push(second);
        let summary = report.summary();
        let rows: Vec<&str> = summary
            .lines()
            .filter(|l| l.starts_with("change "))
            .collect();
        assert_eq!(rows.len(), 2);
        let column = |row: &str, cell: &str| row.find(cell).map(|i| i + cell.len());
        for cell in ["50% ", "99% ", "99.9% ", "100% "] {
            assert_eq!(
                column(rows[0], cell),
                column(rows[1], cell),
                "{cell}\n{summary}"
            );
        }
    }

    #[test]
    fn write_round_trips_json_and_writes_charts() -> io::Result<()> {
        let report = sample();
        let base = unique_dir("write");
        let dir = base.join("nested");
        let written = report.write(&dir)?;
        let names: Vec<_> = written
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect();
        assert_eq!(names, ["report.json", "propagation.svg", "detection.svg"]);
        for path in &written {
            assert!(path.is_file(), "{}", path.display());
        }
        let json = fs::read_to_string(dir.join("report.json"))?;
        let back: Report = serde_json::from_str(&json).map_err(io::Error::other)?;
        assert_eq!(back, report);
        let propagation = fs::read_to_string(dir.join("propagation.svg"))?;
        assert!(propagation.starts_with("<svg"));
        assert!(propagation.contains("policy-1"));
        assert!(propagation.contains("fanout 3"));
        let detection = fs::read_to_string(dir.join("detection.svg"))?;
        assert!(detection.contains("400 samples"));
        fs::remove_dir_all(&base)
    }

    #[test]
    fn write_without_changes_or_crashes() -> io::Result<()> {
        let report = Report {
            scenario: "idle".to_owned(),
            ..Report::default()
        };
        let base = unique_dir("empty");
        let written = report.write(&base)?;
        assert_eq!(written.len(), 3);
        let propagation = fs::read_to_string(base.join("propagation.svg"))?;
        assert!(propagation.contains("no config changes in this scenario"));
        let detection = fs::read_to_string(base.join("detection.svg"))?;
        assert!(detection.contains("no failure detection samples in this scenario"));
        let back: Report = serde_json::from_str(&fs::read_to_string(base.join("report.json"))?)
            .map_err(io::Error::other)?;
        assert_eq!(back, report);
        fs::remove_dir_all(&base)
    }
}
