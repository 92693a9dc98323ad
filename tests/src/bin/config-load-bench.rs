//! Start time, memory and read latency of an anchor whose tenant document holds many route
//! policies (the "startup loads the documents without replaying the world" at 100,000
//! route policies).
//!
//! The bench creates a fleet (`nexus init`, one clean start and stop of the anchor: the empty
//! baseline), then writes N route policies into the stopped anchor's own storage exactly as its
//! write path stores them: N changes made with `nexus-crdt` (`apply_local_entry`, one change per
//! route, authored by the anchor's own key and MIC for a fleet admin, as `POST /v1/routes`
//! makes them), the tenant document saved as one `config_chunks` row, and every signed envelope
//! with the anchor's MIC in `config_changes`. Then it starts the anchor twice and times each
//! start until `GET /v1/routes?limit=1` answers with the full version, and reads its memory
//! and the latency of a page and of a single route.
//!
//! `cargo build --release -p nexus-node -p nexus-tests --bins && \
//!  target/release/nexus-config-load-bench --routes 100000 --write docs/benchmarks.md`

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use nexus_ca::{NodeKey, Role};
use nexus_crdt::{
    ActionType, AuthorFacts, Caller, CallerRole, ConfigDoc, DocId, LocalAuthor, ROUTES,
    RouteAction, RouteMatch, RoutePolicy, SignedChange, StreamMode, TenantDoc,
};
use nexus_tests::NodeProc;
use serde_json::Value;

const START_MARKER: &str = "<!-- config-load-bench:start -->";
const END_MARKER: &str = "<!-- config-load-bench:end -->";

/// The automerge incarnation the bench writes under: far from the node's own (its start time
/// in milliseconds, bumped at every start), so the two actors never share sequence numbers.
const BENCH_INCARNATION: u64 = u64::MAX - 1;

#[derive(Parser)]
struct Args {
    /// Route policies to load.
    #[arg(long, default_value_t = 100_000)]
    routes: usize,
    /// Requests per latency figure (the median is reported).
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Longest wait, seconds, for a start to serve the routes (and for each other wait).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Replace the section between the config-load-bench markers in this file (or append it).
    #[arg(long)]
    write: Option<PathBuf>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `VmRSS` and `VmHWM` of process `pid`, KiB.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) process `pid` has used so far, from `/proc/<pid>/stat`: next to
