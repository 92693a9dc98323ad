//! Anchors mirror each other's transparency logs and check them.
//!
//! Every anchor keeps a copy of every other anchor's log (`tlog_mirror`), fetched over the peer
//! protocol (`TlogSince`) a page at a time. A copy is only extended with entries that, together
//! with what it already holds, hash to the root of a tree head the origin signed with its
//! anchor CA (which the fleet root must have certified for that very anchor). An origin that
//! rewrites or forks its log — a signed head whose root the mirrored entries do not reproduce,
//! or a log that shrinks — is reported (`nexus_transparency_mirror_inconsistent_total`, an error
//! log, `consistent: false` in `GET /v1/transparency/mirrors`) and no longer mirrored; the
//! evidence (the last good head and the offending one) is kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nexus_api::wire::TransparencyMirror;
use nexus_ca::tlog::{self, MerkleLog, SignedTreeHead, TreeHead};
use nexus_ca::{CertificateAuthority, NodeId};
use serde::{Deserialize, Serialize};

use crate::store::Store;

/// Entries fetched per request.
pub const PAGE: u32 = 1000;

/// A page of an anchor's log as the peer protocol carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlogPage {
    /// The origin's signed tree head now.
    pub head: SignedTreeHead,
    /// Its anchor CA certificate (DER, base64), whose key signed the head.
    pub signer_der: String,
    /// Leaves `start..start + leaves.len()` (base64).
    pub leaves: Vec<String>,
}

/// Proof that a certificate is in an anchor's log (strict mode asks for it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogProof {
    /// The anchor's signed tree head.
    pub head: SignedTreeHead,
    /// Its anchor CA certificate (DER, base64).
    pub signer_der: String,
    /// Leaf index of the certificate's `issued` entry.
    pub index: u64,
    /// That leaf (base64).
    pub leaf: String,
    /// RFC 6962 audit path, hex.
    pub audit_path: Vec<String>,
}

