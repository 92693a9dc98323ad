//! The node's SQLite file: identity, join tokens (hashes only), API key hashes, enrollments,
//! seeds, the last known membership and the deny list.
//!
//! WAL with `synchronous=FULL`: a write acknowledged to a caller is on disk. Migrations are
//! versioned in code through `PRAGMA user_version`; each runs in one transaction.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use nexus_crdt::usage::{PeriodTotals, UsageCounters, UsageRange, UsageRow};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// Storage errors: the message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database {path}: {source}{}", damage_hint(source))]
    Sqlite {
        /// File.
        path: String,
        /// Cause.
        source: rusqlite::Error,
    },
    /// The file was written by a newer nexus.
    #[error(
        "database {path} has schema version {found}, newer than this nexus understands ({known}): run a newer nexus"
    )]
    TooNew {
        /// File.
        path: String,
        /// Version in the file.
        found: i64,
        /// Newest known.
        known: i64,
    },
}

fn damage_hint(err: &rusqlite::Error) -> &'static str {
    match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            " (the file is damaged or is not a Nexus database: restore it from a backup, or move the data directory aside and re-enroll the node)"
        }
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => {
            " (check that the data directory is writable by this user)"
        }
        Some(rusqlite::ErrorCode::DiskFull) => " (the disk is full)",
        _ => "",
    }
}

const MIGRATIONS: &[&str] = &[
    // 1: the spine.
    "CREATE TABLE identity (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        fleet_id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        role TEXT NOT NULL,
        site TEXT NOT NULL,
        tenant TEXT NOT NULL,
        labels TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        secret_hash BLOB NOT NULL,
        tenant TEXT NOT NULL,
        site TEXT,
        labels TEXT NOT NULL,
        max_uses INTEGER NOT NULL CHECK (max_uses > 0),
        uses INTEGER NOT NULL DEFAULT 0 CHECK (uses <= max_uses),
        expires_at_ms INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    );
    CREATE TABLE enrollments (
        serial TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        token_id TEXT NOT NULL REFERENCES tokens(id),
        cert_pem TEXT NOT NULL,
        issued_at_ms INTEGER NOT NULL
    );
    CREATE INDEX enrollments_node ON enrollments(node_id);
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        key_hash BLOB NOT NULL UNIQUE,
        role TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE seeds (addr TEXT PRIMARY KEY);
    CREATE TABLE members (
        node_id TEXT PRIMARY KEY,
        record TEXT NOT NULL,
        updated_at_ms INTEGER NOT NULL
    );
    CREATE TABLE denied_nodes (
        node_id TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    );
    CREATE TABLE liveness (id INTEGER PRIMARY KEY CHECK (id = 1), at_ms INTEGER NOT NULL);",
    // 2: incarnation numbers that never go backwards, whatever the clock does.
    "CREATE TABLE incarnation (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL);",
    // 3: every certificate an anchor issued (joins, renewals, CSRs), revocation, and the CRLs a
    // node enforces.
    "CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        token_id TEXT,
        cert_pem TEXT NOT NULL,
        issued_at_ms INTEGER NOT NULL,
        not_after_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER,
        revoke_reason TEXT
    );
    CREATE INDEX certificates_node ON certificates(node_id);
    INSERT INTO certificates (serial, node_id, kind, token_id, cert_pem, issued_at_ms, not_after_ms)
        SELECT serial, node_id, 'join', token_id, cert_pem, issued_at_ms, 0 FROM enrollments;
    DROP TABLE enrollments;
    CREATE TABLE crls (
        issuer TEXT PRIMARY KEY,
        number INTEGER NOT NULL,
        der BLOB NOT NULL,
        installed_at_ms INTEGER NOT NULL
    );",
    // 4: several anchors: promotions the root holder authorized, and join tokens learned from
    // other anchors (origin = the anchor that created them; NULL for this anchor's own).
    "CREATE TABLE promotions (
        node_id TEXT PRIMARY KEY,
        requested_at_ms INTEGER NOT NULL,
        completed_at_ms INTEGER
    );
    ALTER TABLE tokens ADD COLUMN origin TEXT;",
    // 5: the anchor's certificate transparency log (see `crate::transparency`): one row per
    // leaf, `idx` its 0-based index, `leaf` the canonical encoding whose hash is in the tree.
    // The columns after `leaf_hash` repeat what the leaf says, for lookups.
    "CREATE TABLE tlog_entries (
        idx INTEGER PRIMARY KEY CHECK (idx >= 0),
        leaf BLOB NOT NULL,
        leaf_hash BLOB NOT NULL,
        kind TEXT NOT NULL,
        serial TEXT NOT NULL,
        node_id TEXT NOT NULL,
        issuer TEXT NOT NULL,
        timestamp_ms INTEGER NOT NULL
    );
    CREATE INDEX tlog_entries_serial ON tlog_entries(serial);
    CREATE INDEX tlog_entries_node ON tlog_entries(node_id);
    CREATE INDEX tlog_entries_issuer ON tlog_entries(issuer);
    CREATE INDEX tlog_entries_leaf_hash ON tlog_entries(leaf_hash);",
    // 6: copies of the other anchors' transparency logs (see `crate::mirror`), the newest head
    // verified against each, and evidence when an origin was caught rewriting its log.
    "CREATE TABLE tlog_mirror (
        origin TEXT NOT NULL,
        idx INTEGER NOT NULL CHECK (idx >= 0),
        leaf BLOB NOT NULL,
        PRIMARY KEY (origin, idx)
    ) WITHOUT ROWID;
    CREATE TABLE tlog_mirror_heads (
        origin TEXT PRIMARY KEY,
        head TEXT,
        broken TEXT,
        evidence TEXT,
        updated_at_ms INTEGER NOT NULL
    );",
    // 7: where anchors answer QUIC, remembered so a node can reach one even before it accepts
    // any gossip (strict mode looks up log proofs there).
    "CREATE TABLE anchor_addrs (addr TEXT PRIMARY KEY, updated_at_ms INTEGER NOT NULL);",
    // 8: replicated configuration (see `crate::replication`): the documents as automerge
    // incremental chunks, and every signed change envelope with its author's MIC.
    "CREATE TABLE config_chunks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        doc_id TEXT NOT NULL,
        bytes BLOB NOT NULL
    );
    CREATE INDEX config_chunks_doc ON config_chunks(doc_id, seq);
    CREATE TABLE config_changes (
        hash TEXT PRIMARY KEY,
        doc_id TEXT NOT NULL,
        envelope BLOB NOT NULL,
        author_mic BLOB NOT NULL,
        stored_at_ms INTEGER NOT NULL
    );
    CREATE INDEX config_changes_doc ON config_changes(doc_id);",
    // 9: automerge sync state per peer, document and side of the session (what both sides
    // were known to share when a session last ended well), so reconnects resume.
    "CREATE TABLE config_sync (
        peer TEXT NOT NULL,
        doc_id TEXT NOT NULL,
        side TEXT NOT NULL,
        state BLOB NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (peer, doc_id, side)
    ) WITHOUT ROWID;",
    // 10: the materialized configuration a node serves reads from (see `crate::config_view`):
    // one row per object, and the heads digest and version the rows correspond to, written in
    // the transaction of the change that produced them; authors' MICs stored once each.
    "CREATE TABLE config_objects (
        doc_id TEXT NOT NULL,
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT,
        malformed TEXT,
        PRIMARY KEY (doc_id, collection, key)
    ) WITHOUT ROWID;
    CREATE TABLE config_views (
        doc_id TEXT PRIMARY KEY,
        heads_digest BLOB NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE TABLE config_mics (fingerprint TEXT PRIMARY KEY, der BLOB NOT NULL);
    ALTER TABLE config_changes ADD COLUMN mic_fingerprint TEXT;",
    // 11: usage metering (see `crate::usage`). `usage_local`: this node's own rows, cumulative,
    // one per tenant and hour; `seq` numbers every change of a row, so what an anchor has not
    // acknowledged (`usage_acks`) is `seq > through`. `usage_rollup` (anchors): every node's
    // rows, merged by per-field max.
    "CREATE TABLE usage_local (
        tenant TEXT NOT NULL,
        hour_ms INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        connections INTEGER NOT NULL,
        api_calls INTEGER NOT NULL,
        node_seconds INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (tenant, hour_ms)
    ) WITHOUT ROWID;
    CREATE INDEX usage_local_seq ON usage_local(seq);
    CREATE TABLE usage_acks (anchor TEXT PRIMARY KEY, through INTEGER NOT NULL);
    CREATE TABLE usage_rollup (
        tenant TEXT NOT NULL,
        hour_ms INTEGER NOT NULL,
        node_id TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        connections INTEGER NOT NULL,
        api_calls INTEGER NOT NULL,
        node_seconds INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, hour_ms, node_id)
    ) WITHOUT ROWID;",
];

