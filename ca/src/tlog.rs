//! Certificate transparency for the anchors: an append-only Merkle log of every MIC an anchor
//! issues and revokes, with signed tree heads, inclusion proofs and consistency proofs.
//!
//! The tree is the one of RFC 6962 / RFC 9162 section 2.1, so any CT-style tooling can check
//! the proofs:
//!
//! ```text
//! leaf hash   = SHA-256(0x00 || leaf bytes)
//! node hash   = SHA-256(0x01 || left || right)
//! MTH({})     = SHA-256("")
//! MTH(D[n])   = node hash(MTH(D[0:k]), MTH(D[k:n]))   k = largest power of two < n
//! ```
//!
//! Inclusion proofs are RFC 6962's `PATH(m, D[n])` and consistency proofs its
//! `PROOF(m, D[n])`, both ordered from the leaf level up; [`verify_inclusion`] and
//! [`verify_consistency`] are the verification algorithms of RFC 9162 sections 2.1.3.2 and
//! 2.1.4.2.
//!
//! # Parts
//!
//! * [`MerkleLog`]: the in-memory tree. It keeps the hash of every complete (perfect) subtree,
//!   so an append costs one leaf plus amortised one node hash (at most log2 n), and a root or a
//!   proof for any size the log has reached costs O(log n) hashes, never a walk over the leaves.
//!   It stores hashes only; the entries themselves are the caller's to keep.
//! * [`LogEntry`]: what a leaf records (a MIC issued, or a serial revoked) and its canonical
//!   leaf encoding, below.
//! * [`TreeHead`] / [`SignedTreeHead`]: a log's size and root at a time, signed by the anchor.
//!
//! # Leaf encoding (version 1)
//!
//! A leaf is the canonical binary encoding of a [`LogEntry`] (not its JSON, which has no single
//! byte form). Integers are big-endian, nothing is optional except where the kind says so, and
//! nothing follows the last field:
//!
//! ```text
//! u8        version         0x01
//! u8        kind            0x00 issued, 0x01 revoked
//! u64       timestamp_ms    Unix time in milliseconds when the anchor logged the event
//! [32]u8    issuer          SHA-256 of the issuing CA certificate's DER (the anchor intermediate)
//! [16]u8    node_id         the node the certificate names
//! u8        serial_len      1..=255
//! [..]u8    serial          the certificate's serial number, the DER INTEGER's content bytes
//! -- issued only:
//! u32       der_len         1..=2^32-1
//! [..]u8    certificate     the MIC, DER
//! ```
//!
//! # Signed tree head
//!
//! The anchor signs, with ed25519, the byte string
//!
//! ```text
//! "nexus-sth-v1" 0x00          13 bytes of domain separation
//! u8       log_id_len          1..=255
//! [..]u8   log_id              UTF-8
//! u64      size                big-endian
//! u64      timestamp_ms        big-endian
//! [32]u8   root
//! ```
//!
//! Signing takes a closure rather than a key type, so a tree head can be signed by whatever
//! holds the anchor's key (in memory or in a token); verification takes the raw ed25519 public
//! key.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cert::read_mic;
use crate::error::CaError;
use crate::identity::{NodeId, verify_signature};

/// A SHA-256 tree hash (leaf, node or root).
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Version byte that starts every leaf encoding.
pub const LEAF_VERSION: u8 = 1;

/// Domain-separation prefix of a tree head's signing input.
pub const STH_CONTEXT: &[u8] = b"nexus-sth-v1\0";

/// Proofs longer than this cannot belong to a tree of at most 2^64 leaves; verifiers refuse
/// them before hashing anything.
const MAX_PROOF_LEN: usize = 64;

/// Errors from the transparency log. None of them changes the log.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TlogError {
    /// A leaf index at or beyond the tree size it was asked about. The log is unchanged.
    #[error("leaf index {index} is not in a tree of size {size}: valid indices are 0 to size - 1")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The tree size it was asked about.
        size: u64,
    },

    /// A tree size the log has not reached yet. The log is unchanged.
    #[error(
        "tree size {size} is larger than the log, which has {log_size} entries: ask for a size \
         the log has reached"
    )]
    SizeBeyondLog {
        /// The size asked for.
        size: u64,
        /// The log's current size.
        log_size: u64,
    },

    /// A consistency proof whose first size is larger than its second. The log is unchanged.
    #[error(
        "no consistency proof from size {first} to size {second}: the first size must not be \
         larger than the second"
    )]
    FirstAfterSecond {
        /// The older tree size.
        first: u64,
        /// The newer tree size.
        second: u64,
    },

    /// An entry that has no leaf encoding (e.g. an empty serial). It was not appended.
    #[error("the log entry cannot be encoded: {0}")]
    BadEntry(String),

    /// Bytes that are not a version-1 leaf encoding.
    #[error("not a valid log leaf: {0}")]
    BadLeaf(String),

    /// The certificate given for an issued entry is not a readable MIC.
    #[error("the certificate cannot be logged: {0}")]
    Certificate(CaError),

    /// A log id that does not fit the tree head encoding.
    #[error("invalid log id {log_id:?}: {reason}")]
    BadLogId {
        /// The rejected log id.
        log_id: String,
        /// Why.
        reason: &'static str,
    },

    /// The signer failed to sign a tree head.
    #[error("could not sign the tree head: {0}")]
    Sign(String),
}

// ---------------------------------------------------------------------------------------------
// Hashing

/// RFC 6962 leaf hash: SHA-256(0x00 || leaf).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(leaf);
    h.finalize().into()
}

/// RFC 6962 interior node hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (RFC 6962's `k`); `n` must be at least 2.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

