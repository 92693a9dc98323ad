//! An anchor's certificate transparency log at run time: the RFC 6962 tree
//! ([`nexus_ca::tlog::MerkleLog`]) over the entries in the store, signed tree heads, entries,
//! and inclusion and consistency proofs, as the API serves them.
//!
//! **Architecture invariant:** the store is the log. An entry is written in the SQLite
//! transaction that records the certificate or the revocation it describes
//! ([`Store::start_transparency_log`]), so nothing is issued or revoked without its entry and
//! no entry exists for something that was not. The tree here is only a cache of the stored leaf
//! hashes: it is loaded at start (leaf hashes only, so a million entries take seconds) and
//! catches up with the store before every answer, so it can never show more than is durable,
//! and whoever wrote the rows (join, renewal, CSR, revocation) needs no hook into it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nexus_api::ApiError;
use nexus_api::wire::{
    ConsistencyProof, InclusionProof, InclusionTarget, SignedTreeHead, TransparencyEntries,
    TransparencyEntry, TransparencyLookup,
};
use nexus_ca::tlog::{self, EntryKind, LogEntry, MerkleLog, TlogError};
use nexus_ca::{CertificateAuthority, NodeId};

use crate::store::{Store, StoreError, TlogLookup, TlogRow};

/// How long a signed tree head is served before it is signed again with a fresh timestamp
/// (sooner when the log grows). Bounds how often readers make the anchor's CA key sign, which
/// may be a hardware token.
const STH_MAX_AGE: Duration = Duration::from_secs(60);

/// Errors of the transparency log. None of them changes the log.
#[derive(Debug, thiserror::Error)]
pub enum TransparencyError {
    /// A request parameter the log cannot answer (a size beyond it, an entry outside the
    /// tree asked about). The message names the parameter.
    #[error("{message}")]
    BadParameter {
        /// The query parameter.
        param: &'static str,
        /// What was wrong and what to ask instead.
        message: String,
    },
    /// The log holds no such entry.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored log does not add up (a missing index, a leaf that does not decode or does
    /// not match its hash).
    #[error(
        "the transparency log in the database is inconsistent: {0}; restore the database from a \
         backup"
    )]
    Damaged(String),
    /// The anchor's CA could not sign the tree head.
    #[error("cannot sign the transparency log's tree head: {0}")]
    Sign(TlogError),
}

