//! Test harness for Nexus Cloud: starts real `nexus` processes on loopback (port 0, temp dirs)
//! and talks to them over their real API.
//!
//! The binary is `$NEXUS_BIN` if set, else `target/<profile>/nexus` next to the running test
//! executable; `.ci/run` builds it before the tests.

pub mod baseline;
pub mod bench;
pub mod netns;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::netns::Site;

/// Path of the `nexus` binary under test.
pub fn nexus_bin() -> PathBuf {
    if let Ok(path) = std::env::var("NEXUS_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("nexus");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the nexus binary was not found next to {}: run `cargo build -p nexus-node` first or set NEXUS_BIN",
        exe.display()
    );
}

/// Variables every `nexus` command of this test binary gets (see [`set_nexus_env`]).
static NEXUS_ENV: Mutex<Vec<(String, OsString)>> = Mutex::new(Vec::new());

/// Sets an environment variable for every `nexus` process this test binary starts from now on
/// (for example `SOFTHSM2_CONF`), without touching this process's own environment.
pub fn set_nexus_env(key: &str, value: impl Into<OsString>) {
    let mut env = NEXUS_ENV.lock().unwrap_or_else(PoisonError::into_inner);
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.into()));
}

/// A `nexus` command with logs kept quiet unless asked for.
pub fn nexus() -> Command {
    nexus_at(None)
}

/// [`nexus`] run inside `site` (see [`netns`]).
pub fn nexus_in(site: &Site) -> Command {
    nexus_at(Some(site))
}