// ---------------------------------------------------------------------------------------------
// The tree

/// An append-only, in-memory RFC 6962 Merkle tree over leaf hashes.
///
/// `levels[h][i]` is the hash of the perfect subtree over leaves `i * 2^h .. (i + 1) * 2^h`; a
/// level holds every such subtree that is complete. About 2n hashes (64 bytes a leaf) in all.
#[derive(Clone, Default)]
pub struct MerkleLog {
    levels: Vec<Vec<Hash>>,
}

impl fmt::Debug for MerkleLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerkleLog")
            .field("size", &self.len())
            .field("root", &hex::encode(self.root()))
            .finish()
    }
}

impl MerkleLog {
    /// An empty log.
    pub fn new() -> MerkleLog {
        MerkleLog {
            levels: vec![Vec::new()],
        }
    }

    /// An empty log with room for `leaves` entries before it reallocates.
    pub fn with_capacity(leaves: usize) -> MerkleLog {
        let mut levels = Vec::new();
        let mut n = leaves;
        loop {
            levels.push(Vec::with_capacity(n));
            if n <= 1 {
                break;
            }
            n /= 2;
        }
        MerkleLog { levels }
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Whether the log has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf given by its bytes; returns its index.
    pub fn append(&mut self, leaf: &[u8]) -> u64 {
        self.append_leaf_hash(leaf_hash(leaf))
    }

    /// Appends an entry's canonical leaf; returns its index. On error nothing is appended.
    pub fn append_entry(&mut self, entry: &LogEntry) -> Result<u64, TlogError> {
        Ok(self.append_leaf_hash(entry.leaf_hash()?))
    }

    /// Appends a leaf by its leaf hash ([`leaf_hash`] of the leaf bytes); returns its index.
    ///
    /// Amortised one node hash; at most log2(n) when the new leaf completes a large subtree.
    pub fn append_leaf_hash(&mut self, hash: Hash) -> u64 {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        let index = self.len();
        self.levels[0].push(hash);
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let row = &self.levels[level];
            let parent = node_hash(&row[row.len() - 2], &row[row.len() - 1]);
            level += 1;
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(parent);
        }
        index
    }

    /// The leaf hash at `index`.
    pub fn leaf_hash_at(&self, index: u64) -> Result<Hash, TlogError> {
        let size = self.len();
        if index >= size {
            return Err(TlogError::IndexOutOfRange { index, size });
        }
        Ok(self.levels[0][index as usize])
    }

    /// The root of the whole log (the empty-tree hash when it is empty). O(log n).
    pub fn root(&self) -> Hash {
        match self.len() {
            0 => EMPTY_ROOT,
            n => self.range_hash(0, n),
        }
    }

    /// The root the log had when it held `size` entries. O(log n).
    pub fn root_at(&self, size: u64) -> Result<Hash, TlogError> {
        self.check_size(size)?;
        Ok(match size {
            0 => EMPTY_ROOT,
            n => self.range_hash(0, n),
        })
    }

    /// A tree head for the log as it is now, ready to sign.
    pub fn tree_head(&self, log_id: impl Into<String>, timestamp_ms: u64) -> TreeHead {
        TreeHead {
            log_id: log_id.into(),
            size: self.len(),
            root: self.root(),
            timestamp_ms,
        }
    }

    /// RFC 6962 `PATH(index, D[size])`: the audit path of leaf `index` in the tree of the
    /// first `size` leaves, leaf level first. O(log n) hashes.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, TlogError> {
        self.check_size(size)?;
        if index >= size {
            return Err(TlogError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::with_capacity(64 - size.leading_zeros() as usize);
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    /// RFC 6962 `PROOF(first, D[second])`: proves the tree of the first `first` leaves is a
    /// prefix of the tree of the first `second`, leaf level first. O(log n) hashes.
    ///
    /// Empty when `first` is 0 or equal to `second` (nothing to prove; see
    /// [`verify_consistency`]).
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, TlogError> {
        self.check_size(second)?;
        if first > second {
            return Err(TlogError::FirstAfterSecond { first, second });
        }
        let mut proof = Vec::new();
        if first > 0 && first < second {
            self.subproof(first, 0, second, true, &mut proof);
        }
        Ok(proof)
    }

    fn check_size(&self, size: u64) -> Result<(), TlogError> {
        let log_size = self.len();
        if size > log_size {
            return Err(TlogError::SizeBeyondLog { size, log_size });
        }
        Ok(())
    }

    /// `PATH(m, D[start .. start + n])`, appended to `out`.
    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) {
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, k, out);
            out.push(self.range_hash(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, out);
            out.push(self.range_hash(start, k));
        }
    }

    /// `SUBPROOF(m, D[start .. start + n], complete)`, appended to `out`.
    fn subproof(&self, m: u64, start: u64, n: u64, complete: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !complete {
                out.push(self.range_hash(start, n));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, complete, out);
            out.push(self.range_hash(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.range_hash(start, k));
        }
    }

    /// MTH of leaves `start .. start + len` (`len` > 0, within the log).
    ///
    /// Every range the RFC algorithms visit starts at a multiple of the power of two at or above
    /// its length, so it is the perfect subtrees given by the binary digits of `len`, largest
    /// first; its MTH is their right fold. That costs popcount(len) - 1 hashes, and only the
    /// ranges along the right edge of the tree are not perfect, so each proof computes at most
    /// one such fold.
    fn range_hash(&self, start: u64, len: u64) -> Hash {
        debug_assert!(len > 0 && start + len <= self.len());
        debug_assert!(
            start.is_multiple_of(len.next_power_of_two()),
            "unaligned range"
        );
        let mut end = start + len;
        let mut rest = len;
        let mut acc: Option<Hash> = None;
        while rest != 0 {
            let height = rest.trailing_zeros();
            end -= 1 << height;
            let piece = self.levels[height as usize][(end >> height) as usize];
            acc = Some(match acc {
                None => piece,
                Some(right) => node_hash(&piece, &right),
            });
            rest &= rest - 1;
        }
        acc.unwrap_or(EMPTY_ROOT)
    }
}