impl From<TransparencyError> for ApiError {
    fn from(err: TransparencyError) -> ApiError {
        match &err {
            TransparencyError::BadParameter { .. } => ApiError::bad_request(err.to_string()),
            TransparencyError::NotFound(_) => ApiError::not_found(err.to_string()),
            TransparencyError::Sign(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "signing_unavailable",
                err.to_string(),
            ),
            TransparencyError::Store(_) | TransparencyError::Damaged(_) => {
                ApiError::internal(err.to_string())
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One anchor's transparency log.
pub struct Transparency {
    /// A std mutex: every use is short and inside `spawn_blocking`, never across an await.
    log: Mutex<MerkleLog>,
    store: Arc<Store>,
    ca: Arc<CertificateAuthority>,
    log_id: String,
    /// The last head signed and when, re-used for [`STH_MAX_AGE`] while the log stays the same.
    head: Mutex<Option<(tlog::SignedTreeHead, Instant)>>,
}

impl Transparency {
    /// Starts the log of the anchor `anchor` whose intermediate CA is `ca`: from now on the
    /// store logs every certificate and revocation (logging, the first time, those recorded
    /// before), and the tree is loaded. Blocks: call it off the async runtime.
    pub fn open(
        store: Arc<Store>,
        ca: Arc<CertificateAuthority>,
        anchor: NodeId,
    ) -> Result<Transparency, TransparencyError> {
        let started = Instant::now();
        let backfilled = store.start_transparency_log(ca.fingerprint())?;
        let transparency = Transparency {
            log: Mutex::new(MerkleLog::new()),
            store,
            ca,
            log_id: format!("nexus-tlog/{anchor}"),
            head: Mutex::new(None),
        };
        let size = transparency.synced()?.len();
        tracing::info!(
            log_id = %transparency.log_id,
            size,
            backfilled,
            load_ms = started.elapsed().as_millis() as u64,
            "transparency log loaded"
        );
        Ok(transparency)
    }

    /// The tree, caught up with every entry committed to the store.
    fn synced(&self) -> Result<MutexGuard<'_, MerkleLog>, TransparencyError> {
        let mut log = lock(&self.log);
        let rows = self.store.tlog_leaf_hashes(log.len())?;
        if log.is_empty() && rows.len() > 1 {
            *log = MerkleLog::with_capacity(rows.len());
        }
        for (index, hash) in rows {
            if index != log.len() {
                return Err(TransparencyError::Damaged(format!(
                    "the entry after index {} has index {index}",
                    log.len() as i128 - 1
                )));
            }
            log.append_leaf_hash(hash);
        }
        metrics::gauge!("nexus_transparency_log_entries").set(log.len() as f64);
        Ok(log)
    }

    /// The signed tree head of the log as it is now.
    pub fn signed_head(&self) -> Result<SignedTreeHead, TransparencyError> {
        let sth = self.current_head()?;
        self.wire_head(&sth)
    }

    /// Leaves `start..` (at most `max`) and the signed head they belong to, for anchors that
    /// mirror this log.
    pub fn page(&self, start: u64, max: u32) -> Result<crate::mirror::TlogPage, TransparencyError> {
        let head = self.current_head()?;
        let end = start.saturating_add(u64::from(max)).min(head.head.size);
        let rows = if start < end {
            self.store
                .tlog_entries(&TlogLookup::All, start, end, max as usize)?
        } else {
            Vec::new()
        };
        Ok(crate::mirror::TlogPage {
            head,
            signer_der: STANDARD.encode(self.ca.cert_der()),
            leaves: rows.iter().map(|r| STANDARD.encode(&r.leaf)).collect(),
        })
    }

    /// Proof that the MIC with `serial` is in this log: its `issued` leaf, the audit path and
    /// the signed head they reproduce.
    pub fn prove(&self, serial: &str) -> Result<crate::mirror::LogProof, TransparencyError> {
        let head = self.current_head()?;
        let proof = self.inclusion(
            &nexus_api::wire::InclusionTarget::Serial {
                serial: serial.to_string(),
                kind: "issued".to_string(),
            },
            Some(head.head.size),
        )?;
        let row = self
            .store
            .tlog_entries(&TlogLookup::All, proof.leaf_index, proof.leaf_index + 1, 1)?
            .pop()
            .ok_or_else(|| TransparencyError::NotFound(format!("entry {}", proof.leaf_index)))?;
        Ok(crate::mirror::LogProof {
            head,
            signer_der: STANDARD.encode(self.ca.cert_der()),
            index: proof.leaf_index,
            leaf: STANDARD.encode(&row.leaf),
            audit_path: proof.audit_path,
        })
    }

    fn current_head(&self) -> Result<tlog::SignedTreeHead, TransparencyError> {
        let head = {
            let log = self.synced()?;
            let cached = lock(&self.head);
            match &*cached {
                Some((sth, at)) if sth.head.size == log.len() && at.elapsed() < STH_MAX_AGE => {
                    return Ok(sth.clone());
                }
                _ => log.tree_head(self.log_id.clone(), crate::now_ms()),
            }
        };
        // Signed without the tree locked: a token may take a while.
        let sth = self
            .ca
            .sign_tree_head(head)
            .map_err(TransparencyError::Sign)?;
        let mut cached = lock(&self.head);
        let newer = cached
            .as_ref()
            .is_none_or(|(held, _)| held.head.size <= sth.head.size);
        if newer {
            *cached = Some((sth.clone(), Instant::now()));
        }
        Ok(sth)
    }

    fn wire_head(&self, sth: &tlog::SignedTreeHead) -> Result<SignedTreeHead, TransparencyError> {
        let input = sth.head.signing_input().map_err(TransparencyError::Sign)?;
        Ok(SignedTreeHead {
            log_id: sth.head.log_id.clone(),
            size: sth.head.size,
            root: hex::encode(sth.head.root),
            timestamp_ms: sth.head.timestamp_ms,
            signature: hex::encode(sth.signature),
            signing_input: hex::encode(input),
            signature_algorithm: "ed25519".to_string(),
            public_key: hex::encode(self.ca.public_key()),
            signer_fingerprint: hex::encode(self.ca.fingerprint()),
            signer_certificate_pem: self.ca.cert_pem(),
        })
    }

    /// Entries `start..end` (`end` defaults to, and is capped at, the log's size) selected by
    /// `lookup`, at most `limit`.
    pub fn entries(
        &self,
        lookup: &TransparencyLookup,
        start: u64,
        end: Option<u64>,
        limit: usize,
    ) -> Result<TransparencyEntries, TransparencyError> {
        let log = self.synced()?;
        let size = log.len();
        if start > size {
            return Err(TransparencyError::BadParameter {
                param: "start",
                message: format!(
                    "start ({start}) is beyond the log, which has {size} entries: valid starts \
                     are 0 to {size}"
                ),
            });
        }
        let end = end.map_or(size, |end| end.min(size));
        let lookup = match lookup {
            TransparencyLookup::All => TlogLookup::All,
            TransparencyLookup::Serial(s) => TlogLookup::Serial(s.clone()),
            TransparencyLookup::NodeId(s) => TlogLookup::NodeId(s.clone()),
            TransparencyLookup::Issuer(s) => TlogLookup::Issuer(s.clone()),
        };
        let mut rows = self
            .store
            .tlog_entries(&lookup, start, end, limit.saturating_add(1))?;
        let next_start = if rows.len() > limit {
            rows.truncate(limit + 1);
            rows.pop().map(|extra| extra.index)
        } else {
            None
        };
        let entries = rows
            .iter()
            .map(|row| wire_entry(&log, row))
            .collect::<Result<_, _>>()?;
        Ok(TransparencyEntries {
            tree_size: size,
            entries,
            next_start,
        })
    }

    /// The audit path of the entry `target` in the tree of `size` entries (default: all).
    pub fn inclusion(
        &self,
        target: &InclusionTarget,
        size: Option<u64>,
    ) -> Result<InclusionProof, TransparencyError> {
        let log = self.synced()?;
        let size = checked_size("size", size, log.len())?;
        let (index, what) = match target {
            InclusionTarget::Serial { serial, kind } => {
                let rows = self.store.tlog_entries(
                    &TlogLookup::Serial(serial.clone()),
                    0,
                    u64::MAX,
                    16,
                )?;
                let mut found = None;
                for row in &rows {
                    let entry = decode(row)?;
                    let is_issued = matches!(entry.kind, EntryKind::Issued { .. });
                    if is_issued == (kind == "issued") {
                        found = Some(row.index);
                        break;
                    }
                }
                let index = found.filter(|i| *i < log.len()).ok_or_else(|| {
                    TransparencyError::NotFound(format!(
                        "this anchor's log has no {kind} entry for serial {serial}{}",
                        if rows.is_empty() {
                            " (it logs only the certificates it issued: ask the anchor that \
                             issued it)"
                        } else {
                            ""
                        }
                    ))
                })?;
                (index, format!("the {kind} entry of serial {serial}"))
            }
            InclusionTarget::LeafHash(hash) => {
                let rows = self
                    .store
                    .tlog_entries(&TlogLookup::LeafHash(*hash), 0, u64::MAX, 1)?;
                let index = rows
                    .first()
                    .map(|r| r.index)
                    .filter(|i| *i < log.len())
                    .ok_or_else(|| {
                        TransparencyError::NotFound(format!(
                            "this anchor's log has no entry with leaf hash {}",
                            hex::encode(hash)
                        ))
                    })?;
                (
                    index,
                    format!("the entry with leaf hash {}", hex::encode(hash)),
                )
            }
        };
        if index >= size {
            return Err(TransparencyError::BadParameter {
                param: "size",
                message: format!(
                    "{what} is at index {index}, so a tree of size {size} does not include it: \
                     ask with a size above {index} (or none, for the current size)"
                ),
            });
        }
        let proof = log.inclusion_proof(index, size).map_err(damaged)?;
        Ok(InclusionProof {
            leaf_index: index,
            leaf_hash: hex::encode(log.leaf_hash_at(index).map_err(damaged)?),
            tree_size: size,
            root: hex::encode(log.root_at(size).map_err(damaged)?),
            audit_path: proof.iter().map(hex::encode).collect(),
        })
    }

    /// The consistency proof from size `first` to size `second` (default: now).
    pub fn consistency(
        &self,
        first: u64,
        second: Option<u64>,
    ) -> Result<ConsistencyProof, TransparencyError> {
        let log = self.synced()?;
        let second = checked_size("second", second, log.len())?;
        if first > second {
            return Err(TransparencyError::BadParameter {
                param: "first",
                message: format!("first ({first}) must not be larger than second ({second})"),
            });
        }
        let proof = log.consistency_proof(first, second).map_err(damaged)?;
        Ok(ConsistencyProof {
            first,
            second,
            first_root: hex::encode(log.root_at(first).map_err(damaged)?),
            second_root: hex::encode(log.root_at(second).map_err(damaged)?),
            proof: proof.iter().map(hex::encode).collect(),
        })
    }
}

/// `size` if the log has reached it (default: the log's size), else a 400 naming `param`.
fn checked_size(
    param: &'static str,
    size: Option<u64>,
    log_size: u64,
) -> Result<u64, TransparencyError> {
    match size {
        None => Ok(log_size),
        Some(size) if size <= log_size => Ok(size),
        Some(size) => Err(TransparencyError::BadParameter {
            param,
            message: format!(
                "{param} ({size}) is beyond the log, which has {log_size} entries: ask for a size \
                 from 0 to {log_size}"
            ),
        }),
    }
}

/// Proof errors after the sizes were checked mean the tree itself is wrong.
fn damaged(err: TlogError) -> TransparencyError {
    TransparencyError::Damaged(err.to_string())
}

fn decode(row: &TlogRow) -> Result<LogEntry, TransparencyError> {
    LogEntry::from_leaf_bytes(&row.leaf)
        .map_err(|e| TransparencyError::Damaged(format!("entry {}: {e}", row.index)))
}

/// An entry as the API shows it, checked against the tree: what is served is what is proven.
fn wire_entry(log: &MerkleLog, row: &TlogRow) -> Result<TransparencyEntry, TransparencyError> {
    let entry = decode(row)?;
    let hash = tlog::leaf_hash(&row.leaf);
    if log.leaf_hash_at(row.index).ok() != Some(hash) {
        return Err(TransparencyError::Damaged(format!(
            "entry {} does not match the leaf hash in the tree",
            row.index
        )));
    }
    let (kind, certificate_der) = match &entry.kind {
        EntryKind::Issued { certificate_der } => ("issued", Some(STANDARD.encode(certificate_der))),
        EntryKind::Revoked => ("revoked", None),
    };
    Ok(TransparencyEntry {
        index: row.index,
        leaf_hash: hex::encode(hash),
        kind: kind.to_string(),
        serial: entry.serial_hex(),
        node_id: entry.node_id.to_string(),
        issuer: hex::encode(entry.issuer),
        timestamp_ms: entry.timestamp_ms,
        certificate_der,
        leaf: STANDARD.encode(&row.leaf),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nexus_ca::tlog::{verify_consistency, verify_inclusion};
    use nexus_ca::{MicProfile, NodeKey, Role};

    use super::*;
    use crate::store::{CertificateRow, Enrollment};

    struct Anchor {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        ca: Arc<CertificateAuthority>,
    }

    fn anchor() -> Anchor {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("nexus.db")).unwrap());
        let root = CertificateAuthority::new_fleet_root("tlog").unwrap();
        let ca = root
            .new_intermediate("tlog", NodeKey::generate().node_id())
            .unwrap();
        Anchor {
            _dir: dir,
            store,
            ca: Arc::new(ca),
        }
    }

    fn issue(anchor: &Anchor) -> Enrollment {
        let node = NodeKey::generate();
        let profile = MicProfile {
            fleet_id: "tlog".into(),
            node_id: node.node_id(),
            tenant: "default".into(),
            site: "lab".into(),
            role: Role::Node,
            validity: Duration::from_secs(3600),
        };
        let der = anchor.ca.issue_mic(&node.public_key(), &profile).unwrap();
        let issued = Enrollment {
            serial: nexus_ca::read_mic(&der).unwrap().serial_hex,
            node_id: node.node_id().to_string(),
            cert_pem: nexus_ca::der_to_pem(&der),
        };
        anchor.store.record_certificate(&issued, "csr").unwrap();
        issued
    }

    fn revoke(anchor: &Anchor, serial: &str) {
        anchor
            .store
            .revoke_certificates(
                "x",
                &[serial.to_string()],
                "unspecified",
                |_, _: &[CertificateRow]| Ok::<_, ()>(vec![0x30, 0x00]),
            )
            .unwrap()
            .unwrap();
    }

    fn h(s: &str) -> tlog::Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn bad_param(err: TransparencyError) -> &'static str {
        match err {
            TransparencyError::BadParameter { param, .. } => param,
            other => panic!("not a bad parameter: {other}"),
        }
    }

    #[test]
    fn serves_what_the_store_holds_with_proofs_that_verify() {
        let anchor = anchor();
        let first = issue(&anchor); // before the log: backfilled at open
        let node_id = NodeKey::generate().node_id();
        let log = Transparency::open(anchor.store.clone(), anchor.ca.clone(), node_id).unwrap();
        let early = log.signed_head().unwrap();
        assert_eq!(early.size, 1);
        assert_eq!(early.log_id, format!("nexus-tlog/{node_id}"));

        // Written by someone else (a join, a renewal): picked up before the next answer.
        let second = issue(&anchor);
        revoke(&anchor, &first.serial);
        let third = issue(&anchor);
        let sth = log.signed_head().unwrap();
        assert_eq!(sth.size, 4);
        assert_eq!(sth.public_key, hex::encode(anchor.ca.public_key()));
        assert_eq!(sth.signer_fingerprint, hex::encode(anchor.ca.fingerprint()));
        let parsed: tlog::SignedTreeHead =
            serde_json::from_value(serde_json::to_value(&sth).unwrap()).unwrap();
        assert!(parsed.verify(&anchor.ca.public_key()));
        assert_eq!(
            hex::encode(parsed.head.signing_input().unwrap()),
            sth.signing_input
        );
        let again = log.signed_head().unwrap();
        assert_eq!(again, sth, "an unchanged log re-uses its head");

        let all = log
            .entries(&TransparencyLookup::All, 0, None, 1000)
            .unwrap();
        assert_eq!(all.tree_size, 4);
        assert_eq!(all.next_start, None);
        let kinds: Vec<&str> = all.entries.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["issued", "issued", "revoked", "issued"]);
        let serials: Vec<&str> = all.entries.iter().map(|e| e.serial.as_str()).collect();
        assert_eq!(
            serials,
            [&first.serial, &second.serial, &first.serial, &third.serial].map(|s| s.as_str())
        );
        assert!(all.entries[2].certificate_der.is_none());
        for entry in &all.entries {
            let proof = log
                .inclusion(&InclusionTarget::LeafHash(h(&entry.leaf_hash)), None)
                .unwrap();
            assert_eq!(proof.leaf_index, entry.index);
            let path: Vec<_> = proof.audit_path.iter().map(|p| h(p)).collect();
            assert!(verify_inclusion(
                &h(&entry.leaf_hash),
                entry.index,
                4,
                &path,
                &h(&sth.root)
            ));
        }
        let revoked = log
            .inclusion(
                &InclusionTarget::Serial {
                    serial: first.serial.clone(),
                    kind: "revoked".into(),
                },
                Some(3),
            )
            .unwrap();
        assert_eq!((revoked.leaf_index, revoked.tree_size), (2, 3));

        let proof = log.consistency(1, None).unwrap();
        let path: Vec<_> = proof.proof.iter().map(|p| h(p)).collect();
        assert!(verify_consistency(
            1,
            4,
            &h(&early.root),
            &h(&sth.root),
            &path
        ));

        // Paging and lookups.
        let page = log.entries(&TransparencyLookup::All, 1, None, 2).unwrap();
        assert_eq!(page.entries.len(), 2);
        assert_eq!(page.next_start, Some(3));
        let capped = log
            .entries(&TransparencyLookup::All, 3, Some(99), 2)
            .unwrap();
        assert_eq!((capped.entries.len(), capped.next_start), (1, None));
        let by_serial = log
            .entries(
                &TransparencyLookup::Serial(first.serial.clone()),
                0,
                None,
                1000,
            )
            .unwrap();
        assert_eq!(
            by_serial
                .entries
                .iter()
                .map(|e| e.index)
                .collect::<Vec<_>>(),
            [0, 2]
        );
        let by_node = log
            .entries(
                &TransparencyLookup::NodeId(third.node_id.clone()),
                0,
                None,
                1000,
            )
            .unwrap();
        assert_eq!(by_node.entries.len(), 1);
        let none = log
            .entries(&TransparencyLookup::Serial("abcd".into()), 0, None, 1000)
            .unwrap();
        assert!(none.entries.is_empty());

        // Questions the log cannot answer.
        let start = log
            .entries(&TransparencyLookup::All, 5, None, 10)
            .unwrap_err();
        assert_eq!(bad_param(start), "start");
        let size = log
            .inclusion(
                &InclusionTarget::LeafHash(h(&all.entries[3].leaf_hash)),
                Some(3),
            )
            .unwrap_err();
        assert_eq!(bad_param(size), "size");
        let beyond = log
            .inclusion(
                &InclusionTarget::LeafHash(h(&all.entries[0].leaf_hash)),
                Some(5),
            )
            .unwrap_err();
        assert_eq!(bad_param(beyond), "size");
        assert_eq!(
            bad_param(log.consistency(1, Some(5)).unwrap_err()),
            "second"
        );
        assert_eq!(bad_param(log.consistency(4, Some(3)).unwrap_err()), "first");
        let unknown = log
            .inclusion(
                &InclusionTarget::Serial {
                    serial: second.serial.clone(),
                    kind: "revoked".into(),
                },
                None,
            )
            .unwrap_err();
        assert!(
            matches!(unknown, TransparencyError::NotFound(_)),
            "{unknown}"
        );
        assert_eq!(ApiError::from(unknown).status, StatusCode::NOT_FOUND);
        let err = ApiError::from(log.consistency(0, Some(9)).unwrap_err());
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.starts_with("second (9)"), "{}", err.message);

        // A restart loads the same tree.
        drop(log);
        let reopened =
            Transparency::open(anchor.store.clone(), anchor.ca.clone(), node_id).unwrap();
        let head = reopened.signed_head().unwrap();
        assert_eq!((head.size, head.root), (sth.size, sth.root));
    }

