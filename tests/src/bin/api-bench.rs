//! Latency and throughput of one node's HTTP API on loopback, measured with the `oha` load
//! tool, beside one etcd member measured with the same tool, rates and durations in the same run.
//!
//! `cargo build --release -p nexus-node -p nexus-tests && \
//!  target/release/nexus-api-bench --write docs/benchmarks.md`
//!
//! `oha` comes from crates.io: `cargo install oha --locked` (the bench looks for it on `PATH`,
//! then in `~/.cargo/bin`, or takes `--oha PATH`).
//!
//! 1. Reads at a fixed rate: `GET /v1/nodes`, `GET /v1/routes?limit=100` with 1,000 route
//!    policies present, `GET /v1/routes/{id}` of random existing ids.
//! 2. Durable writes at fixed rates: `PUT /v1/routes/w<random>` (one of 1,000 ids: the first
//!    write of an id creates it, later ones replace it); a write is answered after its
//!    change is committed to `nexus.db` (SQLite `synchronous=FULL`, so after fsync).
//! 3. Maximum throughput (no rate limit, more connections) of reads and of writes.
//! 4. Pages of 100 of the audit log holding 1,000,000 entries: a second, fresh anchor is
//!    stopped, 1,000,000 entries of five nodes and several tenants are written into its
//!    `audit.db` in one transaction, it is started again and pages are timed at several depths
//!    (cursors as `next_cursor` would carry them) and with a tenant filter.
//! 5. etcd (Debian's `/usr/bin/etcd`, one member, default durability) on its JSON gateway:
//!    `POST /v3/kv/range` (one random key of 1,000; 100 keys of a prefix) and `POST /v3/kv/put`.
//!
//! Every phase is bounded by `-z` (in-flight requests are waited for at the end, `-w`); with a
//! fixed rate oha corrects for coordinated omission (`--latency-correction`: a request's latency
//! counts from when it was due). The node (or etcd) and oha share this machine's cores.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use clap::Parser;
use futures::StreamExt;
use nexus_tests::bench::{SplitMix64, cores, cpu_model, free_port, percentile};
use nexus_tests::{Fleet, NodeProc};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Seconds of each fixed-rate and maximum-throughput phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rate of the read phases (requests per second).
    #[arg(long, default_value_t = 1000)]
    read_rate: u32,
    /// Rates of the durable-write phases, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    write_rates: Vec<u32>,
    /// Connections of the fixed-rate phases.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Connections of the maximum-throughput phases.
    #[arg(long, default_value_t = 32)]
    max_connections: u32,
    /// Route policies present during the reads.
    #[arg(long, default_value_t = 1000)]
    routes: usize,
    /// Entries in the audit log when its pages are timed.
    #[arg(long, default_value_t = 1_000_000)]
    audit_rows: usize,
    /// Rate of each audit page phase.
    #[arg(long, default_value_t = 200)]
    audit_rate: u32,
    /// Seconds of each audit page phase.
    #[arg(long, default_value_t = 5)]
    audit_seconds: u64,
    /// The oha binary (default: `oha` on PATH, then ~/.cargo/bin/oha).
    #[arg(long)]
    oha: Option<PathBuf>,
    /// Replace the section between the api-bench markers in this file.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// Linux reports process and machine CPU time in USER_HZ ticks, 100 a second on every
/// architecture's user-space ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// The oha binary, or how to get it.
fn find_oha(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        ensure!(path.is_file(), "--oha {}: no such file", path.display());
        return Ok(path.to_path_buf());
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("oha"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin").join("oha"));
    on_path.chain(cargo_home).find(|p| p.is_file()).context(
        "the oha load tool was not found on PATH nor in ~/.cargo/bin: install it with \
             `cargo install oha --locked` (or pass --oha PATH)",
    )
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// CPU ticks (user + system, all threads) `pid` has used.
fn process_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // Fields after the command name start at field 3 (state); utime is 14, stime 15.
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// (busy, total) CPU ticks of the whole machine.
fn machine_ticks() -> (u64, u64) {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?;
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest is counted in user).
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3)? + v.get(4)?;
            Some((total - idle, total))
        })
        .unwrap_or((0, 0))
}

/// How oha reaches the node and checks its certificate.
#[derive(Clone)]
struct Tls {
    /// Base URL of oha's requests.
    base: String,
    /// oha's TLS and address flags.
    args: Vec<String>,
    /// Why oha could not check the certificate, when it could not.
    insecure: Option<String>,
}

/// Which figure a load belongs to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Figure {
    Reads,
    Writes,
    Max,
    Audit,
}

/// One oha run.
struct Load {
    figure: Figure,
    system: &'static str,
    /// The request as the table names it.
    request: String,
    /// Loads of both systems with the same key are compared in the ratio table.
    pair: Option<String>,
    /// p99 goal, ms.
    goal_ms: Option<f64>,
    method: &'static str,
    url: String,
    /// `url` is a regular expression oha draws each request's URL from.
    regex: bool,
    /// A fixed body, or a file of bodies of which oha draws one per request.
    body: Option<Body>,
    rate: Option<u32>,
    connections: u32,
    seconds: u64,
}

enum Body {
    Fixed(String),
    Lines(PathBuf),
}

struct Outcome {
    /// 2xx answers.
    ok: u64,
    /// 201 answers (objects created).
    created: u64,
    /// Other statuses and errors with their counts.
    other: Vec<String>,
    /// Latencies (ms) of the requests due after the warm-up.
    p50: f64,
    p99: f64,
    max: f64,
    /// Requests the steady figures cover.
    steady: usize,
    /// oha's own p99 and max over the whole run, warm-up included (ms).
    p99_all: f64,
    max_all: f64,
    /// 2xx answers per second over the phase.
    achieved: f64,
    /// Cores the server process used on average.
    server_cores: f64,
    /// Cores the whole machine used on average (server, oha and anything else).
    machine_cores: f64,
}

