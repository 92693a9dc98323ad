//! `nexus-bench`: measures a fleet of real `nexus` processes on loopback and writes the results
//! as markdown.
//!
//! ```text
//! cargo run --release -p nexus-tests --bin nexus-bench -- --nodes 10,50 [--out docs/benchmarks.md]
//! ```
//!
//! For each fleet size N (anchor included) it bootstraps a fresh fleet in a temp dir (one token
//! with N-1 uses, N-1 `nexus join` processes spawned at once) and measures: time to full
//! membership, start-to-serving of `nexus run`, steady-state gossip bytes, RSS, and failure
//! detection after `kill -9`. Every wait is bounded: a fleet that does not converge fails with a
//! message naming the nodes that lag, it never hangs.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use nexus_tests::{ANY_PORTS, nexus_bin, run, signal};
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// Poll period of membership and failure-detection checks (the figures carry this granularity).
const POLL: Duration = Duration::from_millis(50);
/// Poll period of the start-to-serving probe: fine enough to resolve a few milliseconds.
const SERVE_POLL: Duration = Duration::from_millis(2);
/// How long one process may take to serve its API.
const SERVE_LIMIT: Duration = Duration::from_secs(20);
/// How long observers may take to report a killed node `offline`.
const DETECT_LIMIT: Duration = Duration::from_secs(30);
/// Quiet time after convergence before sampling gossip traffic, so join bursts are excluded.
const GOSSIP_SETTLE: Duration = Duration::from_secs(5);
/// Gossip traffic sampling window.
const GOSSIP_WINDOW: Duration = Duration::from_secs(30);
/// SIGTERM grace before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Restarts of one node for the start-to-serving figure.
const RESTARTS: usize = 5;
/// Nodes killed for the failure-detection figure.
const VICTIMS: usize = 3;
/// Goals the figures are compared with.
const GOAL_MEMBERSHIP_50: Duration = Duration::from_secs(3);
const GOAL_DETECTION: Duration = Duration::from_secs(3);
const GOAL_SERVING: Duration = Duration::from_millis(100);

/// Convergence limit: generous, and growing with N because 2 cores run every process.
fn converge_limit(n: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(500) * n as u32
}

#[derive(Debug, Parser)]
#[command(
    name = "nexus-bench",
    about = "Benchmarks a fleet of real nexus processes on loopback."
)]
struct Args {
    /// Fleet sizes to measure, comma-separated (total processes, anchor included; 2 to 1000).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<usize>,
    /// Markdown file to write (replaced).
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// A sample of values with the summaries the report needs.
#[derive(Debug, Default, Clone)]
struct Stats(Vec<f64>);

impl Stats {
    fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    fn extend(&mut self, other: &Stats) {
        self.0.extend_from_slice(&other.0);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut values = self.0.clone();
        values.sort_by(f64::total_cmp);
        values
    }

    /// Median, nearest-rank (an observed value, never an interpolation).
    fn p50(&self) -> Option<f64> {
        let sorted = self.sorted();
        let rank = sorted.len().div_ceil(2);
        rank.checked_sub(1).map(|i| sorted[i])
    }

    fn max(&self) -> Option<f64> {
        self.0.iter().copied().max_by(f64::total_cmp)
    }

    fn mean(&self) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.iter().sum::<f64>() / self.0.len() as f64)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP API client

/// The fleet API as the bench uses it: admin key, short timeouts so a stuck node fails a poll
/// instead of stalling it.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    key: String,
}

