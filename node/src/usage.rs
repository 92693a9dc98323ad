//! Usage metering (NCC-TN-003) on the node: what it counts, where it keeps it, how it reports
//! to the anchors, and how an anchor rolls the reports up. The rules are `nexus_crdt::usage`'s;
//! this module moves them between memory, SQLite and the peer protocol.
//!
//! - **What.** Every node meters its own tenant's data-plane traffic (`rx_bytes` and
//!   `flows_opened` of the engine, read once a second and turned into deltas), the seconds it
//!   runs, and the API calls it answers per caller tenant ([`nexus_api::usage::billed_tenant`]).
//!   A plain node only bills its own tenant (another tenant's callers cannot use its API except
//!   with their node certificates, which are not billed here); an anchor bills every tenant
//!   that exists.
//! - **Durable.** The meter's rows that grew are saved to `usage_local` every
//!   [`SAVE_INTERVAL`] (or every report interval when shorter), before every report, and when
//!   the node stops; a restarted node continues its rows. A `kill -9` loses what was counted
//!   since the last save (at most [`SAVE_INTERVAL`]), never more, and never counts twice: a
//!   report only ever carries saved values, so no anchor holds more than the node's disk does.
//! - **Reported.** Every report interval (`[usage] report_interval`, default 60 s;
//!   `NEXUS_USAGE_REPORT_INTERVAL`) a node sends every anchor it knows the rows changed since
//!   that anchor last acknowledged them (`usage_acks`), at most [`MAX_REPORT_ROWS`] a request
//!   and [`MAX_BATCHES`] requests a round, with exponential backoff per anchor incarnation after
//!   a failure (a restarted anchor is tried at once).
//! - **Rolled up.** An anchor accepts rows only of the sender's own node id, and of the
//!   sender's own tenant (an anchor sender may also report other tenants' API calls, the only
//!   thing it counts for them), and merges them into `usage_rollup` by per-field max in one
//!   transaction: repeats after a lost acknowledgement or a partition change nothing.
//!
//! - **Kept** for `[usage] retention` (default 400 days): each node deletes, once an hour, its
//!   own rows past it that every anchor acknowledged, and each anchor the roll-up's rows past
//!   it. A local rule per file: nothing to coordinate between anchors.
//!
//! Metrics: `nexus_usage_reports_total{outcome=accepted|refused|failed}` (nodes),
//! `nexus_usage_rows` (rows in the roll-up, anchors).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_ca::{NodeId, Role, VerifiedMic};
use nexus_crdt::usage::{HOUR_MS, Meter, TrafficTotals, UsageRange, UsageRow, hour_of};
use nexus_mesh::{Mesh, NodeStatus};

use crate::peer::{PeerRequest, PeerResponse, PeerService};
use crate::store::Store;

/// Rows saved at least this often (and before every report, and at shutdown).
pub const SAVE_INTERVAL: Duration = Duration::from_secs(10);
/// Default time between two reports to the anchors.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// Default retention of usage rows: a year of billing history and a month to spare.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);
/// How often rows past the retention are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Most rows in one report.
pub const MAX_REPORT_ROWS: usize = 1000;
/// Most reports to one anchor in one round (a backlog drains without starving other anchors).
pub const MAX_BATCHES: usize = 8;
/// Longest wait before retrying an anchor that failed.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// How often running time and data-plane totals are read.
const TICK: Duration = Duration::from_secs(1);
/// How long a tenant found in the configuration is trusted to exist (for billing an API call).
const TENANT_TTL: Duration = Duration::from_secs(60);

