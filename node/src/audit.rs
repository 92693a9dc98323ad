//! The audit log (NCC-API-005): every API call this node served, appended to its own SQLite
//! file (`<data-dir>/audit.db`), shipped to the anchors, queryable at `GET /v1/audit`.
//!
//! - **Append-only.** No route edits or deletes entries, and the table's triggers refuse
//!   `UPDATE` and `DELETE` even to someone with the file and the `sqlite3` shell, unless they drop
//!   the triggers first (a file owner can always do that; the copies on the anchors are what
//!   make tampering on one machine visible).
//! - **Off the request path.** A call is queued in memory and written by one thread in batches
//!   (one transaction per batch); the file is separate from `nexus.db`, so auditing never waits
//!   on configuration writes nor they on it. `synchronous=NORMAL` with WAL: a killed process
//!   loses nothing already handed to SQLite; a power cut may lose the last batch (milliseconds).
//!   When the queue is full (a flood far beyond what the writer keeps up with), calls are
//!   counted in `nexus_audit_dropped_total` instead of blocking the API.
//! - **Replicated to anchors.** Each entry is `(node id, sequence)`. Every
//!   [`SHIP_INTERVAL`] a node sends the entries an anchor has not acknowledged (by sequence,
//!   remembered per anchor in `audit_shipped`) over the peer protocol; the anchor stores them
//!   `INSERT OR IGNORE`, so a repeat after a lost acknowledgement or a partition is harmless.
//!   An anchor accepts only entries whose node id is the authenticated sender's.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::Context;
use nexus_api::wire::{AuditEntry, AuditQuery};
use nexus_ca::{NodeId, Role};
use nexus_mesh::{Mesh, NodeStatus};
use rusqlite::{Connection, params};

use crate::peer::{PeerRequest, PeerResponse, PeerService};

/// How often entries are shipped to the anchors.
pub const SHIP_INTERVAL: Duration = Duration::from_secs(2);
/// Most entries in one shipment.
pub const SHIP_BATCH: usize = 500;
/// Calls queued for the writer at most.
const QUEUE: usize = 100_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    node_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    identity TEXT NOT NULL,
    role TEXT NOT NULL,
    tenant TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    status INTEGER NOT NULL,
    result TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    duration_us INTEGER NOT NULL,
    PRIMARY KEY (node_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (time_ms, node_id, seq);
CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit (tenant, time_ms, node_id, seq);
CREATE TABLE IF NOT EXISTS audit_shipped (anchor TEXT PRIMARY KEY, through INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// This node's audit log.
pub struct AuditLog {
    node_id: String,
    queue: mpsc::SyncSender<AuditEntry>,
    conn: Mutex<Connection>,
}

fn open(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
    )?;
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("creating the audit tables in {}", path.display()))?;
    Ok(conn)
}

fn insert(conn: &mut Connection, entries: &[AuditEntry]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO audit (node_id, seq, time_ms, identity, role, tenant, action,
             target, status, result, trace_id, duration_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for e in entries {
            let Some(seq) = seq_of(&e.id) else { continue };
            stmt.execute(params![
                e.node_id,
                seq as i64,
                e.time_ms as i64,
                e.identity,
                e.role,
                e.tenant,
                e.action,
                e.target,
                e.status,
                e.result,
                e.trace_id,
                e.duration_us as i64,
            ])?;
        }
    }
    tx.commit()
}

fn entry_id(node: &str, seq: u64) -> String {
    format!("{node}-{seq:012}")
}

fn seq_of(id: &str) -> Option<u64> {
    id.rsplit_once('-')?.1.parse().ok()
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    let node_id: String = r.get(0)?;
    let seq: i64 = r.get(1)?;
    let time_ms = r.get::<_, i64>(2)?.max(0) as u64;
    Ok(AuditEntry {
        id: entry_id(&node_id, seq.max(0) as u64),
        time: crate::rfc3339_ms(time_ms),
        time_ms,
        node_id,
        identity: r.get(3)?,
        role: r.get(4)?,
        tenant: r.get(5)?,
        action: r.get(6)?,
        target: r.get(7)?,
        status: r.get(8)?,
        result: r.get(9)?,
        trace_id: r.get(10)?,
        duration_us: r.get::<_, i64>(11)?.max(0) as u64,
    })
}