// ---------------------------------------------------------------------------------------------
// Verification (RFC 9162 section 2.1.3.2 and 2.1.4.2)

/// Checks that `proof` proves the leaf with hash `leaf_hash` is at `index` in the tree of
/// `size` leaves whose root is `root` (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size || proof.len() > MAX_PROOF_LEN {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// Checks that `proof` proves the tree of `first` leaves with root `first_root` is a prefix of
/// the tree of `second` leaves with root `second_root` (RFC 9162 section 2.1.4.2).
///
/// The cases the RFC leaves to the caller: equal sizes need equal roots and an empty proof; an
/// empty first tree needs `first_root` to be [`EMPTY_ROOT`] and an empty proof; a first size
/// larger than the second never verifies.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second || proof.len() > MAX_PROOF_LEN {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty() && *first_root == EMPTY_ROOT;
    }
    let Some((head, tail)) = proof.split_first() else {
        return false;
    };
    // A power-of-two first tree is itself a node of the second, so the RFC prepends its root.
    let (seed, rest) = if first.is_power_of_two() {
        (first_root, proof)
    } else {
        (head, tail)
    };
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *first_root && sr == *second_root && sn == 0
}

// ---------------------------------------------------------------------------------------------
// Entries

/// What happened to the certificate a [`LogEntry`] records.
///
/// In JSON this is the `kind` field (`"issued"` or `"revoked"`) and, for issued entries,
/// `certificate_der` (standard base64), both flattened into the entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryKind {
    /// The anchor issued the certificate.
    Issued {
        /// The MIC, DER.
        #[serde(with = "base64_bytes")]
        certificate_der: Vec<u8>,
    },
    /// The anchor revoked the certificate with this serial.
    Revoked,
}

/// One leaf of an anchor's transparency log: a MIC issued or a serial revoked.
///
/// JSON: `{"kind":"issued","certificate_der":"<base64>","serial":"<hex>","node_id":"<hex>",
/// "issuer":"<hex>","timestamp_ms":<u64>}` (no `certificate_der` for `"revoked"`). The leaf
/// hashed into the tree is [`LogEntry::leaf_bytes`], described in the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Issued (with the certificate) or revoked.
    #[serde(flatten)]
    pub kind: EntryKind,
    /// The certificate's serial number: the DER INTEGER's content bytes (1 to 255), hex in JSON.
    #[serde(with = "hex_bytes")]
    pub serial: Vec<u8>,
    /// The node the certificate names.
    pub node_id: NodeId,
    /// SHA-256 of the issuing CA certificate's DER (the anchor intermediate), hex in JSON.
    #[serde(with = "hex_array")]
    pub issuer: [u8; 32],
    /// When the anchor logged the event, Unix milliseconds.
    pub timestamp_ms: u64,
}

impl LogEntry {
    /// The entry for a MIC just issued; serial and node id are read from the certificate.
    pub fn issued(
        certificate_der: Vec<u8>,
        issuer: [u8; 32],
        timestamp_ms: u64,
    ) -> Result<LogEntry, TlogError> {
        let mic = read_mic(&certificate_der).map_err(TlogError::Certificate)?;
        let serial = hex::decode(&mic.serial_hex).map_err(|e| {
            TlogError::Certificate(CaError::BadCertificate(format!("unreadable serial: {e}")))
        })?;
        Ok(LogEntry {
            kind: EntryKind::Issued { certificate_der },
            serial,
            node_id: mic.node_id,
            issuer,
            timestamp_ms,
        })
    }

    /// The entry for a revocation.
    pub fn revoked(
        serial: Vec<u8>,
        node_id: NodeId,
        issuer: [u8; 32],
        timestamp_ms: u64,
    ) -> LogEntry {
        LogEntry {
            kind: EntryKind::Revoked,
            serial,
            node_id,
            issuer,
            timestamp_ms,
        }
    }