/// the wall time it shows how much of the machine a start got when other work shares it.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3 (state).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let hz: f64 = command_output("getconf", &["CLK_TCK"])?.parse().ok()?;
    Some(Duration::from_secs_f64(ticks / hz))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn bytes_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1e3)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
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

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Size of the SQLite file plus its WAL, if any.
fn db_size(dir: &Path) -> u64 {
    ["nexus.db", "nexus.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn route_id(i: usize) -> String {
    format!("route-{i:06}")
}

/// The route `POST /v1/routes` stores for the body of `tests/tests/config.rs` `route()`.
fn route(i: usize, tenant: &str, created_at: i64) -> RoutePolicy {
    let id = route_id(i);
    RoutePolicy {
        name: format!("route {id}"),
        id,
        tenant_id: tenant.to_string(),
        priority: (i % (nexus_crdt::PRIORITY_MAX as usize + 1)) as u32,
        matches: RouteMatch {
            source_node_ids: Vec::new(),
            dest_capabilities: Vec::new(),
            stream_modes: vec![StreamMode::RO],
            message_types: vec![7],
            source_tenant: None,
        },
        action: RouteAction::new(ActionType::Allow),
        enabled: true,
        created_at,
    }
}

/// The anchor's signing identity, from its data directory.
struct Anchor {
    author: LocalAuthor,
    mic_der: Vec<u8>,
    tenant: String,
}

fn read_anchor(dir: &Path) -> anyhow::Result<Anchor> {
    let key_path = dir.join("node.key");
    let key = NodeKey::from_pkcs8_pem(
        &std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?,
    )
    .with_context(|| format!("parsing {}", key_path.display()))?;
    let mic_path = dir.join("node.pem");
    let mic_der = nexus_ca::pem_to_der(
        &std::fs::read_to_string(&mic_path)
            .with_context(|| format!("reading {}", mic_path.display()))?,
    )?
    .into_iter()
    .next()
    .with_context(|| format!("{} holds no certificate", mic_path.display()))?;
    let mic = nexus_ca::read_mic(&mic_der)?;
    ensure!(
        mic.role == Role::Anchor,
        "{} is not an anchor's MIC",
        mic_path.display()
    );
    let facts = AuthorFacts {
        node_id: mic.node_id,
        role: Role::Anchor,
        tenant: mic.tenant.clone(),
        site: mic.site.clone(),
    };
    let author = LocalAuthor::new(key, facts, &mic.serial_hex, BENCH_INCARNATION)
        .context("node.key does not belong to node.pem")?;
    Ok(Anchor {
        author,
        mic_der,
        tenant: mic.tenant,
    })
}

/// What the generation produced.
struct Generated {
    doc_id: DocId,
    /// `ConfigDoc::save()` of the whole tenant document.
    saved: Vec<u8>,
    changes: Vec<SignedChange>,
    /// The tenant document's version once loaded: what the API must report.
    version: u64,
    /// Tenant-document chunks already in the database (loaded first; normally none).
    existing_chunks: usize,
    generate: Duration,
    save: Duration,
    /// Offline, what the node does at start: `ConfigDoc::new` + `load_incremental` of the
    /// saved bytes, then `hydrate::<TenantDoc>()`.
    load: Duration,
    hydrate: Duration,
    /// `ConfigDoc::load` of the same bytes, for comparison.
    load_whole: Duration,
}

/// Makes `n` route changes on the anchor's tenant document, one per route, as the API does.
fn generate(dir: &Path, anchor: &Anchor, n: usize) -> anyhow::Result<Generated> {
    let doc_id = DocId::tenant(&anchor.tenant)?;
    // Start from what the node already stored for the document, as it would.
    let existing: Vec<Vec<u8>> = {
        let db = rusqlite::Connection::open(dir.join("nexus.db"))?;
        let mut stmt =
            db.prepare("SELECT bytes FROM config_chunks WHERE doc_id = ?1 ORDER BY seq")?;
        stmt.query_map([doc_id.to_string()], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let mut doc = ConfigDoc::new(doc_id.clone());
    for chunk in &existing {
        doc.load_incremental(chunk)
            .with_context(|| format!("loading the stored chunks of {doc_id}"))?;
    }
    let caller = Caller {
        identity: "api-key:bench".into(),
        role: CallerRole::FleetAdmin,
    };
    // Distinct, increasing, past timestamps: one millisecond per change, ending now.
    let first_ms = now_ms() - n as i64;
    let mut changes = Vec::with_capacity(n);
    let started = Instant::now();
    let mut reported = Instant::now();
    for i in 0..n {
        let ts = first_ms + i as i64;
        let policy = route(i, &anchor.tenant, ts);
        let id = policy.id.clone();
        let change = doc
            .apply_local_entry(&anchor.author, &caller, ts, ROUTES, &id, |v| {
                *v = Some(policy);
                Ok::<_, std::convert::Infallible>(())
            })
            .map_err(|e| anyhow::anyhow!("route {i}: {e}"))?
            .with_context(|| format!("route {i} made no change"))?;
        changes.push(change);
        if reported.elapsed() > Duration::from_secs(10) {
            reported = Instant::now();
            eprintln!(
                "  generated {} of {n} changes in {}",
                i + 1,
                ms(started.elapsed())
            );
        }
    }
    let generate = started.elapsed();
    let started = Instant::now();
    let saved = doc.save();
    let save = started.elapsed();
    // Attribution: the node's load path, timed offline on the same bytes.
    let started = Instant::now();
    let mut loaded = ConfigDoc::new(doc_id.clone());
    loaded.load_incremental(&saved)?;
    let load = started.elapsed();
    let started = Instant::now();
    let whole = ConfigDoc::load(doc_id.clone(), &saved)?;
    let load_whole = started.elapsed();
    ensure!(
        whole.version() == doc.version(),
        "ConfigDoc::load gives version {}",
        whole.version()
    );
    drop(whole);
    let started = Instant::now();
    let hydrated = loaded.hydrate::<TenantDoc>()?;
    let hydrate = started.elapsed();
    ensure!(
        hydrated.model.routes.len() >= n && hydrated.malformed.is_empty(),
        "the saved document hydrates to {} routes ({} malformed)",
        hydrated.model.routes.len(),
        hydrated.malformed.len()
    );
    ensure!(
        loaded.version() == doc.version(),
        "the saved document loads at version {}, not {}",
        loaded.version(),
        doc.version()
    );
    Ok(Generated {
        version: doc.version(),
        doc_id,
        saved,
        changes,
        existing_chunks: existing.len(),
        generate,
        save,
        load,
        hydrate,
        load_whole,
    })
}

/// Writes the document and its envelopes as `Store::save_config_change` lays them out: the
/// saved document as one chunk, one `config_changes` row per change, in one transaction.
fn store(dir: &Path, g: &Generated, mic_der: &[u8]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut db = rusqlite::Connection::open(dir.join("nexus.db"))?;
    db.busy_timeout(Duration::from_secs(10))?;
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO config_chunks (doc_id, bytes) VALUES (?1, ?2)",
        rusqlite::params![g.doc_id.to_string(), g.saved],
    )?;
    {
        let mut insert = tx.prepare(
            "INSERT OR IGNORE INTO config_changes (hash, doc_id, envelope, author_mic, stored_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for change in &g.changes {
            // Stored when made: keeps `ORDER BY stored_at_ms` (what a peer pulls) causal.
            insert.execute(rusqlite::params![
                hex::encode(change.change_hash.0),
                g.doc_id.to_string(),
                change.encode(),
                mic_der,
                change.timestamp_ms,
            ])?;
        }
    }
    tx.commit()?;
    db.close().map_err(|(_, e)| e)?;
    Ok(started.elapsed())
}

/// An API client that pins the fleet root, like `nexus_tests::api_client`, with no overall
/// timeout: every request gets its own.
fn client(dir: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read_to_string(dir.join("trust").join("root.pem"))
        .context("reading trust/root.pem")?;
    let root = nexus_ca::pem_to_der(&pem)?.swap_remove(0);
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(nexus_ca::api_client_config(root, None))
        .build()?)
}

/// One start of the node, measured.
struct Start {
    /// Spawn → `endpoints.json` written by this process (the node says it serves).
    serving: Duration,
    /// Spawn → `GET /v1/routes?limit=1` answered 200 at the full version.
    ready: Duration,
    /// The node's own `startup_ms` from its "node serving" log line.
    node_startup: Option<Duration>,
    /// CPU time the node had used when ready.
    cpu_ready: Option<Duration>,
    /// The machine's 1-minute load average just before the spawn.
    load_at_spawn: String,
    /// Requests made until ready (answered or not).
    polls: usize,
    version: u64,
    rss_ready_kib: u64,
    rss_end_kib: u64,
    hwm_kib: u64,
    page: Duration,
    get: Duration,
    stop: Duration,
    clean_stop: bool,
}

struct Api<'a> {
    http: &'a reqwest::Client,
    key: &'a str,
    deadline: Instant,
}