/// This node's usage meter, its storage and (on anchors) the roll-up.
pub struct Usage {
    node_id: NodeId,
    node_hex: String,
    tenant: String,
    anchor: bool,
    store: Arc<Store>,
    meter: Mutex<Meter>,
    report_interval: Duration,
    retention: Duration,
    /// Rows in the roll-up (anchors), for `nexus_usage_rows`.
    rollup_rows: AtomicU64,
    /// Tenants other than this node's found to exist, and when (anchors bill them).
    known_tenants: Mutex<HashMap<String, Instant>>,
    /// Wall clock and monotonic clock of the last running-time reading.
    last_run: Mutex<(u64, Instant)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Usage {
    /// Opens the meter of node `node_id` of `tenant`, continuing the rows it stored for this
    /// hour and the one before.
    pub fn open(
        store: Arc<Store>,
        node_id: NodeId,
        tenant: &str,
        role: Role,
        report_interval: Duration,
        retention: Duration,
    ) -> anyhow::Result<Arc<Usage>> {
        let node_hex = node_id.to_hex();
        let now = crate::now_ms();
        let restored = store.usage_local_since(&node_hex, hour_of(now).saturating_sub(HOUR_MS))?;
        Ok(Arc::new(Usage {
            meter: Mutex::new(Meter::new(node_hex.clone(), restored)),
            node_id,
            node_hex,
            tenant: tenant.to_string(),
            anchor: role == Role::Anchor,
            store,
            report_interval,
            retention,
            rollup_rows: AtomicU64::new(0),
            known_tenants: Mutex::new(HashMap::new()),
            last_run: Mutex::new((now, Instant::now())),
        }))
    }

    /// Counts one API call for a caller of `tenant`: always for this node's tenant; on anchors
    /// for another tenant when `exists` says it does (looked up at most once a minute).
    pub fn api_call(&self, tenant: &str, exists: impl FnOnce() -> bool) {
        if tenant != self.tenant {
            if !self.anchor {
                return;
            }
            let fresh = lock(&self.known_tenants)
                .get(tenant)
                .is_some_and(|at| at.elapsed() < TENANT_TTL);
            if !fresh {
                if !exists() {
                    return;
                }
                let mut known = lock(&self.known_tenants);
                if known.len() > 100_000 {
                    known.clear();
                }
                known.insert(tenant.to_string(), Instant::now());
            }
        }
        lock(&self.meter).api_call(tenant, crate::now_ms());
    }

    /// Reads running time and the data plane's totals into the meter.
    fn account(&self, traffic: TrafficTotals) {
        let now = crate::now_ms();
        let from = {
            let mut last = lock(&self.last_run);
            let elapsed = last.1.elapsed().as_millis() as u64;
            // Count wall-clock time only as far as the monotonic clock agrees: a clock step
            // (NTP, a suspended machine) credits no time the node did not run.
            let from = if now >= last.0 && now - last.0 <= elapsed + 2000 {
                last.0
            } else {
                now.saturating_sub(elapsed.min(TICK.as_millis() as u64 * 2))
            };
            *last = (now, Instant::now());
            from
        };
        let mut meter = lock(&self.meter);
        meter.ran(&self.tenant, from, now);
        meter.traffic(&self.tenant, now, traffic);
    }

    /// Saves the rows that grew (on anchors also into the roll-up), in one transaction.
    pub fn save(&self) -> anyhow::Result<()> {
        let rows = lock(&self.meter).take_changed();
        if rows.is_empty() {
            return Ok(());
        }
        match self.store.save_usage(&rows, self.anchor) {
            Ok(new) => {
                if self.anchor {
                    self.count_rows(new);
                }
                let mut meter = lock(&self.meter);
                meter.forget_before(hour_of(crate::now_ms()).saturating_sub(HOUR_MS));
                Ok(())
            }
            Err(err) => {
                lock(&self.meter).unsaved(&rows);
                Err(err.into())
            }
        }
    }

    fn count_rows(&self, new: usize) {
        let rows = self.rollup_rows.fetch_add(new as u64, Ordering::Relaxed) + new as u64;
        metrics::gauge!("nexus_usage_rows").set(rows as f64);
    }

    /// Anchors: checks a report of `caller`'s and merges it into the roll-up; the answer.
    pub async fn accept(
        self: &Arc<Self>,
        caller: &VerifiedMic,
        upto: u64,
        rows: Vec<UsageRow>,
    ) -> PeerResponse {
        let refuse = |code: &str, message: String| PeerResponse::Refused {
            code: code.to_string(),
            message,
        };
        if !self.anchor {
            return refuse(
                "not_an_anchor",
                "only anchors roll usage up; report to an anchor".into(),
            );
        }
        if rows.len() > MAX_REPORT_ROWS {
            return refuse(
                "too_many",
                format!("at most {MAX_REPORT_ROWS} usage rows per report"),
            );
        }
        if let Err(message) = check_report(caller, &rows, crate::now_ms()) {
            return refuse("refused", message);
        }
        let usage = self.clone();
        match tokio::task::spawn_blocking(move || usage.store.merge_usage(&rows)).await {
            Ok(Ok(new)) => {
                self.count_rows(new);
                PeerResponse::UsageAccepted { upto }
            }
            Ok(Err(err)) => refuse("internal", err.to_string()),
            Err(err) => refuse("internal", err.to_string()),
        }
    }

    /// Anchors: `tenant`'s totals over `range`.
    pub async fn totals(
        self: &Arc<Self>,
        tenant: &str,
        range: UsageRange,
    ) -> anyhow::Result<nexus_api::usage::UsageTotals> {
        // What this anchor counted itself is in the roll-up as soon as it is saved.
        let usage = self.clone();
        let tenant = tenant.to_string();
        let (periods, nodes) = tokio::task::spawn_blocking(move || {
            usage.save()?;
            anyhow::Ok(usage.store.usage_totals(&tenant, &range)?)
        })
        .await??;
        Ok(nexus_api::usage::UsageTotals { periods, nodes })
    }

    /// Deletes rows of hours older than the retention: the roll-up's (anchors) and this node's
    /// own that every anchor it knows acknowledged.
    fn prune(&self, anchors: &[String]) -> anyhow::Result<()> {
        let before = hour_of(crate::now_ms().saturating_sub(self.retention.as_millis() as u64));
        let deleted = self.store.prune_usage_before(before, anchors)?;
        if self.anchor && deleted > 0 {
            let rows = self.store.usage_rollup_rows()?;
            self.rollup_rows.store(rows, Ordering::Relaxed);
            metrics::gauge!("nexus_usage_rows").set(rows as f64);
        }
        Ok(())
    }

    /// The anchors this node knows (gossip), but itself.
    fn anchors(&self, mesh: &Mesh) -> Vec<(NodeId, u64, SocketAddr)> {
        mesh.members()
            .into_iter()
            .filter(|m| m.node_id != self.node_id && m.status != NodeStatus::Decommissioned)
            .filter_map(|m| {
                let info = m.info?;
                (info.role == Role::Anchor && !info.quic_addr.ip().is_unspecified()).then_some((
                    m.node_id,
                    m.generation,
                    info.quic_addr,
                ))
            })
            .collect()
    }

    /// Sends every anchor the rows it has not acknowledged (see the module docs).
    async fn report(&self, mesh: &Mesh, peer: &PeerService, backoff: &mut Backoff) {
        for (anchor, generation, addr) in self.anchors(mesh) {
            if !backoff.due(anchor, generation) {
                continue;
            }
            let key = anchor.to_hex();
            for _ in 0..MAX_BATCHES {
                let (store, node, key2) = (self.store.clone(), self.node_hex.clone(), key.clone());
                let batch = tokio::task::spawn_blocking(move || {
                    store.usage_unreported(&node, &key2, MAX_REPORT_ROWS)
                })
                .await;
                let batch = match batch {
                    Ok(Ok(batch)) => batch,
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "cannot read usage rows to report");
                        return;
                    }
                    Err(_) => return,
                };
                let Some(last) = batch.last().map(|(seq, _)| *seq) else {
                    break;
                };
                let full = batch.len() == MAX_REPORT_ROWS;
                let request = PeerRequest::ReportUsage {
                    upto: last,
                    rows: batch.into_iter().map(|(_, row)| row).collect(),
                };
                match peer.request(anchor, addr, &request).await {
                    Ok(PeerResponse::UsageAccepted { upto }) => {
                        metrics::counter!("nexus_usage_reports_total", "outcome" => "accepted")
                            .increment(1);
                        backoff.succeeded(anchor);
                        let store = self.store.clone();
                        let key2 = key.clone();
                        let through = upto.min(last);
                        let saved = tokio::task::spawn_blocking(move || {
                            store.usage_acknowledged(&key2, through)
                        })
                        .await;
                        if !matches!(saved, Ok(Ok(()))) {
                            break;
                        }
                    }
                    Ok(PeerResponse::Refused { code, message }) => {
                        metrics::counter!("nexus_usage_reports_total", "outcome" => "refused")
                            .increment(1);
                        if backoff.failed(anchor, generation, self.report_interval) {
                            tracing::warn!(%anchor, %code, %message, "anchor refused this node's usage report");
                        }
                        break;
                    }
                    Ok(other) => {
                        metrics::counter!("nexus_usage_reports_total", "outcome" => "refused")
                            .increment(1);
                        backoff.failed(anchor, generation, self.report_interval);
                        tracing::debug!(%anchor, answer = ?other, "unexpected answer to a usage report");
                        break;
                    }
                    Err(err) => {
                        metrics::counter!("nexus_usage_reports_total", "outcome" => "failed")
                            .increment(1);
                        backoff.failed(anchor, generation, self.report_interval);
                        tracing::debug!(%anchor, error = %format!("{err:#}"), "usage report failed");
                        break;
                    }
                }
                if !full {
                    break;
                }
            }
        }
    }

    /// Meters, saves and reports until `stop`; saves once more before returning.
    pub async fn run(
        self: Arc<Self>,
        traffic: impl Fn() -> TrafficTotals + Send + 'static,
        mesh: Arc<Mesh>,
        peer: Arc<PeerService>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.anchor {
            let store = self.store.clone();
            if let Ok(Ok(rows)) =
                tokio::task::spawn_blocking(move || store.usage_rollup_rows()).await
            {
                self.rollup_rows.store(rows, Ordering::Relaxed);
                metrics::gauge!("nexus_usage_rows").set(rows as f64);
            }
        }
        let save_every = SAVE_INTERVAL.min(self.report_interval);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_save = Instant::now();
        let mut last_report = Instant::now();
        let mut last_prune: Option<Instant> = None;
        let mut backoff = Backoff::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            self.account(traffic());
            let report = last_report.elapsed() >= self.report_interval;
            if report || last_save.elapsed() >= save_every {
                last_save = Instant::now();
                let usage = self.clone();
                match tokio::task::spawn_blocking(move || usage.save()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::warn!(error = %format!("{err:#}"), "cannot save usage counters")
                    }
                    Err(_) => {}
                }
            }
            if report {
                last_report = Instant::now();
                self.report(&mesh, &peer, &mut backoff).await;
            }
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                last_prune = Some(Instant::now());
                let anchors: Vec<String> = self
                    .anchors(&mesh)
                    .iter()
                    .map(|(a, _, _)| a.to_hex())
                    .collect();
                let usage = self.clone();
                if let Ok(Err(err)) =
                    tokio::task::spawn_blocking(move || usage.prune(&anchors)).await
                {
                    tracing::warn!(error = %format!("{err:#}"), "cannot delete old usage rows");
                }
            }
        }
        self.account(traffic());
        let usage = self.clone();
        if let Ok(Err(err)) = tokio::task::spawn_blocking(move || usage.save()).await {
            tracing::error!(error = %format!("{err:#}"), "cannot save usage counters at shutdown");
        }
    }
}