/// One stored object of a configuration view (`config_objects`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRow {
    /// The collection (`routes`), or `settings`.
    pub collection: String,
    /// The object's key; empty for `settings`.
    pub key: String,
    /// The object, JSON; absent for an object that does not match the schema.
    pub value: Option<String>,
    /// Why the object is left out (`path: message`), if it does not match the schema.
    pub malformed: Option<String>,
}

/// What one commit of a configuration document stores (see [`Store::save_config_jobs`]).
#[derive(Debug, Clone)]
pub struct ConfigJob {
    /// `fleet` or `tenant/<id>`.
    pub doc_id: String,
    /// The document's new incremental chunk (may be empty).
    pub chunk: Vec<u8>,
    /// `(hash, envelope, author MIC)` of the changes.
    pub changes: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// Changed view rows: `(collection, key, row)`, `None` deletes.
    pub rows: Vec<(String, String, Option<ObjectRow>)>,
    /// Every row of the view, replacing the stored ones, when the whole view changed.
    pub all: Option<Vec<ObjectRow>>,
    /// The view's new heads digest.
    pub digest: [u8; 32],
    /// The view's new version.
    pub version: u64,
}

impl ConfigJob {
    /// A job that stores nothing: done once everything queued before it is.
    pub fn barrier() -> ConfigJob {
        ConfigJob {
            doc_id: String::new(),
            chunk: Vec::new(),
            changes: Vec::new(),
            rows: Vec::new(),
            all: None,
            digest: [0; 32],
            version: 0,
        }
    }
}

fn save_config_job(tx: &rusqlite::Transaction<'_>, job: &ConfigJob) -> rusqlite::Result<()> {
    let doc_id = job.doc_id.as_str();
    if doc_id.is_empty() {
        return Ok(());
    }
    if !job.chunk.is_empty() {
        tx.execute(
            "INSERT INTO config_chunks (doc_id, bytes) VALUES (?1, ?2)",
            params![doc_id, job.chunk],
        )?;
    }
    {
        let mut mic = tx.prepare_cached(
            "INSERT OR IGNORE INTO config_mics (fingerprint, der) VALUES (?1, ?2)",
        )?;
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO config_changes (hash, doc_id, envelope, author_mic, stored_at_ms, mic_fingerprint)
             VALUES (?1, ?2, ?3, x'', ?4, ?5)",
        )?;
        let now = crate::now_ms() as i64;
        for (hash, envelope, der) in &job.changes {
            let fingerprint = hex::encode(nexus_ca::sha256_fingerprint(der));
            mic.execute(params![fingerprint, der])?;
            insert.execute(params![hash, doc_id, envelope, now, fingerprint])?;
        }
    }
    if let Some(all) = &job.all {
        tx.execute("DELETE FROM config_objects WHERE doc_id = ?1", [doc_id])?;
        for row in all {
            insert_object_row(tx, doc_id, row)?;
        }
    }
    for (collection, key, row) in &job.rows {
        match row {
            Some(row) => insert_object_row(tx, doc_id, row)?,
            None => {
                tx.execute(
                    "DELETE FROM config_objects WHERE doc_id = ?1 AND collection = ?2 AND key = ?3",
                    params![doc_id, collection, key],
                )?;
            }
        }
    }
    set_view(tx, doc_id, &job.digest, job.version)
}

fn insert_object_row(
    tx: &rusqlite::Transaction<'_>,
    doc_id: &str,
    row: &ObjectRow,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO config_objects (doc_id, collection, key, value, malformed) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (doc_id, collection, key) DO UPDATE SET value = ?4, malformed = ?5",
        params![doc_id, row.collection, row.key, row.value, row.malformed],
    )
    .map(|_| ())
}

fn set_view(
    tx: &rusqlite::Transaction<'_>,
    doc_id: &str,
    digest: &[u8; 32],
    version: u64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO config_views (doc_id, heads_digest, version) VALUES (?1, ?2, ?3)
         ON CONFLICT (doc_id) DO UPDATE SET heads_digest = ?2, version = ?3",
        params![doc_id, digest.as_slice(), version as i64],
    )
    .map(|_| ())
}

/// Who this node is, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Fleet id.
    pub fleet_id: String,
    /// Node id (hex).
    pub node_id: String,
    /// `anchor` or `node`.
    pub role: String,
    /// Site.
    pub site: String,
    /// Tenant.
    pub tenant: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Enrollment time.
    pub created_at_ms: u64,
}

/// A stored join token (hash of its secret only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Id.
    pub id: String,
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// Tenant for joining nodes.
    pub tenant: String,
    /// Site for joining nodes, if fixed.
    pub site: Option<String>,
    /// Labels for joining nodes.
    pub labels: BTreeMap<String, String>,
    /// Allowed joins.
    pub max_uses: u32,
    /// Joins so far.
    pub uses: u32,
    /// Expiry.
    pub expires_at_ms: u64,
    /// Creation.
    pub created_at_ms: u64,
    /// Revocation time.
    pub revoked_at_ms: Option<u64>,
}

/// A certificate issued to an admitted node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// Certificate serial (hex).
    pub serial: String,
    /// Node id (hex).
    pub node_id: String,
    /// The issued MIC.
    pub cert_pem: String,
}

