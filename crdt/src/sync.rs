//! Anti-entropy: automerge's sync protocol, with every change carried as a signed envelope.
//!
//! automerge's sync messages carry raw change chunks, and `receive_sync_message` applies them
//! without asking anyone: a peer could slip an unsigned or unauthorized change past the checks
//! [`ConfigDoc::apply_remote`] makes. So the protocol is split in two:
//!
//! * automerge's message still does the negotiation (heads, needs, bloom filters of what each
//!   side has) — but the sender **removes its change chunks** and instead attaches the stored
//!   [`SignedChange`] of every change the message would have carried ([`SyncPacket`]);
//! * the receiver refuses any packet whose automerge message still carries chunks, checks
//!   **every** envelope exactly as a pushed change (signature, author, [`authorize`], site
//!   scope; a change may refer to objects made by earlier changes of the same packet), and only
//!   if all pass applies them all, then feeds automerge the chunk-less message for its
//!   bookkeeping. One bad envelope rejects the whole packet and nothing of it is applied; the
//!   node ends the session, counts it and does not persist the peer's sync state.
//!
//! The sender asks automerge for version-1 messages (one chunk per change, in dependency
//! order) so each chunk maps to one envelope; automerge's version-2 form can carry a whole
//! saved document in one chunk, which could not be matched to envelopes.
//!
//! [`authorize`]: crate::authorize

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;

use automerge::sync::{self, SyncDoc};
use automerge::{Change, ChangeHash};

use crate::doc::{Batch, ConfigDoc};
use crate::error::{RemoteError, SyncError};
use crate::signed::{AuthorDirectory, MAX_CHANGE_BYTES, Reader, SignedChange, decode_change};

/// Version byte of [`SyncPacket::encode`].
const PACKET_VERSION: u8 = 1;

/// Where a sender finds the envelope of each change it sends: the node's change table.
pub trait EnvelopeSource {
    /// The stored envelope of change `hash`.
    fn envelope(&self, hash: &ChangeHash) -> Option<SignedChange>;
}

/// Envelopes in memory (tests, simulations, small documents).
#[derive(Clone, Debug, Default)]
pub struct MemoryEnvelopes {
    by_hash: BTreeMap<ChangeHash, SignedChange>,
}

impl MemoryEnvelopes {
    /// An empty store.
    pub fn new() -> MemoryEnvelopes {
        MemoryEnvelopes::default()
    }

    /// Stores an envelope (replacing one with the same change hash).
    pub fn insert(&mut self, change: SignedChange) {
        self.by_hash.insert(change.change_hash, change);
    }

    /// How many envelopes are stored.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

impl Extend<SignedChange> for MemoryEnvelopes {
    fn extend<I: IntoIterator<Item = SignedChange>>(&mut self, iter: I) {
        for c in iter {
            self.insert(c);
        }
    }
}

impl EnvelopeSource for MemoryEnvelopes {
    fn envelope(&self, hash: &ChangeHash) -> Option<SignedChange> {
        self.by_hash.get(hash).cloned()
    }
}

/// Bounds on one sync packet. A larger backlog is sent over several round trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncLimits {
    /// Most changes per packet.
    pub max_changes: NonZeroUsize,
    /// Most change bytes per packet (at least one change is always sent, up to
    /// [`MAX_CHANGE_BYTES`]).
    pub max_bytes: NonZeroUsize,
}

impl Default for SyncLimits {
    /// 1,000 changes or 4 MiB of change bytes per packet.
    fn default() -> SyncLimits {
        SyncLimits {
            max_changes: NonZeroUsize::new(1000).expect("non-zero"),
            max_bytes: NonZeroUsize::new(4 * 1024 * 1024).expect("non-zero"),
        }
    }
}

/// The sync state kept per (peer, document).
///
/// Persist [`PeerSync::encode`] after a session that ended well; it holds the heads both sides
/// shared, so the next session starts from there instead of from scratch.
#[derive(Clone, Debug, Default)]
pub struct PeerSync {
    state: sync::State,
}

impl PeerSync {
    /// A fresh state (nothing known about the peer).
    pub fn new() -> PeerSync {
        PeerSync::default()
    }

    /// The persistent part of the state.
    pub fn encode(&self) -> Vec<u8> {
        self.state.encode()
    }

    /// Restores a state saved with [`PeerSync::encode`].
    pub fn decode(bytes: &[u8]) -> Result<PeerSync, SyncError> {
        let state = sync::State::decode(bytes).map_err(|e| SyncError::Decode(e.to_string()))?;
        Ok(PeerSync { state })
    }
}

/// One message of a sync session: automerge's negotiation message without change chunks, and
/// the signed envelopes of the changes it stands for, in dependency order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncPacket {
    /// An encoded `automerge::sync::Message` whose change list is empty.
    pub message: Vec<u8>,
    /// The changes, as signed by their authors.
    pub changes: Vec<SignedChange>,
}