    /// The serial as lowercase hex (as [`crate::VerifiedMic::serial_hex`] has it).
    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }

    /// The canonical version-1 leaf encoding (see the module docs).
    ///
    /// Fails for an empty serial or one longer than 255 bytes, and for an empty certificate
    /// or one of 4 GiB or more.
    pub fn leaf_bytes(&self) -> Result<Vec<u8>, TlogError> {
        let serial_len = u8::try_from(self.serial.len())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                TlogError::BadEntry(format!(
                    "the serial is {} bytes long; it must be 1 to 255 bytes",
                    self.serial.len()
                ))
            })?;
        let der = match &self.kind {
            EntryKind::Issued { certificate_der } => Some(certificate_der),
            EntryKind::Revoked => None,
        };
        let mut out = Vec::with_capacity(60 + self.serial.len() + der.map_or(0, |d| 4 + d.len()));
        out.push(LEAF_VERSION);
        out.push(if der.is_some() { 0 } else { 1 });
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.issuer);
        out.extend_from_slice(self.node_id.as_bytes());
        out.push(serial_len);
        out.extend_from_slice(&self.serial);
        if let Some(der) = der {
            let der_len = u32::try_from(der.len())
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    TlogError::BadEntry(format!(
                        "the certificate is {} bytes long; it must be 1 byte to 4 GiB",
                        der.len()
                    ))
                })?;
            out.extend_from_slice(&der_len.to_be_bytes());
            out.extend_from_slice(der);
        }
        Ok(out)
    }

    /// The RFC 6962 leaf hash of [`LogEntry::leaf_bytes`].
    pub fn leaf_hash(&self) -> Result<Hash, TlogError> {
        Ok(leaf_hash(&self.leaf_bytes()?))
    }

    /// Decodes a version-1 leaf; the inverse of [`LogEntry::leaf_bytes`].
    ///
    /// Refuses other versions and kinds, zero lengths, truncation and trailing bytes, so
    /// every accepted leaf re-encodes to exactly the same bytes.
    pub fn from_leaf_bytes(leaf: &[u8]) -> Result<LogEntry, TlogError> {
        let mut r = Reader(leaf);
        let version = r.take::<1>("version")?[0];
        if version != LEAF_VERSION {
            return Err(TlogError::BadLeaf(format!(
                "version {version} is not supported (only {LEAF_VERSION})"
            )));
        }
        let kind = r.take::<1>("kind")?[0];
        if kind > 1 {
            return Err(TlogError::BadLeaf(format!(
                "kind {kind} is unknown (0 issued, 1 revoked)"
            )));
        }
        let timestamp_ms = u64::from_be_bytes(r.take::<8>("timestamp")?);
        let issuer = r.take::<32>("issuer")?;
        let node_id = NodeId(r.take::<16>("node id")?);
        let serial_len = r.take::<1>("serial length")?[0] as usize;
        if serial_len == 0 {
            return Err(TlogError::BadLeaf("the serial is empty".into()));
        }
        let serial = r.bytes(serial_len, "serial")?.to_vec();
        let kind = if kind == 0 {
            let der_len = u32::from_be_bytes(r.take::<4>("certificate length")?) as usize;
            if der_len == 0 {
                return Err(TlogError::BadLeaf("the certificate is empty".into()));
            }
            EntryKind::Issued {
                certificate_der: r.bytes(der_len, "certificate")?.to_vec(),
            }
        } else {
            EntryKind::Revoked
        };
        if !r.0.is_empty() {
            return Err(TlogError::BadLeaf(format!(
                "{} bytes follow the last field",
                r.0.len()
            )));
        }
        Ok(LogEntry {
            kind,
            serial,
            node_id,
            issuer,
            timestamp_ms,
        })
    }
}

/// A cursor over leaf bytes whose errors name the field that was cut short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, field: &str) -> Result<&'a [u8], TlogError> {
        if self.0.len() < n {
            return Err(TlogError::BadLeaf(format!(
                "the leaf ends inside the {field} ({n} bytes needed, {} left)",
                self.0.len()
            )));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn take<const N: usize>(&mut self, field: &str) -> Result<[u8; N], TlogError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Tree heads

/// A log's size and root at a point in time: what an anchor signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    /// Which log (1 to 255 bytes of UTF-8), e.g. the anchor intermediate's fingerprint in hex.
    pub log_id: String,
    /// Number of leaves.
    pub size: u64,
    /// MTH of those leaves; hex in JSON.
    #[serde(with = "hex_array")]
    pub root: Hash,
    /// When the head was made, Unix milliseconds.
    pub timestamp_ms: u64,
}

impl TreeHead {
    /// The bytes the anchor signs (see the module docs).
    pub fn signing_input(&self) -> Result<Vec<u8>, TlogError> {
        let id = self.log_id.as_bytes();
        let id_len = u8::try_from(id.len())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| TlogError::BadLogId {
                log_id: self.log_id.clone(),
                reason: "a log id is 1 to 255 bytes of UTF-8",
            })?;
        let mut out = Vec::with_capacity(STH_CONTEXT.len() + 1 + id.len() + 16 + 32);
        out.extend_from_slice(STH_CONTEXT);
        out.push(id_len);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.root);
        Ok(out)
    }
}

/// A [`TreeHead`] with the anchor's ed25519 signature over its signing input.
///
/// JSON: the tree head's fields plus `"signature"` (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTreeHead {
    /// What was signed.
    #[serde(flatten)]
    pub head: TreeHead,
    /// ed25519 signature over [`TreeHead::signing_input`]; hex in JSON.
    #[serde(with = "hex_array")]
    pub signature: [u8; 64],
}

impl SignedTreeHead {
    /// Signs `head` with a signer that cannot fail (e.g. `|m| key.sign(m)` for a
    /// [`crate::NodeKey`]). Fails only for a bad log id.
    pub fn sign(
        head: TreeHead,
        sign: impl FnOnce(&[u8]) -> [u8; 64],
    ) -> Result<SignedTreeHead, TlogError> {
        let signature = sign(&head.signing_input()?);
        Ok(SignedTreeHead { head, signature })
    }

    /// Signs `head` with a signer that can fail, such as a key in a hardware token.
    pub fn try_sign<E: fmt::Display>(
        head: TreeHead,
        sign: impl FnOnce(&[u8]) -> Result<[u8; 64], E>,
    ) -> Result<SignedTreeHead, TlogError> {
        let signature = sign(&head.signing_input()?).map_err(|e| TlogError::Sign(e.to_string()))?;
        Ok(SignedTreeHead { head, signature })
    }

    /// Whether the signature verifies with the raw ed25519 `public_key` (strict verification).
    /// A head whose log id cannot be encoded never verifies.
    pub fn verify(&self, public_key: &[u8; 32]) -> bool {
        self.head
            .signing_input()
            .is_ok_and(|msg| verify_signature(public_key, &msg, &self.signature))
    }
}