/// One node's SQLite file.
pub struct Store {
    conn: Mutex<Connection>,
    path: String,
    /// Fingerprint of the CA whose issues and revocations go into the transparency log; `None`
    /// (nodes, `nexus init`) logs nothing. See [`Store::start_transparency_log`].
    log_issuer: Mutex<Option<[u8; 32]>>,
}

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let display = path.display().to_string();
        let err = |source| StoreError::Sqlite {
            path: display.clone(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )
        .map_err(err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: display,
                found: version,
                known,
            });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
            path: display,
            log_issuer: Mutex::new(None),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut conn).map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// The stored identity, if this node has enrolled.
    pub fn identity(&self) -> Result<Option<Identity>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT fleet_id, node_id, role, site, tenant, labels, created_at_ms FROM identity",
                [],
                |r| {
                    Ok(Identity {
                        fleet_id: r.get(0)?,
                        node_id: r.get(1)?,
                        role: r.get(2)?,
                        site: r.get(3)?,
                        tenant: r.get(4)?,
                        labels: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                        created_at_ms: r.get::<_, i64>(6)? as u64,
                    })
                },
            )
            .optional()
        })
    }

    /// Stores identity, seeds and API key hashes in one transaction.
    pub fn enroll(
        &self,
        identity: &Identity,
        seeds: &[String],
        api_keys: &[(String, [u8; 32], String)],
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO identity (id, fleet_id, node_id, role, site, tenant, labels, created_at_ms)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    identity.fleet_id,
                    identity.node_id,
                    identity.role,
                    identity.site,
                    identity.tenant,
                    serde_json::to_string(&identity.labels).unwrap_or_else(|_| "{}".into()),
                    identity.created_at_ms as i64
                ],
            )?;
            for seed in seeds {
                tx.execute("INSERT OR IGNORE INTO seeds (addr) VALUES (?1)", [seed])?;
            }
            for (id, hash, role) in api_keys {
                tx.execute(
                    "INSERT OR IGNORE INTO api_keys (id, key_hash, role, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![id, &hash[..], role, crate::now_ms() as i64],
                )?;
            }
            tx.commit()
        })
    }

    /// Hashes of every API key, with their ids and roles.
    pub fn api_keys(&self) -> Result<Vec<(String, [u8; 32], String)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT id, key_hash, role FROM api_keys ORDER BY id")?;
            let rows = stmt.query_map([], |r| {
                let hash: Vec<u8> = r.get(1)?;
                let mut fixed = [0u8; 32];
                if hash.len() == 32 {
                    fixed.copy_from_slice(&hash);
                }
                Ok((r.get(0)?, fixed, r.get(2)?))
            })?;
            rows.collect()
        })
    }

    /// Gossip seeds remembered from enrollment.
    pub fn seeds(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT addr FROM seeds ORDER BY addr")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Stores a new join token.
    pub fn insert_token(&self, token: &TokenRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tokens (id, secret_hash, tenant, site, labels, max_uses, uses, expires_at_ms, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8)",
                params![
                    token.id,
                    &token.secret_hash[..],
                    token.tenant,
                    token.site,
                    serde_json::to_string(&token.labels).unwrap_or_else(|_| "{}".into()),
                    token.max_uses,
                    token.expires_at_ms as i64,
                    token.created_at_ms as i64
                ],
            )
            .map(|_| ())
        })
    }

    /// Every token, ordered by id.
    pub fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("{TOKEN_SELECT} ORDER BY id"))?;
            let rows = stmt.query_map([], token_row)?;
            rows.collect()
        })
    }

    /// Marks a token revoked; returns it (None if unknown).
    pub fn revoke_token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE tokens SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                params![id, crate::now_ms() as i64],
            )?;
            let row = tx
                .query_row(&format!("{TOKEN_SELECT} WHERE id = ?1"), [id], token_row)
                .optional()?;
            tx.commit()?;
            Ok(row)
        })
    }

    /// Admits a node: inside one immediate transaction, re-reads the token, lets `decide` check it
    /// and issue the certificate, then records the use, the enrollment and (on anchors) its
    /// transparency log entry. Either all of it is on disk, or nothing is.
    pub fn admit<T, E>(
        &self,
        token_id: &str,
        decide: impl FnOnce(Option<&TokenRow>) -> Result<(T, Enrollment), E>,
    ) -> Result<Result<T, E>, StoreError> {
        let log_issuer = self.log_issuer();
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row = tx
                .query_row(
                    &format!("{TOKEN_SELECT} WHERE id = ?1"),
                    [token_id],
                    token_row,
                )
                .optional()?;
            let (value, enrollment) = match decide(row.as_ref()) {
                Ok(decided) => decided,
                Err(err) => return Ok(Err(err)),
            };
            tx.execute(
                "UPDATE tokens SET uses = uses + 1 WHERE id = ?1",
                [token_id],
            )?;
            insert_certificate(&tx, &enrollment, "join", Some(token_id), log_issuer)?;
            tx.commit()?;
            Ok(Ok(value))
        })
    }

    /// Records a certificate this anchor issued outside a join (its own, a renewal, a CSR), with
    /// its transparency log entry in the same transaction.
    pub fn record_certificate(&self, issued: &Enrollment, kind: &str) -> Result<(), StoreError> {
        let log_issuer = self.log_issuer();
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            insert_certificate(&tx, issued, kind, None, log_issuer)?;
            tx.commit()
        })
    }

    /// A certificate this anchor issued.
    pub fn certificate(&self, serial: &str) -> Result<Option<CertificateRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("{CERT_SELECT} WHERE serial = ?1"),
                [serial],
                certificate_row,
            )
            .optional()
        })
    }

    /// How many certificates this anchor has issued (cheap; to notice new ones).
    pub fn certificate_count(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_row("SELECT COUNT(*) FROM certificates", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
        })
    }

    /// Certificates this anchor issued, optionally only those of one node, by serial.
    pub fn certificates(&self, node_id: Option<&str>) -> Result<Vec<CertificateRow>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "{CERT_SELECT} WHERE ?1 IS NULL OR node_id = ?1 ORDER BY serial"
            ))?;
            let rows = stmt.query_map([node_id], certificate_row)?;
            rows.collect()
        })
    }

    /// Revokes `serials` (certificates this anchor issued) and, in the same transaction, signs
    /// and stores the anchor's next CRL with `sign(number, all revoked)`; each newly revoked
    /// serial also gets its transparency log entry in that transaction. Serials already revoked
    /// keep their first revocation. Returns the new CRL number and DER, or `None` when nothing
    /// changed; an empty `serials` always signs a new list. Durable before it returns.
    pub fn revoke_certificates<E>(
        &self,
        issuer: &str,
        serials: &[String],
        reason: &str,
        sign: impl FnOnce(u64, &[CertificateRow]) -> Result<Vec<u8>, E>,
    ) -> Result<Result<Option<SignedCrl>, E>, StoreError> {
        let log_issuer = self.log_issuer();
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = crate::now_ms() as i64;
            let mut changed = 0;
            for serial in serials {
                let revoked = tx.execute(
                    "UPDATE certificates SET revoked_at_ms = ?2, revoke_reason = ?3 WHERE serial = ?1 AND revoked_at_ms IS NULL",
                    params![serial, now, reason],
                )?;
                if let (1, Some(issuer)) = (revoked, log_issuer) {
                    let node_id: String = tx.query_row(
                        "SELECT node_id FROM certificates WHERE serial = ?1",
                        [serial],
                        |r| r.get(0),
                    )?;
                    append_log_entry(&tx, &revoked_entry(serial, &node_id, issuer, now as u64)?)?;
                }
                changed += revoked;
            }
            // No serials means "sign the list again" (the first list, or a refresh before its
            // next update); serials that were all revoked already change nothing.
            if changed == 0 && !serials.is_empty() {
                return Ok(Ok(None));
            }
            let revoked: Vec<CertificateRow> = {
                let mut stmt = tx.prepare(&format!(
                    "{CERT_SELECT} WHERE revoked_at_ms IS NOT NULL ORDER BY serial"
                ))?;
                stmt.query_map([], certificate_row)?.collect::<rusqlite::Result<_>>()?
            };
            let held: Option<i64> = tx
                .query_row("SELECT number FROM crls WHERE issuer = ?1", [issuer], |r| r.get(0))
                .optional()?;
            let number = held.map_or(1, |n| n as u64 + 1);
            let der = match sign(number, &revoked) {
                Ok(der) => der,
                Err(err) => return Ok(Err(err)),
            };
            upsert_crl(&tx, issuer, number, &der)?;
            tx.commit()?;
            Ok(Ok(Some((number, der))))
        })
    }

    /// Stores a verified CRL from `issuer` (fingerprint hex) if it is newer than the one held.
    pub fn save_crl(&self, issuer: &str, number: u64, der: &[u8]) -> Result<(), StoreError> {
        self.with(|c| upsert_crl(c, issuer, number, der))
    }

    /// The CRLs held (DER), one per issuer.
    pub fn crls(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT der FROM crls ORDER BY issuer")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// The stored incremental chunks of a configuration document, in order.
    pub fn config_chunks(&self, doc_id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT bytes FROM config_chunks WHERE doc_id = ?1 ORDER BY seq")?;
            let rows = stmt.query_map([doc_id], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Stores what commits of configuration documents produced, in order, in one transaction
    /// (group commit: one fsync for the batch). Each job is a document's new incremental chunk,
    /// its signed envelopes `(hash, envelope, author MIC)` (each MIC stored once), the view's
    /// changed rows (`None` in the triple deletes one) or, with `all`, every row of the view,
    /// and the view's digest and version.
    pub fn save_config_jobs(&self, jobs: &[ConfigJob]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for job in jobs {
                save_config_job(&tx, job)?;
            }
            tx.commit()
        })
    }

    /// Replaces a document's whole stored view.
    pub fn save_config_view(
        &self,
        doc_id: &str,
        rows: &[ObjectRow],
        digest: &[u8; 32],
        version: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM config_objects WHERE doc_id = ?1", [doc_id])?;
            for row in rows {
                insert_object_row(&tx, doc_id, row)?;
            }
            set_view(&tx, doc_id, digest, version)?;
            tx.commit()
        })
    }

    /// The digest and version a document's stored view corresponds to, if it has one.
    pub fn config_view(&self, doc_id: &str) -> Result<Option<([u8; 32], u64)>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT heads_digest, version FROM config_views WHERE doc_id = ?1",
                [doc_id],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
        })
        .map(|row| {
            row.and_then(|(digest, version)| {
                Some((
                    <[u8; 32]>::try_from(digest.as_slice()).ok()?,
                    version as u64,
                ))
            })
        })
    }

    /// Every stored row of a document's view.
    pub fn config_objects(&self, doc_id: &str) -> Result<Vec<ObjectRow>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT collection, key, value, malformed FROM config_objects WHERE doc_id = ?1",
            )?;
            let rows = stmt.query_map([doc_id], |r| {
                Ok(ObjectRow {
                    collection: r.get(0)?,
                    key: r.get(1)?,
                    value: r.get(2)?,
                    malformed: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    /// The stored envelope of one change and its author's MIC.
    pub fn config_change(&self, hash: &str) -> Result<Option<StoredChange>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT envelope, CASE WHEN length(author_mic) > 0 THEN author_mic
                     ELSE (SELECT der FROM config_mics WHERE fingerprint = mic_fingerprint) END
                 FROM config_changes WHERE hash = ?1",
                [hash],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                    ))
                },
            )
            .optional()
        })
    }

    /// How many chunks a document is stored as.
    pub fn config_chunk_count(&self, doc_id: &str) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM config_chunks WHERE doc_id = ?1",
                [doc_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
    }

    /// Compaction: replaces the chunks up to and including `upto_seq` with `compacted` (a
    /// whole saved document holding at least their changes), in one transaction, so a crash
    /// leaves either the old chunks or the new one. Chunks written after `upto_seq` stay.
    pub fn compact_config(
        &self,
        doc_id: &str,
        upto_seq: i64,
        compacted: &[u8],
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM config_chunks WHERE doc_id = ?1 AND seq <= ?2",
                params![doc_id, upto_seq],
            )?;
            // Take the place of the chunks it replaces, before any later chunk.
            tx.execute(
                "INSERT INTO config_chunks (seq, doc_id, bytes) VALUES (?1, ?2, ?3)",
                params![upto_seq, doc_id, compacted],
            )?;
            tx.commit()
        })
    }

    /// The highest chunk sequence number of a document (0 when none).
    pub fn config_last_chunk(&self, doc_id: &str) -> Result<i64, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM config_chunks WHERE doc_id = ?1",
                [doc_id],
                |r| r.get(0),
            )
        })
    }

    /// The sync state saved for (peer, document, side).
    pub fn config_sync_state(
        &self,
        peer: &str,
        doc_id: &str,
        side: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT state FROM config_sync WHERE peer = ?1 AND doc_id = ?2 AND side = ?3",
                params![peer, doc_id, side],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Saves the sync state for (peer, document, side).
    pub fn save_config_sync_state(
        &self,
        peer: &str,
        doc_id: &str,
        side: &str,
        state: &[u8],
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO config_sync (peer, doc_id, side, state, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (peer, doc_id, side) DO UPDATE SET state = ?4, updated_at_ms = ?5",
                params![peer, doc_id, side, state, crate::now_ms() as i64],
            )
            .map(|_| ())
        })
    }

    /// Remembers anchors' QUIC addresses (`IP:PORT`), replacing the previous set when `replace`.
    pub fn save_anchor_addrs(&self, addrs: &[String], replace: bool) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if replace {
                tx.execute("DELETE FROM anchor_addrs", [])?;
            }
            for addr in addrs {
                tx.execute(
                    "INSERT INTO anchor_addrs (addr, updated_at_ms) VALUES (?1, ?2)
                     ON CONFLICT (addr) DO UPDATE SET updated_at_ms = excluded.updated_at_ms",
                    params![addr, crate::now_ms() as i64],
                )?;
            }
            tx.commit()
        })
    }

    /// Remembered anchor QUIC addresses.
    pub fn anchor_addrs(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT addr FROM anchor_addrs ORDER BY addr")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Authorizes `node_id` to become an anchor (idempotent).
    pub fn request_promotion(&self, node_id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO promotions (node_id, requested_at_ms) VALUES (?1, ?2)",
                params![node_id, crate::now_ms() as i64],
            )
            .map(|_| ())
        })
    }

    /// Promotions: (node id, requested at, completed at), by node id.
    pub fn promotions(&self) -> Result<Vec<(String, u64, Option<u64>)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT node_id, requested_at_ms, completed_at_ms FROM promotions ORDER BY node_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                ))
            })?;
            rows.collect()
        })
    }

    /// Marks a promotion done.
    pub fn complete_promotion(&self, node_id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE promotions SET completed_at_ms = ?2 WHERE node_id = ?1 AND completed_at_ms IS NULL",
                params![node_id, crate::now_ms() as i64],
            )
            .map(|_| ())
        })
    }

    /// This node became an anchor.
    pub fn set_role(&self, role: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("UPDATE identity SET role = ?1 WHERE id = 1", [role])
                .map(|_| ())
        })
    }

    /// Stores a token another anchor created (`origin`), or its revocation. Uses are this
    /// anchor's own count.
    pub fn import_token(&self, row: &TokenRow, origin: &str) -> Result<bool, StoreError> {
        // An expired token admits nobody; importing it would only bring back what garbage
        // collection removed.
        if row.expires_at_ms <= crate::now_ms() {
            return Ok(false);
        }
        self.with(|c| {
            let inserted = c.execute(
                "INSERT OR IGNORE INTO tokens (id, secret_hash, tenant, site, labels, max_uses, uses, expires_at_ms, created_at_ms, revoked_at_ms, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10)",
                params![
                    row.id,
                    &row.secret_hash[..],
                    row.tenant,
                    row.site,
                    serde_json::to_string(&row.labels).unwrap_or_else(|_| "{}".into()),
                    row.max_uses,
                    row.expires_at_ms as i64,
                    row.created_at_ms as i64,
                    row.revoked_at_ms.map(|v| v as i64),
                    origin
                ],
            )?;
            if let Some(at) = row.revoked_at_ms {
                c.execute(
                    "UPDATE tokens SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                    params![row.id, at as i64],
                )?;
            }
            Ok(inserted > 0)
        })
    }

    /// Ids of the tokens this anchor created itself (not imported).
    pub fn own_token_ids(&self) -> Result<HashSet<String>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT id FROM tokens WHERE origin IS NULL")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Replaces the remembered membership and adds `decommissioned` to the deny list, in one
    /// transaction (one fsync, however many nodes changed).
    pub fn save_members(
        &self,
        members: &[(String, String)],
        decommissioned: &[String],
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM members", [])?;
            let now = crate::now_ms() as i64;
            for (id, record) in members {
                tx.execute(
                    "INSERT INTO members (node_id, record, updated_at_ms) VALUES (?1, ?2, ?3)",
                    params![id, record, now],
                )?;
            }
            for id in decommissioned {
                tx.execute(
                    "INSERT OR IGNORE INTO denied_nodes (node_id, reason, at_ms) VALUES (?1, 'decommissioned', ?2)",
                    params![id, now],
                )?;
            }
            tx.commit()
        })
    }

    /// The remembered membership (JSON records).
    pub fn members(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT record FROM members ORDER BY node_id")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Remembers that `node_id` must not be let back in.
    pub fn deny(&self, node_id: &str, reason: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO denied_nodes (node_id, reason, at_ms) VALUES (?1, ?2, ?3)",
                params![node_id, reason, crate::now_ms() as i64],
            )
            .map(|_| ())
        })
    }

    /// Denied node ids.
    pub fn denied(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT node_id FROM denied_nodes ORDER BY node_id")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// The next incarnation number: the clock (`now_ms`) unless that is not above the last one
    /// handed out (the clock stepped back), then one more than it. Durable before it is returned.
    pub fn next_generation(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let last: Option<i64> = tx
                .query_row("SELECT generation FROM incarnation WHERE id = 1", [], |r| r.get(0))
                .optional()?;
            let next = match last {
                Some(last) if last as u64 >= now_ms => last as u64 + 1,
                _ => now_ms,
            };
            tx.execute(
                "INSERT INTO incarnation (id, generation) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET generation = excluded.generation",
                [next as i64],
            )?;
            tx.commit()?;
            Ok(next)
        })
    }

    /// Health check: a small durable write.
    pub fn touch(&self) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO liveness (id, at_ms) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
                [crate::now_ms() as i64],
            )
            .map(|_| ())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The transparency log (anchors): rows of `tlog_entries`, appended in the transaction that
