//! `nexus-trust-bench`: measures the anchor's trust work in-process and prints a markdown
//! section.
//!
//! ```text
//! cargo run --release -p nexus-tests --bin nexus-trust-bench -- \
//!     [--log-entries 1000000] [--mics 20000] [--write docs/benchmarks.md]
//! ```
//!
//! * The certificate transparency log (`nexus_ca::tlog`): appending entries, roots, inclusion
//!   and consistency proofs at full size, and the memory the log holds.
//! * MIC issuance from one anchor intermediate, on one thread and on all of them.
//! * CSR validation (`public_key_from_csr`), what the anchor does before issuing.
//!
//! With `--write FILE` the section replaces whatever lies between `<!-- trust-bench:start -->`
//! and `<!-- trust-bench:end -->` in FILE (it is appended, with the markers, if they are absent);
//! the rest of the file is left alone.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use nexus_ca::tlog::{
    Hash, LogEntry, MerkleLog, SignedTreeHead, leaf_hash, verify_consistency, verify_inclusion,
};
use nexus_ca::{CertificateAuthority, MicProfile, NodeKey, Role, public_key_from_csr};
use nexus_tests::bench::SplitMix64;

const START_MARKER: &str = "<!-- trust-bench:start -->";
const END_MARKER: &str = "<!-- trust-bench:end -->";
const FLEET: &str = "bench";

#[derive(Debug, Parser)]
#[command(
    name = "nexus-trust-bench",
    about = "Benchmarks the transparency log, MIC issuance and CSR validation in-process."
)]
struct Args {
    /// Entries appended to the transparency log.
    #[arg(long, default_value_t = 1_000_000)]
    log_entries: u64,
    /// Random leaves (and earlier sizes) for which proofs are generated and verified.
    #[arg(long, default_value_t = 10_000)]
    proofs: u64,
    /// MICs issued, on one thread and again on all threads.
    #[arg(long, default_value_t = 20_000)]
    mics: usize,
    /// Threads for the parallel issuance run (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
    /// CSRs validated.
    #[arg(long, default_value_t = 5_000)]
    csrs: usize,
    /// Seed of the random indices.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Markdown file whose trust-bench section is replaced (or appended).
    #[arg(long)]
    write: Option<PathBuf>,
}

/// One table row.
struct Row(String, String);

fn us(d: Duration, n: u64) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6 / n as f64)
}