impl Api<'_> {
    async fn get(&self, url: &str) -> anyhow::Result<(u16, Value)> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "timed out before GET {url}");
        let response = self
            .http
            .get(url)
            .bearer_auth(self.key)
            .timeout(left)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Median time of `samples` GETs of `url`, each checked by `ok`.
    async fn time(
        &self,
        url: &str,
        samples: usize,
        ok: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Duration> {
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            let (status, body) = self.get(url).await?;
            times.push(t.elapsed());
            ensure!(
                status == 200 && ok(&body),
                "GET {url} answered {status}: {}",
                body.to_string().chars().take(300).collect::<String>()
            );
        }
        Ok(median(times))
    }
}

/// Starts the node of `dir` and measures it; `routes` is how many it must serve, `version` the
/// tenant document version it must report.
async fn measure(
    dir: &Path,
    http: &reqwest::Client,
    key: &str,
    routes: usize,
    version: u64,
    args: &Args,
) -> anyhow::Result<Start> {
    let timeout = Duration::from_secs(args.timeout);
    let dir_s = dir.to_str().context("utf-8 path")?;
    let load_at_spawn = load_average();
    let started = Instant::now();
    let mut node = NodeProc::start(dir, &["run", "--data-dir", dir_s])?;
    let pid = node.pid().context("no pid")?;
    let api = Api {
        http,
        key,
        deadline: started + timeout,
    };
    let mut base: Option<String> = None;
    let mut serving = Duration::ZERO;
    let mut polls = 0;
    let mut last = String::from("no answer yet");
    let (ready, answered) = loop {
        if let Some(status) = node.exited() {
            bail!(
                "nexus exited with {status} before serving the routes:\n{}",
                node.log()
            );
        }
        if started.elapsed() >= timeout {
            bail!(
                "nexus did not serve {routes} routes at config_version >= {version} within {timeout:?} \
                 (API {}; last answer: {last}); its log:\n{}",
                base.as_deref().unwrap_or("not serving"),
                node.log()
            );
        }
        if base.is_none()
            && let Ok(text) = std::fs::read_to_string(dir.join("endpoints.json"))
            && let Ok(e) = serde_json::from_str::<Value>(&text)
            && e["pid"].as_u64() == Some(u64::from(pid))
        {
            serving = started.elapsed();
            base = e["api"].as_str().map(str::to_string);
        }
        if let Some(base) = &base {
            polls += 1;
            match api.get(&format!("{base}/v1/routes?limit=1")).await {
                Ok((200, body))
                    if body["config_version"]
                        .as_u64()
                        .is_some_and(|v| v >= version) =>
                {
                    break (started.elapsed(), body);
                }
                Ok((status, body)) => {
                    last = format!(
                        "{status} {}",
                        body.to_string().chars().take(300).collect::<String>()
                    )
                }
                Err(err) => last = format!("{err:#}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu_ready = cpu_time(pid);
    let (rss_ready_kib, _) = memory_kib(pid)?;
    let base = base.expect("set before ready");
    let first = routes.min(1);
    ensure!(
        answered["items"].as_array().map(Vec::len) == Some(first),
        "GET /v1/routes?limit=1 at version {version} listed {} instead of {first} route(s)",
        answered["items"]
    );
    let page = api
        .time(&format!("{base}/v1/routes?limit=100"), args.samples, |b| {
            b["items"].as_array().map(Vec::len) == Some(routes.min(100))
        })
        .await?;
    let probe = route_id(routes / 2);
    let get = if routes > 0 {
        api.time(&format!("{base}/v1/routes/{probe}"), args.samples, |b| {
            b["id"] == probe.as_str()
        })
        .await?
    } else {
        Duration::ZERO
    };
    let (rss_end_kib, hwm_kib) = memory_kib(pid)?;
    let node_startup = strip_ansi(&node.log()).lines().rev().find_map(|line| {
        let rest = line.split("startup_ms=").nth(1)?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok().map(Duration::from_millis)
    });
    let t = Instant::now();
    let clean_stop = node.terminate();
    let stop = t.elapsed();
    Ok(Start {
        serving,
        ready,
        node_startup,
        cpu_ready,
        load_at_spawn,
        polls,
        version: answered["config_version"].as_u64().unwrap_or_default(),
        rss_ready_kib,
        rss_end_kib,
        hwm_kib,
        page,
        get,
        stop,
        clean_stop,
    })
}

/// `text` without ANSI escape sequences (the node colours its log even into a file).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters… final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let updated = match (text.find(START_MARKER), text.find(END_MARKER)) {
        (Some(a), Some(b)) if a < b => {
            let mut end = b + END_MARKER.len();
            if text[end..].starts_with('\n') {
                end += 1;
            }
            format!("{}{section}{}", &text[..a], &text[end..])
        }
        _ => format!("{text}\n{section}"),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.samples > 0, "--samples must be at least 1");
    let load_before = load_average();
    // The node's "node serving" line carries its own startup_ms; everything else stays quiet.
    nexus_tests::set_nexus_env("NEXUS_LOG", "warn,nexus::agent=info");

    // 1. A fleet, and the empty anchor started and stopped once (the baseline).
    let root = tempfile::tempdir()?;
    let dir = root.path().join("anchor");
    let dir_s = dir.to_str().context("utf-8 path")?;
    let mut init = vec!["init", "--data-dir", dir_s, "--site", "hq"];
    init.extend(nexus_tests::ANY_PORTS);
    let out = nexus_tests::run(&init);
    ensure!(
        out.status.success(),
        "nexus init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin_key = std::fs::read_to_string(dir.join("admin.key"))
        .context("reading admin.key")?
        .trim()
        .to_string();
    let http = client(&dir)?;
    eprintln!("empty anchor: starting");
    let empty = measure(&dir, &http, &admin_key, 0, 1, &args).await?;
    ensure!(empty.clean_stop, "the empty anchor did not stop cleanly");

    // 2. N route changes, authored by the anchor.
    let anchor = read_anchor(&dir)?;
    eprintln!(
        "generating {} route changes for tenant {:?}",
        args.routes, anchor.tenant
    );
    let generated = generate(&dir, &anchor, args.routes)?;
    let envelope_bytes: usize = generated.changes.iter().map(|c| c.encode().len()).sum();

    // 3. Into the stopped anchor's storage.
    let db_before = db_size(&dir);
    let stored = store(&dir, &generated, &anchor.mic_der)?;
    let db_loaded = db_size(&dir);
    let mic_len = anchor.mic_der.len();
    drop(anchor);

    // 4. Two starts.
    let mut starts = Vec::new();
    for which in ["first", "second"] {
        eprintln!("loaded anchor: {which} start");
        let start = measure(
            &dir,
            &http,
            &admin_key,
            args.routes,
            generated.version,
            &args,
        )
        .await?;
        eprintln!(
            "  serving after {}, routes at version {} after {}",
            ms(start.serving),
            start.version,
            ms(start.ready)
        );
        starts.push(start);
    }
    let db_after = db_size(&dir);
    let load_after = load_average();

    // 5. The figures.
    let n = args.routes;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| Start | empty anchor | 1st start, {n} routes | 2nd start, {n} routes |"
    );
    let _ = writeln!(table, "|---|---|---|---|");
    let all = [&empty, &starts[0], &starts[1]];
    let mut row = |name: &str, f: &dyn Fn(&Start) -> String| {
        let _ = writeln!(
            table,
            "| {name} | {} | {} | {} |",
            f(all[0]),
            f(all[1]),
            f(all[2])
        );
    };
    row(
        "spawn → routes served (`GET /v1/routes?limit=1` 200 at the full `config_version`)",
        &|s| ms(s.ready),
    );
    row("spawn → API up (`endpoints.json` written)", &|s| {
        ms(s.serving)
    });
    row(
        "node's own `startup_ms` (\"node serving\" log line)",
        &|s| s.node_startup.map_or_else(|| "?".into(), ms),
    );
    row("node CPU time (user + system) when served", &|s| {
        s.cpu_ready.map_or_else(|| "?".into(), ms)
    });
    row("machine's 1-minute load average at spawn", &|s| {
        s.load_at_spawn.clone()
    });
    row("routes requests until served (10 ms apart)", &|s| {
        s.polls.to_string()
    });
    row("`config_version` served", &|s| s.version.to_string());
    row("VmRSS once served", &|s| mib(s.rss_ready_kib));
    row("VmRSS after the reads below / peak (VmHWM)", &|s| {
        format!("{} / {}", mib(s.rss_end_kib), mib(s.hwm_kib))
    });
    row(
        &format!("`GET /v1/routes?limit=100`, median of {}", args.samples),
        &|s| ms(s.page),
    );
    row(
        &format!("`GET /v1/routes/{{id}}`, median of {}", args.samples),
        &|s| {
            if s.version <= 1 {
                "–".into()
            } else {
                ms(s.get)
            }
        },
    );
    row("SIGTERM → exited", &|s| {
        format!(
            "{}{}",
            ms(s.stop),
            if s.clean_stop { "" } else { " (not clean)" }
        )
    });
    let per_change = generated.generate.as_secs_f64() * 1e6 / n.max(1) as f64;
    let mut facts = String::new();
    let _ = writeln!(
        facts,
        "- Generation (offline, `nexus-crdt`, one `apply_local_entry` per route, signed): {} for {n} changes ({per_change:.0} µs a change); `ConfigDoc::save` {}.",
        ms(generated.generate),
        ms(generated.save),
    );
    let _ = writeln!(
        facts,
        "- The same bytes timed in the bench process: `ConfigDoc::load` {} (the node's load, in the background after a start) and `hydrate::<TenantDoc>()` {} (what building a view costs, paid once); `ConfigDoc::new` + `load_incremental` {} (the node's load before views).",
        ms(generated.load_whole),
        ms(generated.hydrate),
        ms(generated.load),
    );
    let _ = writeln!(
        facts,
        "- Saved tenant document (`config_chunks`, one row): {} ({} bytes); {n} envelopes (`config_changes`): {} ({} with the {}-byte MIC each); written in one transaction in {}.",
        bytes_mib(generated.saved.len() as u64),
        generated.saved.len(),
        bytes_mib(envelope_bytes as u64),
        bytes_mib((envelope_bytes + n * mic_len) as u64),
        mic_len,
        ms(stored),
    );
    let _ = writeln!(
        facts,
        "- `nexus.db` (with WAL): {} before, {} after writing, {} after the two starts.",
        bytes_mib(db_before),
        bytes_mib(db_loaded),
        bytes_mib(db_after)
    );
    if generated.existing_chunks > 0 {
        let _ = writeln!(
            facts,
            "- The tenant document already had {} stored chunk(s); the routes were written on top.",
            generated.existing_chunks
        );
    }
    println!("\n{table}\n{facts}");

    let cpus = command_output("nproc", &[]).unwrap_or_else(|| "?".into());
    let model = Some(nexus_tests::bench::cpu_model())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "unknown CPU".into());
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into());
    let tree =
        command_output("git", &["describe", "--always", "--dirty"]).unwrap_or_else(|| "?".into());
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let section = format!(
        "{START_MARKER}\n## Configuration load: start with {n} route policies\n\n\
         Command: `cargo build --release -p nexus-node -p nexus-tests --bins && target/release/nexus-config-load-bench {}`\n\n\
         - Date: {date}; tree `{tree}` (`git describe --always --dirty`)\n\
         - Machine: {cpus} CPUs (nproc), {model}; 1-minute load average {load_before} before, {load_after} after (the machine may be shared)\n\
         - Setup: one anchor (`nexus init`, loopback, ports 0, temp dir), started and stopped once empty. Then, offline, {n} route policies \
         for tenant `{}` are made with `nexus-crdt` as `POST /v1/routes` makes them — one change per route, authored and signed by the anchor's own key \
         and MIC for a fleet admin caller — and written into the stopped anchor's `nexus.db` as its write path lays them out: the saved tenant \
         document as one `config_chunks` row and every signed envelope with the MIC in `config_changes`, one transaction — but no stored view \
         (`config_objects`/`config_views`), like a database from before views. So the 1st start loads the document and builds the view \
         (the one-time cost after an upgrade); the 2nd start is every later start: it reads the view, serves at once and loads the \
         automerge document in the background. Then `nexus run` twice.\n\
         - Method: \"routes served\" is spawn → the first `GET /v1/routes?limit=1` (HTTPS, admin key) answering 200 with `config_version` ≥ {} \
         (polled every 10 ms once `endpoints.json` names the process; one request in flight at a time). Memory is VmRSS/VmHWM from `/proc/<pid>/status`. \
         Latencies are client-side, sequential, after the start.\n\n\
         {table}\n{facts}{END_MARKER}\n",
        argv.join(" "),
        generated.doc_id.tenant_id().unwrap_or_default(),
        generated.version,
    );
    if let Some(path) = &args.write {
        write_section(path, &section)?;
        println!("wrote the {START_MARKER} section of {}", path.display());
    }
    Ok(())
}