// records the certificate or the revocation they describe.

/// One stored transparency log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogRow {
    /// Its 0-based leaf index.
    pub index: u64,
    /// The canonical leaf bytes ([`nexus_ca::tlog::LogEntry::leaf_bytes`]).
    pub leaf: Vec<u8>,
}

/// Which transparency log entries a read selects (besides its index range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlogLookup {
    /// Every entry.
    All,
    /// Entries of one certificate serial (lowercase hex): its issue, then its revocation.
    Serial(String),
    /// Entries of one node (node id hex).
    NodeId(String),
    /// Entries of one issuer (the CA certificate's SHA-256, lowercase hex).
    Issuer(String),
    /// The entry with this leaf hash.
    LeafHash([u8; 32]),
}

impl Store {
    fn log_issuer(&self) -> Option<[u8; 32]> {
        *self
            .log_issuer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts this anchor's transparency log: from now on every certificate recorded
    /// ([`Store::admit`], [`Store::record_certificate`]) and every revocation
    /// ([`Store::revoke_certificates`]) appends its entry, naming `issuer` (the SHA-256 of the
    /// anchor intermediate's certificate), in the same transaction.
    ///
    /// When the log is still empty, this first logs the certificates recorded before it
    /// existed (the anchor's own from `nexus init`, and any from before this schema version):
    /// an `issued` entry for each, and a `revoked` entry for each revoked one, in the order
    /// they happened. Their timestamps are now, when they were logged. A certificate that
    /// cannot be read is left out (and reported). Returns how many entries that appended.
    pub fn start_transparency_log(&self, issuer: [u8; 32]) -> Result<usize, StoreError> {
        *self
            .log_issuer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(issuer);
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let empty: bool = tx.query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM tlog_entries)",
                [],
                |r| r.get(0),
            )?;
            if !empty {
                return Ok(0);
            }
            let rows: Vec<CertificateRow> = {
                let mut stmt = tx.prepare(&format!("{CERT_SELECT} ORDER BY issued_at_ms, serial"))?;
                stmt.query_map([], certificate_row)?
                    .collect::<rusqlite::Result<_>>()?
            };
            let now = crate::now_ms();
            // (when it happened, issue before revocation, the entry)
            let mut events = Vec::new();
            for row in rows {
                let der = nexus_ca::pem_to_der(&row.cert_pem)
                    .ok()
                    .and_then(|ders| ders.into_iter().next());
                let issued = der.map(|der| nexus_ca::tlog::LogEntry::issued(der, issuer, now));
                let Some(Ok(issued)) = issued else {
                    tracing::warn!(
                        serial = %row.serial,
                        "a recorded certificate cannot be read; it is left out of the transparency log"
                    );
                    continue;
                };
                events.push((row.issued_at_ms, 0, issued));
                if let Some(at) = row.revoked_at_ms {
                    match revoked_entry(&row.serial, &row.node_id, issuer, now) {
                        Ok(entry) => events.push((at, 1, entry)),
                        Err(err) => tracing::warn!(
                            serial = %row.serial,
                            error = %err,
                            "a recorded revocation cannot be logged"
                        ),
                    }
                }
            }
            events.sort_by_key(|(at, order, _)| (*at, *order));
            for (_, _, entry) in &events {
                append_log_entry(&tx, entry)?;
            }
            tx.commit()?;
            Ok(events.len())
        })
    }

    /// Leaf hashes of the transparency log from index `from` on, in index order.
    ///
    /// Reading the whole log goes through the leaf hash index (about 45 bytes a row) rather
    /// than the table, whose rows carry the certificates: a million entries load in seconds.
    pub fn tlog_leaf_hashes(&self, from: u64) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
        self.with(|c| {
            let sql = if from == 0 {
                "SELECT idx, leaf_hash FROM tlog_entries INDEXED BY tlog_entries_leaf_hash WHERE idx >= ?1"
            } else {
                "SELECT idx, leaf_hash FROM tlog_entries WHERE idx >= ?1 ORDER BY idx"
            };
            let mut stmt = c.prepare(sql)?;
            let rows = stmt.query_map([from as i64], |r| {
                let hash: Vec<u8> = r.get(1)?;
                let hash = <[u8; 32]>::try_from(hash).map_err(|bad| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Blob,
                        format!("a leaf hash is {} bytes, not 32", bad.len()).into(),
                    )
                })?;
                Ok((r.get::<_, i64>(0)? as u64, hash))
            })?;
            let mut hashes = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            hashes.sort_unstable_by_key(|(idx, _)| *idx);
            Ok(hashes)
        })
    }

    /// Transparency log entries with index in `start..end` selected by `lookup`, in index
    /// order, at most `limit`.
    pub fn tlog_entries(
        &self,
        lookup: &TlogLookup,
        start: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<TlogRow>, StoreError> {
        let (column, value): (&str, Option<rusqlite::types::Value>) = match lookup {
            TlogLookup::All => ("", None),
            TlogLookup::Serial(s) => ("serial", Some(s.clone().into())),
            TlogLookup::NodeId(s) => ("node_id", Some(s.clone().into())),
            TlogLookup::Issuer(s) => ("issuer", Some(s.clone().into())),
            TlogLookup::LeafHash(h) => ("leaf_hash", Some(h.to_vec().into())),
        };
        let (start, end) = (clamp_i64(start), clamp_i64(end));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c| {
            let read = |r: &rusqlite::Row<'_>| {
                Ok(TlogRow {
                    index: r.get::<_, i64>(0)? as u64,
                    leaf: r.get(1)?,
                })
            };
            match value {
                None => {
                    let mut stmt = c.prepare(
                        "SELECT idx, leaf FROM tlog_entries WHERE idx >= ?1 AND idx < ?2 ORDER BY idx LIMIT ?3",
                    )?;
                    stmt.query_map(params![start, end, limit], read)?.collect()
                }
                Some(value) => {
                    let mut stmt = c.prepare(&format!(
                        "SELECT idx, leaf FROM tlog_entries WHERE {column} = ?4 AND idx >= ?1 AND idx < ?2 ORDER BY idx LIMIT ?3"
                    ))?;
                    stmt.query_map(params![start, end, limit, value], read)?
                        .collect()
                }
            }
        })
    }
}