impl Api {
    fn new(key: String, anchor_dir: &Path) -> anyhow::Result<Api> {
        let root = nexus_ca::pem_to_der(&std::fs::read_to_string(
            anchor_dir.join("trust").join("root.pem"),
        )?)?
        .swap_remove(0);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1))
            .use_preconfigured_tls(nexus_ca::api_client_config(root, None))
            .build()?;
        Ok(Api { http, key })
    }

    async fn get(&self, url: &str) -> anyhow::Result<Value> {
        let response = self.http.get(url).bearer_auth(&self.key).send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {url} answered {status}: {body}");
        }
        Ok(body)
    }

    async fn healthy(&self, api: &str) -> bool {
        self.http
            .get(format!("{api}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Creates one join token with `uses` uses on the anchor.
    async fn create_token(&self, anchor: &str, uses: usize) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{anchor}/v1/tokens"))
            .bearer_auth(&self.key)
            .json(&json!({ "uses": uses, "ttl_seconds": 600 }))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 201 {
            bail!("POST /v1/tokens answered {status}: {body}");
        }
        Ok(body["token"]
            .as_str()
            .context("the token response holds no token")?
            .to_string())
    }

    /// `(node_id, status)` of every node `api` knows.
    async fn view(&self, api: &str) -> anyhow::Result<Vec<(String, String)>> {
        // One page holds every node for N <= 1000 (the API maximum).
        let body = self.get(&format!("{api}/v1/nodes?limit=1000")).await?;
        if !body["next_cursor"].is_null() {
            bail!("{api} paginated a list of fewer than 1000 nodes");
        }
        let items = body["items"]
            .as_array()
            .context("GET /v1/nodes without items")?;
        Ok(items
            .iter()
            .map(|n| {
                let field = |k: &str| n[k].as_str().unwrap_or_default().to_string();
                (field("node_id"), field("status"))
            })
            .collect())
    }

    /// Status of node `id` as `api` sees it, and when `api` last changed it (`updated_at`).
    async fn node_status(&self, api: &str, id: &str) -> anyhow::Result<(String, String)> {
        let body = self.get(&format!("{api}/v1/nodes/{id}")).await?;
        let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
        Ok((field("status"), field("updated_at")))
    }

    /// `nexus_gossip_bytes_sent_total` from `/metrics` (0 before the first datagram).
    async fn gossip_bytes_sent(&self, api: &str) -> anyhow::Result<f64> {
        self.metric_sum(api, "nexus_gossip_bytes_sent_total", "")
            .await
    }

    /// Status changes to `degraded` or `offline` this node has recorded (false alarms when no
    /// node died).
    async fn alarms(&self, api: &str) -> anyhow::Result<f64> {
        let name = "nexus_node_status_transitions_total";
        Ok(self.metric_sum(api, name, "to=\"degraded\"").await?
            + self.metric_sum(api, name, "to=\"offline\"").await?)
    }

    /// Sum of a metric's samples whose line contains `labels`.
    async fn metric_sum(&self, api: &str, name: &str, labels: &str) -> anyhow::Result<f64> {
        nexus_tests::fetch_metric(&self.http, api, name, labels).await
    }
}

/// Runs `f(api)` for every `(index, api)` target concurrently; results sorted by index.
async fn fan_out<T, F, Fut>(targets: Vec<(usize, String)>, f: F) -> Vec<(usize, anyhow::Result<T>)>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut set = JoinSet::new();
    for (index, api) in targets {
        let fut = f(api);
        set.spawn(async move { (index, fut.await) });
    }
    let mut results = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(err) => eprintln!("a polling task failed: {err}"),
        }
    }
    results.sort_by_key(|(index, _)| *index);
    results
}

// ---------------------------------------------------------------------------------------------
// Processes

/// One node: its data dir and the current `nexus` process (one incarnation at a time).
struct Node {
    name: String,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// `http://IP:PORT` of the current incarnation, once it wrote its endpoints.
    api: Option<String>,
    node_id: String,
}

impl Node {
    fn new(root: &Path, name: &str) -> Node {
        Node {
            name: name.to_string(),
            dir: root.join(name),
            log: root.join(format!("{name}.log")),
            child: None,
            api: None,
            node_id: String::new(),
        }
    }

    fn dir_arg(&self) -> String {
        self.dir.to_str().expect("temp dirs are UTF-8").to_string()
    }

    /// Starts `nexus <args>` and returns at once: callers time from this point.
    fn spawn(&mut self, args: &[&str]) -> anyhow::Result<()> {
        let child = nexus_tests::spawn_logged(args, &self.log)
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        self.api = None;
        Ok(())
    }