impl SyncPacket {
    /// Wire form: version byte, `lp(message)`, change count (u32 BE), then `lp(envelope)` each.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PACKET_VERSION];
        put_lp(&mut out, &self.message);
        let count = u32::try_from(self.changes.len()).expect("packets hold far fewer changes");
        out.extend_from_slice(&count.to_be_bytes());
        for c in &self.changes {
            put_lp(&mut out, &c.encode());
        }
        out
    }

    /// Parses [`SyncPacket::encode`]'s form, refusing more than `max_changes` envelopes.
    pub fn decode(bytes: &[u8], max_changes: usize) -> Result<SyncPacket, SyncError> {
        let bad = |e: crate::ChangeError| SyncError::Decode(e.to_string());
        let mut r = Reader { buf: bytes };
        let version = r.take(1).map_err(bad)?[0];
        if version != PACKET_VERSION {
            return Err(SyncError::Decode(format!(
                "unknown sync packet version {version} (this node speaks {PACKET_VERSION})"
            )));
        }
        let message = r.bytes(MAX_CHANGE_BYTES).map_err(bad)?.to_vec();
        let count = r.u32().map_err(bad)? as usize;
        if count > max_changes {
            return Err(SyncError::Decode(format!(
                "{count} changes in one packet, more than the {max_changes} allowed"
            )));
        }
        let mut changes = Vec::with_capacity(count);
        for _ in 0..count {
            let raw = r.bytes(MAX_CHANGE_BYTES + 4096).map_err(bad)?;
            changes.push(SignedChange::decode(raw).map_err(bad)?);
        }
        if !r.buf.is_empty() {
            return Err(SyncError::Decode(format!(
                "{} trailing bytes after the last change",
                r.buf.len()
            )));
        }
        Ok(SyncPacket { message, changes })
    }
}

fn put_lp(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).expect("fields are bounded below u32::MAX");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

impl ConfigDoc {
    /// The next packet for the peer, or `None` when there is nothing to say (the peer is up to
    /// date, or a packet is in flight and unanswered). Loop `generate` / `receive` on both sides
    /// until both return `None`.
    ///
    /// Every change sent needs its envelope in `envelopes`; a missing one fails the session
    /// ([`SyncError::MissingEnvelope`]) rather than sending an unsigned change.
    pub fn generate_sync_message(
        &mut self,
        peer: &mut PeerSync,
        envelopes: &impl EnvelopeSource,
        limits: &SyncLimits,
    ) -> Result<Option<SyncPacket>, SyncError> {
        // Version-1 messages: one chunk per change (see the module docs). automerge re-learns
        // the peer's capabilities from each message it receives, so clear them every time.
        peer.state.their_capabilities = None;
        let before: BTreeSet<ChangeHash> = peer.state.sent_hashes.clone();
        let Some(mut message) = self.automerge().generate_sync_message(&mut peer.state) else {
            return Ok(None);
        };
        let chunks = std::mem::replace(&mut message.changes, sync::ChunkList::empty());
        let derived = ConfigDoc::derived_hashes(self.id());
        let mut changes = Vec::new();
        let mut bytes = 0usize;
        let mut deferred = Vec::new();
        // Chunks come in dependency order: once one is cut, every later one is cut too, so a
        // packet never carries a change whose dependency it left out.
        let mut cut = false;
        for chunk in chunks.iter() {
            let hash = decode_change(chunk)
                .map_err(|e| SyncError::Decode(format!("automerge produced a bad chunk: {e}")))?
                .hash();
            if derived.contains(&hash) {
                // Every replica derives genesis (and the derived changes) itself; never sent.
                continue;
            }
            cut = cut
                || changes.len() >= limits.max_changes.get()
                || (!changes.is_empty() && bytes + chunk.len() > limits.max_bytes.get());
            if cut {
                deferred.push(hash);
                continue;
            }
            let envelope = envelopes
                .envelope(&hash)
                .ok_or(SyncError::MissingEnvelope(hash))?;
            bytes += envelope.change.len();
            changes.push(envelope);
        }
        // Changes cut by the limits were never sent: forget that automerge "sent" them, so a
        // later message of the session carries them.
        for hash in deferred {
            if !before.contains(&hash) {
                peer.state.sent_hashes.remove(&hash);
            }
        }
        Ok(Some(SyncPacket {
            message: message.encode(),
            changes,
        }))
    }

    /// Takes a packet from the peer. Returns the envelopes newly added to the document (persist
    /// them and the document's new changes; relay them to peers that lack them).
    ///
    /// A change whose dependencies have not arrived (automerge's bloom filter can make the
    /// sender skip one) is verified and returned too, but automerge holds it until they come;
    /// its `need` list then asks the sender for them. Callers refreshing a materialized copy must
    /// keep such changes and look at them again after the next packet
    /// ([`ConfigDoc::has_change`]).
    ///
    /// On error nothing of the packet was applied; end the session and drop `peer` (do not
    /// persist it).
    pub fn receive_sync_message(
        &mut self,
        peer: &mut PeerSync,
        packet: &SyncPacket,
        directory: &impl AuthorDirectory,
    ) -> Result<Vec<SignedChange>, SyncError> {
        let message =
            sync::Message::decode(&packet.message).map_err(|e| SyncError::Decode(e.to_string()))?;
        if !message.changes.is_empty() {
            return Err(SyncError::UnsignedChanges(message.changes.len()));
        }
        let mut accepted: Vec<(SignedChange, Change)> = Vec::new();
        {
            let mut batch = Batch::new(self.automerge());
            let mut seen = BTreeSet::new();
            for envelope in &packet.changes {
                if envelope.doc_id != *self.id() {
                    return Err(self.wrong_doc(envelope).into());
                }
                if self.has_change(&envelope.change_hash) || !seen.insert(envelope.change_hash) {
                    continue;
                }
                let decoded = batch.check(self.id(), envelope, directory)?;
                accepted.push((envelope.clone(), decoded));
            }
        }
        if !accepted.is_empty() {
            let changes: Vec<Change> = accepted.iter().map(|(_, c)| c.clone()).collect();
            self.doc_mut()
                .apply_changes(changes)
                .map_err(|source| RemoteError::Automerge {
                    hash: accepted[0].0.change_hash,
                    source: Box::new(source),
                })?;
        }
        self.doc_mut()
            .receive_sync_message(&mut peer.state, message)
            .map_err(|e| SyncError::Automerge(Box::new(e)))?;
        Ok(accepted.into_iter().map(|(e, _)| e).collect())
    }
}