/// A mirrored log as stored: origin, leaf hashes in order, the newest verified head, and the
/// problem found, if any.
pub type MirroredLog = (
    String,
    Vec<[u8; 32]>,
    Option<nexus_ca::tlog::TreeHead>,
    Option<String>,
);

impl Store {
    /// Every mirrored transparency log.
    pub fn tlog_mirrors(&self) -> Result<Vec<MirroredLog>, StoreError> {
        self.with(|c| {
            let mut heads = c.prepare("SELECT origin, head, broken FROM tlog_mirror_heads")?;
            let heads: Vec<(String, Option<String>, Option<String>)> = heads
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut leaves =
                c.prepare("SELECT leaf FROM tlog_mirror WHERE origin = ?1 ORDER BY idx")?;
            let mut all = Vec::new();
            for (origin, head, broken) in heads {
                let hashes = leaves
                    .query_map([&origin], |r| {
                        Ok(nexus_ca::tlog::leaf_hash(&r.get::<_, Vec<u8>>(0)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let head = head
                    .and_then(|h| serde_json::from_str::<nexus_ca::tlog::SignedTreeHead>(&h).ok())
                    .map(|sth| sth.head);
                all.push((origin, hashes, head, broken));
            }
            Ok(all)
        })
    }

    /// Appends mirrored leaves `start..` of `origin`'s log and, when given, its newest verified
    /// head, in one transaction.
    pub fn append_tlog_mirror(
        &self,
        origin: &str,
        start: u64,
        leaves: &[Vec<u8>],
        head: Option<String>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (i, leaf) in leaves.iter().enumerate() {
                tx.execute(
                    "INSERT INTO tlog_mirror (origin, idx, leaf) VALUES (?1, ?2, ?3)",
                    params![origin, clamp_i64(start + i as u64), leaf],
                )?;
            }
            tx.execute(
                "INSERT INTO tlog_mirror_heads (origin, head, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (origin) DO UPDATE SET head = COALESCE(excluded.head, head),
                     updated_at_ms = excluded.updated_at_ms",
                params![origin, head, crate::now_ms() as i64],
            )?;
            tx.commit()
        })
    }

    /// Records that `origin`'s log was caught inconsistent, with the offending head.
    pub fn mark_tlog_mirror_broken(
        &self,
        origin: &str,
        problem: &str,
        evidence: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tlog_mirror_heads (origin, broken, evidence, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (origin) DO UPDATE SET broken = excluded.broken,
                     evidence = excluded.evidence, updated_at_ms = excluded.updated_at_ms",
                params![origin, problem, evidence, crate::now_ms() as i64],
            )
            .map(|_| ())
        })
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A failure to build a log entry, as an SQLite error so that it rolls back the transaction
/// the entry belongs to (a certificate is never recorded without its entry).
fn log_failure(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(err.into())
}

/// The `revoked` entry for a stored certificate.
fn revoked_entry(
    serial: &str,
    node_id: &str,
    issuer: [u8; 32],
    at_ms: u64,
) -> rusqlite::Result<nexus_ca::tlog::LogEntry> {
    let serial_bytes = hex::decode(serial).map_err(|e| {
        log_failure(format!(
            "the revoked certificate's serial {serial:?} is not hex: {e}"
        ))
    })?;
    let node = node_id
        .parse::<nexus_ca::NodeId>()
        .map_err(|e| log_failure(format!("the revoked certificate's node id: {e}")))?;
    Ok(nexus_ca::tlog::LogEntry::revoked(
        serial_bytes,
        node,
        issuer,
        at_ms,
    ))
}

/// Appends `entry` to the transparency log inside the caller's (immediate) transaction, at the
/// next index; returns that index. A rolled-back transaction takes its index back with it, so
/// indices have no gaps.
fn append_log_entry(c: &Connection, entry: &nexus_ca::tlog::LogEntry) -> rusqlite::Result<u64> {
    let leaf = entry.leaf_bytes().map_err(log_failure)?;
    let hash = nexus_ca::tlog::leaf_hash(&leaf);
    let idx: i64 = c.query_row(
        "SELECT COALESCE(MAX(idx) + 1, 0) FROM tlog_entries",
        [],
        |r| r.get(0),
    )?;
    let kind = match entry.kind {
        nexus_ca::tlog::EntryKind::Issued { .. } => "issued",
        nexus_ca::tlog::EntryKind::Revoked => "revoked",
    };
    c.execute(
        "INSERT INTO tlog_entries (idx, leaf, leaf_hash, kind, serial, node_id, issuer, timestamp_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            idx,
            leaf,
            &hash[..],
            kind,
            entry.serial_hex(),
            entry.node_id.to_string(),
            hex::encode(entry.issuer),
            clamp_i64(entry.timestamp_ms)
        ],
    )?;
    Ok(idx as u64)
}

/// Records a certificate and, when `log_issuer` is set (on an anchor), its `issued` log entry;
/// the caller's transaction makes the two one write.
fn insert_certificate(
    c: &Connection,
    issued: &Enrollment,
    kind: &str,
    token_id: Option<&str>,
    log_issuer: Option<[u8; 32]>,
) -> rusqlite::Result<()> {
    let der = nexus_ca::pem_to_der(&issued.cert_pem)
        .ok()
        .and_then(|ders| ders.into_iter().next());
    let not_after_ms = der
        .as_deref()
        .and_then(|der| nexus_ca::read_mic(der).ok())
        .map_or(0, |mic| mic.not_after_unix.saturating_mul(1000));
    c.execute(
        "INSERT INTO certificates (serial, node_id, kind, token_id, cert_pem, issued_at_ms, not_after_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            issued.serial,
            issued.node_id,
            kind,
            token_id,
            issued.cert_pem,
            crate::now_ms() as i64,
            not_after_ms
        ],
    )?;
    if let Some(issuer) = log_issuer {
        let der = der.ok_or_else(|| {
            log_failure(format!(
                "certificate {} is not PEM and cannot be logged",
                issued.serial
            ))
        })?;
        let entry =
            nexus_ca::tlog::LogEntry::issued(der, issuer, crate::now_ms()).map_err(log_failure)?;
        if entry.serial_hex() != issued.serial || entry.node_id.to_string() != issued.node_id {
            return Err(log_failure(format!(
                "certificate {} is recorded as serial {} of node {}, but it says serial {} of \
                 node {}",
                issued.serial,
                issued.serial,
                issued.node_id,
                entry.serial_hex(),
                entry.node_id
            )));
        }
        append_log_entry(c, &entry)?;
    }
    Ok(())
}