    /// `nexus run` of the enrolled data dir.
    fn spawn_run(&mut self) -> anyhow::Result<()> {
        let dir = self.dir_arg();
        let mut args = vec!["run", "--data-dir", &dir];
        args.extend(ANY_PORTS);
        self.spawn(&args)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Picks up `endpoints.json` once this incarnation wrote it (the node writes it once its API
    /// serves; the pid check ignores a file left by a previous incarnation).
    fn read_endpoints(&mut self) -> bool {
        if self.api.is_some() {
            return true;
        }
        let Some(pid) = self.pid() else {
            return false;
        };
        let Ok(text) = std::fs::read_to_string(self.dir.join("endpoints.json")) else {
            return false;
        };
        // A half-written file fails to parse: the next poll reads it whole.
        let Ok(endpoints) = serde_json::from_str::<Value>(&text) else {
            return false;
        };
        if endpoints["pid"].as_u64() != Some(u64::from(pid)) {
            return false;
        }
        self.node_id = endpoints["node_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.api = endpoints["api"].as_str().map(str::to_string);
        self.api.is_some()
    }

    /// Fails, with the end of its log, if the process exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        let exited = match self.child.as_mut() {
            Some(child) => child.try_wait()?,
            None => bail!("{} is not running", self.name),
        };
        if let Some(status) = exited {
            self.child = None;
            self.api = None;
            bail!(
                "{} exited with {status}; end of its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// VmRSS of the process (pid from `endpoints.json`), in MiB.
    fn rss_mib(&self) -> anyhow::Result<f64> {
        let text = std::fs::read_to_string(self.dir.join("endpoints.json"))?;
        let pid = serde_json::from_str::<Value>(&text)?["pid"]
            .as_u64()
            .context("endpoints.json without pid")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
        Ok(kib / 1024.0)
    }

    fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGTERM);
        }
    }

    /// Reaps the process if it exited; true when it is gone.
    fn reap(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            None | Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                self.api = None;
                true
            }
            Some(Ok(None)) => false,
        }
    }

    /// SIGKILL and reap.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.api = None;
    }

    /// SIGTERM, then SIGKILL after the grace period; true when it exited by itself.
    async fn stop(&mut self) -> bool {
        self.sigterm();
        let started = Instant::now();
        while started.elapsed() < STOP_GRACE {
            if self.reap() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill9();
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Never leave a process behind, whatever path left the bench.
        self.kill9();
    }
}