impl AuditLog {
    /// Opens (creating) `path` and starts the writer thread.
    pub fn open(path: &Path, node: NodeId) -> anyhow::Result<Arc<AuditLog>> {
        let node_id = node.to_hex();
        let conn = open(path)?;
        let last: i64 = conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM audit WHERE node_id = ?1",
            [&node_id],
            |r| r.get(0),
        )?;
        let mut writer = open(path)?;
        let mut next = last.max(0) as u64;
        let own = node_id.clone();
        let (queue, incoming) = mpsc::sync_channel::<AuditEntry>(QUEUE);
        let file = path.display().to_string();
        std::thread::Builder::new()
            .name("nexus-audit".into())
            .spawn(move || {
                while let Ok(first) = incoming.recv() {
                    let mut batch = vec![first];
                    while batch.len() < 4096 {
                        match incoming.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    for entry in &mut batch {
                        next += 1;
                        entry.id = entry_id(&own, next);
                    }
                    if let Err(err) = insert(&mut writer, &batch) {
                        metrics::counter!("nexus_audit_write_errors_total").increment(1);
                        tracing::error!(file = %file, error = %err, lost = batch.len(), "cannot write audit entries");
                    }
                }
            })?;
        Ok(Arc::new(AuditLog {
            node_id,
            queue,
            conn: Mutex::new(conn),
        }))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one call (never blocks). Its sequence number is given by the writer, in the
    /// order entries are stored, so the shipper's "everything up to N" never skips one.
    pub fn record(&self, mut entry: AuditEntry) {
        entry.node_id = self.node_id.clone();
        if self.queue.try_send(entry).is_err() {
            metrics::counter!("nexus_audit_dropped_total").increment(1);
        } else {
            metrics::counter!("nexus_audit_entries_total").increment(1);
        }
    }

    /// Entries matching `q`, newest first; whether more follow.
    pub fn query(&self, q: &AuditQuery) -> anyhow::Result<(Vec<AuditEntry>, bool)> {
        let mut sql = String::from(
            "SELECT node_id, seq, time_ms, identity, role, tenant, action, target, status, \
             result, trace_id, duration_us FROM audit WHERE 1 = 1",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        use rusqlite::types::Value as V;
        if let Some(t) = &q.tenant {
            arg(&mut sql, " AND tenant = ?", V::Text(t.clone()));
        }
        if let Some(i) = &q.identity {
            arg(&mut sql, " AND identity = ?", V::Text(i.clone()));
        }
        if let Some(a) = &q.action {
            arg(&mut sql, " AND instr(action, ?) > 0", V::Text(a.clone()));
        }
        if let Some(r) = &q.result {
            arg(&mut sql, " AND result = ?", V::Text(r.clone()));
        }
        if let Some(n) = &q.node {
            arg(&mut sql, " AND node_id = ?", V::Text(n.clone()));
        }
        if let Some(s) = q.since_ms {
            arg(&mut sql, " AND time_ms >= ?", V::Integer(s as i64));
        }
        if let Some(u) = q.until_ms {
            arg(&mut sql, " AND time_ms < ?", V::Integer(u as i64));
        }
        if let Some((ms, id)) = &q.after {
            let (node, seq) = id
                .rsplit_once('-')
                .and_then(|(n, s)| Some((n.to_string(), s.parse::<i64>().ok()?)))
                .context("the cursor names no audit entry")?;
            arg(
                &mut sql,
                " AND (time_ms, node_id, seq) < (?",
                V::Integer(*ms as i64),
            );
            arg(&mut sql, ", ?", V::Text(node));
            arg(&mut sql, ", ?)", V::Integer(seq));
        }
        sql.push_str(" ORDER BY time_ms DESC, node_id DESC, seq DESC");
        arg(&mut sql, " LIMIT ?", V::Integer(q.limit as i64 + 1));
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let mut items: Vec<AuditEntry> = stmt
            .query_map(rusqlite::params_from_iter(args), row)?
            .collect::<Result<_, _>>()?;
        let more = items.len() > q.limit;
        items.truncate(q.limit);
        Ok((items, more))
    }

    /// This node's entries `anchor` has not acknowledged, oldest first.
    fn unshipped(&self, anchor: &str) -> anyhow::Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let through: i64 = conn
            .query_row(
                "SELECT through FROM audit_shipped WHERE anchor = ?1",
                [anchor],
                |r| r.get(0),
            )
            .unwrap_or(0);
        let mut stmt = conn.prepare_cached(
            "SELECT node_id, seq, time_ms, identity, role, tenant, action, target, status, \
             result, trace_id, duration_us FROM audit WHERE node_id = ?1 AND seq > ?2 \
             ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![self.node_id, through, SHIP_BATCH as i64], row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn shipped(&self, anchor: &str, through: u64) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO audit_shipped (anchor, through) VALUES (?1, ?2)
             ON CONFLICT (anchor) DO UPDATE SET through = MAX(through, excluded.through)",
            params![anchor, through as i64],
        )?;
        Ok(())
    }

    /// Anchors: stores entries `sender` shipped (only its own); the highest sequence of
    /// `sender` now held.
    pub fn accept(
        &self,
        sender: &NodeId,
        sender_tenant: Option<&str>,
        entries: &[AuditEntry],
    ) -> anyhow::Result<u64> {
        let sender = sender.to_hex();
        if let Some(bad) = entries.iter().find(|e| e.node_id != sender) {
            anyhow::bail!(
                "node {sender} shipped an audit entry of node {}: refused",
                bad.node_id
            );
        }
        // A node serves fleet-wide callers and its own tenant's (an anchor, `None`, every
        // tenant's): entries naming another tenant are invented.
        if let Some(own) = sender_tenant
            && let Some(bad) = entries
                .iter()
                .find(|e| e.tenant.as_deref().is_some_and(|t| t != own))
        {
            anyhow::bail!(
                "node {sender} of tenant {own} shipped an entry of tenant {:?}: refused",
                bad.tenant
            );
        }
        if entries.iter().any(|e| seq_of(&e.id).is_none()) {
            anyhow::bail!("an audit entry id is not <node id>-<sequence>");
        }
        // Times from the future would sit at the top of every newest-first page.
        let latest = crate::now_ms() + 60_000;
        let entries: Vec<AuditEntry> = entries
            .iter()
            .cloned()
            .map(|mut e| {
                e.time_ms = e.time_ms.min(latest);
                e
            })
            .collect();
        let mut conn = self.conn();
        insert(&mut conn, &entries)?;
        let through: i64 = conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM audit WHERE node_id = ?1",
            [&sender],
            |r| r.get(0),
        )?;
        Ok(through.max(0) as u64)
    }
}