fn upsert_crl(c: &Connection, issuer: &str, number: u64, der: &[u8]) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO crls (issuer, number, der, installed_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (issuer) DO UPDATE SET number = excluded.number, der = excluded.der,
             installed_at_ms = excluded.installed_at_ms
         WHERE excluded.number > crls.number",
        params![issuer, number as i64, der, crate::now_ms() as i64],
    )
    .map(|_| ())
}

/// A stored configuration change: its signed envelope and its author's MIC (DER).
pub type StoredChange = (Vec<u8>, Vec<u8>);

/// A CRL number and the list's DER.
pub type SignedCrl = (u64, Vec<u8>);

/// A certificate an anchor issued, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRow {
    /// Serial, lowercase hex.
    pub serial: String,
    /// The node it certifies.
    pub node_id: String,
    /// `anchor`, `join`, `renewal` or `csr`.
    pub kind: String,
    /// The join token used, for joins.
    pub token_id: Option<String>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// When it was issued, unix ms.
    pub issued_at_ms: u64,
    /// notAfter, unix ms.
    pub not_after_ms: u64,
    /// When it was revoked, unix ms.
    pub revoked_at_ms: Option<u64>,
    /// Why.
    pub revoke_reason: Option<String>,
}

const CERT_SELECT: &str = "SELECT serial, node_id, kind, token_id, cert_pem, issued_at_ms, not_after_ms, revoked_at_ms, revoke_reason FROM certificates";

fn certificate_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertificateRow> {
    Ok(CertificateRow {
        serial: r.get(0)?,
        node_id: r.get(1)?,
        kind: r.get(2)?,
        token_id: r.get(3)?,
        cert_pem: r.get(4)?,
        issued_at_ms: r.get::<_, i64>(5)? as u64,
        not_after_ms: r.get::<_, i64>(6)? as u64,
        revoked_at_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        revoke_reason: r.get(8)?,
    })
}

const TOKEN_SELECT: &str = "SELECT id, secret_hash, tenant, site, labels, max_uses, uses, expires_at_ms, created_at_ms, revoked_at_ms FROM tokens";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    let hash: Vec<u8> = r.get(1)?;
    let mut secret_hash = [0u8; 32];
    if hash.len() == 32 {
        secret_hash.copy_from_slice(&hash);
    }
    Ok(TokenRow {
        id: r.get(0)?,
        secret_hash,
        tenant: r.get(2)?,
        site: r.get(3)?,
        labels: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        max_uses: r.get(5)?,
        uses: r.get(6)?,
        expires_at_ms: r.get::<_, i64>(7)? as u64,
        created_at_ms: r.get::<_, i64>(8)? as u64,
        revoked_at_ms: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
    })
}

