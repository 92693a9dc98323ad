//! The node's SQLite file: identity, join tokens (hashes only), API key hashes, enrollments,
//! seeds, the last known membership and the deny list.
//!
//! WAL with `synchronous=FULL`: a write acknowledged to a caller is on disk. Migrations are
//! versioned in code through `PRAGMA user_version`; each runs in one transaction.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

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
];

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
    /// and issue the certificate, then records the use and the enrollment. Either all of it is on
    /// disk, or nothing is.
    pub fn admit<T, E>(
        &self,
        token_id: &str,
        decide: impl FnOnce(Option<&TokenRow>) -> Result<(T, Enrollment), E>,
    ) -> Result<Result<T, E>, StoreError> {
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
            insert_certificate(&tx, &enrollment, "join", Some(token_id))?;
            tx.commit()?;
            Ok(Ok(value))
        })
    }

    /// Records a certificate this anchor issued outside a join (its own, a renewal, a CSR).
    pub fn record_certificate(&self, issued: &Enrollment, kind: &str) -> Result<(), StoreError> {
        self.with(|c| insert_certificate(c, issued, kind, None))
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
    /// and stores the anchor's next CRL with `sign(number, all revoked)`. Serials already revoked
    /// keep their first revocation. Returns the new CRL number and DER, or `None` when nothing
    /// changed; an empty `serials` always signs a new list. Durable before it returns.
    pub fn revoke_certificates<E>(
        &self,
        issuer: &str,
        serials: &[String],
        reason: &str,
        sign: impl FnOnce(u64, &[CertificateRow]) -> Result<Vec<u8>, E>,
    ) -> Result<Result<Option<SignedCrl>, E>, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = crate::now_ms() as i64;
            let mut changed = 0;
            for serial in serials {
                changed += tx.execute(
                    "UPDATE certificates SET revoked_at_ms = ?2, revoke_reason = ?3 WHERE serial = ?1 AND revoked_at_ms IS NULL",
                    params![serial, now, reason],
                )?;
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

fn insert_certificate(
    c: &Connection,
    issued: &Enrollment,
    kind: &str,
    token_id: Option<&str>,
) -> rusqlite::Result<()> {
    let not_after_ms = nexus_ca::pem_to_der(&issued.cert_pem)
        .ok()
        .and_then(|ders| nexus_ca::read_mic(ders.first()?).ok())
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
    )
    .map(|_| ())
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