fn per_sec(d: Duration, n: u64) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn rate(d: Duration, n: u64, unit: &str) -> String {
    let r = per_sec(d, n);
    if r >= 1e6 {
        format!("{:.2} M {unit}/s", r / 1e6)
    } else if r >= 1e4 {
        format!("{:.1} k {unit}/s", r / 1e3)
    } else {
        format!("{r:.0} {unit}/s")
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
}

/// VmRSS of this process, in bytes.
fn rss_bytes() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`.
///
/// Shows how much of the machine a multi-threaded phase really got when other processes
/// share it: CPU time over wall time is the number of CPUs the phase kept busy.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name start at field 3 (state).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let hz: f64 = command_output("getconf", &["CLK_TCK"])?.parse().ok()?;
    Some(ticks / hz)
}

fn profile(key: &NodeKey, i: usize) -> MicProfile {
    MicProfile {
        fleet_id: FLEET.into(),
        node_id: key.node_id(),
        tenant: String::new(),
        site: format!("site-{}", i % 16),
        role: Role::Node,
        validity: Duration::from_secs(30 * 86_400),
    }
}

// ---------------------------------------------------------------------------------------------
// (a) Transparency log

fn bench_tlog(args: &Args, ca: &CertificateAuthority, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = args.log_entries;
    if n < 2 {
        bail!("--log-entries must be at least 2");
    }
    let node = NodeKey::generate();
    let der = ca.issue_mic(&node.public_key(), &profile(&node, 0))?;
    let der_len = der.len();
    let issued = LogEntry::issued(der, ca.fingerprint(), 1_760_000_000_000)?;
    let mut revoked = LogEntry::revoked(issued.serial.clone(), issued.node_id, issued.issuer, 0);
    let mut issued = issued;
    eprintln!("tlog: appending {n} entries ...");

    // Entries are reused and changed in place (serial, timestamp) so the figure is encoding,
    // leaf hash and tree work, not allocation of test data. Every tenth entry is a revocation.
    let rss_before = rss_bytes()?;
    let mut log = MerkleLog::new();
    let start = Instant::now();
    for i in 0..n {
        let entry = if i % 10 == 9 {
            &mut revoked
        } else {
            &mut issued
        };
        entry.serial[..8].copy_from_slice(&i.to_be_bytes());
        entry.timestamp_ms = 1_760_000_000_000 + i;
        log.append_entry(entry)?;
    }
    let append = start.elapsed();
    let rss_after = rss_bytes()?;

    // Tree work alone: the same number of precomputed leaf hashes into a fresh log.
    let hashes: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    let mut bare = MerkleLog::new();
    let start = Instant::now();
    for h in &hashes {
        bare.append_leaf_hash(*h);
    }
    let bare_append = start.elapsed();
    drop((bare, hashes));

    rows.push(Row(
        format!(
            "tlog append, {n} entries (canonical encoding + leaf hash + tree; 9 in 10 issued \
             with a {der_len}-byte MIC, 1 in 10 revoked)"
        ),
        format!(
            "{} ({} total, {} per entry)",
            rate(append, n, "entries"),
            fmt_duration(append),
            us(append, n)
        ),
    ));
    rows.push(Row(
        format!("tlog append of precomputed leaf hashes (tree work only), {n} leaves"),
        format!(
            "{} ({} per leaf)",
            rate(bare_append, n, "leaves"),
            us(bare_append, n)
        ),
    ));

    let cached = 2 * n - u64::from(n.count_ones());
    rows.push(Row(
        format!("tlog memory at {n} leaves (VmRSS growth while appending; entries not kept)"),
        format!(
            "{} (the {} cached hashes are {})",
            mib((rss_after.saturating_sub(rss_before)) as f64),
            cached,
            mib((cached * 32) as f64)
        ),
    ));

    let mut rng = SplitMix64(args.seed);
    let reps = 100_000u64;
    let start = Instant::now();
    let mut root = [0u8; 32];
    for _ in 0..reps {
        root = std::hint::black_box(&log).root();
    }
    let root_time = start.elapsed();
    let sizes: Vec<u64> = (0..args.proofs).map(|_| 1 + rng.below(n)).collect();
    let start = Instant::now();
    for &s in &sizes {
        std::hint::black_box(log.root_at(s)?);
    }
    let root_at_time = start.elapsed();
    rows.push(Row(
        format!("tlog root at size {n} / root at a random earlier size"),
        format!(
            "{} / {}",
            us(root_time, reps),
            us(root_at_time, args.proofs)
        ),
    ));

    // Inclusion proofs at full size for random leaves.
    let indices: Vec<u64> = (0..args.proofs).map(|_| rng.below(n)).collect();
    let start = Instant::now();
    let proofs = indices
        .iter()
        .map(|&i| log.inclusion_proof(i, n))
        .collect::<Result<Vec<_>, _>>()?;
    let gen_time = start.elapsed();
    let leaves = indices
        .iter()
        .map(|&i| log.leaf_hash_at(i))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    for ((&i, proof), leaf) in indices.iter().zip(&proofs).zip(&leaves) {
        if !verify_inclusion(leaf, i, n, proof, &root) {
            bail!("inclusion proof of leaf {i} in size {n} did not verify");
        }
    }
    let verify_time = start.elapsed();
    let hashes: usize = proofs.iter().map(Vec::len).sum();
    rows.push(Row(
        format!(
            "tlog inclusion proof at size {n}: generate / verify ({} random leaves, {:.1} \
             hashes a proof)",
            args.proofs,
            hashes as f64 / proofs.len() as f64
        ),
        format!(
            "{} / {}",
            us(gen_time, args.proofs),
            us(verify_time, args.proofs)
        ),
    ));

    // Consistency proofs from random earlier sizes to the full size.
    let firsts: Vec<u64> = (0..args.proofs).map(|_| 1 + rng.below(n - 1)).collect();
    let start = Instant::now();
    let proofs = firsts
        .iter()
        .map(|&m| log.consistency_proof(m, n))
        .collect::<Result<Vec<_>, _>>()?;
    let gen_time = start.elapsed();
    let first_roots = firsts
        .iter()
        .map(|&m| log.root_at(m))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    for ((&m, proof), r1) in firsts.iter().zip(&proofs).zip(&first_roots) {
        if !verify_consistency(m, n, r1, &root, proof) {
            bail!("consistency proof from size {m} to {n} did not verify");
        }
    }
    let verify_time = start.elapsed();
    let hashes: usize = proofs.iter().map(Vec::len).sum();
    rows.push(Row(
        format!(
            "tlog consistency proof to size {n}: generate / verify ({} random earlier sizes, \
             {:.1} hashes a proof)",
            args.proofs,
            hashes as f64 / proofs.len() as f64
        ),
        format!(
            "{} / {}",
            us(gen_time, args.proofs),
            us(verify_time, args.proofs)
        ),
    ));

    // Signed tree heads (ed25519 in memory).
    let key = NodeKey::generate();
    let heads = 2_000u64;
    let start = Instant::now();
    let mut sth = None;
    for t in 0..heads {
        sth = Some(SignedTreeHead::sign(log.tree_head("bench-log", t), |m| {
            key.sign(m)
        })?);
    }
    let sign_time = start.elapsed();
    let sth = sth.context("no tree head was signed")?;
    let start = Instant::now();
    for _ in 0..heads {
        if !std::hint::black_box(&sth).verify(&key.public_key()) {
            bail!("a signed tree head did not verify");
        }
    }
    let verify_time = start.elapsed();
    rows.push(Row(
        "signed tree head: root + sign / verify (ed25519 key in memory)".into(),
        format!("{} / {}", us(sign_time, heads), us(verify_time, heads)),
    ));
    Ok(())
}

fn fmt_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

// ---------------------------------------------------------------------------------------------
// (b) MIC issuance and (c) CSR validation

fn bench_issuance(
    args: &Args,
    ca: &CertificateAuthority,
    threads: usize,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let m = args.mics;
    if m == 0 {
        bail!("--mics must be at least 1");
    }
    eprintln!("mic: generating {m} node keys ...");
    let requests: Vec<([u8; 32], MicProfile)> = (0..m)
        .map(|i| {
            let key = NodeKey::generate();
            (key.public_key(), profile(&key, i))
        })
        .collect();

    eprintln!("mic: issuing {m} on 1 thread ...");
    let start = Instant::now();
    let mut bytes = 0usize;
    for (public, profile) in &requests {
        bytes += ca.issue_mic(public, profile)?.len();
    }
    let single = start.elapsed();

    eprintln!("mic: issuing {m} on {threads} threads ...");
    let chunk = m.div_ceil(threads);
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = requests
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> anyhow::Result<()> {
                    for (public, profile) in part {
                        ca.issue_mic(public, profile)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("an issuing thread panicked"))??;
        }
        Ok(())
    })?;
    let parallel = start.elapsed();
    let busy = cpu_before.zip(cpu_seconds()).map_or_else(
        || "CPU time unknown".into(),
        |(a, b)| format!("it kept {:.2} CPUs busy", (b - a) / parallel.as_secs_f64()),
    );

    rows.push(Row(
        format!(
            "MIC issuance, one anchor intermediate, 1 thread ({m} MICs, {} bytes each on average)",
            bytes / m
        ),
        format!(
            "{} ({} per MIC)",
            rate(single, m as u64, "MICs"),
            us(single, m as u64)
        ),
    ));
    rows.push(Row(
        format!("MIC issuance, same intermediate, {threads} threads ({m} MICs)"),
        format!(
            "{} ({:.2}× one thread; {busy})",
            rate(parallel, m as u64, "MICs"),
            single.as_secs_f64() / parallel.as_secs_f64()
        ),
    ));
    Ok(())
}

fn bench_csr(args: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = args.csrs;
    if n == 0 {
        bail!("--csrs must be at least 1");
    }
    eprintln!("csr: generating {n} CSRs ...");
    let keys: Vec<NodeKey> = (0..n).map(|_| NodeKey::generate()).collect();
    let start = Instant::now();
    let csrs = keys
        .iter()
        .map(NodeKey::csr_pem)
        .collect::<Result<Vec<_>, _>>()?;
    let make = start.elapsed();
    let start = Instant::now();
    for (csr, key) in csrs.iter().zip(&keys) {
        if public_key_from_csr(csr)? != key.public_key() {
            bail!("a CSR yielded the wrong public key");
        }
    }
    let check = start.elapsed();
    rows.push(Row(
        format!("CSR validation, `public_key_from_csr` (PEM parse, PKCS#10 parse, ed25519 verify; {n} CSRs)"),
        format!("{} ({} per CSR)", rate(check, n as u64, "CSRs"), us(check, n as u64)),
    ));
    rows.push(Row(
        "CSR creation on the node, `NodeKey::csr_pem`".into(),
        format!("{} per CSR", us(make, n as u64)),
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report

fn first_line(path: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The 1-minute load average, to show whether other work shared the CPUs during the run.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn section(rows: &[Row], threads: usize, loads: (&str, &str)) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into());
    let cpus = command_output("nproc", &[]).unwrap_or_else(|| "?".into());
    let model = first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let kernel = command_output("uname", &["-r"]).unwrap_or_else(|| "?".into());

    let mut out = String::new();
    let _ = writeln!(out, "{START_MARKER}");
    let _ = writeln!(
        out,
        "## Trust: transparency log, MIC issuance, CSR validation\n"
    );
    let _ = writeln!(
        out,
        "Command: `cargo run --release -p nexus-tests --bin nexus-trust-bench -- {}`\n",
        args.join(" ")
    );
    let _ = writeln!(out, "- Date: {date}");
    let _ = writeln!(
        out,
        "- Machine: {cpus} CPUs (nproc), {model}, Linux {kernel}; parallel runs use {threads} threads"
    );
    let _ = writeln!(
        out,
        "- Load: 1-minute load average {} before the run and {} after it (other processes \
         share these CPUs; a load near or above the CPU count depresses the figures, the \
         multi-threaded ones most)",
        loads.0, loads.1
    );
    let _ = writeln!(
        out,
        "- Method: one process, release build, wall-clock time (`std::time::Instant`) over the \
         whole batch divided by its size; all inputs (keys, profiles, CSRs, random indices) are \
         made before the clock starts. The log is `nexus_ca::tlog::MerkleLog` (RFC 6962 SHA-256 \
         tree, complete subtrees cached); memory is VmRSS from `/proc/self/status`. MIC \
         issuance is `CertificateAuthority::issue_mic` on an anchor intermediate whose ed25519 \
         key is in memory."
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| Metric | Value |");
    let _ = writeln!(out, "|---|---|");
    for Row(metric, value) in rows {
        let _ = writeln!(out, "| {metric} | {value} |");
    }
    let _ = writeln!(out, "{END_MARKER}");
    out
}

/// Replaces the marked section of `text`, or appends it when the markers are absent.
fn splice(text: &str, section: &str) -> String {
    if let Some(start) = text.find(START_MARKER)
        && let Some(end_rel) = text[start..].find(END_MARKER)
    {
        let mut end = start + end_rel + END_MARKER.len();
        if text[end..].starts_with('\n') {
            end += 1;
        }
        return format!("{}{section}{}", &text[..start], &text[end..]);
    }
    let mut out = text.to_string();
    if !out.is_empty() {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str(section);
    out
}

fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    std::fs::write(path, splice(&text, section))
        .with_context(|| format!("writing {}", path.display()))
}

fn run(args: &Args) -> anyhow::Result<String> {
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let load_before = load_average();
    let root = CertificateAuthority::new_fleet_root(FLEET)?;
    let anchor = NodeKey::generate();
    let ca = root.new_intermediate(FLEET, anchor.node_id())?;
    let mut rows = Vec::new();
    bench_tlog(args, &ca, &mut rows)?;
    bench_issuance(args, &ca, threads, &mut rows)?;
    bench_csr(args, &mut rows)?;
    let load_after = load_average();
    Ok(section(&rows, threads, (&load_before, &load_after)))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(section) => {
            print!("{section}");
            if let Some(path) = &args.write {
                if let Err(e) = write_section(path, &section) {
                    eprintln!("nexus-trust-bench: {e:#}");
                    return ExitCode::FAILURE;
                }
                eprintln!("wrote the trust-bench section of {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nexus-trust-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_or_appends() {
        let sec = format!("{START_MARKER}\nnew\n{END_MARKER}\n");
        assert_eq!(splice("", &sec), sec);
        assert_eq!(splice("# A\n", &sec), format!("# A\n\n{sec}"));
        assert_eq!(splice("# A", &sec), format!("# A\n\n{sec}"));
        let old = format!("# A\n\n{START_MARKER}\nold\n{END_MARKER}\n\n## B\n");
        assert_eq!(splice(&old, &sec), format!("# A\n\n{sec}\n## B\n"));
        let unterminated = format!("# A\n{START_MARKER}\nold\n");
        assert!(splice(&unterminated, &sec).ends_with(&sec));
    }
}