impl LogProof {
    /// Checks that this proves the MIC `serial` of `node` is in the log of `anchor`, whose CA
    /// `trusted_ca` must accept.
    /// `anchor` may be unknown (asked by address only): it is then the anchor the signing CA
    /// was certified for.
    pub fn check(
        &self,
        anchor: Option<NodeId>,
        serial: &str,
        node: NodeId,
        trusted_ca: impl Fn(&[u8]) -> bool,
    ) -> anyhow::Result<()> {
        let signer = STANDARD
            .decode(&self.signer_der)
            .context("signer is not base64")?;
        let (ca_node, key, _, _) = CertificateAuthority::describe_intermediate(&signer)?;
        let anchor = match anchor {
            Some(anchor) => anchor,
            None => ca_node.parse::<NodeId>()?,
        };
        if ca_node != anchor.to_hex() || !trusted_ca(&signer) {
            bail!("the proof is not signed by a CA the fleet root certified for anchor {anchor}");
        }
        if self.head.head.log_id != format!("nexus-tlog/{anchor}") || !self.head.verify(&key) {
            bail!("the tree head is not anchor {anchor}'s, or its signature does not verify");
        }
        let leaf = STANDARD.decode(&self.leaf).context("leaf is not base64")?;
        let entry = tlog::LogEntry::from_leaf_bytes(&leaf)?;
        let issued = matches!(entry.kind, tlog::EntryKind::Issued { .. });
        if !issued || entry.serial_hex() != serial || entry.node_id != node {
            bail!("the leaf is not the issue of certificate {serial} of node {node}");
        }
        let path = self
            .audit_path
            .iter()
            .map(|h| {
                hex::decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .context("a path hash is not 32 bytes of hex")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if !tlog::verify_inclusion(
            &tlog::leaf_hash(&leaf),
            self.index,
            self.head.head.size,
            &path,
            &self.head.head.root,
        ) {
            bail!("the audit path does not lead to the signed root");
        }
        Ok(())
    }
}

/// One mirrored log.
struct Mirrored {
    tree: MerkleLog,
    /// The newest head checked against the mirrored entries.
    head: Option<TreeHead>,
    /// Set when the origin was caught rewriting its log.
    broken: Option<String>,
    checked_at_ms: u64,
}

/// The mirrors of one anchor.
pub struct Mirrors {
    store: Arc<Store>,
    logs: Mutex<HashMap<NodeId, Mirrored>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mirrors {
    /// Loads the mirrored logs from the store (leaf hashes only).
    pub fn open(store: Arc<Store>) -> anyhow::Result<Mirrors> {
        let mut logs = HashMap::new();
        for (origin, hashes, head, broken) in store.tlog_mirrors()? {
            let Ok(origin) = origin.parse::<NodeId>() else {
                continue;
            };
            let mut tree = MerkleLog::with_capacity(hashes.len());
            for hash in hashes {
                tree.append_leaf_hash(hash);
            }
            logs.insert(
                origin,
                Mirrored {
                    tree,
                    head,
                    broken,
                    checked_at_ms: 0,
                },
            );
        }
        Ok(Mirrors {
            store,
            logs: Mutex::new(logs),
        })
    }

    /// Where to continue mirroring `origin` (`None`: it is known to be inconsistent).
    pub fn next_start(&self, origin: &NodeId) -> Option<u64> {
        match lock(&self.logs).get(origin) {
            None => Some(0),
            Some(m) if m.broken.is_some() => None,
            Some(m) => Some(m.tree.len()),
        }
    }

    /// Checks and applies a page from `origin` that starts at `start`. `trust` checks that the
    /// signer certificate is an anchor CA the fleet root certified for `origin`.
    pub fn apply(
        &self,
        origin: NodeId,
        start: u64,
        page: &TlogPage,
        trusted_ca: impl Fn(&[u8]) -> bool,
    ) -> anyhow::Result<u64> {
        let expected_id = format!("nexus-tlog/{origin}");
        if page.head.head.log_id != expected_id {
            bail!(
                "the head is for log {:?}, not {expected_id:?}",
                page.head.head.log_id
            );
        }
        let signer = STANDARD
            .decode(&page.signer_der)
            .context("the signer certificate is not base64")?;
        let (anchor, key, _, _) = CertificateAuthority::describe_intermediate(&signer)?;
        if anchor != origin.to_hex() || !trusted_ca(&signer) {
            bail!("the head is not signed by an anchor CA the fleet root certified for {origin}");
        }
        if !page.head.verify(&key) {
            bail!("the tree head's signature does not verify");
        }
        let mut leaves = Vec::with_capacity(page.leaves.len());
        for leaf in &page.leaves {
            let bytes = STANDARD.decode(leaf).context("a leaf is not base64")?;
            tlog::LogEntry::from_leaf_bytes(&bytes).context("a leaf is not a log entry")?;
            leaves.push(bytes);
        }
        let mut logs = lock(&self.logs);
        let mirrored = logs.entry(origin).or_insert_with(|| Mirrored {
            tree: MerkleLog::new(),
            head: None,
            broken: None,
            checked_at_ms: 0,
        });
        if mirrored.broken.is_some() {
            bail!("log of {origin} is already known to be inconsistent");
        }
        if start != mirrored.tree.len() {
            bail!(
                "page starts at {start}, the mirror holds {}",
                mirrored.tree.len()
            );
        }
        let head = &page.head.head;
        let problem = if head.size < mirrored.tree.len() {
            Some(format!(
                "the log shrank: signed head has {} entries, {} were mirrored",
                head.size,
                mirrored.tree.len()
            ))
        } else if start + leaves.len() as u64 > head.size {
            Some("the page holds entries beyond its own signed head".to_string())
        } else {
            None
        };
        let mut tree = mirrored.tree.clone();
        for leaf in &leaves {
            tree.append(leaf);
        }
        // Once caught up, the mirrored entries must reproduce the signed root exactly.
        let problem = problem.or_else(|| {
            (tree.len() == head.size && tree.root() != head.root).then(|| {
                format!(
                    "signed head of size {} has root {}, but its entries hash to {}: the log was \
                     rewritten",
                    head.size,
                    hex::encode(head.root),
                    hex::encode(tree.root())
                )
            })
        });
        if let Some(problem) = problem {
            metrics::counter!("nexus_transparency_mirror_inconsistent_total").increment(1);
            tracing::error!(origin = %origin, problem = %problem, "transparency log inconsistency");
            self.store.mark_tlog_mirror_broken(
                &origin.to_string(),
                &problem,
                &serde_json::to_string(&page.head)?,
            )?;
            mirrored.broken = Some(problem.clone());
            bail!(problem);
        }
        let caught_up = tree.len() == head.size;
        self.store.append_tlog_mirror(
            &origin.to_string(),
            start,
            &leaves,
            caught_up
                .then(|| serde_json::to_string(&page.head))
                .transpose()?,
        )?;
        mirrored.tree = tree;
        if caught_up {
            mirrored.head = Some(head.clone());
        }
        mirrored.checked_at_ms = crate::now_ms();
        metrics::gauge!("nexus_transparency_mirrored_entries", "origin" => origin.to_string())
            .set(mirrored.tree.len() as f64);
        Ok(mirrored.tree.len())
    }

    /// The state of every mirrored log, by origin.
    pub fn status(&self) -> Vec<TransparencyMirror> {
        let mut all: Vec<TransparencyMirror> = lock(&self.logs)
            .iter()
            .map(|(origin, m)| TransparencyMirror {
                origin: origin.to_string(),
                log_id: format!("nexus-tlog/{origin}"),
                size: m.tree.len(),
                root: m.head.as_ref().map(|h| hex::encode(h.root)),
                consistent: m.broken.is_none(),
                problem: m.broken.clone(),
                checked_at: (m.checked_at_ms > 0).then(|| crate::rfc3339_ms(m.checked_at_ms)),
            })
            .collect();
        all.sort_by(|a, b| a.origin.cmp(&b.origin));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_ca::tlog::LogEntry;

    struct Origin {
        root: CertificateAuthority,
        ca: CertificateAuthority,
        node: NodeId,
    }

    fn origin() -> Origin {
        let root = CertificateAuthority::new_fleet_root("acme").unwrap();
        let node = nexus_ca::NodeKey::generate().node_id();
        let ca = root.new_intermediate("acme", node).unwrap();
        Origin { root, ca, node }
    }

    fn leaves(n: usize, issuer: [u8; 32]) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                LogEntry::revoked(
                    vec![1, i as u8 + 1],
                    nexus_ca::NodeKey::generate().node_id(),
                    issuer,
                    i as u64,
                )
                .leaf_bytes()
                .unwrap()
            })
            .collect()
    }

    fn page(o: &Origin, all: &[Vec<u8>], start: usize, end: usize) -> TlogPage {
        let mut tree = MerkleLog::new();
        for leaf in all {
            tree.append(leaf);
        }
        let head = tree.tree_head(format!("nexus-tlog/{}", o.node), 1);
        TlogPage {
            head: o.ca.sign_tree_head(head).unwrap(),
            signer_der: STANDARD.encode(o.ca.cert_der()),
            leaves: all[start..end].iter().map(|l| STANDARD.encode(l)).collect(),
        }
    }

    fn mirrors() -> (tempfile::TempDir, Mirrors) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("nexus.db")).unwrap());
        (dir, Mirrors::open(store).unwrap())
    }

    #[test]
    fn mirrors_follow_a_growing_log_and_survive_a_reopen() {
        let o = origin();
        let (dir, m) = mirrors();
        let trusted = |der: &[u8]| der == o.ca.cert_der();
        let all = leaves(7, o.ca.fingerprint());
        assert_eq!(
            m.apply(o.node, 0, &page(&o, &all[..4], 0, 4), trusted)
                .unwrap(),
            4
        );
        // Pages of a bigger log, in two steps.
        assert_eq!(
            m.apply(o.node, 4, &page(&o, &all, 4, 5), trusted).unwrap(),
            5
        );
        assert_eq!(
            m.apply(o.node, 5, &page(&o, &all, 5, 7), trusted).unwrap(),
            7
        );
        let status = m.status();
        assert_eq!(status.len(), 1);
        assert!(status[0].consistent && status[0].size == 7, "{status:?}");
        // Reopened from SQLite, it continues where it was.
        let store = Arc::new(Store::open(&dir.path().join("nexus.db")).unwrap());
        let again = Mirrors::open(store).unwrap();
        assert_eq!(again.next_start(&o.node), Some(7));
        assert_eq!(again.status()[0].root, status[0].root);
        let _ = &o.root;
    }

    #[test]
    fn a_rewritten_or_shrunk_log_is_caught_and_no_longer_mirrored() {
        let o = origin();
        let (_dir, m) = mirrors();
        let trusted = |der: &[u8]| der == o.ca.cert_der();
        let all = leaves(4, o.ca.fingerprint());
        m.apply(o.node, 0, &page(&o, &all, 0, 4), trusted).unwrap();
        // The origin rewrites entry 1 and grows: the signed root no longer matches.
        let mut forked = all.clone();
        forked[1] = leaves(1, o.ca.fingerprint()).remove(0);
        forked.extend(leaves(2, o.ca.fingerprint()));
        let err = m
            .apply(o.node, 4, &page(&o, &forked, 4, 6), trusted)
            .unwrap_err();
        assert!(err.to_string().contains("rewritten"), "{err}");
        assert_eq!(m.next_start(&o.node), None);
        assert!(!m.status()[0].consistent);

        // A shrunk log is caught too.
        let o2 = origin();
        let trusted2 = |der: &[u8]| der == o2.ca.cert_der();
        let all = leaves(3, o2.ca.fingerprint());
        m.apply(o2.node, 0, &page(&o2, &all, 0, 3), trusted2)
            .unwrap();
        let err = m
            .apply(o2.node, 3, &page(&o2, &all[..2], 2, 2), trusted2)
            .unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
    }

    #[test]
    fn heads_from_the_wrong_signer_are_refused() {
        let o = origin();
        let other = origin();
        let (_dir, m) = mirrors();
        let all = leaves(2, o.ca.fingerprint());
        // Signed by another anchor's CA: not the origin's.
        let mut p = page(&other, &all, 0, 2);
        p.head.head.log_id = format!("nexus-tlog/{}", o.node);
        let err = m.apply(o.node, 0, &p, |_| true).unwrap_err();
        assert!(err.to_string().contains("certified for"), "{err}");
        // The origin's CA, but one the fleet does not trust.
        let err = m
            .apply(o.node, 0, &page(&o, &all, 0, 2), |_| false)
            .unwrap_err();
        assert!(err.to_string().contains("certified for"), "{err}");
        // A tampered signature.
        let mut p = page(&o, &all, 0, 2);
        p.head.signature[0] ^= 1;
        let err = m.apply(o.node, 0, &p, |_| true).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
        assert_eq!(m.next_start(&o.node), Some(0), "nothing was applied");
    }
}