/// Garbage collection of this node's own records (each node sweeps its own file).
impl Store {
    /// Deletes join tokens that expired before `before_ms` (they can admit nobody); the count.
    pub fn delete_tokens_expired_before(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM tokens WHERE expires_at_ms < ?1",
                params![before_ms as i64],
            )
        })
    }

    /// Deletes certificate records that expired before `before_ms`, except each node's newest
    /// (what the fleet records about a node comes from it); the count.
    pub fn delete_certificates_expired_before(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM certificates WHERE not_after_ms > 0 AND not_after_ms < ?1
                   AND issued_at_ms < (SELECT MAX(issued_at_ms) FROM certificates newest
                                       WHERE newest.node_id = certificates.node_id)",
                params![before_ms as i64],
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Usage metering (see `crate::usage`): this node's own rows, what each anchor acknowledged, and
// on anchors the roll-up of every node's rows.

fn usage_counters(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<UsageCounters> {
    let get = |i: usize| r.get::<_, i64>(first + i).map(|v| v.max(0) as u64);
    Ok(UsageCounters {
        bytes: get(0)?,
        connections: get(1)?,
        api_calls: get(2)?,
        node_seconds: get(3)?,
    })
}

/// Merges `row` into `usage_rollup` inside the caller's transaction (per-field max); whether it
/// was a new row.
fn merge_rollup_row(
    tx: &rusqlite::Transaction<'_>,
    row: &UsageRow,
    now_ms: u64,
) -> rusqlite::Result<bool> {
    let c = &row.counters;
    let values = params![
        row.tenant,
        clamp_i64(row.hour_ms),
        row.node_id,
        clamp_i64(c.bytes),
        clamp_i64(c.connections),
        clamp_i64(c.api_calls),
        clamp_i64(c.node_seconds),
        clamp_i64(now_ms)
    ];
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO usage_rollup (tenant, hour_ms, node_id, bytes, connections,
                 api_calls, node_seconds, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(values)?;
    if inserted == 0 {
        tx.prepare_cached(
            "UPDATE usage_rollup SET bytes = max(bytes, ?4), connections = max(connections, ?5),
                 api_calls = max(api_calls, ?6), node_seconds = max(node_seconds, ?7),
                 updated_at_ms = ?8
             WHERE tenant = ?1 AND hour_ms = ?2 AND node_id = ?3
               AND (bytes < ?4 OR connections < ?5 OR api_calls < ?6 OR node_seconds < ?7)",
        )?
        .execute(values)?;
    }
    Ok(inserted > 0)
}

impl Store {
    /// This node's own usage rows of hours from `since_hour_ms` on (what a restarted meter
    /// continues), as rows of `node_id`.
    pub fn usage_local_since(
        &self,
        node_id: &str,
        since_hour_ms: u64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT tenant, hour_ms, bytes, connections, api_calls, node_seconds
                 FROM usage_local WHERE hour_ms >= ?1 ORDER BY tenant, hour_ms",
            )?;
            stmt.query_map([clamp_i64(since_hour_ms)], |r| {
                Ok(UsageRow {
                    node_id: node_id.to_string(),
                    tenant: r.get(0)?,
                    hour_ms: r.get::<_, i64>(1)?.max(0) as u64,
                    counters: usage_counters(r, 2)?,
                })
            })?
            .collect()
        })
    }

    /// Stores this node's rows (cumulative values, merged by per-field max with what is
    /// stored, so a row never shrinks) in one transaction, numbering each changed row; with
    /// `rollup` (an anchor) also merges them into the roll-up. Returns how many rows were new
    /// to the roll-up.
    pub fn save_usage(&self, rows: &[UsageRow], rollup: bool) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut seq: i64 =
                tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM usage_local", [], |r| {
                    r.get(0)
                })?;
            let mut new = 0;
            for row in rows {
                let c = &row.counters;
                seq += 1;
                tx.prepare_cached(
                    "INSERT INTO usage_local (tenant, hour_ms, bytes, connections, api_calls,
                         node_seconds, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (tenant, hour_ms) DO UPDATE SET
                         bytes = max(bytes, excluded.bytes),
                         connections = max(connections, excluded.connections),
                         api_calls = max(api_calls, excluded.api_calls),
                         node_seconds = max(node_seconds, excluded.node_seconds),
                         seq = excluded.seq",
                )?
                .execute(params![
                    row.tenant,
                    clamp_i64(row.hour_ms),
                    clamp_i64(c.bytes),
                    clamp_i64(c.connections),
                    clamp_i64(c.api_calls),
                    clamp_i64(c.node_seconds),
                    seq
                ])?;
                if rollup && merge_rollup_row(&tx, row, crate::now_ms())? {
                    new += 1;
                }
            }
            tx.commit()?;
            Ok(new)
        })
    }

    /// This node's rows changed since `anchor` last acknowledged, oldest change first, at most
    /// `limit`, each with its change number.
    pub fn usage_unreported(
        &self,
        node_id: &str,
        anchor: &str,
        limit: usize,
    ) -> Result<Vec<(u64, UsageRow)>, StoreError> {
        self.with(|c| {
            let through: i64 = c
                .query_row(
                    "SELECT through FROM usage_acks WHERE anchor = ?1",
                    [anchor],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let mut stmt = c.prepare_cached(
                "SELECT seq, tenant, hour_ms, bytes, connections, api_calls, node_seconds
                 FROM usage_local WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            stmt.query_map(params![through, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?.max(0) as u64,
                    UsageRow {
                        node_id: node_id.to_string(),
                        tenant: r.get(1)?,
                        hour_ms: r.get::<_, i64>(2)?.max(0) as u64,
                        counters: usage_counters(r, 3)?,
                    },
                ))
            })?
            .collect()
        })
    }

    /// Records that `anchor` holds this node's rows through change `through`.
    pub fn usage_acknowledged(&self, anchor: &str, through: u64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO usage_acks (anchor, through) VALUES (?1, ?2)
                 ON CONFLICT (anchor) DO UPDATE SET through = max(through, excluded.through)",
                params![anchor, clamp_i64(through)],
            )
            .map(|_| ())
        })
    }

    /// Anchors: merges reported rows into the roll-up (per-field max) in one transaction;
    /// how many rows were new.
    pub fn merge_usage(&self, rows: &[UsageRow]) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = crate::now_ms();
            let mut new = 0;
            for row in rows {
                if merge_rollup_row(&tx, row, now)? {
                    new += 1;
                }
            }
            tx.commit()?;
            Ok(new)
        })
    }

    /// Anchors: `tenant`'s sums per period of `range` (periods with rows only) and the
    /// distinct nodes that ran over the range (rows with node-seconds).
    pub fn usage_totals(
        &self,
        tenant: &str,
        range: &UsageRange,
    ) -> Result<(Vec<PeriodTotals>, u64), StoreError> {
        self.with(|c| {
            let period = range.granularity.period_ms() as i64;
            let bounds = params![
                tenant,
                clamp_i64(range.from_ms),
                clamp_i64(range.to_ms),
                period
            ];
            let mut stmt = c.prepare_cached(
                "SELECT hour_ms - hour_ms % ?4 AS period, SUM(bytes), SUM(connections),
                     SUM(api_calls), SUM(node_seconds),
                     COUNT(DISTINCT CASE WHEN node_seconds > 0 THEN node_id END)
                 FROM usage_rollup WHERE tenant = ?1 AND hour_ms >= ?2 AND hour_ms < ?3
                 GROUP BY period ORDER BY period",
            )?;
            let periods = stmt
                .query_map(bounds, |r| {
                    Ok(PeriodTotals {
                        period_start_ms: r.get::<_, i64>(0)?.max(0) as u64,
                        counters: usage_counters(r, 1)?,
                        nodes: r.get::<_, i64>(5)?.max(0) as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let nodes: i64 = c.query_row(
                "SELECT COUNT(DISTINCT node_id) FROM usage_rollup
                 WHERE tenant = ?1 AND hour_ms >= ?2 AND hour_ms < ?3 AND node_seconds > 0",
                params![tenant, clamp_i64(range.from_ms), clamp_i64(range.to_ms)],
                |r| r.get(0),
            )?;
            Ok((periods, nodes.max(0) as u64))
        })
    }

    /// Anchors: rows in the roll-up.
    pub fn usage_rollup_rows(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_row("SELECT COUNT(*) FROM usage_rollup", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
        })
    }

    /// Deletes usage rows of hours before `before_hour_ms`: the roll-up's (anchors' retention)
    /// and this node's own rows every anchor it reported to holds (`anchors`); returns the
    /// roll-up rows deleted.
    pub fn prune_usage_before(
        &self,
        before_hour_ms: u64,
        anchors: &[String],
    ) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let rollup = tx.execute(
                "DELETE FROM usage_rollup WHERE hour_ms < ?1",
                [clamp_i64(before_hour_ms)],
            )?;
            let mut acked = i64::MAX;
            for anchor in anchors {
                let through: i64 = tx
                    .query_row(
                        "SELECT through FROM usage_acks WHERE anchor = ?1",
                        [anchor],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                acked = acked.min(through);
            }
            tx.execute(
                "DELETE FROM usage_local WHERE hour_ms < ?1 AND seq <= ?2",
                params![clamp_i64(before_hour_ms), acked],
            )?;
            tx.commit()?;
            Ok(rollup)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, max_uses: u32) -> TokenRow {
        TokenRow {
            id: id.into(),
            secret_hash: [7; 32],
            tenant: "default".into(),
            site: None,
            labels: BTreeMap::new(),
            max_uses,
            uses: 0,
            expires_at_ms: crate::now_ms() + 60_000,
            created_at_ms: crate::now_ms(),
            revoked_at_ms: None,
        }
    }

    #[test]
    fn migrations_are_idempotent_and_data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nexus.db");
        {
            let store = Store::open(&path).unwrap();
            store.insert_token(&token("t1", 2)).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.tokens().unwrap().len(), 1);
    }

    #[test]
    fn admission_counts_uses_atomically_and_a_refusal_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nexus.db")).unwrap();
        store.insert_token(&token("t1", 1)).unwrap();
        let refused: Result<(), &str> = store.admit("t1", |_| Err("no")).unwrap();
        assert_eq!(refused, Err("no"));
        assert_eq!(store.tokens().unwrap()[0].uses, 0);
        let admitted: Result<u8, &str> = store
            .admit("t1", |row| {
                assert_eq!(row.unwrap().uses, 0);
                let enrollment = Enrollment {
                    serial: "01".into(),
                    node_id: "n1".into(),
                    cert_pem: "pem".into(),
                };
                Ok((1, enrollment))
            })
            .unwrap();
        assert_eq!(admitted, Ok(1));
        assert_eq!(store.tokens().unwrap()[0].uses, 1);
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nexus.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer nexus"), "{err}");
    }

    #[test]
    fn generations_only_go_up_even_when_the_clock_steps_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nexus.db")).unwrap();
        assert_eq!(store.next_generation(1_000).unwrap(), 1_000);
        assert_eq!(store.next_generation(5_000).unwrap(), 5_000);
        assert_eq!(
            store.next_generation(4_000).unwrap(),
            5_001,
            "clock stepped back"
        );
        assert_eq!(store.next_generation(5_001).unwrap(), 5_002);
        drop(store);
        let store = Store::open(&dir.path().join("nexus.db")).unwrap();
        assert_eq!(
            store.next_generation(10).unwrap(),
            5_003,
            "survives a restart"
        );
    }
}

#[cfg(test)]
mod transparency_tests {
    use nexus_ca::tlog::{EntryKind, LogEntry};
    use nexus_ca::{CertificateAuthority, MicProfile, NodeKey, Role};

    use super::*;

    fn anchor_ca() -> CertificateAuthority {
        let root = CertificateAuthority::new_fleet_root("tlog").unwrap();
        root.new_intermediate("tlog", NodeKey::generate().node_id())
            .unwrap()
    }

    fn issue(ca: &CertificateAuthority) -> Enrollment {
        let node = NodeKey::generate();
        let profile = MicProfile {
            fleet_id: "tlog".into(),
            node_id: node.node_id(),
            tenant: "default".into(),
            site: "lab".into(),
            role: Role::Node,
            validity: std::time::Duration::from_secs(3600),
        };
        let der = ca.issue_mic(&node.public_key(), &profile).unwrap();
        Enrollment {
            serial: nexus_ca::read_mic(&der).unwrap().serial_hex,
            node_id: node.node_id().to_string(),
            cert_pem: nexus_ca::der_to_pem(&der),
        }
    }