/// Ships this node's entries to every online anchor until `stop`.
pub async fn ship(
    log: Arc<AuditLog>,
    mesh: Arc<Mesh>,
    peer: Arc<PeerService>,
    own: NodeId,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SHIP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let anchors: Vec<(NodeId, std::net::SocketAddr)> = mesh
            .members()
            .into_iter()
            .filter(|m| m.node_id != own && m.status == NodeStatus::Online)
            .filter_map(|m| {
                let info = m.info?;
                (info.role == Role::Anchor && !info.quic_addr.ip().is_unspecified())
                    .then_some((m.node_id, info.quic_addr))
            })
            .collect();
        for (anchor, addr) in anchors {
            let key = anchor.to_hex();
            // A few batches per round, so a backlog drains without starving other anchors.
            for _ in 0..8 {
                let log2 = log.clone();
                let key2 = key.clone();
                let entries = match tokio::task::spawn_blocking(move || log2.unshipped(&key2)).await
                {
                    Ok(Ok(e)) => e,
                    _ => break,
                };
                if entries.is_empty() {
                    break;
                }
                let full = entries.len() == SHIP_BATCH;
                let last = entries.last().and_then(|e| seq_of(&e.id)).unwrap_or(0);
                match peer
                    .request(anchor, addr, &PeerRequest::AuditPush { entries })
                    .await
                {
                    Ok(PeerResponse::AuditAck { through }) => {
                        metrics::counter!("nexus_audit_shipped_total").increment(1);
                        let _ = log.shipped(&key, through.min(last));
                    }
                    Ok(other) => {
                        tracing::debug!(%anchor, answer = ?other, "audit shipment refused");
                        break;
                    }
                    Err(err) => {
                        tracing::debug!(%anchor, error = %format!("{err:#}"), "audit shipment failed");
                        break;
                    }
                }
                if !full {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, tenant: Option<&str>) -> AuditEntry {
        AuditEntry {
            id: String::new(),
            time: String::new(),
            time_ms: crate::now_ms(),
            node_id: String::new(),
            identity: "api-key:k1".into(),
            role: "admin".into(),
            tenant: tenant.map(str::to_string),
            action: action.into(),
            target: "/v1/routes".into(),
            status: 200,
            result: "ok".into(),
            trace_id: "00".repeat(16),
            duration_us: 10,
        }
    }

    fn wait_for(log: &AuditLog, n: usize) -> Vec<AuditEntry> {
        for _ in 0..200 {
            let q = AuditQuery {
                limit: 1000,
                ..Default::default()
            };
            let (items, _) = log.query(&q).unwrap();
            if items.len() >= n {
                return items;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the writer did not store {n} entries");
    }

    #[test]
    fn records_pages_filters_and_refuses_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let node = NodeId([7; 16]);
        let log = AuditLog::open(&path, node).unwrap();
        for i in 0..25 {
            let tenant = if i % 5 == 0 { Some("b") } else { Some("a") };
            log.record(entry(&format!("GET /v1/x{i}"), tenant));
        }
        let all = wait_for(&log, 25);
        assert_eq!(all.len(), 25);
        // Newest first; ids unique.
        let ids: std::collections::BTreeSet<_> = all.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids.len(), 25);
        assert_eq!(all[0].action, "GET /v1/x24");
        // Pages of 10 walk everything once.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let q = AuditQuery {
                limit: 10,
                after: after.clone(),
                ..Default::default()
            };
            let (items, more) = log.query(&q).unwrap();
            seen.extend(items.iter().map(|e| e.id.clone()));
            if !more {
                break;
            }
            let last = items.last().unwrap();
            after = Some((last.time_ms, last.id.clone()));
        }
        assert_eq!(seen, all.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
        let q = AuditQuery {
            tenant: Some("b".into()),
            limit: 100,
            ..Default::default()
        };
        assert_eq!(log.query(&q).unwrap().0.len(), 5);
        // Append-only even through SQL.
        let conn = Connection::open(&path).unwrap();
        let err = conn.execute("DELETE FROM audit", []).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        let err = conn
            .execute("UPDATE audit SET result = 'ok'", [])
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        drop(log);
        // Sequences continue after a restart.
        let log = AuditLog::open(&path, node).unwrap();
        log.record(entry("GET /v1/after", None));
        let all = wait_for(&log, 26);
        assert!(all[0].id.ends_with("000000000026"), "{}", all[0].id);
    }

    #[test]
    fn anchors_accept_only_the_senders_entries_once() {
        let dir = tempfile::tempdir().unwrap();
        let anchor = AuditLog::open(&dir.path().join("a.db"), NodeId([1; 16])).unwrap();
        let sender = NodeId([2; 16]);
        let mut e = entry("GET /v1/nodes", None);
        e.node_id = sender.to_hex();
        e.id = entry_id(&sender.to_hex(), 1);
        assert_eq!(
            anchor.accept(&sender, Some("acme"), &[e.clone()]).unwrap(),
            1
        );
        // A repeat (lost acknowledgement) stores nothing twice.
        assert_eq!(
            anchor.accept(&sender, Some("acme"), &[e.clone()]).unwrap(),
            1
        );
        let q = AuditQuery {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(anchor.query(&q).unwrap().0.len(), 1);
        let other = NodeId([3; 16]);
        assert!(anchor.accept(&other, Some("acme"), &[e.clone()]).is_err());
        let mut foreign = e;
        foreign.tenant = Some("globex".into());
        assert!(anchor.accept(&sender, Some("acme"), &[foreign]).is_err());
    }
}