/// Where a run's oha invocations and what they measured go.
struct Runner {
    oha: PathBuf,
    /// Strings replaced in the recorded commands (secret → placeholder).
    masks: Vec<(String, String)>,
    results: Vec<(Load, Outcome, String)>,
    /// Where oha stores each run's per-request records (`--db-url`).
    records: tempfile::TempDir,
}

/// Requests oha sent in the first second of a run are left out of p50/p99/max: oha sets up its
/// client then (for TLS it loads the system's CA certificates) and opens its connections, 70–120
/// ms in which requests queue on the client and, with `--latency-correction`, count as late.
/// Requests sent later keep their latency from when they were due, queueing included.
const WARMUP_SECONDS: f64 = 1.0;

/// Latencies (ms, ascending) of the requests oha recorded in `db` that it sent after the
/// warm-up.
fn steady_latencies(db: &Path) -> anyhow::Result<Vec<f64>> {
    let conn = rusqlite::Connection::open(db)
        .with_context(|| format!("oha's records {}", db.display()))?;
    let mut stmt = conn.prepare("SELECT duration FROM oha WHERE start >= ?1")?;
    let mut v: Vec<f64> = stmt
        .query_map([WARMUP_SECONDS], |r| r.get::<_, f64>(0))?
        .map(|d| d.map(|d| d * 1e3))
        .collect::<Result<_, _>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v)
}

fn shell_quote(arg: &str) -> String {
    if arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

impl Runner {
    fn args(&self, load: &Load, tls: &[String], headers: &[String]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--no-tui",
            "--output-format",
            "json",
            "-z",
            &format!("{}s", load.seconds),
            "-w",
            "-c",
            &load.connections.to_string(),
            "-m",
            load.method,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if let Some(rate) = load.rate {
            args.extend(["-q".into(), rate.to_string(), "--latency-correction".into()]);
        }
        for h in headers {
            args.extend(["-H".into(), h.clone()]);
        }
        match &load.body {
            Some(Body::Fixed(body)) => args.extend([
                "-T".into(),
                "application/json".into(),
                "-d".into(),
                body.clone(),
            ]),
            Some(Body::Lines(path)) => args.extend([
                "-T".into(),
                "application/json".into(),
                "-Z".into(),
                path.display().to_string(),
            ]),
            None => {}
        }
        args.extend(tls.iter().cloned());
        if load.regex {
            args.push("--rand-regex-url".into());
        }
        args.push(load.url.clone());
        args
    }

    fn display(&self, args: &[String]) -> String {
        let mut text = std::iter::once("oha".to_string())
            .chain(args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ");
        for (secret, placeholder) in &self.masks {
            text = text.replace(secret, placeholder);
        }
        text
    }

    /// Runs `load` against the process `pid` and records what it measured.
    async fn run(
        &mut self,
        load: Load,
        pid: u32,
        tls: &[String],
        headers: &[String],
    ) -> anyhow::Result<()> {
        let db = self
            .records
            .path()
            .join(format!("run-{}.db", self.results.len()));
        let mut args = self.args(&load, tls, headers);
        let url = args.pop().context("oha arguments")?;
        args.extend(["--db-url".into(), db.display().to_string(), url]);
        let shown = self.display(&args);
        eprintln!("{} {}: {shown}", load.system, load.request);
        let before = (Instant::now(), process_ticks(pid), machine_ticks());
        let oha = self.oha.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(oha).args(&args).stdin(Stdio::null()).output()
        })
        .await?
        .context("running oha")?;
        let after = (Instant::now(), process_ticks(pid), machine_ticks());
        ensure!(
            out.status.success(),
            "oha failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "oha's output is not JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        let wall = (after.0 - before.0).as_secs_f64();
        let steady = steady_latencies(&db)?;
        let outcome = parse_report(
            &report,
            &steady,
            (after.1 - before.1) as f64 / TICKS_PER_SECOND / wall,
            // Machine ticks count every core: busy share of all ticks times the cores.
            (after.2.0 - before.2.0) as f64 / (after.2.1 - before.2.1).max(1) as f64
                * cores() as f64,
        )?;
        eprintln!(
            "  {} ok, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (whole run: p99 {:.2} ms, max {:.2} ms), server {:.2} cores, machine {:.2} cores {}",
            outcome.ok,
            outcome.achieved,
            outcome.p50,
            outcome.p99,
            outcome.max,
            outcome.p99_all,
            outcome.max_all,
            outcome.server_cores,
            outcome.machine_cores,
            outcome.other.join(", ")
        );
        self.results.push((load, outcome, shown));
        Ok(())
    }
}

fn parse_report(
    report: &Value,
    steady: &[f64],
    server_cores: f64,
    machine_cores: f64,
) -> anyhow::Result<Outcome> {
    let total = report["summary"]["total"]
        .as_f64()
        .context("oha JSON without summary.total")?;
    let mut ok = 0;
    let mut created = 0;
    let mut other = Vec::new();
    for (status, count) in report["statusCodeDistribution"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let count = count.as_u64().unwrap_or(0);
        if status == "201" {
            created += count;
        }
        if status.starts_with('2') {
            ok += count;
        } else {
            other.push(format!("{count}× {status}"));
        }
    }
    for (error, count) in report["errorDistribution"]
        .as_object()
        .into_iter()
        .flatten()
    {
        other.push(format!("{}× {error}", count.as_u64().unwrap_or(0)));
    }
    let seconds = |v: &Value| v.as_f64().map_or(f64::NAN, |s| s * 1e3);
    Ok(Outcome {
        ok,
        created,
        other,
        p50: percentile(steady, 50.0),
        p99: percentile(steady, 99.0),
        max: steady.last().copied().unwrap_or(f64::NAN),
        steady: steady.len(),
        p99_all: seconds(&report["latencyPercentiles"]["p99"]),
        max_all: seconds(&report["summary"]["slowest"]),
        achieved: ok as f64 / total,
        server_cores,
        machine_cores,
    })
}

/// A route policy body as `PUT /v1/routes/{id}` takes it (the id comes from the path).
fn route_body(priority: u32) -> Value {
    json!({
        "name": "bench route",
        "tenant_id": "",
        "priority": priority,
        "match": {"source_node_ids": [], "dest_capabilities": [], "stream_modes": ["RO"], "message_types": [7]},
        "action": {"type": "allow"},
        "enabled": true,
        "created_at": 0
    })
}

/// How oha checks the node's certificate: the fleet root (`--cacert`) and the name the node's
/// certificate carries (`<node id>.node.nexus.invalid`, reached at `api` with `--connect-to`), as
/// every API client of the fleet checks it; `--insecure` (with the reason) if that fails.
async fn pick_tls(
    runner: &Runner,
    dir: &Path,
    api: &str,
    node_id: &str,
    auth: &str,
) -> anyhow::Result<Tls> {
    let addr = api
        .strip_prefix("https://")
        .with_context(|| format!("the API {api} is not HTTPS"))?;
    let port = addr.rsplit(':').next().context("API port")?;
    let name = format!("{node_id}.node.nexus.invalid");
    let checked = Tls {
        base: format!("https://{name}:{port}"),
        args: vec![
            "--cacert".into(),
            dir.join("trust").join("root.pem").display().to_string(),
            "--connect-to".into(),
            format!("{name}:{port}:{addr}"),
        ],
        insecure: None,
    };
    let mut args: Vec<String> = [
        "--no-tui",
        "--output-format",
        "json",
        "-n",
        "3",
        "-c",
        "1",
        "-H",
        auth,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.extend(checked.args.iter().cloned());
    args.push(format!("{}/v1/whoami", checked.base));
    let oha = runner.oha.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(oha).args(&args).stdin(Stdio::null()).output()
    })
    .await??;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if report["statusCodeDistribution"]["200"].as_u64() == Some(3) {
        return Ok(checked);
    }
    let why = report["errorDistribution"]
        .as_object()
        .and_then(|e| e.keys().next().cloned())
        .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
    eprintln!("oha cannot check the node's certificate ({why}): using --insecure");
    Ok(Tls {
        base: api.to_string(),
        args: vec!["--insecure".into()],
        insecure: Some(why),
    })
}