// ---------------------------------------------------------------------------------------------
// Serde helpers

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        hex::decode(&s).map_err(serde::de::Error::custom)
    }
}

mod hex_array {
    pub fn serialize<S: serde::Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(&s, &mut out).map_err(|e| {
            serde::de::Error::custom(format!("expected {} hex characters: {e}", 2 * N))
        })?;
        Ok(out)
    }
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        STANDARD.decode(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    fn hs(list: &[&str]) -> Vec<Hash> {
        list.iter().map(|s| h(s)).collect()
    }

    // -- RFC 6962 test vectors, as in transparency-dev/merkle (testonly/constants.go,
    //    testonly/reference_test.go, proof/verify_test.go) and certificate-transparency-go.

    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// Leaf hashes (tree level 0) of `LEAVES`.
    const LEAF_HASHES: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ];

    /// Roots for sizes 0 to 8.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// (index, size, proof), index 0-based.
    const INCLUSION: &[(u64, u64, &[&str])] = &[
        (0, 1, &[]),
        (
            0,
            2,
            &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"],
        ),
        (
            1,
            2,
            &["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    /// (first, second, proof).
    const CONSISTENCY: &[(u64, u64, &[&str])] = &[
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn vector_log() -> MerkleLog {
        let mut log = MerkleLog::new();
        for leaf in LEAVES {
            log.append(&hex::decode(leaf).unwrap());
        }
        log
    }

    #[test]
    fn vectors_leaf_hashes_and_roots() {
        assert_eq!(leaf_hash(b""), h(LEAF_HASHES[0]));
        assert_eq!(MerkleLog::new().root(), h(ROOTS[0]));
        assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest(b"")));
        let mut log = MerkleLog::new();
        for (i, leaf) in LEAVES.iter().enumerate() {
            let index = log.append(&hex::decode(leaf).unwrap());
            assert_eq!(index, i as u64);
            assert_eq!(log.leaf_hash_at(index).unwrap(), h(LEAF_HASHES[i]));
            assert_eq!(log.root(), h(ROOTS[i + 1]), "root of size {}", i + 1);
        }
        for (size, root) in ROOTS.iter().enumerate() {
            assert_eq!(
                log.root_at(size as u64).unwrap(),
                h(root),
                "root_at({size})"
            );
        }
    }

    #[test]
    fn vectors_inclusion() {
        let log = vector_log();
        for &(index, size, want) in INCLUSION {
            let proof = log.inclusion_proof(index, size).unwrap();
            assert_eq!(proof, hs(want), "PATH({index}, D[{size}])");
            let leaf = h(LEAF_HASHES[index as usize]);
            let root = h(ROOTS[size as usize]);
            assert!(verify_inclusion(&leaf, index, size, &proof, &root));
        }
    }

    #[test]
    fn vectors_consistency() {
        let log = vector_log();
        for &(first, second, want) in CONSISTENCY {
            let proof = log.consistency_proof(first, second).unwrap();
            assert_eq!(proof, hs(want), "PROOF({first}, D[{second}])");
            let (r1, r2) = (h(ROOTS[first as usize]), h(ROOTS[second as usize]));
            assert!(verify_consistency(first, second, &r1, &r2, &proof));
        }
    }

    // -- A naive reference, straight from the recursive definitions of RFC 6962 section 2.1.

    fn ref_mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => EMPTY_ROOT,
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&ref_mth(&leaves[..k]), &ref_mth(&leaves[k..]))
            }
        }
    }

    fn ref_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split(n as u64) as usize;
        let (mut path, sibling) = if m < k {
            (ref_path(m, &leaves[..k]), ref_mth(&leaves[k..]))
        } else {
            (ref_path(m - k, &leaves[k..]), ref_mth(&leaves[..k]))
        };
        path.push(sibling);
        path
    }

    fn ref_subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if complete {
                Vec::new()
            } else {
                vec![ref_mth(leaves)]
            };
        }
        let k = split(n as u64) as usize;
        let (mut proof, sibling) = if m <= k {
            (
                ref_subproof(m, &leaves[..k], complete),
                ref_mth(&leaves[k..]),
            )
        } else {
            (
                ref_subproof(m - k, &leaves[k..], false),
                ref_mth(&leaves[..k]),
            )
        };
        proof.push(sibling);
        proof
    }

    fn ref_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        if m == 0 || m == leaves.len() {
            Vec::new()
        } else {
            ref_subproof(m, leaves, true)
        }
    }

    fn flip(proof: &[Hash], i: usize) -> Vec<Hash> {
        let mut bad = proof.to_vec();
        bad[i][i % 32] ^= 0x10;
        bad
    }

    const MAX_N: u64 = 70;

    fn test_leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn roots_match_reference_at_every_size() {
        let leaves = test_leaves(MAX_N);
        let mut log = MerkleLog::new();
        for (i, leaf) in leaves.iter().enumerate() {
            log.append_leaf_hash(*leaf);
            assert_eq!(log.root(), ref_mth(&leaves[..=i]), "size {}", i + 1);
        }
        for n in 0..=MAX_N as usize {
            assert_eq!(log.root_at(n as u64).unwrap(), ref_mth(&leaves[..n]));
        }
    }

    /// Every inclusion proof for every size up to 70, both from a log of exactly that size and
    /// from the 70-leaf log (proofs for earlier sizes), equals the reference and verifies; every
    /// tampered variant fails.
    #[test]
    fn inclusion_proofs_match_reference_and_verify() {
        let leaves = test_leaves(MAX_N);
        let full: MerkleLog = {
            let mut log = MerkleLog::new();
            leaves.iter().for_each(|l| {
                log.append_leaf_hash(*l);
            });
            log
        };
        let mut exact = MerkleLog::new();
        for n in 1..=MAX_N {
            exact.append_leaf_hash(leaves[n as usize - 1]);
            let root = ref_mth(&leaves[..n as usize]);
            for m in 0..n {
                let want = ref_path(m as usize, &leaves[..n as usize]);
                let proof = exact.inclusion_proof(m, n).unwrap();
                assert_eq!(proof, want, "PATH({m}, D[{n}]) from a log of size {n}");
                assert_eq!(
                    full.inclusion_proof(m, n).unwrap(),
                    want,
                    "PATH({m}, D[{n}])"
                );
                let leaf = leaves[m as usize];
                assert!(verify_inclusion(&leaf, m, n, &proof, &root), "{m} in {n}");

                // Tampering: any flipped bit, a wrong index, size, leaf or root, a proof
                // element removed or added.
                for i in 0..proof.len() {
                    assert!(!verify_inclusion(&leaf, m, n, &flip(&proof, i), &root));
                }
                let other = leaves[(m as usize + 1) % n as usize];
                if n > 1 {
                    assert!(!verify_inclusion(&other, m, n, &proof, &root));
                    assert!(!verify_inclusion(&leaf, (m + 1) % n, n, &proof, &root));
                }
                assert!(!verify_inclusion(&leaf, m, 2 * n, &proof, &root));
                if m < n / 2 {
                    assert!(!verify_inclusion(&leaf, m, n / 2, &proof, &root));
                }
                assert!(!verify_inclusion(&leaf, m, n, &proof, &EMPTY_ROOT));
                assert!(!verify_inclusion(
                    &leaf,
                    m,
                    n,
                    &[proof.clone(), vec![root]].concat(),
                    &root
                ));
                if let Some((_, rest)) = proof.split_last() {
                    assert!(!verify_inclusion(&leaf, m, n, rest, &root));
                }
            }
        }
    }

    /// Every consistency proof between sizes 0..=n and n for n up to 70 equals the reference
    /// and verifies; every tampered variant fails.
    #[test]
    fn consistency_proofs_match_reference_and_verify() {
        let leaves = test_leaves(MAX_N);
        let mut full = MerkleLog::new();
        leaves.iter().for_each(|l| {
            full.append_leaf_hash(*l);
        });
        let roots: Vec<Hash> = (0..=MAX_N as usize)
            .map(|n| ref_mth(&leaves[..n]))
            .collect();
        let mut exact = MerkleLog::new();
        for n in 1..=MAX_N {
            exact.append_leaf_hash(leaves[n as usize - 1]);
            for m in 0..=n {
                let want = ref_proof(m as usize, &leaves[..n as usize]);
                let proof = exact.consistency_proof(m, n).unwrap();
                assert_eq!(proof, want, "PROOF({m}, D[{n}]) from a log of size {n}");
                assert_eq!(
                    full.consistency_proof(m, n).unwrap(),
                    want,
                    "PROOF({m}, D[{n}])"
                );
                let (r1, r2) = (roots[m as usize], roots[n as usize]);
                assert!(verify_consistency(m, n, &r1, &r2, &proof), "{m} -> {n}");

                if m == 0 || m == n {
                    // Nothing to prove, but the roots must still be the right ones.
                    if m == n {
                        assert!(!verify_consistency(m, n, &r1, &roots[0], &proof));
                    } else {
                        assert!(!verify_consistency(m, n, &r2, &r2, &proof));
                    }
                    assert!(!verify_consistency(m, n, &r1, &r2, &[r1]));
                    continue;
                }
                for i in 0..proof.len() {
                    assert!(!verify_consistency(m, n, &r1, &r2, &flip(&proof, i)));
                }
                assert!(!verify_consistency(m, n, &r1, &r2, &[]));
                assert!(!verify_consistency(
                    m,
                    n,
                    &r1,
                    &r2,
                    &proof[..proof.len() - 1]
                ));
                assert!(!verify_consistency(m, n, &r2, &r1, &proof));
                assert!(!verify_consistency(
                    m,
                    n,
                    &r1,
                    &roots[n as usize - 1],
                    &proof
                ));
                assert!(!verify_consistency(m, 2 * n, &r1, &r2, &proof));
                assert!(!verify_consistency(m + 1, n, &r1, &r2, &proof));
                assert!(!verify_consistency(n, m, &r2, &r1, &proof));
                let longer = [proof.clone(), vec![r2]].concat();
                assert!(!verify_consistency(m, n, &r1, &r2, &longer));
                let shifted = [vec![proof[0]], proof.clone()].concat();
                assert!(!verify_consistency(m, n, &r1, &r2, &shifted));
                if m > 1 {
                    let r0 = roots[m as usize - 1];
                    assert!(!verify_consistency(m - 1, n, &r0, &r2, &proof));
                    assert!(!verify_consistency(m - 1, n, &r1, &r2, &proof));
                }
            }
        }
    }

    #[test]
    fn bad_indices_and_sizes_are_errors() {
        let log = vector_log();
        assert_eq!(
            log.inclusion_proof(8, 8),
            Err(TlogError::IndexOutOfRange { index: 8, size: 8 })
        );
        assert_eq!(
            log.inclusion_proof(0, 0),
            Err(TlogError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            log.inclusion_proof(0, 9),
            Err(TlogError::SizeBeyondLog {
                size: 9,
                log_size: 8
            })
        );
        assert_eq!(
            log.inclusion_proof(u64::MAX, u64::MAX),
            Err(TlogError::SizeBeyondLog {
                size: u64::MAX,
                log_size: 8
            })
        );
        assert_eq!(
            log.root_at(9),
            Err(TlogError::SizeBeyondLog {
                size: 9,
                log_size: 8
            })
        );
        assert_eq!(
            log.consistency_proof(5, 4),
            Err(TlogError::FirstAfterSecond {
                first: 5,
                second: 4
            })
        );
        assert_eq!(
            log.consistency_proof(1, 9),
            Err(TlogError::SizeBeyondLog {
                size: 9,
                log_size: 8
            })
        );
        assert_eq!(
            log.leaf_hash_at(8),
            Err(TlogError::IndexOutOfRange { index: 8, size: 8 })
        );
        assert!(log.consistency_proof(0, 8).unwrap().is_empty());
        assert!(log.consistency_proof(8, 8).unwrap().is_empty());
        let empty = MerkleLog::new();
        assert!(empty.is_empty());
        assert_eq!(empty.root_at(0), Ok(EMPTY_ROOT));
        assert!(empty.consistency_proof(0, 0).unwrap().is_empty());
        assert!(
            TlogError::SizeBeyondLog {
                size: 9,
                log_size: 8
            }
            .to_string()
            .contains("has 8 entries")
        );
    }

    #[test]
    fn verifiers_refuse_absurd_input_without_panicking() {
        let x = h(ROOTS[8]);
        assert!(!verify_inclusion(&x, 0, 0, &[], &x));
        assert!(!verify_inclusion(&x, u64::MAX, u64::MAX, &[x; 64], &x));
        assert!(!verify_inclusion(&x, 0, u64::MAX, &[x; 200], &x));
        assert!(!verify_inclusion(&x, 0, 1, &[x], &x));
        assert!(verify_inclusion(&x, 0, 1, &[], &x));
        assert!(!verify_consistency(u64::MAX, u64::MAX - 1, &x, &x, &[]));
        assert!(!verify_consistency(1, u64::MAX, &x, &x, &[x; 64]));
        assert!(!verify_consistency(
            u64::MAX - 1,
            u64::MAX,
            &x,
            &x,
            &[x; 64]
        ));
        assert!(!verify_consistency(3, 5, &x, &x, &[x; 65]));
        assert!(verify_consistency(0, 5, &EMPTY_ROOT, &x, &[]));
        assert!(!verify_consistency(0, 5, &x, &x, &[]));
    }

    #[test]
    fn with_capacity_builds_the_same_tree() {
        let leaves = test_leaves(33);
        let mut a = MerkleLog::with_capacity(33);
        let mut b = MerkleLog::with_capacity(0);
        let mut c = MerkleLog::default();
        for l in &leaves {
            a.append_leaf_hash(*l);
            b.append_leaf_hash(*l);
            c.append_leaf_hash(*l);
        }
        assert_eq!(a.root(), ref_mth(&leaves));
        assert_eq!(b.root(), a.root());
        assert_eq!(c.root(), a.root());
        assert!(format!("{a:?}").contains("size: 33"));
    }

    // -- Entries and tree heads

    fn issued_entry() -> (LogEntry, crate::NodeKey) {
        use crate::cert::{CertificateAuthority, MicProfile, Role};
        let root = CertificateAuthority::new_fleet_root("tlog").unwrap();
        let anchor = crate::NodeKey::generate();
        let ca = root.new_intermediate("tlog", anchor.node_id()).unwrap();
        let node = crate::NodeKey::generate();
        let profile = MicProfile {
            fleet_id: "tlog".into(),
            node_id: node.node_id(),
            tenant: String::new(),
            site: "lab".into(),
            role: Role::Node,
            validity: std::time::Duration::from_secs(3600),
        };
        let der = ca.issue_mic(&node.public_key(), &profile).unwrap();
        let entry = LogEntry::issued(der.clone(), ca.fingerprint(), 1_700_000_000_123).unwrap();
        assert_eq!(entry.node_id, node.node_id());
        assert_eq!(
            entry.serial_hex(),
            crate::read_mic(&der).unwrap().serial_hex
        );
        (entry, anchor)
    }

    #[test]
    fn leaf_encoding_layout_and_roundtrip() {
        let revoked = LogEntry::revoked(
            vec![0x01, 0x02, 0x03],
            NodeId([0xaa; 16]),
            [0x11; 32],
            0x0102_0304_0506_0708,
        );
        let mut want = vec![1, 1, 1, 2, 3, 4, 5, 6, 7, 8];
        want.extend_from_slice(&[0x11; 32]);
        want.extend_from_slice(&[0xaa; 16]);
        want.extend_from_slice(&[3, 1, 2, 3]);
        assert_eq!(revoked.leaf_bytes().unwrap(), want);
        assert_eq!(LogEntry::from_leaf_bytes(&want).unwrap(), revoked);
        assert_eq!(revoked.leaf_hash().unwrap(), leaf_hash(&want));

        let issued = LogEntry {
            kind: EntryKind::Issued {
                certificate_der: vec![0x30, 0x82],
            },
            ..revoked.clone()
        };
        let mut want_issued = want.clone();
        want_issued[1] = 0;
        want_issued.extend_from_slice(&[0, 0, 0, 2, 0x30, 0x82]);
        assert_eq!(issued.leaf_bytes().unwrap(), want_issued);
        assert_eq!(LogEntry::from_leaf_bytes(&want_issued).unwrap(), issued);

        let (real, _) = issued_entry();
        let bytes = real.leaf_bytes().unwrap();
        assert_eq!(LogEntry::from_leaf_bytes(&bytes).unwrap(), real);
    }

    #[test]
    fn bad_leaves_and_entries_are_refused() {
        let entry = LogEntry::revoked(vec![7], NodeId([1; 16]), [2; 32], 3);
        let good = entry.leaf_bytes().unwrap();
        for cut in 0..good.len() {
            let err = LogEntry::from_leaf_bytes(&good[..cut]).unwrap_err();
            assert!(matches!(err, TlogError::BadLeaf(_)), "{cut}: {err}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(LogEntry::from_leaf_bytes(&trailing).is_err());
        let mut version = good.clone();
        version[0] = 2;
        assert!(LogEntry::from_leaf_bytes(&version).is_err());
        let mut kind = good.clone();
        kind[1] = 2;
        assert!(LogEntry::from_leaf_bytes(&kind).is_err());
        let mut zero_serial = good[..58].to_vec();
        zero_serial.push(0);
        assert!(LogEntry::from_leaf_bytes(&zero_serial).is_err());

        let mut log = MerkleLog::new();
        let empty_serial = LogEntry::revoked(vec![], NodeId([1; 16]), [2; 32], 3);
        assert!(matches!(
            log.append_entry(&empty_serial),
            Err(TlogError::BadEntry(_))
        ));
        let long_serial = LogEntry::revoked(vec![1; 256], NodeId([1; 16]), [2; 32], 3);
        assert!(long_serial.leaf_bytes().is_err());
        let empty_cert = LogEntry {
            kind: EntryKind::Issued {
                certificate_der: vec![],
            },
            ..entry.clone()
        };
        assert!(log.append_entry(&empty_cert).is_err());
        assert!(log.is_empty(), "a refused entry is not appended");
        assert_eq!(log.append_entry(&entry), Ok(0));
        assert!(matches!(
            LogEntry::issued(vec![0x30, 0x00], [0; 32], 0),
            Err(TlogError::Certificate(_))
        ));
    }

    #[test]
    fn entry_json_shape() {
        let (issued, _) = issued_entry();
        let json = serde_json::to_value(&issued).unwrap();
        assert_eq!(json["kind"], "issued");
        assert!(json["certificate_der"].as_str().unwrap().starts_with("MII"));
        assert_eq!(json["serial"], issued.serial_hex());
        assert_eq!(json["node_id"], issued.node_id.to_hex());
        assert_eq!(json["issuer"], hex::encode(issued.issuer));
        assert_eq!(json["timestamp_ms"], 1_700_000_000_123u64);
        assert_eq!(serde_json::from_value::<LogEntry>(json).unwrap(), issued);

        let revoked = LogEntry::revoked(vec![0xab], NodeId([3; 16]), [4; 32], 5);
        let text = serde_json::to_string(&revoked).unwrap();
        assert!(text.contains(r#""kind":"revoked""#), "{text}");
        assert!(!text.contains("certificate_der"));
        assert_eq!(serde_json::from_str::<LogEntry>(&text).unwrap(), revoked);
        assert!(serde_json::from_str::<LogEntry>(&text.replace("revoked", "lost")).is_err());
    }

    #[test]
    fn signed_tree_head_signs_and_verifies() {
        let (entry, anchor) = issued_entry();
        let mut log = MerkleLog::new();
        log.append_entry(&entry).unwrap();
        let head = log.tree_head("anchor-1", 42);
        assert_eq!(head.size, 1);
        assert_eq!(head.root, entry.leaf_hash().unwrap());

        let input = head.signing_input().unwrap();
        let mut want = b"nexus-sth-v1\0".to_vec();
        want.push(8);
        want.extend_from_slice(b"anchor-1");
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&42u64.to_be_bytes());
        want.extend_from_slice(&head.root);
        assert_eq!(input, want);

        let sth = SignedTreeHead::sign(head.clone(), |m| anchor.sign(m)).unwrap();
        assert!(sth.verify(&anchor.public_key()));
        assert!(!sth.verify(&crate::NodeKey::generate().public_key()));
        for tamper in [
            |s: &mut SignedTreeHead| s.head.size += 1,
            |s: &mut SignedTreeHead| s.head.timestamp_ms += 1,
            |s: &mut SignedTreeHead| s.head.root[0] ^= 1,
            |s: &mut SignedTreeHead| s.head.log_id.push('x'),
            |s: &mut SignedTreeHead| s.signature[0] ^= 1,
        ] {
            let mut bad = sth.clone();
            tamper(&mut bad);
            assert!(!bad.verify(&anchor.public_key()));
        }

        let json = serde_json::to_string(&sth).unwrap();
        assert!(json.contains(r#""log_id":"anchor-1""#), "{json}");
        assert_eq!(serde_json::from_str::<SignedTreeHead>(&json).unwrap(), sth);

        let failed = SignedTreeHead::try_sign(head.clone(), |_| Err("token unplugged"));
        assert_eq!(failed, Err(TlogError::Sign("token unplugged".into())));
        let ok = SignedTreeHead::try_sign(head, |m| Ok::<_, CaError>(anchor.sign(m))).unwrap();
        assert_eq!(ok, sth);

        for log_id in [String::new(), "x".repeat(256)] {
            let head = log.tree_head(log_id, 0);
            assert!(matches!(
                SignedTreeHead::sign(head.clone(), |m| anchor.sign(m)),
                Err(TlogError::BadLogId { .. })
            ));
            let unsignable = SignedTreeHead {
                head,
                signature: [0; 64],
            };
            assert!(!unsignable.verify(&anchor.public_key()));
        }
    }
}