/// Polls every `poll` until the node's current incarnation answers `/healthz`; returns the time
/// since `spawned`.
async fn wait_serving(
    api: &Api,
    node: &mut Node,
    spawned: Instant,
    poll: Duration,
) -> anyhow::Result<Duration> {
    loop {
        node.check_alive()?;
        if node.read_endpoints()
            && let Some(url) = node.api.clone()
            && api.healthy(&url).await
        {
            return Ok(spawned.elapsed());
        }
        if spawned.elapsed() > SERVE_LIMIT {
            bail!(
                "{} did not serve /healthz within {SERVE_LIMIT:?}",
                node.name
            );
        }
        tokio::time::sleep(poll).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet under test

/// Times of the bootstrap.
struct Convergence {
    /// Until every node lists N nodes, all `online`.
    full: Duration,
    /// Until the last node's API answered.
    last_serving: Duration,
}

/// A fleet in a temp dir; `nodes[0]` is the anchor. Dropping it kills every process and deletes
/// the dir.
struct Cluster {
    nodes: Vec<Node>,
    api: Api,
    // Last field: dropped after the processes are gone.
    root: tempfile::TempDir,
}

impl Cluster {
    /// `nexus init` + `nexus run` of the anchor, waiting until it serves.
    async fn init() -> anyhow::Result<Cluster> {
        let root = tempfile::Builder::new().prefix("nexus-bench-").tempdir()?;
        let mut anchor = Node::new(root.path(), "anchor");
        let dir = anchor.dir_arg();
        let mut args = vec!["init", "--data-dir", &dir, "--site", "hq"];
        args.extend(ANY_PORTS);
        let out = run(&args);
        if !out.status.success() {
            bail!(
                "`nexus init` failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let key = std::fs::read_to_string(anchor.dir.join("admin.key"))
            .context("reading the anchor's admin.key")?
            .trim()
            .to_string();
        let api = Api::new(key, &anchor.dir)?;
        anchor.spawn_run()?;
        wait_serving(&api, &mut anchor, Instant::now(), Duration::from_millis(25)).await?;
        Ok(Cluster {
            nodes: vec![anchor],
            api,
            root,
        })
    }

    fn anchor_api(&self) -> &str {
        self.nodes[0].api.as_deref().expect("the anchor serves")
    }

    /// `(index, api)` of every running node that serves, except `except`.
    fn targets(&self, except: Option<usize>) -> Vec<(usize, String)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| Some(*i) != except && n.running())
            .filter_map(|(i, n)| Some((i, n.api.clone()?)))
            .collect()
    }

    /// Spawns `count` `nexus join` processes at once, then waits for full membership.
    async fn join_all(&mut self, count: usize) -> anyhow::Result<Convergence> {
        let token = self.api.create_token(self.anchor_api(), count).await?;
        let root = self.root.path().to_path_buf();
        let started = Instant::now();
        for i in 1..=count {
            let mut node = Node::new(&root, &format!("node-{i}"));
            let dir = node.dir_arg();
            let mut args = vec!["join", &token, "--data-dir", &dir, "--site", "edge"];
            args.extend(ANY_PORTS);
            node.spawn(&args)?;
            self.nodes.push(node);
        }
        self.wait_converged(started).await
    }

    /// Polls every node's `GET /v1/nodes` every [`POLL`] until each lists every node `online`.
    ///
    /// Nodes already seen converged are not polled again (50 × 50-node lists every 50 ms would
    /// load the 2 cores under test); once all are, one confirmation round polls every node and
    /// sends any that regressed back to pending. The time reported is when the last node was
    /// first seen converged.
    async fn wait_converged(&mut self, started: Instant) -> anyhow::Result<Convergence> {
        let expected = self.nodes.iter().filter(|n| n.running()).count();
        let limit = converge_limit(expected);
        let count = self.nodes.len();
        let mut converged_at: Vec<Option<Duration>> = vec![None; count];
        let mut serving_at: Vec<Option<Duration>> = vec![None; count];
        let mut last_views: Vec<String> = vec!["not serving".to_string(); count];
        loop {
            let round = Instant::now();
            for node in self.nodes.iter_mut().filter(|n| n.running()) {
                node.check_alive()?;
                node.read_endpoints();
            }
            let confirming = self
                .nodes
                .iter()
                .enumerate()
                .all(|(i, n)| !n.running() || converged_at[i].is_some());
            let targets: Vec<_> = self
                .targets(None)
                .into_iter()
                .filter(|(i, _)| confirming || converged_at[*i].is_none())
                .collect();
            let api = self.api.clone();
            let views = fan_out(targets, |url| {
                let api = api.clone();
                async move { api.view(&url).await }
            })
            .await;
            let now = started.elapsed();
            for (i, view) in views {
                match view {
                    Ok(view) => {
                        serving_at[i].get_or_insert(now);
                        let online = view.iter().filter(|(_, s)| s == "online").count();
                        let ok = view.len() == expected && online == expected;
                        last_views[i] = format!("lists {} nodes, {online} online", view.len());
                        converged_at[i] = if ok {
                            converged_at[i].or(Some(now))
                        } else {
                            None
                        };
                    }
                    Err(err) => {
                        last_views[i] = format!("error: {err:#}");
                        converged_at[i] = None;
                    }
                }
            }
            if confirming
                && converged_at
                    .iter()
                    .zip(&self.nodes)
                    .all(|(c, n)| !n.running() || c.is_some())
            {
                return Ok(Convergence {
                    full: converged_at
                        .iter()
                        .flatten()
                        .copied()
                        .max()
                        .unwrap_or_default(),
                    last_serving: serving_at
                        .iter()
                        .flatten()
                        .copied()
                        .max()
                        .unwrap_or_default(),
                });
            }
            if started.elapsed() > limit {
                let lagging: Vec<String> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(i, n)| n.running() && converged_at[*i].is_none())
                    .map(|(i, n)| format!("  {}: {}", n.name, last_views[i]))
                    .collect();
                bail!(
                    "the fleet did not converge within {limit:?}: {} of {expected} nodes do not list {expected} nodes online:\n{}",
                    lagging.len(),
                    lagging.join("\n")
                );
            }
            tokio::time::sleep(POLL.saturating_sub(round.elapsed())).await;
        }
    }

    /// Restarts node `index` [`RESTARTS`] times (SIGTERM, wait for exit, `nexus run`) and times
    /// spawn → first successful `/healthz`.
    async fn start_to_serving(&mut self, index: usize) -> anyhow::Result<Stats> {
        let mut stats = Stats::default();
        for _ in 0..RESTARTS {
            let node = &mut self.nodes[index];
            if !node.stop().await {
                eprintln!(
                    "  {} ignored SIGTERM for {STOP_GRACE:?} and was killed",
                    node.name
                );
            }
            let spawned = Instant::now();
            node.spawn_run()?;
            let took = wait_serving(&self.api, node, spawned, SERVE_POLL).await?;
            stats.push(took.as_secs_f64());
            // Let the new incarnation gossip before the next restart, as a real restart would.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(stats)
    }

    /// Bytes/s of gossip sent by each node over [`GOSSIP_WINDOW`], and how many false alarms
    /// (live nodes reported `degraded` or `offline`) all nodes raised in that window.
    async fn gossip_rates(&self) -> anyhow::Result<(Stats, f64)> {
        let sample = || {
            let api = self.api.clone();
            fan_out(self.targets(None), move |url| {
                let api = api.clone();
                async move {
                    let alarms = api.alarms(&url).await?;
                    Ok((api.gossip_bytes_sent(&url).await?, Instant::now(), alarms))
                }
            })
        };
        let before = sample().await;
        tokio::time::sleep(GOSSIP_WINDOW).await;
        let after = sample().await;
        let mut rates = Stats::default();
        let mut false_alarms = 0.0;
        for ((i, b0), (_, b1)) in before.into_iter().zip(after) {
            let name = &self.nodes[i].name;
            let ((bytes0, t0, alarms0), (bytes1, t1, alarms1)) = (
                b0.with_context(|| format!("metrics of {name}"))?,
                b1.with_context(|| format!("metrics of {name}"))?,
            );
            if bytes1 < bytes0 {
                bail!("the gossip byte counter of {name} went backwards (did it restart?)");
            }
            rates.push((bytes1 - bytes0) / (t1 - t0).as_secs_f64());
            false_alarms += alarms1 - alarms0;
        }
        Ok((rates, false_alarms))
    }

    fn rss(&self) -> anyhow::Result<Stats> {
        let mut stats = Stats::default();
        for node in self.nodes.iter().filter(|n| n.running()) {
            stats.push(
                node.rss_mib()
                    .with_context(|| format!("RSS of {}", node.name))?,
            );
        }
        Ok(stats)
    }

    /// kill -9 of node `victim`; every other running node is polled until it reports the victim
    /// `offline`. Returns (detection, suspicion) times in seconds, one per observer that saw it.
    async fn detect_failure(&mut self, victim: usize) -> anyhow::Result<(Stats, Stats)> {
        let observers = self.targets(Some(victim));
        let id = self.nodes[victim].node_id.clone();
        let name = self.nodes[victim].name.clone();
        let killed = Kill {
            at: Instant::now(),
            wall_ms: unix_ms(SystemTime::now()),
        };
        self.nodes[victim].kill9();
        let api = self.api.clone();
        let results = fan_out(observers, |url| {
            watch_failure(api.clone(), url, id.clone(), killed)
        })
        .await;
        let (mut offline, mut degraded) = (Stats::default(), Stats::default());
        for (i, result) in results {
            let (seen_degraded, seen_offline) = result
                .with_context(|| format!("{} watching the killed {name}", self.nodes[i].name))?;
            offline.push(seen_offline.as_secs_f64());
            if let Some(d) = seen_degraded {
                degraded.push(d.as_secs_f64());
            }
        }
        Ok((offline, degraded))
    }

    /// SIGTERM to all, SIGKILL to those still running after [`STOP_GRACE`].
    async fn shutdown(&mut self) {
        for node in &self.nodes {
            node.sigterm();
        }
        let started = Instant::now();
        while started.elapsed() < STOP_GRACE {
            for node in &mut self.nodes {
                node.reap();
            }
            if self.nodes.iter().all(|n| !n.running()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for node in &mut self.nodes {
            node.kill9();
        }
    }
}

/// When a victim was killed, on both clocks: the monotonic one for polling, the wall clock to
/// compare with the transition times observers report.
#[derive(Clone, Copy)]
struct Kill {
    at: Instant,
    wall_ms: u64,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Polls `url`'s view of node `id` every [`POLL`] until `offline`; returns the times since the
/// kill of the first `degraded` (if a poll caught it) and of `offline`.
///
/// Each time is the observer's own transition time (`updated_at`, the wall clock of this same
/// machine), so it carries no polling delay; the poll time is the fallback if that is unusable.
async fn watch_failure(
    api: Api,
    url: String,
    id: String,
    killed: Kill,
) -> anyhow::Result<(Option<Duration>, Duration)> {
    let mut degraded = None;
    loop {
        let (status, updated_at) = api.node_status(&url, &id).await?;
        let polled = killed.at.elapsed();
        let changed = parse_rfc3339_ms(&updated_at)
            .and_then(|ms| ms.checked_sub(killed.wall_ms))
            .map(Duration::from_millis)
            // A transition cannot follow the answer that reports it (1 ms of clock rounding).
            .filter(|d| *d <= polled + Duration::from_millis(1))
            .unwrap_or(polled);
        match status.as_str() {
            "offline" => return Ok((degraded, changed)),
            "degraded" => {
                degraded.get_or_insert(changed);
            }
            _ => {}
        }
        if polled > DETECT_LIMIT {
            bail!("still reports {status:?} {DETECT_LIMIT:?} after kill -9");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Unix ms of a UTC RFC 3339 time as the API writes it (`2026-01-02T03:04:05.678Z`).
fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let numbers = |s: &str, sep: char| -> Option<Vec<i64>> {
        let parts: Vec<i64> = s
            .split(sep)
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        (parts.len() == 3).then_some(parts)
    };
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let (ymd, hms) = (numbers(date, '-')?, numbers(hms, ':')?);
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let (month, day) = (ymd[1], ymd[2]);
    let year = if month <= 2 { ymd[0] - 1 } else { ymd[0] };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    u64::try_from(seconds * 1000 + millis).ok()
}

// ---------------------------------------------------------------------------------------------
// One benchmark run

/// Everything measured for one fleet size.
struct Results {
    convergence: Convergence,
    start_to_serving: Stats,
    gossip: Stats,
    false_alarms: f64,
    /// Plain chitchat at the same settings: (bytes/s per node, its own detector's times).
    baseline: Result<(Stats, Stats), String>,
    rss: Stats,
    detection: Stats,
    suspicion: Stats,
    victims: usize,
}

async fn bench(n: usize) -> anyhow::Result<Results> {
    eprintln!("N={n}: starting the anchor");
    let mut cluster = Cluster::init().await?;
    let result = measure(&mut cluster, n).await;
    eprintln!("N={n}: tearing down");
    cluster.shutdown().await;
    let mut results = result?;
    // Run after the fleet is gone, so the two never share the CPU.
    eprintln!("N={n}: baseline: {n} plain chitchat nodes in this process");
    results.baseline = nexus_tests::baseline::run(
        n,
        nexus_mesh::DEFAULT_GOSSIP_INTERVAL,
        GOSSIP_SETTLE,
        GOSSIP_WINDOW,
        VICTIMS,
    )
    .await
    .map(|b| (Stats(b.bytes_per_sec), Stats(b.detection_secs)))
    .map_err(|err| format!("{err:#}"));
    Ok(results)
}

async fn measure(cluster: &mut Cluster, n: usize) -> anyhow::Result<Results> {
    eprintln!("N={n}: spawning {} joins at once", n - 1);
    let convergence = cluster.join_all(n - 1).await?;
    eprintln!(
        "N={n}: full membership after {}, last node serving after {}",
        secs(convergence.full.as_secs_f64()),
        secs(convergence.last_serving.as_secs_f64())
    );

    // Gossip is measured first: every restart leaves a dead incarnation in every digest for
    // chitchat's dead-node grace period, which would inflate the steady-state figure.
    eprintln!("N={n}: measuring gossip for {GOSSIP_WINDOW:?} after {GOSSIP_SETTLE:?} of quiet");
    tokio::time::sleep(GOSSIP_SETTLE).await;
    let (gossip, false_alarms) = cluster.gossip_rates().await?;
    let rss = cluster.rss()?;

    eprintln!("N={n}: restarting node-1 {RESTARTS} times");
    let start_to_serving = cluster.start_to_serving(1).await?;
    // The restarted node has new ports: wait until everyone sees it again before measuring.
    cluster
        .wait_converged(Instant::now())
        .await
        .context("re-converging after the restarts")?;

    // The most recently joined nodes are the victims (node-1 stays: it was restarted).
    let victims: Vec<usize> = (1..n).rev().take(VICTIMS).collect();
    let (mut detection, mut suspicion) = (Stats::default(), Stats::default());
    for &victim in &victims {
        eprintln!("N={n}: kill -9 {}", cluster.nodes[victim].name);
        let (offline, degraded) = cluster.detect_failure(victim).await?;
        detection.extend(&offline);
        suspicion.extend(&degraded);
        // Let the fleet settle between kills so detections do not overlap.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(Results {
        convergence,
        start_to_serving,
        gossip,
        false_alarms,
        baseline: Err("not run".to_string()),
        rss,
        detection,
        suspicion,
        victims: victims.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// Report

fn secs(value: f64) -> String {
    if value < 1.0 {
        format!("{:.0} ms", value * 1000.0)
    } else {
        format!("{value:.2} s")
    }
}

fn rate(bytes_per_sec: f64) -> String {
    if bytes_per_sec < 1024.0 {
        format!("{bytes_per_sec:.0} B/s")
    } else {
        format!("{:.1} KiB/s", bytes_per_sec / 1024.0)
    }
}

fn mib(value: f64) -> String {
    format!("{value:.1} MiB")
}

/// "a / b" of two optional figures, "n/a" when the sample is empty.
fn pair(a: Option<f64>, b: Option<f64>, fmt: fn(f64) -> String) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{} / {}", fmt(a), fmt(b)),
        _ => "n/a".to_string(),
    }
}

fn table(r: &Results) -> String {
    let observations = r.detection.len();
    let rows = [
        (
            "Full membership (first join spawned → every node lists N nodes `online`)".to_string(),
            secs(r.convergence.full.as_secs_f64()),
        ),
        (
            "Last node serving (first join spawned → the last node's API answers)".to_string(),
            secs(r.convergence.last_serving.as_secs_f64()),
        ),
        (
            format!(
                "Failure detection, kill -9 → `offline`, p50 / max ({} victims, {observations} observations)",
                r.victims
            ),
            pair(r.detection.p50(), r.detection.max(), secs),
        ),
        (
            format!(
                "Suspicion, kill -9 → `degraded`, p50 / max (caught by {} of {observations} observations)",
                r.suspicion.len()
            ),
            pair(r.suspicion.p50(), r.suspicion.max(), secs),
        ),
        (
            "Gossip bytes sent per node, steady state, mean / max".to_string(),
            pair(r.gossip.mean(), r.gossip.max(), rate),
        ),
        (
            "Baseline: plain chitchat, same interval and digests, no authentication — bytes sent per node, mean / max".to_string(),
            match &r.baseline {
                Ok((bytes, _)) => pair(bytes.mean(), bytes.max(), rate),
                Err(err) => format!("failed: {err}"),
            },
        ),
        (
            "Authentication overhead on the wire (Nexus mean ÷ baseline mean)".to_string(),
            match (&r.baseline, r.gossip.mean()) {
                (Ok((bytes, _)), Some(ours)) => bytes
                    .mean()
                    .filter(|b| *b > 0.0)
                    .map_or("-".to_string(), |b| format!("{:.2}×", ours / b)),
                _ => "-".to_string(),
            },
        ),
        (
            "Baseline: chitchat's own detector (phi 8) at that interval, node stopped → dropped from live nodes, p50 / max".to_string(),
            match &r.baseline {
                Ok((_, detection)) => pair(detection.p50(), detection.max(), secs),
                Err(err) => format!("failed: {err}"),
            },
        ),
        (
            format!(
                "False alarms: live nodes reported `degraded`/`offline`, all observers, during the {} s gossip window",
                GOSSIP_WINDOW.as_secs()
            ),
            format!("{}", r.false_alarms),
        ),
        (
            "RSS per node, mean / max".to_string(),
            pair(r.rss.mean(), r.rss.max(), mib),
        ),
        (
            format!(
                "Start-to-serving of `nexus run`, p50 / max ({RESTARTS} restarts; includes exec and binding)"
            ),
            pair(r.start_to_serving.p50(), r.start_to_serving.max(), secs),
        ),
    ];
    let mut out = String::from("| Metric | Value |\n|---|---|\n");
    for (metric, value) in rows {
        let _ = writeln!(out, "| {metric} | {value} |");
    }
    out
}

/// "met"/"missed" against a goal, with the figure it was judged on.
fn verdict(value: Option<f64>, goal: Duration, what: &str) -> String {
    match value {
        Some(v) if v < goal.as_secs_f64() => format!("met ({what} {})", secs(v)),
        Some(v) => format!("**missed** ({what} {})", secs(v)),
        None => "not measured".to_string(),
    }
}

fn goals(results: &[(usize, anyhow::Result<Results>)]) -> String {
    let ok: Vec<&Results> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let membership = match results.iter().find(|(n, _)| *n == 50) {
        None => "not measured (run with --nodes 50)".to_string(),
        Some((_, Err(_))) => "**missed** (the N = 50 run failed)".to_string(),
        Some((_, Ok(r))) => verdict(
            Some(r.convergence.full.as_secs_f64()),
            GOAL_MEMBERSHIP_50,
            "took",
        ),
    };
    let worst =
        |f: fn(&Results) -> Option<f64>| ok.iter().filter_map(|r| f(r)).max_by(f64::total_cmp);
    let detection = verdict(worst(|r| r.detection.max()), GOAL_DETECTION, "worst");
    let serving = verdict(worst(|r| r.start_to_serving.max()), GOAL_SERVING, "worst");
    format!(
        "**Goals:** full membership of 50 < 3 s: {membership}; failure detection < 3 s: {detection}; start-to-serving < 100 ms: {serving}. Judged on the worst observation over all runs.\n"
    )
}

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

fn machine() -> String {
    let cpus = command_output("nproc", &[]).unwrap_or_else(|| "?".into());
    let model = first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let memory = first_line("/proc/meminfo", "MemTotal")
        .and_then(|m| m.split_whitespace().next()?.parse::<f64>().ok())
        .map_or_else(
            || "? GiB".into(),
            |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
        );
    let kernel = command_output("uname", &["-r"]).unwrap_or_else(|| "?".into());
    format!("{cpus} CPUs (nproc), {model}, {memory} RAM, Linux {kernel}")
}

fn report(results: &[(usize, anyhow::Result<Results>)]) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into());
    let mut out = String::from("# Nexus Cloud benchmarks\n\n");
    let _ = writeln!(
        out,
        "Command: `cargo run --release -p nexus-tests --bin nexus-bench -- {}`\n",
        args.join(" ")
    );
    let _ = writeln!(out, "- Date: {date}");
    let _ = writeln!(out, "- Machine: {}", machine());
    let membership = nexus_mesh::MembershipConfig::default();
    let _ = writeln!(
        out,
        "- Nexus config: defaults (gossip interval {:?}, suspect after {:?}, offline after {:?})",
        nexus_mesh::DEFAULT_GOSSIP_INTERVAL,
        membership.suspect_after,
        membership.offline_after
    );
    let _ = writeln!(
        out,
        "- Setup: every node is its own `nexus` process on 127.0.0.1 (ports 0, temp dirs), all on this one machine; N counts every process, anchor included. The N-1 joins use one token and are spawned at once."
    );
    let _ = writeln!(
        out,
        "- Method: membership is polled every {} ms through each node's API (`GET /v1/nodes?limit=1000`), so its figures carry up to that much polling granularity. Failure detection and suspicion poll `GET /v1/nodes/{{id}}` on every surviving node every {} ms and take the observer's own transition time (`updated_at`, same machine clock) minus the kill time, so they carry no polling delay; suspicion is counted only where a poll caught the node `degraded`. Start-to-serving is spawn → first successful `GET /healthz` (polled every {} ms) of an enrolled node restarted in the running fleet; it includes process exec and socket binding. Gossip bytes: `nexus_gossip_bytes_sent_total` over {} s, starting {} s after convergence (before any restart or kill). RSS: VmRSS from `/proc/<pid>/status` at the end of that window.\n",
        POLL.as_millis(),
        POLL.as_millis(),
        SERVE_POLL.as_millis(),
        GOSSIP_WINDOW.as_secs(),
        GOSSIP_SETTLE.as_secs()
    );
    out.push_str(&goals(results));
    for (n, result) in results {
        let _ = writeln!(out, "\n## N = {n}\n");
        match result {
            Ok(r) => out.push_str(&table(r)),
            Err(err) => {
                let _ = writeln!(out, "**Failed:**\n\n```text\n{err:#}\n```");
            }
        }
    }
    out
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(bad) = args.nodes.iter().find(|n| !(2..=1000).contains(*n)) {
        eprintln!(
            "--nodes: {bad} is out of range: each fleet size must be 2 to 1000 (anchor included)"
        );
        return ExitCode::FAILURE;
    }
    let bin = nexus_bin();
    eprintln!("nexus binary: {}", bin.display());
    if bin.components().any(|c| c.as_os_str() == "debug") {
        eprintln!(
            "warning: this is a debug build; use `cargo run --release` for meaningful figures"
        );
    }

    let mut results = Vec::new();
    for &n in &args.nodes {
        let result = bench(n).await;
        match &result {
            Ok(r) => println!("\nN = {n}\n{}", table(r)),
            Err(err) => eprintln!("\nN = {n} FAILED: {err:#}"),
        }
        results.push((n, result));
    }
    println!("{}", goals(&results));

    let mut text = report(&results);
    // Other benches keep their sections in the same file between `<!-- name:start -->` and
    // `<!-- name:end -->` markers: carry them over.
    if let Ok(old) = std::fs::read_to_string(&args.out) {
        text.push_str(&marked_sections(&old));
    }
    let written = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&args.out, text));
    if let Err(err) = written {
        eprintln!("cannot write {}: {err}", args.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("wrote {}", args.out.display());
    if results.iter().any(|(_, r)| r.is_err()) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The `<!-- name:start -->` … `<!-- name:end -->` sections of `text`, each with its markers.
fn marked_sections(text: &str) -> String {
    let mut kept = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<!-- ") {
        let after = &rest[start..];
        let Some(name_end) = after.find(":start -->") else {
            break;
        };
        let name = &after[5..name_end];
        if name.is_empty() || name.contains(char::is_whitespace) {
            // Some other comment: look further on.
            rest = &after[5..];
            continue;
        }
        let end_marker = format!("<!-- {name}:end -->");
        let Some(end) = after.find(&end_marker) else {
            break;
        };
        let section = &after[..end + end_marker.len()];
        kept.push('\n');
        kept.push_str(section);
        kept.push('\n');
        rest = &after[end + end_marker.len()..];
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_api_timestamps() {
        // date -u -d 2026-11-25T14:54:34Z +%s → 1795618474
        assert_eq!(
            parse_rfc3339_ms("2026-11-25T14:54:34.123Z"),
            Some(1_795_618_474_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-25T14:54:34Z"),
            Some(1_795_618_474_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-25T14:54:34.5+00:00"),
            Some(1_795_618_474_500)
        );
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn stats_summaries() {
        let stats = Stats(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(stats.p50(), Some(2.0));
        assert_eq!(stats.max(), Some(10.0));
        assert_eq!(stats.mean(), Some(4.0));
        assert_eq!(Stats::default().p50(), None);
    }
}