async fn put_routes(fleet: &Fleet, http: &reqwest::Client, n: usize) -> anyhow::Result<()> {
    let api = fleet.anchor().api.clone();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let url = format!("{api}/v1/routes/b{i:03}");
            let request = http
                .put(url)
                .bearer_auth(&fleet.admin_key)
                .json(&route_body(i as u32 + 1));
            async move {
                let response = request.send().await?;
                let status = response.status();
                ensure!(
                    status.is_success(),
                    "PUT route b{i:03}: {status} {}",
                    response.text().await.unwrap_or_default()
                );
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn get_ok(http: &reqwest::Client, url: &str, key: &str) -> anyhow::Result<Value> {
    let response = http.get(url).bearer_auth(key).send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    ensure!(status.is_success(), "GET {url}: {status} {body}");
    Ok(body)
}

/// Figures 1–3 on a fresh one-node fleet.
async fn nexus_api(args: &Args, runner: &mut Runner) -> anyhow::Result<Tls> {
    let fleet = Fleet::init().await?;
    let anchor = fleet.anchor();
    let api = anchor.api.clone();
    let pid = anchor.pid().context("anchor pid")?;
    let http = nexus_tests::api_client(&anchor.dir)?;
    runner
        .masks
        .push((fleet.admin_key.clone(), "$NEXUS_KEY".into()));
    runner
        .masks
        .push((anchor.dir.display().to_string(), "$ANCHOR_DIR".into()));
    let auth = format!("authorization: Bearer {}", fleet.admin_key);
    let tls = pick_tls(runner, &anchor.dir, &api, &anchor.node_id, &auth).await?;
    let tls_args = tls.args.clone();
    let headers = [auth];

    let id_digits = args.routes.saturating_sub(1).to_string().len().max(3);
    ensure!(
        args.routes == 10usize.pow(id_digits as u32),
        "--routes must be a power of ten ≥ 1000 (ids b000..b999 are drawn at random)"
    );
    let started = Instant::now();
    put_routes(&fleet, &http, args.routes).await?;
    eprintln!(
        "{} routes written in {:.1} s",
        args.routes,
        started.elapsed().as_secs_f64()
    );
    // What the reads return, checked once.
    let page = get_ok(
        &http,
        &format!("{api}/v1/routes?limit=100"),
        &fleet.admin_key,
    )
    .await?;
    ensure!(
        page["items"].as_array().map(Vec::len) == Some(100.min(args.routes)),
        "GET /v1/routes?limit=100 returned {}",
        page["items"].as_array().map_or(0, Vec::len)
    );
    get_ok(&http, &format!("{api}/v1/routes/b000"), &fleet.admin_key).await?;

    // oha takes `.` in a URL regex literally; the base has no other metacharacter.
    let base = tls.base.clone();
    let s = args.seconds;
    let reads = [
        (
            "`GET /v1/nodes`".to_string(),
            format!("{base}/v1/nodes"),
            false,
            None,
        ),
        (
            format!("`GET /v1/routes?limit=100` ({} routes)", args.routes),
            format!("{base}/v1/routes?limit=100"),
            false,
            Some("list100"),
        ),
        (
            format!("`GET /v1/routes/b[0-9]{{{id_digits}}}` (random existing id)"),
            format!("{base}/v1/routes/b[0-9]{{{id_digits}}}"),
            true,
            Some("get1"),
        ),
    ];
    for (request, url, regex, pair) in reads.clone() {
        let load = Load {
            figure: Figure::Reads,
            system: "Nexus",
            request,
            pair: pair.map(|p| format!("{p}@{}", args.read_rate)),
            goal_ms: Some(2.0),
            method: "GET",
            url,
            regex,
            body: None,
            rate: Some(args.read_rate),
            connections: args.connections,
            seconds: s,
        };
        runner.run(load, pid, &tls_args, &headers).await?;
    }
    let mut routes = args.routes as u64;
    let body = route_body(5).to_string();
    let put_url = format!("{base}/v1/routes/w[0-9]{{3}}");
    for &rate in &args.write_rates {
        let load = Load {
            figure: Figure::Writes,
            system: "Nexus",
            request: "`PUT /v1/routes/w[0-9]{3}` (random id of 1,000: create or replace)".into(),
            pair: Some(format!("put@{rate}")),
            goal_ms: Some(20.0),
            method: "PUT",
            url: put_url.clone(),
            regex: true,
            body: Some(Body::Fixed(body.clone())),
            rate: Some(rate),
            connections: args.connections,
            seconds: s,
        };
        runner.run(load, pid, &tls_args, &headers).await?;
        note_routes(runner, &mut routes);
    }
    let (request, url, regex, _) = reads[2].clone();
    let max_loads = [
        (request, url, regex, "GET", None, "get1"),
        (
            "`PUT /v1/routes/w[0-9]{3}` (random id of 1,000: create or replace)".into(),
            put_url,
            true,
            "PUT",
            Some(Body::Fixed(body)),
            "put",
        ),
    ];
    for (request, url, regex, method, body, pair) in max_loads {
        let load = Load {
            figure: Figure::Max,
            system: "Nexus",
            request,
            pair: Some(format!("{pair}@max")),
            goal_ms: None,
            method,
            url,
            regex,
            body,
            rate: None,
            connections: args.max_connections,
            seconds: s,
        };
        runner.run(load, pid, &tls_args, &headers).await?;
        note_routes(runner, &mut routes);
    }
    Ok(tls)
}

/// Appends to the last write phase's label how many routes the tenant held before and after.
fn note_routes(runner: &mut Runner, routes: &mut u64) {
    if let Some((load, o, _)) = runner.results.last_mut()
        && load.method == "PUT"
    {
        let before = *routes;
        *routes += o.created;
        let _ = write!(
            load.request,
            "; the tenant held {before} → {} routes",
            *routes
        );
    }
}

const TENANTS: [(&str, u64); 6] = [
    ("acme", 40),
    ("globex", 25),
    ("initech", 15),
    ("hooli", 10),
    ("umbrella", 1),
    ("", 9),
];

/// Writes `rows` audit entries into the stopped node's `audit.db`, in one transaction: five
/// node ids (`own` and four others), the tenants of [`TENANTS`], the last 30 days.
fn fill_audit(path: &Path, own: &str, rows: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut conn = rusqlite::Connection::open(path)?;
    // A rollback journal while the node is stopped: the new pages go straight into the file
    // instead of first into a WAL as large as the table (the node switches back to WAL when it
    // opens the file).
    conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA synchronous = NORMAL;")?;
    let own_last: i64 = conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM audit WHERE node_id = ?1",
        [own],
        |r| r.get(0),
    )?;
    let mut rng = SplitMix64(0x5eed);
    let mut nodes: Vec<(String, i64)> = vec![(own.to_string(), own_last)];
    nodes.extend((0..4).map(|_| (rng.hex(16), 0)));
    let span_ms: u64 = 30 * 24 * 3600 * 1000;
    let first_ms = now_ms() - span_ms - 60_000;
    let actions = [
        ("GET /v1/routes", "/v1/routes", 200),
        ("GET /v1/routes/{id}", "/v1/routes/r", 200),
        ("PUT /v1/routes/{id}", "/v1/routes/r", 200),
        ("POST /v1/routes", "/v1/routes", 201),
        ("DELETE /v1/routes/{id}", "/v1/routes/r", 200),
        ("GET /v1/nodes", "/v1/nodes", 200),
        ("GET /v1/nodes/{id}", "/v1/nodes/", 200),
        ("GET /v1/firmware/targets", "/v1/firmware/targets", 200),
        ("POST /v1/keys", "/v1/keys", 201),
        ("GET /v1/audit", "/v1/audit", 200),
        ("GET /v1/watch", "/v1/watch", 200),
    ];
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO audit (node_id, seq, time_ms, identity, role, tenant, action, target,
             status, result, trace_id, duration_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        let weight: u64 = TENANTS.iter().map(|t| t.1).sum();
        for i in 0..rows {
            let time_ms = first_ms + (i as u64 * span_ms) / rows as u64 + rng.below(1000);
            let n = rng.below(nodes.len() as u64) as usize;
            nodes[n].1 += 1;
            let (node_id, seq) = (nodes[n].0.clone(), nodes[n].1);
            let mut pick = rng.below(weight);
            let tenant = TENANTS
                .iter()
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map_or("", |t| t.0);
            let (identity, role) = match (tenant, rng.below(10)) {
                ("", _) => ("api-key:k-fleet-ops".to_string(), "fleet-admin"),
                (t, 0..=3) => (format!("api-key:k-{t}-ci"), "operator"),
                (t, 4..=6) => (format!("user:https://login.{t}.example#alice"), "admin"),
                (t, 7..=8) => (format!("user:https://login.{t}.example#bob"), "viewer"),
                (_, _) => (
                    format!("node:{}", nodes[rng.below(nodes.len() as u64) as usize].0),
                    "node",
                ),
            };
            let (action, target, ok_status) = actions[rng.below(actions.len() as u64) as usize];
            let target = if target.ends_with('/') || target.ends_with("/r") {
                format!("{target}{}", rng.below(100_000))
            } else {
                target.to_string()
            };
            let (status, result) = match rng.below(100) {
                0..=2 => (403, "denied"),
                3..=4 => (404, "error"),
                _ => (ok_status, "ok"),
            };
            stmt.execute(rusqlite::params![
                node_id,
                seq,
                time_ms as i64,
                identity,
                role,
                (!tenant.is_empty()).then_some(tenant),
                action,
                target,
                status,
                result,
                rng.hex(16),
                (50 + rng.below(5000)) as i64,
            ])?;
        }
    }
    tx.commit()?;
    Ok(started.elapsed())
}

/// The cursor `next_cursor` carries after the entry at `offset` (newest first).
fn cursor_after(conn: &rusqlite::Connection, offset: usize) -> anyhow::Result<String> {
    let (ms, node, seq): (i64, String, i64) = conn.query_row(
        "SELECT time_ms, node_id, seq FROM audit ORDER BY time_ms DESC, node_id DESC, seq DESC
         LIMIT 1 OFFSET ?1",
        [offset as i64],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(URL_SAFE_NO_PAD.encode(format!("audit:{ms}:{node}-{seq:012}")))
}

struct AuditSetup {
    rows: u64,
    fill: Duration,
    bytes: u64,
    restart: Duration,
}

/// Figure 4 on a second fresh anchor whose audit log is filled while it is stopped.
async fn audit_pages(args: &Args, runner: &mut Runner) -> anyhow::Result<AuditSetup> {
    let mut fleet = Fleet::init().await?;
    let dir = fleet.anchor().dir.clone();
    let own = fleet.anchor().node_id.clone();
    runner
        .masks
        .push((fleet.admin_key.clone(), "$NEXUS_KEY".into()));
    runner
        .masks
        .push((dir.display().to_string(), "$ANCHOR_DIR".into()));
    ensure!(
        fleet.nodes[0].terminate(),
        "the anchor did not stop cleanly"
    );
    let path = dir.join("audit.db");
    let fill = {
        let (path, own, rows) = (path.clone(), own.clone(), args.audit_rows);
        tokio::task::spawn_blocking(move || fill_audit(&path, &own, rows)).await??
    };
    let bytes = ["audit.db", "audit.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    let conn = rusqlite::Connection::open(&path)?;
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))?;
    let rows = rows as u64;
    eprintln!(
        "{rows} audit entries ({:.0} MiB) written in {:.1} s",
        bytes as f64 / 1048576.0,
        fill.as_secs_f64()
    );
    let depths = [10, 50, 99];
    let cursors: Vec<(u64, String)> = depths
        .iter()
        .map(|&pct| Ok((pct, cursor_after(&conn, (rows * pct / 100) as usize)?)))
        .collect::<anyhow::Result<_>>()?;
    drop(conn);
    let started = Instant::now();
    fleet.nodes[0] = NodeProc::run(&dir).await?;
    let restart = started.elapsed();
    let api = fleet.anchor().api.clone();
    let pid = fleet.anchor().pid().context("anchor pid")?;
    let http = nexus_tests::api_client(&dir)?;
    let auth = format!("authorization: Bearer {}", fleet.admin_key);
    let tls = pick_tls(runner, &dir, &api, &fleet.anchor().node_id, &auth).await?;
    let mut pages: Vec<(String, String)> = vec![
        (
            "`GET /v1/audit?limit=100&tenant=acme` (filter, 40% of entries)".into(),
            "/v1/audit?limit=100&tenant=acme".into(),
        ),
        (
            "`GET /v1/audit?limit=100&tenant=umbrella` (filter, 1% of entries)".into(),
            "/v1/audit?limit=100&tenant=umbrella".into(),
        ),
        (
            "`GET /v1/audit?limit=100` (first page)".into(),
            "/v1/audit?limit=100".into(),
        ),
    ];
    for (pct, cursor) in &cursors {
        pages.push((
            format!("`GET /v1/audit?limit=100&cursor=…` (after {pct}% of the entries)"),
            format!("/v1/audit?limit=100&cursor={cursor}"),
        ));
    }
    for (request, path) in pages {
        // Each page is what it says, checked once before it is timed.
        let page = get_ok(&http, &format!("{api}{path}"), &fleet.admin_key).await?;
        ensure!(
            page["items"].as_array().map(Vec::len) == Some(100),
            "{path}: {} items",
            page["items"].as_array().map_or(0, Vec::len)
        );
        let load = Load {
            figure: Figure::Audit,
            system: "Nexus",
            request,
            pair: None,
            goal_ms: Some(5.0),
            method: "GET",
            url: format!("{}{path}", tls.base),
            regex: false,
            body: None,
            rate: Some(args.audit_rate),
            connections: args.connections,
            seconds: args.audit_seconds,
        };
        runner
            .run(load, pid, &tls.args, std::slice::from_ref(&auth))
            .await?;
    }
    Ok(AuditSetup {
        rows,
        fill,
        bytes,
        restart,
    })
}

/// What a profile of the node under these loads showed when this bench was written (perf on
/// the release build; rerun `perf record -g -p <node pid>` under the same oha command after
/// changing the request path). Static text: the tables above it are this run's.
const PROFILE_NOTES: &str = "\
### Where the time goes (perf, 2026-12-01, tree `d182be2-dirty`)

Profiled with `perf record -g -p <node pid>` under the same oha commands on a separate anchor; the \
shares are of the node's CPU samples. Not re-measured by each run.

- **Durable writes are CPU-bound in the node, not fsync-bound**, and their cost grows with the routes in \
the tenant: while a tenant grew from 0 to ~650 routes the node took ~420 writes/s, at ~1,650 routes ~125/s, each write costing \
~6 µs of CPU per route already present (see *server CPU per 2xx*). Under maximum write load with ~2,000 \
routes: whole-tenant validation runs twice per write — `nexus_crdt::validate::check_tenant` 35% (through \
`Replication::quarantine` → `effective_tenant_with` 27%, and `candidate_check` → `validate_tenant` 17%), of \
which `check_route` 21%, most of it `format!` of field paths for every route even when nothing is wrong \
(~12%); the automerge change (`apply_local_entry`, autosurgeon `reconcile`) 15–19%; the data-plane rebuild \
on the blocking pool ~15%; `Access::index`/`access_records`/`policy_sources` ~10%; the watch journal's \
diff (`events::config_pass`, `ConfigView::refresh`) 7%; malloc/free are ~30% of the self time. The config \
store thread (SQLite commit with fsync) is under 5%. A write should validate the changed object (and what \
refers to it), not the tenant; field paths should be built only on error; the data-plane and journal \
passes should be incremental.
- **`GET /v1/routes?limit=100` costs ~1.2 ms of node CPU a page** (30 KB): `Replication::list` turns each \
route into a `serde_json::Value` (26%), `versioned` turns the page into a `Value` again (10%), then it is \
serialized (8%) and the `Value` trees dropped (12%). At 1,000 pages/s that is more than one of the two \
cores, so requests queue behind each other: p50 stays low, p99 is tens of ms. Serializing the structs \
straight into the body would save most of it; the page is built under the `docs` mutex, so concurrent \
list requests also wait for each other.
- **Cheap reads** (`GET /v1/nodes`, `GET /v1/routes/{id}`, ~0.25 ms of CPU each): outside ~100 ms windows \
that recur about every 2 s (often in pairs 0.4 s apart) p99 was 0.53 ms; inside them the node's own \
handler durations (the `duration_us` of its audit entries) reach ~12 ms, and those windows make the p99. \
perf shows no distinct CPU consumer then, but contention in tokio's blocking pool (every read is a \
`spawn_blocking`; `Spawner::spawn_task` starts threads) and on the audit queue's waker. A periodic \
background task is the likely cause (the 2 s store-health and metrics-upkeep loop, anti-entropy's 1 s \
tick taking the `docs` mutex, the watch journal's 1 s recheck); not pinned down yet. The audit pages' \
p99 (p50 ~1 ms at every depth) probably comes from the same windows.
- **Every API call is audited**: at 1,000 requests/s the audit writer writes ~16 MB/s to disk (a small \
WAL commit per wake-up, a checkpoint with fsync about every 250 ms), and each request wakes the writer \
thread. It is off the request path, but it is load on the same two cores and disk.
- **Audit pages**: the cursor is a keyset on the `(time_ms, node_id, seq)` index, so depth costs nothing \
(first page and 99% deep alike). A tenant filter walks that index and skips other tenants' entries (there \
was no tenant index when this was profiled; `audit_by_tenant` has been added since): ~250 rows for a 40% tenant, ~10,000 for a 1% tenant per page of 100.
";

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Figure 5: one etcd member, the same loads on its JSON gateway. `None` without etcd.
async fn etcd_baseline(args: &Args, runner: &mut Runner) -> anyhow::Result<Option<String>> {
    let Some(bin) = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("no etcd binary: `apt-get install etcd-server` to measure the etcd baseline");
        return Ok(None);
    };
    let version = command_output(bin, &["--version"])
        .and_then(|v| v.lines().next().map(str::to_string))
        .map(|v| v.replace("etcd Version:", "etcd"))
        .unwrap_or_else(|| "etcd".into());
    let dir = tempfile::tempdir()?;
    let (client, peer) = (free_port()?, free_port()?);
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let etcd = Etcd(
        Command::new(bin)
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?,
    );
    let pid = etcd.0.id();
    let http = reqwest::Client::new();
    nexus_tests::wait_until(Duration::from_secs(20), "etcd serves", || async {
        http.get(format!("{url}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await?;
    let b64 = |s: &str| STANDARD.encode(s);
    let value = b64(&route_body(5).to_string());
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..args.routes)
        .map(|i| {
            let request = http
                .post(format!("{url}/v3/kv/put"))
                .json(&json!({"key": b64(&format!("routes/b{i:03}")), "value": value}));
            async move {
                let r = request.send().await?;
                ensure!(r.status().is_success(), "etcd put: {}", r.status());
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<()>>()?;
    // oha draws one line (one request body) at random per request.
    let files = tempfile::tempdir()?;
    let gets = files.path().join("range-one.jsonl");
    std::fs::write(
        &gets,
        (0..args.routes)
            .map(|i| format!("{}\n", json!({"key": b64(&format!("routes/b{i:03}"))})))
            .collect::<String>(),
    )?;
    let puts = files.path().join("put.jsonl");
    std::fs::write(
        &puts,
        (0..1000)
            .map(|i| {
                let key = format!("routes/w{i:03}");
                format!("{}\n", json!({"key": b64(&key), "value": value}))
            })
            .collect::<String>(),
    )?;
    runner
        .masks
        .push((files.path().display().to_string(), "$BODIES".into()));
    let list =
        json!({"key": b64("routes/"), "range_end": b64("routes0"), "limit": 100}).to_string();
    let range = format!("{url}/v3/kv/range");
    let put = format!("{url}/v3/kv/put");
    let s = args.seconds;
    let mut loads = vec![
        (
            Figure::Reads,
            format!(
                "`POST /v3/kv/range` (`routes/` prefix, limit 100, {} keys)",
                args.routes
            ),
            range.clone(),
            Body::Fixed(list),
            Some(args.read_rate),
            format!("list100@{}", args.read_rate),
        ),
        (
            Figure::Reads,
            "`POST /v3/kv/range` (one random existing key)".into(),
            range.clone(),
            Body::Lines(gets.clone()),
            Some(args.read_rate),
            format!("get1@{}", args.read_rate),
        ),
    ];
    for &rate in &args.write_rates {
        loads.push((
            Figure::Writes,
            "`POST /v3/kv/put` (random key of 1,000: create or replace)".into(),
            put.clone(),
            Body::Lines(puts.clone()),
            Some(rate),
            format!("put@{rate}"),
        ));
    }
    loads.push((
        Figure::Max,
        "`POST /v3/kv/range` (one random existing key)".into(),
        range,
        Body::Lines(gets),
        None,
        "get1@max".into(),
    ));
    loads.push((
        Figure::Max,
        "`POST /v3/kv/put` (random key of 1,000: create or replace)".into(),
        put,
        Body::Lines(puts),
        None,
        "put@max".into(),
    ));
    for (figure, request, url, body, rate, pair) in loads {
        let load = Load {
            figure,
            system: "etcd",
            request,
            pair: Some(pair),
            goal_ms: None,
            method: "POST",
            url,
            regex: false,
            body: Some(body),
            rate,
            connections: if rate.is_some() {
                args.connections
            } else {
                args.max_connections
            },
            seconds: s,
        };
        runner.run(load, pid, &[], &[]).await?;
    }
    drop(etcd);
    Ok(Some(version))
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn verdict(load: &Load, o: &Outcome) -> String {
    let Some(goal) = load.goal_ms else {
        return String::new();
    };
    let rate_held = load.rate.is_none_or(|r| o.achieved >= 0.95 * f64::from(r));
    if o.p99 < goal && rate_held && o.other.is_empty() {
        format!("< {goal} ms: met")
    } else if !rate_held {
        format!("< {goal} ms: **missed** (rate not held)")
    } else if !o.other.is_empty() {
        format!("< {goal} ms: **missed** (failed requests)")
    } else {
        format!("< {goal} ms: **missed**")
    }
}

fn table(results: &[(Load, Outcome, String)], figure: Figure) -> String {
    let mut out = String::from(
        "| system | request | offered load | 2xx (timed) | achieved | p50 | p99 | max | p99 / max incl. 1st s | server CPU | server CPU per 2xx | machine CPU | other answers | p99 goal |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (load, o, _) in results.iter().filter(|(l, _, _)| l.figure == figure) {
        let offered = match load.rate {
            Some(r) => format!("{r}/s, {} conns, {} s", load.connections, load.seconds),
            None => format!("max, {} conns, {} s", load.connections, load.seconds),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {offered} | {} ({}) | {:.0}/s | {} | {} | {} | {} / {} | {:.2} cores | {} | {:.2} cores | {} | {} |",
            load.system,
            load.request,
            o.ok,
            o.steady,
            o.achieved,
            ms(o.p50),
            ms(o.p99),
            ms(o.max),
            ms(o.p99_all),
            ms(o.max_all),
            o.server_cores,
            ms(o.server_cores / o.achieved * 1e3),
            o.machine_cores,
            if o.other.is_empty() {
                "none".to_string()
            } else {
                o.other.join(", ")
            },
            verdict(load, o),
        );
    }
    out
}

fn times(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}×")
    } else if x >= 1.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.2}×")
    }
}

fn ratios(results: &[(Load, Outcome, String)]) -> String {
    let mut out = String::from(
        "| comparison | Nexus p50 / p99 | etcd p50 / p99 | p99 Nexus ÷ etcd | Nexus achieved | etcd achieved | rate Nexus ÷ etcd |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (load, o, _) in results.iter().filter(|(l, _, _)| l.system == "Nexus") {
        let Some(pair) = &load.pair else { continue };
        let Some((_, e, _)) = results
            .iter()
            .find(|(l, _, _)| l.system == "etcd" && l.pair.as_ref() == Some(pair))
        else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {} vs etcd, {} | {} / {} | {} / {} | {} | {:.0}/s | {:.0}/s | {} |",
            load.request,
            load.rate
                .map_or_else(|| "max".to_string(), |r| format!("{r}/s")),
            ms(o.p50),
            ms(o.p99),
            ms(e.p50),
            ms(e.p99),
            times(o.p99 / e.p99),
            o.achieved,
            e.achieved,
            times(o.achieved / e.achieved),
        );
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let oha = find_oha(args.oha.as_deref())?;
    let oha_version =
        command_output(oha.to_str().context("utf-8 path")?, &["--version"]).unwrap_or_default();
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into());
    let tree =
        command_output("git", &["describe", "--always", "--dirty"]).unwrap_or_else(|| "?".into());
    let load_before = load_average();
    let started = Instant::now();
    let records = tempfile::tempdir()?;
    let mut runner = Runner {
        oha,
        masks: vec![(records.path().display().to_string(), "$RUNS".into())],
        results: Vec::new(),
        records,
    };
    let tls = nexus_api(&args, &mut runner).await?;
    let audit = audit_pages(&args, &mut runner).await?;
    let etcd = etcd_baseline(&args, &mut runner).await?;
    let load_after = load_average();
    let took = started.elapsed();

    let tls_note = match &tls.insecure {
        None => "oha checks the node's certificate as every API client of the fleet does: against the \
                 fleet root (`--cacert $ANCHOR_DIR/trust/root.pem`) under the name the certificate carries \
                 (`<node id>.node.nexus.invalid`, pointed at the node's loopback address with `--connect-to`)"
            .to_string(),
        Some(why) => format!(
            "oha runs with `--insecure`: checking the node's certificate against the fleet root failed ({why}); \
             the bytes on the wire are the same TLS 1.3"
        ),
    };
    let commands = runner
        .results
        .iter()
        .map(|(l, _, c)| format!("- {} {}: `{c}`\n", l.system, l.request))
        .collect::<String>();
    let etcd_note = match &etcd {
        Some(v) => format!(
            "**etcd** is {v} (Debian `etcd-server`), one member in a temp dir, default durability (its WAL \
             is fsynced before a put is answered), plain HTTP on loopback (Nexus is HTTPS), measured \
             after Nexus with the same oha flags, rates and durations. Reads are linearizable ranges \
             (etcd's default). Its bodies are drawn at random per request from a file (`-Z`): range \
             of one of the {} existing keys `routes/bNNN` (values are the route policy JSON), puts of \
             one of 1,000 keys `routes/wNNN` (created by the first put, replaced later) with the same value.",
            args.routes
        ),
        None => "etcd was not installed (`apt-get install etcd-server`): no baseline in this run."
            .into(),
    };
    let section = format!(
        "<!-- api-bench:start -->\n## HTTP API: latency and throughput of one node\n\n\
         Command: `cargo build --release -p nexus-node -p nexus-tests && target/release/nexus-api-bench --write docs/benchmarks.md`\n\n\
         **Setup** (once): the load tool is [oha](https://crates.io/crates/oha): `cargo install oha --locked` \
         (the bench looks for `oha` on `PATH`, then in `~/.cargo/bin`; `--oha PATH` names another). etcd for the \
         baseline: `apt-get install etcd-server`.\n\n\
         - Date: {date}; tree `{tree}`; whole run {:.0} s; {oha_version}\n\
         - Machine: {} cores, {}; 1-minute load average {load_before} before, {load_after} after (the machine may be shared)\n\
         - Setup: one anchor (`nexus init` + `nexus run`, loopback, ports 0, temp dir), the HTTPS API with the admin key \
         (`authorization: Bearer $NEXUS_KEY`, role fleet-admin). **The node and oha share the same {} cores**: \
         **server CPU** is the node's (or etcd's) own CPU time over the phase (**per 2xx**: divided by \
         its answers, what one request costs it), **machine CPU** everything's (oha included; {} = all cores busy). {tls_note}.\n\
         - Method: each row is one oha run of fixed duration (`-z`, in-flight requests waited for: `-w`); connections \
         are opened at the start of the run and kept alive. Fixed-rate rows use `-q` with `--latency-correction` (a \
         request's latency counts from when it was due, so a stall or a backlog is not hidden by the requests it delayed). \
         Counts, statuses, errors and **achieved** (2xx answers per second over the run) come from oha's JSON output \
         (`--output-format json`). **p50/p99/max** are over the requests oha sent after the first {warmup:.0} s, from its \
         per-request records (`--db-url`): in its first 70–120 ms oha sets up its TLS client (it loads the system's CA \
         certificates) and opens its connections while requests fall due, which with latency correction puts up to \
         ~100 ms on the first ~150 requests whatever the server; oha's own p99/max over the whole run are shown beside \
         them. A goal is met when that p99 is under it, every answer was 2xx and the offered rate was held (≥ 95%).\n\
         - Reads: {} route policies `b000`… put first. Writes: `PUT` of a route policy to one of 1,000 ids `w000`… drawn at \
         random (the first write of an id creates it, 201; later ones replace it, 200), answered after the change is \
         committed to `nexus.db` with SQLite `synchronous=FULL` (fsync), so this is the durable write latency; the \
         tenant grows from {} to at most {} routes.\n\
         - Audit: a second fresh anchor was stopped and {} entries written into its `audit.db` (table `audit`) in one \
         transaction ({:.1} s, {:.0} MiB): five node ids, tenants acme 40%, globex 25%, initech 15%, hooli 10%, fleet \
         (no tenant) 9%, umbrella 1%, API keys, OIDC users and nodes as callers, the last 30 days; then it was started \
         again (serving in {:.0} ms). Cursors are what `next_cursor` would carry after the entry at that depth \
         (`base64url(\"audit:<time_ms>:<entry id>\")`, computed from the file). Pages are newest first; the bench's own \
         calls are audited too, so they lie on top of the filtered pages (fleet caller, no tenant).\n\
         - {etcd_note}\n\n\
         ### 1. Reads at {} req/s (goal p99 < 2 ms)\n\n{}\n\
         ### 2. Durable writes at fixed rates (goal p99 < 20 ms)\n\n{}\n\
         ### 3. Maximum throughput (no rate limit)\n\n{}\n\
         ### 4. Audit log pages of 100 over {} entries (goal p99 < 5 ms a page)\n\n{}\n\
         ### 5. Beside etcd\n\n{}\n\
         {PROFILE_NOTES}\n\
         Commands (the key, data directory and body files as placeholders):\n\n{commands}\
         <!-- api-bench:end -->\n",
        took.as_secs_f64(),
        cores(),
        cpu_model(),
        cores(),
        cores(),
        args.routes,
        args.routes,
        args.routes + 1000,
        audit.rows,
        audit.fill.as_secs_f64(),
        audit.bytes as f64 / 1048576.0,
        audit.restart.as_secs_f64() * 1e3,
        args.read_rate,
        table(&runner.results, Figure::Reads),
        table(&runner.results, Figure::Writes),
        table(&runner.results, Figure::Max),
        audit.rows,
        table(&runner.results, Figure::Audit),
        ratios(&runner.results),
        warmup = WARMUP_SECONDS,
    );
    print!("{section}");
    if let Some((load, _, _)) = runner.results.iter().find(|(_, o, _)| o.ok == 0) {
        bail!(
            "{} {}: no successful answer, so the section was not written",
            load.system,
            load.request
        );
    }
    if let Some(path) = args.write {
        nexus_tests::bench::write_section(&path, "api-bench", &section)?;
    }
    Ok(())
}