/// What is wrong with a report `caller` sent, if anything (see the module docs).
fn check_report(caller: &VerifiedMic, rows: &[UsageRow], now_ms: u64) -> Result<(), String> {
    let sender = caller.node_id.to_hex();
    for row in rows {
        if row.node_id != sender {
            return Err(format!(
                "node {sender} reported usage of node {}: a node reports only its own",
                row.node_id
            ));
        }
        if row.tenant != caller.tenant {
            let only_api_calls = row.counters.bytes == 0
                && row.counters.connections == 0
                && row.counters.node_seconds == 0;
            if caller.role != Role::Anchor || !only_api_calls {
                return Err(format!(
                    "node {sender} of tenant {} reported usage of tenant {}: a node reports only \
                     its own tenant's (an anchor also other tenants' API calls)",
                    caller.tenant, row.tenant
                ));
            }
        }
        if let Some(problem) = row.problem(now_ms) {
            return Err(format!("a usage row of node {sender}: {problem}"));
        }
    }
    Ok(())
}

/// When to try each anchor again after a failure: the report interval doubled per failure up
/// to [`MAX_BACKOFF`]; a new incarnation of the anchor (it restarted) is tried at once.
#[derive(Default)]
struct Backoff {
    anchors: HashMap<NodeId, (u64, u32, Instant)>,
}