    fn entries(store: &Store) -> Vec<LogEntry> {
        store
            .tlog_entries(&TlogLookup::All, 0, u64::MAX, usize::MAX)
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, row)| {
                assert_eq!(row.index, i as u64, "indices have no gaps");
                LogEntry::from_leaf_bytes(&row.leaf).unwrap()
            })
            .collect()
    }

    impl Store {
        /// Appends `n` synthetic entries in one transaction (for load-time measurements).
        pub(crate) fn fill_tlog_for_test(&self, n: u64, leaf: impl Fn(u64) -> Vec<u8>) {
            self.with(|c| {
                let tx = c.transaction()?;
                {
                    let mut insert = tx.prepare(
                        "INSERT INTO tlog_entries (idx, leaf, leaf_hash, kind, serial, node_id, issuer, timestamp_ms)
                         VALUES (?1, ?2, ?3, 'issued', ?4, ?5, ?6, ?1)",
                    )?;
                    for i in 0..n {
                        let leaf = leaf(i);
                        let hash = nexus_ca::tlog::leaf_hash(&leaf);
                        insert.execute(params![
                            i as i64,
                            leaf,
                            &hash[..],
                            format!("{i:016x}"),
                            format!("{:032x}", i % 1000),
                            hex::encode([1; 32])
                        ])?;
                    }
                }
                tx.commit()
            })
            .unwrap();
        }
    }

    fn crl(_: u64, _: &[CertificateRow]) -> Result<Vec<u8>, &'static str> {
        Ok(vec![0x30, 0x00])
    }

    #[test]
    fn every_issue_and_revocation_is_logged_in_its_own_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nexus.db")).unwrap();
        let ca = anchor_ca();
        let issuer = ca.fingerprint();
        assert_eq!(store.start_transparency_log(issuer).unwrap(), 0);
        store
            .insert_token(&TokenRow {
                id: "t1".into(),
                secret_hash: [7; 32],
                tenant: "default".into(),
                site: None,
                labels: BTreeMap::new(),
                max_uses: 3,
                uses: 0,
                expires_at_ms: crate::now_ms() + 60_000,
                created_at_ms: crate::now_ms(),
                revoked_at_ms: None,
            })
            .unwrap();

        // A refused admission writes no entry.
        let refused: Result<(), &str> = store.admit("t1", |_| Err("no")).unwrap();
        assert_eq!(refused, Err("no"));
        assert!(entries(&store).is_empty());

        let joined = issue(&ca);
        let admitted: Result<(), &str> = store.admit("t1", |_| Ok(((), joined.clone()))).unwrap();
        assert_eq!(admitted, Ok(()));
        let log = entries(&store);
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].serial_hex(), joined.serial);
        assert_eq!(log[0].node_id.to_string(), joined.node_id);
        assert_eq!(log[0].issuer, issuer);
        let EntryKind::Issued { certificate_der } = &log[0].kind else {
            panic!("not an issued entry: {:?}", log[0]);
        };
        assert_eq!(
            nexus_ca::der_to_pem(certificate_der),
            joined.cert_pem,
            "the leaf holds the certificate"
        );

        // A certificate that cannot be logged is not recorded either, nor the token used.
        let unreadable = Enrollment {
            cert_pem: "not a certificate".into(),
            ..issue(&ca)
        };
        let err = store
            .admit("t1", |_| Ok::<_, ()>(((), unreadable.clone())))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be logged"), "{err}");
        assert!(store.certificate(&unreadable.serial).unwrap().is_none());
        assert_eq!(store.tokens().unwrap()[0].uses, 1);
        let mislabelled = Enrollment {
            serial: "01".into(),
            ..issue(&ca)
        };
        assert!(store.record_certificate(&mislabelled, "csr").is_err());
        assert!(store.certificate("01").unwrap().is_none());
        assert_eq!(entries(&store).len(), 1);

        let renewed = issue(&ca);
        store.record_certificate(&renewed, "renewal").unwrap();
        assert_eq!(entries(&store).len(), 2);

        // A revocation whose CRL cannot be signed revokes nothing and logs nothing.
        let failed = store
            .revoke_certificates(
                &hex::encode(issuer),
                std::slice::from_ref(&joined.serial),
                "unspecified",
                |_, _| Err::<Vec<u8>, _>("token unplugged"),
            )
            .unwrap();
        assert_eq!(failed, Err("token unplugged"));
        assert!(
            store
                .certificate(&joined.serial)
                .unwrap()
                .unwrap()
                .revoked_at_ms
                .is_none()
        );
        assert_eq!(entries(&store).len(), 2);

        let serials = [joined.serial.clone(), "ffff".to_string()];
        let done = store
            .revoke_certificates(&hex::encode(issuer), &serials, "unspecified", crl)
            .unwrap()
            .unwrap();
        assert!(done.is_some());
        let log = entries(&store);
        assert_eq!(log.len(), 3, "one entry per serial actually revoked");
        assert_eq!(log[2].kind, EntryKind::Revoked);
        assert_eq!(log[2].serial_hex(), joined.serial);
        assert_eq!(log[2].node_id.to_string(), joined.node_id);
        assert_eq!(
            Some(log[2].timestamp_ms),
            store
                .certificate(&joined.serial)
                .unwrap()
                .unwrap()
                .revoked_at_ms
        );

        // Revoking again changes nothing and logs nothing; a fresh CRL logs nothing.
        let again = store
            .revoke_certificates(
                &hex::encode(issuer),
                std::slice::from_ref(&joined.serial),
                "unspecified",
                crl,
            )
            .unwrap()
            .unwrap();
        assert!(again.is_none());
        store
            .revoke_certificates(&hex::encode(issuer), &[], "unspecified", crl)
            .unwrap()
            .unwrap();
        assert_eq!(entries(&store).len(), 3);

        // Lookups.
        let by_serial = store
            .tlog_entries(&TlogLookup::Serial(joined.serial.clone()), 0, u64::MAX, 10)
            .unwrap();
        assert_eq!(
            by_serial.iter().map(|r| r.index).collect::<Vec<_>>(),
            [0, 2]
        );
        let by_node = store
            .tlog_entries(
                &TlogLookup::NodeId(renewed.node_id.clone()),
                0,
                u64::MAX,
                10,
            )
            .unwrap();
        assert_eq!(by_node.iter().map(|r| r.index).collect::<Vec<_>>(), [1]);
        let by_issuer = store
            .tlog_entries(&TlogLookup::Issuer(hex::encode(issuer)), 1, 3, 1)
            .unwrap();
        assert_eq!(by_issuer.iter().map(|r| r.index).collect::<Vec<_>>(), [1]);
        let hashes = store.tlog_leaf_hashes(0).unwrap();
        assert_eq!(hashes.len(), 3);
        assert_eq!(store.tlog_leaf_hashes(2).unwrap(), hashes[2..]);
        let by_hash = store
            .tlog_entries(&TlogLookup::LeafHash(hashes[1].1), 0, u64::MAX, 10)
            .unwrap();
        assert_eq!(by_hash.iter().map(|r| r.index).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn certificates_recorded_before_the_log_started_are_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nexus.db");
        let ca = anchor_ca();
        let (own, other) = (issue(&ca), issue(&ca));
        {
            // `nexus init` and an older version: no log yet.
            let store = Store::open(&path).unwrap();
            store.record_certificate(&own, "anchor").unwrap();
            store.record_certificate(&other, "csr").unwrap();
            store
                .revoke_certificates("x", std::slice::from_ref(&other.serial), "unspecified", crl)
                .unwrap()
                .unwrap();
            assert!(entries(&store).is_empty());
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.start_transparency_log(ca.fingerprint()).unwrap(), 3);
        let log = entries(&store);
        let revoked = log
            .iter()
            .position(|e| e.kind == EntryKind::Revoked)
            .unwrap();
        assert_eq!(log[revoked].serial_hex(), other.serial);
        let issued = log
            .iter()
            .position(|e| e.serial_hex() == other.serial)
            .unwrap();
        assert!(issued < revoked, "an issue is logged before its revocation");
        assert!(log.iter().any(|e| e.serial_hex() == own.serial));
        drop(store);

        let store = Store::open(&path).unwrap();
        assert_eq!(store.start_transparency_log(ca.fingerprint()).unwrap(), 0);
        assert_eq!(entries(&store), log, "a restart changes nothing");
    }
}