fn nexus_at(site: Option<&Site>) -> Command {
    let mut cmd = site.map_or_else(|| Command::new(nexus_bin()), |s| s.command(nexus_bin()));
    cmd.env_remove("NEXUS_API_KEY")
        .env_remove("NEXUS_DATA_DIR")
        .env_remove("NEXUS_API_URL")
        .env_remove("NEXUS_KEY_PASSPHRASE_FILE")
        .env_remove("NEXUS_HSM_MODULE")
        .env_remove("NEXUS_HSM_TOKEN")
        .env_remove("NEXUS_HSM_PIN_FILE")
        .env(
            "NEXUS_LOG",
            std::env::var("NEXUS_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    for (key, value) in NEXUS_ENV
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        cmd.env(key, value);
    }
    cmd
}

/// Runs a `nexus` command to completion.
pub fn run(args: &[&str]) -> Output {
    nexus()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn nexus")
}

/// Starts `nexus <args>` with stdout and stderr appended to `log`.
pub fn spawn_logged(args: &[&str], log: &Path) -> anyhow::Result<Child> {
    spawn_logged_at(None, args, log)
}

fn spawn_logged_at(site: Option<&Site>, args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    nexus_at(site)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("cannot start {}", nexus_bin().display()))
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

/// Addresses flags binding every socket to a free loopback port.
pub const ANY_PORTS: [&str; 6] = [
    "--api",
    "127.0.0.1:0",
    "--gossip",
    "127.0.0.1:0",
    "--quic",
    "127.0.0.1:0",
];

/// Sum of the samples of metric `name` whose line contains `labels`, in Prometheus text.
pub fn sum_metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| {
            (line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
                && line.contains(labels)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads a metric from a node's `/metrics` (see [`sum_metric`]).
pub async fn fetch_metric(
    http: &reqwest::Client,
    api: &str,
    name: &str,
    labels: &str,
) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{api}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(sum_metric(&text, name, labels))
}

/// An HTTP client for the API of the node whose data directory is `dir`: it trusts that fleet's
/// root certificate (`trust/root.pem`) for HTTPS. Before the directory holds one (the node has not
/// enrolled yet) it is a plain client.
pub fn api_client(dir: &Path) -> anyhow::Result<reqwest::Client> {
    api_client_at(dir, None)
}

/// [`api_client`] that also reaches the APIs of every site of `site`'s [`netns::Sites`] (through
/// its proxy).
pub fn api_client_in(site: &Site, dir: &Path) -> anyhow::Result<reqwest::Client> {
    api_client_at(dir, Some(site))
}

fn api_client_at(dir: &Path, site: Option<&Site>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(site) = site {
        builder = builder.proxy(site.proxy());
    }
    if let Ok(pem) = std::fs::read_to_string(dir.join("trust").join("root.pem")) {
        let root = nexus_ca::pem_to_der(&pem)?.swap_remove(0);
        builder = builder.use_preconfigured_tls(nexus_ca::api_client_config(root, None));
    }
    Ok(builder.build()?)
}

/// An API client that trusts the fleet root in `root_dir` (a node's data directory) and
/// authenticates with the certificate chain `chain_pem` and its `key` (mutual TLS).
pub fn mic_client(
    root_dir: &Path,
    chain_pem: &str,
    key: &nexus_ca::NodeKey,
) -> anyhow::Result<reqwest::Client> {
    let root = nexus_ca::pem_to_der(&std::fs::read_to_string(
        root_dir.join("trust").join("root.pem"),
    )?)?
    .swap_remove(0);
    let credentials = nexus_ca::Credentials::new(nexus_ca::pem_to_der(chain_pem)?, key)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(nexus_ca::api_client_config(root, Some(credentials)))
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// [`mic_client`] with the node's own MIC and key from its data directory `dir`.
pub fn node_mic_client(dir: &Path) -> anyhow::Result<reqwest::Client> {
    let key = nexus_ca::NodeKey::from_pkcs8_pem(&std::fs::read_to_string(dir.join("node.key"))?)?;
    mic_client(dir, &std::fs::read_to_string(dir.join("node.pem"))?, &key)
}

/// One running (or stopped) node process.
pub struct NodeProc {
    /// Its data directory.
    pub dir: PathBuf,
    child: Option<Child>,
    /// Where this process's output starts in the shared log file.
    log_from: usize,
    /// `http://IP:PORT` of its API, once serving.
    pub api: String,
    /// Its node id.
    pub node_id: String,
    /// Its gossip address.
    pub gossip: String,
    /// Its QUIC address.
    pub quic: String,
    /// Its fleet id.
    pub fleet_id: String,
    /// The site it runs in, if it runs in one (see [`netns`]).
    pub site: Option<Site>,
}

impl NodeProc {
    /// Starts `nexus <args>` whose data dir is `dir`, and waits until it serves.
    pub async fn spawn(dir: &Path, args: &[&str]) -> anyhow::Result<NodeProc> {
        NodeProc::spawn_at(None, dir, args).await
    }

    /// [`NodeProc::spawn`] inside `site`.
    pub async fn spawn_in(site: &Site, dir: &Path, args: &[&str]) -> anyhow::Result<NodeProc> {
        NodeProc::spawn_at(Some(site), dir, args).await
    }

    async fn spawn_at(site: Option<&Site>, dir: &Path, args: &[&str]) -> anyhow::Result<NodeProc> {
        let mut node = NodeProc::start_at(site, dir, args)?;
        node.wait_serving(Duration::from_secs(20)).await?;
        Ok(node)
    }

    /// Starts `nexus <args>` whose data dir is `dir`, without waiting for it to serve.
    pub fn start(dir: &Path, args: &[&str]) -> anyhow::Result<NodeProc> {
        NodeProc::start_at(None, dir, args)
    }

    /// [`NodeProc::start`] inside `site`.
    pub fn start_in(site: &Site, dir: &Path, args: &[&str]) -> anyhow::Result<NodeProc> {
        NodeProc::start_at(Some(site), dir, args)
    }

    fn start_at(site: Option<&Site>, dir: &Path, args: &[&str]) -> anyhow::Result<NodeProc> {
        let log = dir.with_extension("log");
        // Earlier runs of the same node share the log file: this process's output starts here.
        let log_from = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let child = spawn_logged_at(site, args, &log)?;
        Ok(NodeProc {
            log_from,
            dir: dir.to_path_buf(),
            child: Some(child),
            api: String::new(),
            node_id: String::new(),
            gossip: String::new(),
            quic: String::new(),
            fleet_id: String::new(),
            site: site.cloned(),
        })
    }

    /// Runs an enrolled data directory.
    pub async fn run(dir: &Path) -> anyhow::Result<NodeProc> {
        NodeProc::spawn(
            dir,
            &["run", "--data-dir", dir.to_str().expect("utf-8 path")],
        )
        .await
    }

    /// [`NodeProc::run`] inside `site` (the data directory's addresses must be the site's).
    pub async fn run_in(site: &Site, dir: &Path) -> anyhow::Result<NodeProc> {
        NodeProc::spawn_in(
            site,
            dir,
            &["run", "--data-dir", dir.to_str().expect("utf-8 path")],
        )
        .await
    }

    async fn wait_serving(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log =
                    std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default();
                bail!("nexus exited with {status} before serving:\n{log}");
            }
            let pid = self.child.as_ref().map(|c| u64::from(c.id()));
            if let Ok(text) = std::fs::read_to_string(self.dir.join("endpoints.json"))
                && let Ok(e) = serde_json::from_str::<Value>(&text)
                && e["pid"].as_u64() == pid
            {
                let api = e["api"].as_str().unwrap_or_default().to_string();
                // The trust files exist once the node wrote its endpoints.
                let http = api_client_at(&self.dir, self.site.as_ref())?;
                if http
                    .get(format!("{api}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    self.api = api;
                    self.node_id = e["node_id"].as_str().unwrap_or_default().to_string();
                    self.gossip = e["gossip"].as_str().unwrap_or_default().to_string();
                    self.quic = e["quic"].as_str().unwrap_or_default().to_string();
                    self.fleet_id = e["fleet_id"].as_str().unwrap_or_default().to_string();
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "nexus in {} did not serve within {limit:?}",
            self.dir.display()
        )
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (up to 10 s); returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        signal(child.id(), libc::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The exit status, once the process has exited on its own.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// What this process wrote to stdout and stderr.
    pub fn log(&self) -> String {
        let all = std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default();
        all.get(self.log_from..).unwrap_or_default().to_string()
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends a signal to a process.
#[allow(unsafe_code)]
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A fleet of real processes in a temp dir.
pub struct Fleet {
    /// Root of every data dir.
    pub root: tempfile::TempDir,
    /// The first anchor, then joined nodes.
    pub nodes: Vec<NodeProc>,
    /// Fleet admin key.
    pub admin_key: String,
    http: reqwest::Client,
}

impl Fleet {
    /// `nexus init` + `nexus run` of the first anchor.
    pub async fn init() -> anyhow::Result<Fleet> {
        Fleet::init_with(&[]).await
    }

    /// [`Fleet::init`] with extra `nexus init` flags (for example where the CA keys go).
    pub async fn init_with(extra: &[&str]) -> anyhow::Result<Fleet> {
        Fleet::init_at(None, extra).await
    }

    /// [`Fleet::init_with`] with the first anchor in `site` (labelled `site-<index>`, bound to
    /// the site's address); the fleet's client reaches every site of that [`netns::Sites`].
    pub async fn init_in(site: &Site, extra: &[&str]) -> anyhow::Result<Fleet> {
        Fleet::init_at(Some(site), extra).await
    }

    async fn init_at(site: Option<&Site>, extra: &[&str]) -> anyhow::Result<Fleet> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("anchor");
        let dir_s = dir.to_str().expect("utf-8");
        let (label, ports) = place_flags(site);
        let mut args = vec!["init", "--data-dir", dir_s, "--site", &label];
        args.extend(ports.iter().map(String::as_str));
        args.extend(extra);
        let out = nexus_at(site)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .context("spawn nexus")?;
        if !out.status.success() {
            bail!(
                "nexus init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let admin_key = std::fs::read_to_string(dir.join("admin.key"))?
            .trim()
            .to_string();
        let run_args = ["run", "--data-dir", dir_s];
        let anchor = NodeProc::spawn_at(site, &dir, &run_args).await?;
        Ok(Fleet {
            root,
            nodes: vec![anchor],
            admin_key,
            http: api_client_at(&dir, site)?,
        })
    }

    /// The anchor.
    pub fn anchor(&self) -> &NodeProc {
        &self.nodes[0]
    }

    /// Creates a join token on the anchor.
    pub async fn token(&self, body: Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}/v1/tokens", self.anchor().api))
            .bearer_auth(&self.admin_key)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status.as_u16() != 201 {
            bail!("token creation answered {status}: {body}");
        }
        Ok(body)
    }

    /// Joins a new node with `token` and waits until it serves.
    pub async fn join(&mut self, token: &str, extra: &[&str]) -> anyhow::Result<&NodeProc> {
        self.join_at(None, token, extra).await
    }

    /// [`Fleet::join`] of a node in `site` (labelled `site-<index>`, bound to the site's
    /// address): `nexus join` runs there too, so it reaches the anchor across the sites' links.
    pub async fn join_in(
        &mut self,
        site: &Site,
        token: &str,
        extra: &[&str],
    ) -> anyhow::Result<&NodeProc> {
        self.join_at(Some(site), token, extra).await
    }

    async fn join_at(
        &mut self,
        site: Option<&Site>,
        token: &str,
        extra: &[&str],
    ) -> anyhow::Result<&NodeProc> {
        let dir = self.root.path().join(format!("node-{}", self.nodes.len()));
        let dir_s = dir.to_str().expect("utf-8").to_string();
        let mut args = vec!["join", token, "--data-dir", &dir_s];
        let (label, ports) = place_flags(site);
        if site.is_some() {
            args.extend(["--site", &label]);
        }
        args.extend(ports.iter().map(String::as_str));
        args.extend(extra);
        let node = NodeProc::spawn_at(site, &dir, &args).await?;
        self.nodes.push(node);
        Ok(self.nodes.last().expect("just pushed"))
    }

    /// GET a JSON resource from `api` with the admin key.
    pub async fn get(&self, api: &str, path: &str) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::GET, api, path).await
    }

    /// Sends `method` with a JSON body to `api` with the admin key.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        api: &str,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .request(method, format!("{api}{path}"))
            .bearer_auth(&self.admin_key)
            .json(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// POST a JSON body to `api` with the admin key.
    pub async fn post_json(
        &self,
        api: &str,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        self.send_json(reqwest::Method::POST, api, path, body).await
    }

    /// Whether `/v1/config/status` on the anchor shows document `doc` at one version and
    /// digest on exactly `nodes` nodes.
    pub async fn config_converged(&self, doc: &str, nodes: usize) -> bool {
        self.get(&self.anchor().api, "/v1/config/status")
            .await
            .is_ok_and(|(_, s)| {
                s["documents"].as_array().is_some_and(|docs| {
                    docs.iter().any(|d| {
                        d["document"] == doc
                            && d["converged"] == true
                            && d["states"][0]["nodes"] == nodes
                    })
                })
            })
    }

    /// POST to `api` with the admin key.
    pub async fn post(&self, api: &str, path: &str) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::POST, api, path).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        api: &str,
        path: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .request(method, format!("{api}{path}"))
            .bearer_auth(&self.admin_key)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// node id → status, as `api` sees the fleet.
    pub async fn statuses(&self, api: &str) -> anyhow::Result<Vec<(String, String)>> {
        let (status, body) = self.get(api, "/v1/nodes?limit=1000").await?;
        if status != 200 {
            bail!("GET /v1/nodes answered {status}: {body}");
        }
        Ok(body["items"]
            .as_array()
            .context("items")?
            .iter()
            .map(|n| {
                (
                    n["node_id"].as_str().unwrap_or_default().to_string(),
                    n["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// True when every running node sees `expected` nodes, all with status `want` except those
    /// in `except` (which must have their given status).
    pub async fn all_see(&self, expected: usize, want: &str, except: &[(&str, &str)]) -> bool {
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            let Ok(statuses) = self.statuses(&node.api).await else {
                return false;
            };
            if statuses.len() != expected {
                return false;
            }
            for (id, status) in &statuses {
                let target = except
                    .iter()
                    .find(|(eid, _)| eid == id)
                    .map_or(want, |(_, s)| s);
                if status != target {
                    return false;
                }
            }
        }
        true
    }

    /// A metric's value from a node's `/metrics` (sum over label sets matching `labels`).
    pub async fn metric(&self, api: &str, name: &str, labels: &str) -> anyhow::Result<f64> {
        // As the fleet admin: series naming a tenant are shown to it (and that tenant) only.
        let text = self
            .http
            .get(format!("{api}/metrics"))
            .bearer_auth(&self.admin_key)
            .send()
            .await?
            .text()
            .await?;
        Ok(sum_metric(&text, name, labels))
    }

    /// Waits until every running node sees `expected` nodes (see [`Fleet::all_see`]).
    pub async fn converge(
        &self,
        expected: usize,
        want: &str,
        except: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let what = format!("{expected} nodes {want} everywhere (except {except:?})");
        let waited = wait_until(Duration::from_secs(20), &what, || {
            self.all_see(expected, want, except)
        })
        .await;
        if let Err(err) = waited {
            // Say what each node saw instead.
            let mut views = Vec::new();
            for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
                views.push((node.node_id.clone(), self.statuses(&node.api).await.ok()));
            }
            bail!("{err}; views: {views:?}");
        }
        Ok(())
    }
}

/// The `--site` label and the address flags of a node placed in `site` (or on loopback).
fn place_flags(site: Option<&Site>) -> (String, Vec<String>) {
    match site {
        Some(site) => (format!("site-{}", site.index()), site.any_ports().to_vec()),
        None => ("hq".into(), ANY_PORTS.map(String::from).to_vec()),
    }
}