impl Backoff {
    fn due(&self, anchor: NodeId, generation: u64) -> bool {
        match self.anchors.get(&anchor) {
            Some((g, _, next)) if *g == generation => Instant::now() >= *next,
            _ => true,
        }
    }

    /// Records a failure; whether it is the first in a row (worth a warning).
    fn failed(&mut self, anchor: NodeId, generation: u64, interval: Duration) -> bool {
        let entry = self
            .anchors
            .entry(anchor)
            .or_insert((generation, 0, Instant::now()));
        if entry.0 != generation {
            *entry = (generation, 0, Instant::now());
        }
        entry.1 += 1;
        let wait = interval
            .saturating_mul(1 << (entry.1 - 1).min(10))
            .min(MAX_BACKOFF.max(interval));
        entry.2 = Instant::now() + wait;
        entry.1 == 1
    }

    fn succeeded(&mut self, anchor: NodeId) {
        self.anchors.remove(&anchor);
    }
}

#[cfg(test)]
mod tests {
    use nexus_crdt::usage::{Granularity, UsageCounters, UsageLedger, period_totals};

    use super::*;

    const T0: u64 = 1_735_689_600_000;
    const H: u64 = HOUR_MS;

    fn mic(node: NodeId, tenant: &str, role: Role) -> VerifiedMic {
        VerifiedMic {
            node_id: node,
            fleet_id: "f".into(),
            tenant: tenant.into(),
            site: String::new(),
            role,
            public_key: [0; 32],
            not_before_unix: 0,
            not_after_unix: 0,
            serial_hex: "01".into(),
            trust_level: 1,
            capabilities: Vec::new(),
        }
    }