    /// Loading the tree of a million entries (leaf hashes only) must take seconds, not
    /// minutes: it happens at every anchor start.
    #[test]
    #[ignore = "writes a million rows (about a minute); run by hand to measure start-up time"]
    fn a_million_entries_load_in_seconds() {
        let anchor = anchor();
        anchor.store.start_transparency_log([1; 32]).unwrap();
        let entry = |i: u64| {
            LogEntry::issued(
                nexus_ca::pem_to_der(&issue_pem(&anchor)).unwrap().remove(0),
                [1; 32],
                i,
            )
            .unwrap()
        };
        let template = entry(0);
        anchor.store.fill_tlog_for_test(1_000_000, |i| {
            let mut e = template.clone();
            e.timestamp_ms = i;
            e.leaf_bytes().unwrap()
        });
        let started = Instant::now();
        let log = Transparency::open(
            anchor.store.clone(),
            anchor.ca.clone(),
            NodeKey::generate().node_id(),
        )
        .unwrap();
        let took = started.elapsed();
        let head = log.signed_head().unwrap();
        eprintln!("loaded {} entries in {took:?}", head.size);
        assert_eq!(head.size, 1_000_000);
        assert!(took < Duration::from_secs(10), "took {took:?}");
    }

    fn issue_pem(anchor: &Anchor) -> String {
        let node = NodeKey::generate();
        let profile = MicProfile {
            fleet_id: "tlog".into(),
            node_id: node.node_id(),
            tenant: "default".into(),
            site: "lab".into(),
            role: Role::Node,
            validity: Duration::from_secs(3600),
        };
        nexus_ca::der_to_pem(&anchor.ca.issue_mic(&node.public_key(), &profile).unwrap())
    }
}