    fn row(node: NodeId, tenant: &str, hour: u64, c: [u64; 4]) -> UsageRow {
        UsageRow {
            node_id: node.to_hex(),
            tenant: tenant.into(),
            hour_ms: hour,
            counters: UsageCounters {
                bytes: c[0],
                connections: c[1],
                api_calls: c[2],
                node_seconds: c[3],
            },
        }
    }

    #[test]
    fn reports_carry_only_the_senders_node_and_tenant() {
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        let now = T0 + 2 * H;
        let node = mic(a, "acme", Role::Node);
        assert!(check_report(&node, &[row(a, "acme", T0, [1, 1, 1, 1])], now).is_ok());
        let err = check_report(&node, &[row(b, "acme", T0, [1, 1, 1, 1])], now).unwrap_err();
        assert!(err.contains("only its own"), "{err}");
        let err = check_report(&node, &[row(a, "globex", T0, [0, 0, 1, 0])], now).unwrap_err();
        assert!(err.contains("tenant globex"), "{err}");
        // An anchor answers every tenant's API calls, and bills nothing else to them.
        let anchor = mic(a, "acme", Role::Anchor);
        assert!(check_report(&anchor, &[row(a, "globex", T0, [0, 0, 5, 0])], now).is_ok());
        assert!(check_report(&anchor, &[row(a, "globex", T0, [1, 0, 5, 0])], now).is_err());
        assert!(check_report(&node, &[row(a, "acme", T0 + 1, [0; 4])], now).is_err());
    }

    #[test]
    fn the_report_interval_and_retention_are_config_keys() {
        use crate::config::{AddrFlags, FileConfig, NodeConfig};
        let resolve = |toml: &str| {
            let file: FileConfig = toml::from_str(toml).unwrap();
            NodeConfig::resolve(&file, &AddrFlags::default(), &[])
        };
        let config = resolve("").unwrap();
        assert_eq!(config.usage_report_interval, DEFAULT_REPORT_INTERVAL);
        assert_eq!(config.usage_retention, DEFAULT_RETENTION);
        let config = resolve("[usage]\nreport_interval = \"2s\"\nretention = \"30d\"").unwrap();
        assert_eq!(config.usage_report_interval, Duration::from_secs(2));
        assert_eq!(config.usage_retention, Duration::from_secs(30 * 24 * 3600));
        let err = resolve("[usage]\nreport_interval = \"5h\"").unwrap_err();
        assert!(
            format!("{err:#}").contains("usage.report_interval"),
            "{err:#}"
        );
        let err = resolve("[usage]\nretention = \"1m\"").unwrap_err();
        assert!(format!("{err:#}").contains("usage.retention"), "{err:#}");
    }

    #[test]
    fn backoff_doubles_and_a_restarted_anchor_is_tried_at_once() {
        let mut b = Backoff::default();
        let a = NodeId([1; 16]);
        assert!(b.due(a, 1));
        assert!(b.failed(a, 1, Duration::from_secs(60)));
        assert!(!b.failed(a, 1, Duration::from_secs(60)));
        assert!(!b.due(a, 1));
        assert!(b.due(a, 2), "a new incarnation");
        b.succeeded(a);
        assert!(b.due(a, 1));
    }

    #[test]
    fn stored_rows_only_grow_reports_resume_and_the_rollup_max_merges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nexus.db")).unwrap();
        let n = NodeId([3; 16]);
        let first = vec![
            row(n, "acme", T0, [10, 1, 2, 100]),
            row(n, "acme", T0 + H, [5, 0, 0, 10]),
        ];
        store.save_usage(&first, false).unwrap();
        // A lower value (a meter that lost its last seconds) never shrinks a stored row.
        store
            .save_usage(&[row(n, "acme", T0, [8, 3, 2, 90])], false)
            .unwrap();
        let stored = store.usage_local_since(&n.to_hex(), 0).unwrap();
        assert_eq!(stored[0].counters, row(n, "", 0, [10, 3, 2, 100]).counters);
        // Unreported rows per anchor, by change; acknowledged ones are not sent again.
        let all = store.usage_unreported(&n.to_hex(), "a1", 10).unwrap();
        assert_eq!(all.len(), 2);
        let through = all[0].0;
        store.usage_acknowledged("a1", through).unwrap();
        let rest = store.usage_unreported(&n.to_hex(), "a1", 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(
            store.usage_unreported(&n.to_hex(), "a2", 1).unwrap().len(),
            1,
            "another anchor has its own acknowledgements; batches are bounded"
        );
        // The roll-up: reports in any order, repeated, merge to the newest values.
        let m = NodeId([4; 16]);
        let older = row(m, "acme", T0, [1, 1, 1, 1]);
        let newer = row(m, "acme", T0, [9, 2, 3, 60]);
        assert_eq!(store.merge_usage(std::slice::from_ref(&newer)).unwrap(), 1);
        assert_eq!(
            store.merge_usage(&[older.clone(), newer, older]).unwrap(),
            0
        );
        let range = UsageRange::new(T0, T0 + 2 * H, Granularity::Hour).unwrap();
        let (periods, nodes) = store.usage_totals("acme", &range).unwrap();
        assert_eq!(nodes, 1);
        assert_eq!(periods.len(), 1);
        assert_eq!(periods[0].counters, row(m, "", 0, [9, 2, 3, 60]).counters);
        assert_eq!(store.usage_rollup_rows().unwrap(), 1);
        // Retention: the roll-up's old rows go; this node's own only once every anchor holds
        // them (a2 acknowledged nothing yet).
        assert_eq!(
            store
                .prune_usage_before(T0 + H, &["a1".into(), "a2".into()])
                .unwrap(),
            1
        );
        assert_eq!(store.usage_rollup_rows().unwrap(), 0);
        assert_eq!(store.usage_local_since(&n.to_hex(), 0).unwrap().len(), 2);
        store.usage_acknowledged("a2", u64::MAX >> 1).unwrap();
        store
            .prune_usage_before(T0 + H, &["a1".into(), "a2".into()])
            .unwrap();
        let left = store.usage_local_since(&n.to_hex(), 0).unwrap();
        assert_eq!(left.len(), 2, "a1 has not acknowledged the changed T0 row");
        store.usage_acknowledged("a1", u64::MAX >> 1).unwrap();
        store
            .prune_usage_before(T0 + H, &["a1".into(), "a2".into()])
            .unwrap();
        let left = store.usage_local_since(&n.to_hex(), 0).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].hour_ms, T0 + H);
    }

    #[test]
    fn the_rollup_sums_as_the_core_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nexus.db")).unwrap();
        let mut ledger = UsageLedger::new();
        let mut rng = 0x9e37_79b9_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut reports = Vec::new();
        for _ in 0..500 {
            let node = NodeId([(next() % 6) as u8; 16]);
            let tenant = ["acme", "globex"][(next() % 2) as usize];
            let hour = T0 + (next() % 60) * H;
            let c = [next() % 1000, next() % 10, next() % 100, next() % 3600];
            reports.push(row(node, tenant, hour, c));
        }
        for chunk in reports.chunks(37) {
            store.merge_usage(chunk).unwrap();
            for r in chunk {
                ledger.merge(r);
            }
        }
        let rows: Vec<UsageRow> = ledger.rows().collect();
        for granularity in [Granularity::Hour, Granularity::Day] {
            let range = UsageRange::new(T0 + 3 * H, T0 + 50 * H, granularity).unwrap();
            for tenant in ["acme", "globex"] {
                let (periods, _) = store.usage_totals(tenant, &range).unwrap();
                assert_eq!(periods, period_totals(&rows, tenant, &range));
            }
        }
    }

    #[test]
    fn a_reopened_meter_continues_and_anchors_roll_up_their_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("nexus.db")).unwrap());
        let n = NodeId([5; 16]);
        let usage = Usage::open(
            store.clone(),
            n,
            "acme",
            Role::Anchor,
            Duration::from_secs(1),
            DEFAULT_RETENTION,
        )
        .unwrap();
        for _ in 0..3 {
            usage.api_call("acme", || unreachable!("its own tenant is not looked up"));
        }
        usage.api_call("ghost", || false);
        usage.api_call("globex", || true);
        usage.api_call("globex", || unreachable!("remembered"));
        usage.save().unwrap();
        drop(usage);
        let usage = Usage::open(
            store.clone(),
            n,
            "acme",
            Role::Anchor,
            Duration::from_secs(1),
            DEFAULT_RETENTION,
        )
        .unwrap();
        usage.api_call("acme", || true);
        usage.save().unwrap();
        let hour = hour_of(crate::now_ms());
        let range = UsageRange::new(hour, hour + H, Granularity::Hour).unwrap();
        let (acme, _) = store.usage_totals("acme", &range).unwrap();
        let (globex, _) = store.usage_totals("globex", &range).unwrap();
        let (ghost, _) = store.usage_totals("ghost", &range).unwrap();
        // Right at an hour boundary the calls could straddle two hours.
        if hour_of(crate::now_ms()) == hour {
            assert_eq!(acme[0].counters.api_calls, 4);
            assert_eq!(globex[0].counters.api_calls, 2);
        }
        assert!(ghost.is_empty());
        // A plain node bills only its own tenant.
        let plain = Usage::open(
            store,
            NodeId([6; 16]),
            "acme",
            Role::Node,
            Duration::from_secs(1),
            DEFAULT_RETENTION,
        )
        .unwrap();
        plain.api_call("globex", || true);
        assert!(lock(&plain.meter).take_changed().is_empty());
    }

    /// CPU time this thread has run, from the scheduler (nanoseconds).
    fn thread_cpu_ns() -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn db_bytes(dir: &std::path::Path) -> u64 {
        ["nexus.db", "nexus.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// The anchor's side of the roll-up at 10,000 nodes: one report per node per report
    /// interval, each decoded from its JSON, checked and merged in its own transaction in a real
    /// SQLite file (WAL, `synchronous=FULL`, as on an anchor), as `PeerService` does. Writes its
    /// section of `docs/benchmarks.md` with `NEXUS_BENCH_WRITE=1`.
    #[test]
    #[ignore = "a benchmark: minutes of fsyncs; run it by hand"]
    fn usage_rollup_bench() {
        let nodes: usize = std::env::var("NEXUS_USAGE_BENCH_NODES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        let rounds: usize = std::env::var("NEXUS_USAGE_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        let tenants = 100;
        let interval_s = DEFAULT_REPORT_INTERVAL.as_secs();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nexus.db")).unwrap();
        let checkpoint = || {
            rusqlite::Connection::open(dir.path().join("nexus.db"))
                .unwrap()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .unwrap();
        };
        checkpoint();
        let empty = db_bytes(dir.path());
        let ids: Vec<NodeId> = (0..nodes)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                id[8] = 0x5a;
                NodeId(id)
            })
            .collect();
        let mics: Vec<VerifiedMic> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| mic(*id, &format!("tenant-{:03}", i % tenants), Role::Node))
            .collect();
        let hour = hour_of(crate::now_ms());
        let mut wall = Vec::with_capacity(nodes * rounds);
        let (mut cpu, mut wire) = (0u64, 0usize);
        let started = Instant::now();
        for round in 1..=rounds as u64 {
            for (i, m) in mics.iter().enumerate() {
                // What the node's meter holds after `round` intervals of the hour.
                let row = UsageRow {
                    node_id: m.node_id.to_hex(),
                    tenant: m.tenant.clone(),
                    hour_ms: hour,
                    counters: UsageCounters {
                        bytes: round * 7_500_000 + i as u64,
                        connections: round * 40,
                        api_calls: round * 3,
                        node_seconds: (round * interval_s).min(3600),
                    },
                };
                let request = serde_json::to_vec(&PeerRequest::ReportUsage {
                    upto: round,
                    rows: vec![row],
                })
                .unwrap();
                wire += request.len();
                let (t0, c0) = (Instant::now(), thread_cpu_ns());
                let Ok(PeerRequest::ReportUsage { rows, .. }) =
                    serde_json::from_slice::<PeerRequest>(&request)
                else {
                    panic!("not a report");
                };
                check_report(m, &rows, crate::now_ms()).unwrap();
                store.merge_usage(&rows).unwrap();
                cpu += thread_cpu_ns() - c0;
                wall.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let took = started.elapsed();
        let reports = wall.len();
        wall.sort_by(f64::total_cmp);
        let pct = |p: f64| wall[((p / 100.0) * (wall.len() - 1) as f64).round() as usize];
        let cpu_us = cpu as f64 / reports as f64 / 1e3;
        let per_hour = nodes as u64 * 3600 / interval_s;
        let core_share = cpu_us * 1e-6 * per_hour as f64 / 3600.0;
        let wall_share =
            wall.iter().sum::<f64>() / reports as f64 * 1e-3 * per_hour as f64 / 3600.0;
        assert_eq!(store.usage_rollup_rows().unwrap(), nodes as u64);
        checkpoint();
        let hour_bytes = db_bytes(dir.path()) - empty;
        let row_bytes = hour_bytes as f64 / nodes as f64;
        // Reading a bill: one tenant's month (its nodes × 744 hours), hourly and daily.
        let tenant_nodes = nodes / tenants;
        let mut month = Vec::new();
        for h in 1..744u64 {
            for id in ids.iter().step_by(tenants).take(tenant_nodes) {
                month.push(UsageRow {
                    node_id: id.to_hex(),
                    tenant: "tenant-000".into(),
                    hour_ms: hour - h * HOUR_MS,
                    counters: UsageCounters {
                        bytes: 1,
                        connections: 1,
                        api_calls: 1,
                        node_seconds: 3600,
                    },
                });
            }
        }
        for chunk in month.chunks(MAX_REPORT_ROWS) {
            store.merge_usage(chunk).unwrap();
        }
        let month_range = |g| UsageRange::new(hour - 743 * HOUR_MS, hour + HOUR_MS, g).unwrap();
        let time_query = |g| {
            let range = month_range(g);
            let t0 = Instant::now();
            let (periods, nodes) = store.usage_totals("tenant-000", &range).unwrap();
            assert_eq!(nodes as usize, tenant_nodes);
            assert!(!periods.is_empty());
            t0.elapsed().as_secs_f64() * 1e3
        };
        let (hourly_ms, daily_ms) = (
            time_query(nexus_crdt::usage::Granularity::Hour),
            time_query(nexus_crdt::usage::Granularity::Day),
        );
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let build = if cfg!(debug_assertions) {
            "debug (unoptimized, SQLite at -O0)"
        } else {
            "release"
        };
        let section = format!(
            "<!-- usage-bench:start -->\n\
## Usage roll-up at {nodes} nodes\n\n\
Command: `NEXUS_BENCH_WRITE=1 cargo test -p nexus-node --bin nexus usage_rollup_bench -- --ignored --nocapture` \
({build} build). Machine: {cores} cores, {cpu_model}.\n\n\
What it measures: the anchor's side of usage reporting, in-process, without QUIC. {nodes} nodes in {tenants} \
tenants each send one report per report interval ({interval_s} s, the default): their current hour's row, \
cumulative. Each report is decoded from its JSON (`PeerRequest::ReportUsage`), checked against the sender's \
MIC facts and merged (per-field max) in its own transaction into a real SQLite file with the anchor's \
settings (WAL, `synchronous=FULL`), as the peer service does. {rounds} rounds ({reports} reports, {took:.1?}) \
were timed and scaled to the hour (a node's row changes every round; the work per report does not). CPU is \
the thread's scheduler time (`/proc/thread-self/schedstat`); wall time includes the fsync of every commit. \
The bill query reads one tenant's month ({tenant_nodes} nodes × 744 hours) through `usage_totals`.\n\n\
| Metric | Value |\n|---|---|\n\
| Reports per hour per anchor (every node reports to every anchor) | {per_hour} |\n\
| Report on the wire (JSON request, one row; QUIC and TLS framing not counted) | {wire_avg} bytes |\n\
| Report traffic into one anchor | {mbph:.1} MB/h ({kbps:.1} KB/s) |\n\
| Anchor CPU per report (decode, check, merge), mean | {cpu_us:.0} µs |\n\
| Anchor wall time per report incl. fsync, p50 / p99 / max | {p50:.2} / {p99:.2} / {max:.2} ms |\n\
| Anchor CPU for an hour of reports | {cpu_h:.1} s ({core_pct:.1} % of one core) |\n\
| Anchor time in report transactions (wall, fsync included) | {wall_pct:.1} % of the hour |\n\
| Roll-up rows after one hour | {nodes} |\n\
| Database growth for that hour | {hour_mb:.2} MB ({row_bytes:.0} bytes per row) |\n\
| Roll-up size at the default retention (400 days, {rows_ret} rows) | {ret_gb:.1} GB |\n\
| One tenant's month, hourly (744 periods) / daily (31) | {hourly_ms:.1} / {daily_ms:.1} ms |\n\n\
Reading: the roll-up's cost is one small transaction per report, so an anchor's load is reports per second \
({rps:.0}/s at these settings) times one fsync, not rows or tenants. A longer report interval divides it; \
the retention bounds the file.\n\
<!-- usage-bench:end -->\n",
            wire_avg = wire / reports,
            mbph = (wire / reports) as f64 * per_hour as f64 / 1e6,
            kbps = (wire / reports) as f64 * per_hour as f64 / 3600.0 / 1e3,
            p50 = pct(50.0),
            p99 = pct(99.0),
            max = pct(100.0),
            cpu_h = cpu_us * 1e-6 * per_hour as f64,
            core_pct = core_share * 100.0,
            wall_pct = wall_share * 100.0,
            hour_mb = hour_bytes as f64 / 1e6,
            rows_ret = nodes as u64 * 24 * 400,
            ret_gb = row_bytes * nodes as f64 * 24.0 * 400.0 / 1e9,
            rps = per_hour as f64 / 3600.0,
        );
        println!("{section}");
        if std::env::var("NEXUS_BENCH_WRITE").is_ok_and(|v| v == "1") {
            let path =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let (start, end) = ("<!-- usage-bench:start -->", "<!-- usage-bench:end -->\n");
            let updated = match (text.find(start), text.find(end)) {
                (Some(a), Some(b)) if b > a => {
                    format!("{}{section}{}", &text[..a], &text[b + end.len()..])
                }
                _ => format!("{text}\n{section}"),
            };
            std::fs::write(&path, updated).unwrap();
        }
    }
}
