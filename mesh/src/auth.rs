//! Gossip datagram authentication: sealing outgoing chitchat payloads with the node's MIC key and
//! opening incoming ones. I/O-free: callers pass bytes and the current time.
//!
//! # Wire layout (version 1)
//!
//! ```text
//! magic      4   b"NXG1"
//! flags      1   bit 0: a certificate follows
//! node id    16  the sender's NodeId
//! sent at    8   sender's wall clock, unix milliseconds, big endian
//! [cert len  2   big endian, present when flag bit 0 is set]
//! [cert      n   the sender's MIC, DER]
//! payload    *   the chitchat envelope as chitchat serializes it
//! signature  64  ed25519 over DOMAIN || fleet id || everything above
//! ```
//!
//! Receivers cache verified certificates by node id, so a datagram needs to carry the sender's
//! certificate only until the receiver has it. The sender leaves it out for peers that answered
//! one of its messages (proof they verified it), re-sends it every minute, and sends it at once to
//! a peer that asks: a receiver without the sender's certificate answers with a bare
//! *certificate request* header (flag bit 1) instead of gossip.
//!
//! The timestamp bounds replay: a datagram older (or newer) than [`GossipAuthConfig::max_skew`]
//! is dropped. Inside that window a captured datagram can be replayed; chitchat's scuttlebutt
//! versions make replayed state harmless, but the replier may answer to the replayer's address.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nexus_ca::{
    FleetTrust, NodeId, NodeKey, TrustStore, VerifiedMic, sha256_fingerprint, verify_signature,
};

const MAGIC: &[u8; 4] = b"NXG1";
const DOMAIN: &[u8] = b"nexus-gossip-v1\0";
const FLAG_CERT: u8 = 1;
/// A bare header asking the receiver to resend its certificate.
const FLAG_CERT_REQUEST: u8 = 2;
/// A signed notice, sent in answer to a denied sender, whose payload is the denied node's id.
const FLAG_EVICTION: u8 = 4;
/// At most one eviction notice per address this often.
const EVICTION_NOTICE_INTERVAL_MS: u64 = 1_000;
/// Even a peer known to hold our certificate gets it again this often, in case it lost it.
const CERT_REFRESH_MS: u64 = 60_000;
const FIXED_HEADER: usize = 4 + 1 + 16 + 8;
const SIGNATURE_LEN: usize = 64;
/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// Bound on the verified-certificate cache; past it the cache is cleared and refilled from the
/// certificates datagrams carry.
const MAX_CACHED_CERTS: usize = 16_384;
/// How long a certificate whose chain failed is refused without a new check.
const REJECTED_FOR_MS: u64 = 10_000;

/// Why an incoming datagram was dropped. Each maps to a `reason` label of
/// `nexus_gossip_datagrams_dropped_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Not a Nexus gossip datagram at all (for example plain chitchat from an outsider).
    #[error("not a Nexus gossip datagram")]
    NotNexus,
    /// Framing is inconsistent (lengths, truncation).
    #[error("malformed datagram: {0}")]
    Malformed(&'static str),
    /// The timestamp is outside the accepted skew window.
    #[error("datagram timestamp is {0} ms away from local time")]
    Stale(i64),
    /// The sender's certificate does not verify against this fleet's trust store.
    #[error("sender certificate rejected: {0}")]
    UntrustedCertificate(String),
    /// No certificate in the datagram and none cached for this node id.
    #[error("no certificate known for sender {0}")]
    UnknownSender(NodeId),
    /// The certificate names another node than the header.
    #[error("certificate belongs to {cert}, header claims {header}")]
    IdentityMismatch {
        /// Node id in the certificate.
        cert: NodeId,
        /// Node id in the header.
        header: NodeId,
    },
    /// The sender is decommissioned or revoked.
    #[error("sender {0} is denied (decommissioned or revoked)")]
    Denied(NodeId),
    /// The sender's certificate is on a revocation list this node holds.
    #[error("sender {0} presents a revoked certificate")]
    Revoked(NodeId),
    /// Strict mode: the sender's certificate is not proven to be in a transparency log yet.
    #[error("sender {0} presents a certificate not proven to be logged")]
    NotLogged(NodeId),
    /// Signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Not gossip: the peer asks for our certificate (it lost or never had it).
    #[error("peer asked for our certificate")]
    CertificateRequested,
    /// Not gossip: an authentic notice from this fleet member that we were decommissioned.
    #[error("{0} says this node was decommissioned")]
    EvictionNotice(NodeId),
}

impl DropReason {
    /// Metric label for this reason.
    pub fn label(&self) -> &'static str {
        match self {
            DropReason::NotNexus => "not_nexus",
            DropReason::Malformed(_) => "malformed",
            DropReason::Stale(_) => "stale",
            DropReason::UntrustedCertificate(_) => "untrusted_certificate",
            DropReason::UnknownSender(_) => "unknown_sender",
            DropReason::IdentityMismatch { .. } => "identity_mismatch",
            DropReason::Denied(_) => "denied",
            DropReason::Revoked(_) => "revoked",
            DropReason::NotLogged(_) => "not_logged",
            DropReason::BadSignature => "bad_signature",
            DropReason::CertificateRequested => "certificate_request",
            DropReason::EvictionNotice(_) => "eviction_notice",
        }
    }
}

/// Tuning of datagram authentication.
#[derive(Debug, Clone)]
pub struct GossipAuthConfig {
    /// Largest accepted difference between a datagram's timestamp and the local clock.
    pub max_skew: Duration,
}

impl Default for GossipAuthConfig {
    fn default() -> Self {
        GossipAuthConfig {
            max_skew: Duration::from_secs(60),
        }
    }
}

/// Seals and opens gossip datagrams for one node.
pub struct GossipAuth {
    key: Arc<NodeKey>,
    node_id: NodeId,
    mic_der: Vec<u8>,
    trust: TrustStore,
    config: GossipAuthConfig,
    prefix: Vec<u8>,
    /// Verified certificates by node id, with the fingerprint of the DER they came from.
    verified: HashMap<NodeId, ([u8; 32], VerifiedMic)>,
    /// Fingerprints of certificates whose chain failed, with when (Unix ms), so a flood of
    /// them costs one check each; a refusal is remembered for [`REJECTED_FOR_MS`] only, since
    /// the trust store grows (a tenant CA learned from the fleet document a moment later).
    rejected: HashMap<[u8; 32], u64>,
    denied: HashSet<NodeId>,
    /// Revoked serials, shared with the node's TLS verifiers.
    revocations: Option<Arc<FleetTrust>>,
    /// Peers known to hold our certificate, with when they last showed it.
    holders: HashMap<SocketAddr, u64>,
    /// When each denied address was last sent an eviction notice.
    notified: HashMap<SocketAddr, u64>,
    /// The fleet member that told us we were decommissioned.
    evicted_by: Option<NodeId>,
}

/// A datagram that passed every check.
#[derive(Debug)]
pub struct Opened<'a> {
    /// Authenticated sender.
    pub sender: NodeId,
    /// The chitchat payload.
    pub payload: &'a [u8],
}

impl GossipAuth {
    /// Authenticates as the holder of `key` and `mic_der`, trusting certificates that chain to
    /// `trust`.
    pub fn new(
        key: Arc<NodeKey>,
        mic_der: Vec<u8>,
        trust: TrustStore,
        config: GossipAuthConfig,
    ) -> GossipAuth {
        let mut prefix = DOMAIN.to_vec();
        prefix.extend_from_slice(trust.fleet_id().as_bytes());
        prefix.push(0);
        GossipAuth {
            node_id: key.node_id(),
            key,
            mic_der,
            trust,
            config,
            prefix,
            verified: HashMap::new(),
            rejected: HashMap::new(),
            denied: HashSet::new(),
            revocations: None,
            holders: HashMap::new(),
            notified: HashMap::new(),
            evicted_by: None,
        }
    }

    /// Refuse datagrams from senders whose certificate `trust` lists as revoked (checked on every
    /// datagram, so a new CRL applies to the next one).
    pub fn enforce_revocations(&mut self, trust: Arc<FleetTrust>) {
        self.revocations = Some(trust);
    }

    /// Uses a renewed certificate (same key) from now on. Peers are sent it again, since they
    /// only hold the old one.
    pub fn set_certificate(&mut self, mic_der: Vec<u8>) {
        self.mic_der = mic_der;
        self.holders.clear();
    }

    /// Refuse datagrams from `node` from now on.
    pub fn deny(&mut self, node: NodeId) {
        // Its certificate stays cached: its datagrams are still authenticated, so the eviction
        // notice goes to the node itself and not to whoever spoofs its id.
        self.denied.insert(node);
    }

    /// Wraps a chitchat payload, always carrying the certificate when it fits. Returns `None`
    /// when even the certificate-less form would exceed one UDP datagram.
    pub fn seal(&self, payload: &[u8], now_unix_ms: u64) -> Option<Vec<u8>> {
        self.seal_with(payload, now_unix_ms, true)
    }

    /// Wraps a payload without the certificate: for small datagrams to peers that already hold
    /// it from gossip (the failure detector's heartbeats and probes). A peer without it drops
    /// the datagram, which the detector tolerates.
    pub fn seal_bare(&self, payload: &[u8], now_unix_ms: u64) -> Option<Vec<u8>> {
        self.seal_with(payload, now_unix_ms, false)
    }

    /// Wraps a chitchat payload for `to`, leaving the certificate out when `to` has recently
    /// shown that it holds it (see [`GossipAuth::confirm`]). This is what keeps the ~900-byte
    /// certificate off the wire in steady state.
    pub fn seal_to(&mut self, payload: &[u8], now_unix_ms: u64, to: SocketAddr) -> Option<Vec<u8>> {
        let known = self
            .holders
            .get(&to)
            .is_some_and(|at| now_unix_ms.saturating_sub(*at) < CERT_REFRESH_MS);
        if !known {
            metrics::counter!("nexus_gossip_certificates_sent_total").increment(1);
        }
        self.seal_with(payload, now_unix_ms, !known)
    }

    /// Records that `peer` answered one of our messages (a SYN-ACK or ACK), which it can only do
    /// after verifying our certificate: it holds it now.
    pub fn confirm(&mut self, peer: SocketAddr, now_unix_ms: u64) {
        if self.holders.len() >= MAX_CACHED_CERTS && !self.holders.contains_key(&peer) {
            self.holders.clear();
        }
        self.holders.insert(peer, now_unix_ms);
    }

    /// The answer to a datagram whose sender we have no certificate for: asks it to send its
    /// certificate again. Unsigned on purpose: its only effect is a certificate in the next
    /// datagram, and it is never larger than what provoked it.
    pub fn certificate_request(&self, now_unix_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER);
        out.extend_from_slice(MAGIC);
        out.push(FLAG_CERT_REQUEST);
        out.extend_from_slice(self.node_id.as_bytes());
        out.extend_from_slice(&now_unix_ms.to_be_bytes());
        out
    }

    /// Checks a datagram from `from` (see [`GossipAuth::open`]); also handles certificate
    /// requests, which come back as [`DropReason::CertificateRequested`].
    pub fn open_from<'a>(
        &mut self,
        datagram: &'a [u8],
        now_unix_ms: u64,
        from: SocketAddr,
    ) -> Result<Opened<'a>, DropReason> {
        if datagram.len() == FIXED_HEADER
            && &datagram[..4] == MAGIC
            && datagram[4] & FLAG_CERT_REQUEST != 0
        {
            self.holders.remove(&from);
            return Err(DropReason::CertificateRequested);
        }
        self.open(datagram, now_unix_ms)
    }

    /// A signed notice telling `target` (a denied node at `to`) that it was decommissioned, or
    /// `None` if `to` was told less than a second ago. The fleet refuses a denied node's gossip,
    /// so without the notice it could not learn why it hears nothing back.
    ///
    /// The notice carries this node's certificate only when the datagram that provoked it was at
    /// least as large, so a replayed datagram from a forged address is never amplified.
    pub fn eviction_notice(
        &mut self,
        target: NodeId,
        to: SocketAddr,
        now_unix_ms: u64,
        provoked_by_len: usize,
    ) -> Option<Vec<u8>> {
        if self
            .notified
            .get(&to)
            .is_some_and(|at| now_unix_ms.saturating_sub(*at) < EVICTION_NOTICE_INTERVAL_MS)
        {
            return None;
        }
        if self.notified.len() >= MAX_CACHED_CERTS {
            // Drop only stale entries: clearing all would lift the rate limit.
            self.notified
                .retain(|_, at| now_unix_ms.saturating_sub(*at) < EVICTION_NOTICE_INTERVAL_MS);
            if self.notified.len() >= MAX_CACHED_CERTS {
                return None;
            }
        }
        self.notified.insert(to, now_unix_ms);
        let with_cert = FIXED_HEADER + 2 + self.mic_der.len() + 16 + SIGNATURE_LEN;
        self.seal_flagged(
            target.as_bytes(),
            now_unix_ms,
            provoked_by_len >= with_cert,
            FLAG_EVICTION,
        )
    }

    /// The fleet member that sent this node an authentic eviction notice, if any.
    pub fn evicted_by(&self) -> Option<NodeId> {
        self.evicted_by
    }

    fn seal_with(&self, payload: &[u8], now_unix_ms: u64, want_cert: bool) -> Option<Vec<u8>> {
        self.seal_flagged(payload, now_unix_ms, want_cert, 0)
    }

    fn seal_flagged(
        &self,
        payload: &[u8],
        now_unix_ms: u64,
        want_cert: bool,
        flags: u8,
    ) -> Option<Vec<u8>> {
        let with_cert = FIXED_HEADER + 2 + self.mic_der.len() + payload.len() + SIGNATURE_LEN;
        let include_cert = want_cert && with_cert <= MAX_DATAGRAM;
        if !include_cert && FIXED_HEADER + payload.len() + SIGNATURE_LEN > MAX_DATAGRAM {
            return None;
        }
        let mut out = Vec::with_capacity(with_cert);
        out.extend_from_slice(MAGIC);
        out.push(flags | if include_cert { FLAG_CERT } else { 0 });
        out.extend_from_slice(self.node_id.as_bytes());
        out.extend_from_slice(&now_unix_ms.to_be_bytes());
        if include_cert {
            out.extend_from_slice(&(self.mic_der.len() as u16).to_be_bytes());
            out.extend_from_slice(&self.mic_der);
        }
        out.extend_from_slice(payload);
        let signature = self.key.sign(&self.signed_bytes(&out));
        out.extend_from_slice(&signature);
        Some(out)
    }

    fn signed_bytes(&self, body: &[u8]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(self.prefix.len() + body.len());
        msg.extend_from_slice(&self.prefix);
        msg.extend_from_slice(body);
        msg
    }

    /// Checks a datagram: framing, freshness, the sender's certificate chain, deny list and
    /// signature. On success returns the chitchat payload it carries.
    pub fn open<'a>(
        &mut self,
        datagram: &'a [u8],
        now_unix_ms: u64,
    ) -> Result<Opened<'a>, DropReason> {
        if datagram.len() < 4 || &datagram[..4] != MAGIC {
            return Err(DropReason::NotNexus);
        }
        if datagram.len() < FIXED_HEADER + SIGNATURE_LEN {
            return Err(DropReason::Malformed("shorter than the fixed header"));
        }
        let flags = datagram[4];
        let mut sender = [0u8; 16];
        sender.copy_from_slice(&datagram[5..21]);
        let sender = NodeId(sender);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&datagram[21..29]);
        let sent_at = u64::from_be_bytes(ts);
        // In i128: the timestamp is attacker-controlled, and `as i64` arithmetic on it overflows.
        let skew = i128::from(sent_at) - i128::from(now_unix_ms);
        if skew.unsigned_abs() > self.config.max_skew.as_millis() {
            let clamped = skew.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
            return Err(DropReason::Stale(clamped));
        }
        let body_end = datagram.len() - SIGNATURE_LEN;
        let mut cursor = FIXED_HEADER;
        let mut carried = None;
        if flags & FLAG_CERT != 0 {
            if body_end < cursor + 2 {
                return Err(DropReason::Malformed("certificate length missing"));
            }
            let cert_len = u16::from_be_bytes([datagram[cursor], datagram[cursor + 1]]) as usize;
            cursor += 2;
            if body_end < cursor + cert_len {
                return Err(DropReason::Malformed("certificate truncated"));
            }
            carried = Some(&datagram[cursor..cursor + cert_len]);
            cursor += cert_len;
        }
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&datagram[body_end..]);
        let signed = self.signed_bytes(&datagram[..body_end]);
        // Cheap checks first (cache, parse, identity, signature), the certificate chain last:
        // anyone can replay a member's public certificate, but only its key can sign.
        let cached = self
            .verified
            .get(&sender)
            .filter(|(fp, _)| carried.is_none_or(|cert| sha256_fingerprint(cert) == *fp));
        match (cached, carried) {
            (Some((_, mic)), _) => {
                if !verify_signature(&mic.public_key, &signed, &signature) {
                    return Err(DropReason::BadSignature);
                }
                if mic.not_after_unix.saturating_mul(1000) < now_unix_ms as i64 {
                    self.verified.remove(&sender);
                    return Err(DropReason::UntrustedCertificate(
                        "certificate has expired".to_string(),
                    ));
                }
            }
            (None, Some(cert)) => {
                self.learn_certificate(sender, cert, &signed, &signature, now_unix_ms)?
            }
            (None, None) => return Err(DropReason::UnknownSender(sender)),
        }
        // Denied only once authentic, so eviction notices answer the node itself, not a spoofer.
        if self.denied.contains(&sender) {
            return Err(DropReason::Denied(sender));
        }
        // After the deny list: a decommissioned node (revoked too) still gets its eviction notice.
        if let Some(trust) = &self.revocations {
            let revoked = self
                .verified
                .get(&sender)
                .is_some_and(|(_, mic)| trust.revocations().is_revoked(&mic.serial_hex));
            if revoked {
                return Err(DropReason::Revoked(sender));
            }
            if let Some((_, mic)) = self.verified.get(&sender)
                && trust.check_logged(mic).is_err()
            {
                return Err(DropReason::NotLogged(sender));
            }
        }
        let payload = &datagram[cursor..body_end];
        if flags & FLAG_EVICTION != 0 {
            if payload != self.node_id.as_bytes() {
                return Err(DropReason::Malformed("eviction notice for another node"));
            }
            self.evicted_by = Some(sender);
            return Err(DropReason::EvictionNotice(sender));
        }
        Ok(Opened { sender, payload })
    }

    /// Checks a certificate carried by a datagram: identity and signature first (cheap), then
    /// the chain (expensive, cached both ways).
    fn learn_certificate(
        &mut self,
        sender: NodeId,
        cert: &[u8],
        signed: &[u8],
        signature: &[u8; 64],
        now_unix_ms: u64,
    ) -> Result<(), DropReason> {
        let fingerprint = sha256_fingerprint(cert);
        if self
            .rejected
            .get(&fingerprint)
            .is_some_and(|at| now_unix_ms.saturating_sub(*at) < REJECTED_FOR_MS)
        {
            return Err(DropReason::UntrustedCertificate(
                "certificate was rejected before".to_string(),
            ));
        }
        let claimed = nexus_ca::read_mic(cert)
            .map_err(|err| DropReason::UntrustedCertificate(err.to_string()))?;
        if claimed.fleet_id != self.trust.fleet_id() {
            return Err(DropReason::UntrustedCertificate(format!(
                "certificate of fleet {:?}, not this fleet",
                claimed.fleet_id
            )));
        }
        if claimed.node_id != sender {
            return Err(DropReason::IdentityMismatch {
                cert: claimed.node_id,
                header: sender,
            });
        }
        if !verify_signature(&claimed.public_key, signed, signature) {
            return Err(DropReason::BadSignature);
        }
        // The live trust (anchors promoted since start) when the node shares it, else the
        // store this authenticator was built with.
        let verified = match &self.revocations {
            Some(live) => live.store().verify_mic(cert, (now_unix_ms / 1000) as i64),
            None => self.trust.verify_mic(cert, (now_unix_ms / 1000) as i64),
        };
        let mic = match verified {
            Ok(mic) => mic,
            Err(err) => {
                if self.rejected.len() >= MAX_CACHED_CERTS {
                    self.rejected.clear();
                }
                self.rejected.insert(fingerprint, now_unix_ms);
                return Err(DropReason::UntrustedCertificate(err.to_string()));
            }
        };
        if mic.node_id != sender || mic.public_key != claimed.public_key {
            return Err(DropReason::IdentityMismatch {
                cert: mic.node_id,
                header: sender,
            });
        }
        if self.verified.len() >= MAX_CACHED_CERTS {
            self.verified.clear();
        }
        self.verified.insert(sender, (fingerprint, mic));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::unix_ms;
    use nexus_ca::{CertificateAuthority, MicProfile, Role};

    /// A fleet root with one anchor intermediate, and the trust store its nodes hold.
    struct Fleet {
        id: String,
        intermediate: CertificateAuthority,
        trust: TrustStore,
    }

    fn fleet(id: &str) -> Fleet {
        let root = CertificateAuthority::new_fleet_root(id).unwrap();
        let intermediate = root
            .new_intermediate(id, NodeKey::generate().node_id())
            .unwrap();
        let trust = TrustStore::new(
            root.cert_der().to_vec(),
            vec![intermediate.cert_der().to_vec()],
        )
        .unwrap();
        Fleet {
            id: id.to_string(),
            intermediate,
            trust,
        }
    }

    /// A node key and its MIC, issued by `fleet`'s intermediate.
    fn member(fleet: &Fleet) -> (Arc<NodeKey>, Vec<u8>) {
        let key = NodeKey::generate();
        let mic = fleet
            .intermediate
            .issue_mic(
                &key.public_key(),
                &MicProfile {
                    fleet_id: fleet.id.clone(),
                    node_id: key.node_id(),
                    tenant: String::new(),
                    site: "lab-1".to_string(),
                    role: Role::Node,
                    validity: Duration::from_secs(3600),
                },
            )
            .unwrap();
        (Arc::new(key), mic)
    }

    fn auth_for(fleet: &Fleet, member: &(Arc<NodeKey>, Vec<u8>)) -> GossipAuth {
        GossipAuth::new(
            member.0.clone(),
            member.1.clone(),
            fleet.trust.clone(),
            GossipAuthConfig::default(),
        )
    }

    /// A sender and a receiver of one fleet.
    fn pair() -> (Fleet, GossipAuth, GossipAuth) {
        let f = fleet("acme");
        let sender = auth_for(&f, &member(&f));
        let receiver = auth_for(&f, &member(&f));
        (f, sender, receiver)
    }

    /// A correctly signed datagram that does not carry the certificate (hand-built: `seal` only
    /// leaves it out when the payload is too big for it).
    fn seal_without_cert(auth: &GossipAuth, payload: &[u8], now: u64) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(0);
        out.extend_from_slice(auth.node_id.as_bytes());
        out.extend_from_slice(&now.to_be_bytes());
        out.extend_from_slice(payload);
        let signature = auth.key.sign(&auth.signed_bytes(&out));
        out.extend_from_slice(&signature);
        out
    }

    #[test]
    fn seal_then_open_returns_payload_and_sender() {
        let (_, sender, mut receiver) = pair();
        let now = unix_ms();
        let payload = b"chitchat envelope bytes".to_vec();
        let sealed = sender.seal(&payload, now).unwrap();
        assert_eq!(
            sealed[4] & FLAG_CERT,
            FLAG_CERT,
            "a small datagram carries the MIC"
        );
        let opened = receiver.open(&sealed, now).unwrap();
        assert_eq!(opened.payload, &payload[..]);
        assert_eq!(opened.sender, sender.node_id);
        // Empty payloads are fine too, and a second datagram is opened from the cache.
        let empty = sender.seal(b"", now + 1).unwrap();
        let opened = receiver.open(&empty, now + 1).unwrap();
        assert!(opened.payload.is_empty());
        assert_eq!(opened.sender, sender.node_id);
    }

    #[test]
    fn flipping_any_byte_drops_the_datagram() {
        let (f, sender, _) = pair();
        let receiver_key = member(&f);
        let now = unix_ms();
        let sealed = sender.seal(b"some chitchat payload", now).unwrap();
        let cert_len = sender.mic_der.len();
        let cert_start = FIXED_HEADER + 2;
        let payload_start = cert_start + cert_len;
        let sig_start = sealed.len() - SIGNATURE_LEN;

        // One receiver that already knows the sender's certificate, and fresh ones.
        let mut warm = auth_for(&f, &receiver_key);
        warm.open(&sealed, now).unwrap();

        for i in 0..sealed.len() {
            for mask in [0x01u8, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= mask;
                let mut fresh = auth_for(&f, &receiver_key);
                for (which, receiver) in [("fresh", &mut fresh), ("warm", &mut warm)] {
                    let result = receiver.open(&bad, now + 3).map(|o| o.sender);
                    let ok = match (&result, i) {
                        (Err(DropReason::NotNexus), 0..4) => true,
                        // Clearing the certificate flag: unknown sender to a fresh receiver,
                        // payload and signature no longer line up for a warm one.
                        (Err(DropReason::UnknownSender(_)), 4) => which == "fresh" && mask == 1,
                        (Err(DropReason::BadSignature), 4) => which == "warm" || mask != 1,
                        (Err(DropReason::IdentityMismatch { .. }), 5..21) => true,
                        (Err(DropReason::Stale(_)), 21..29) => true,
                        // The lowest timestamp bytes stay inside the skew window.
                        (Err(DropReason::BadSignature), 21..29) => i >= 27,
                        (Err(DropReason::Malformed(_)), 29..31) => true,
                        (Err(DropReason::UntrustedCertificate(_)), 29..31) => true,
                        (Err(DropReason::UntrustedCertificate(_)), _) => {
                            (cert_start..payload_start).contains(&i)
                        }
                        // A certificate the receiver has not verified (a damaged one is new to
                        // both) is checked for identity and signature before its chain: a
                        // damaged key or name fails there.
                        (
                            Err(DropReason::BadSignature | DropReason::IdentityMismatch { .. }),
                            _,
                        ) if (cert_start..payload_start).contains(&i) => true,
                        (Err(DropReason::BadSignature), _) => i >= payload_start,
                        _ => false,
                    };
                    assert!(
                        ok,
                        "byte {i} (cert {cert_start}..{payload_start}, signature from {sig_start}) \
                         ^ {mask:#x} to a {which} receiver gave {result:?}"
                    );
                }
            }
        }
        // The warm receiver still accepts the genuine datagram afterwards.
        assert_eq!(warm.open(&sealed, now + 3).unwrap().sender, sender.node_id);
    }

    #[test]
    fn a_certificate_of_another_node_is_an_identity_mismatch() {
        let f = fleet("acme");
        let a = member(&f);
        let b = member(&f);
        // B signs with its own key but presents A's MIC.
        let impostor = GossipAuth::new(
            b.0.clone(),
            a.1.clone(),
            f.trust.clone(),
            Default::default(),
        );
        let mut receiver = auth_for(&f, &member(&f));
        let now = unix_ms();
        let sealed = impostor.seal(b"payload", now).unwrap();
        assert_eq!(
            receiver.open(&sealed, now).unwrap_err(),
            DropReason::IdentityMismatch {
                cert: a.0.node_id(),
                header: b.0.node_id()
            }
        );
    }

    #[test]
    fn a_mic_from_another_fleet_root_is_untrusted() {
        let ours = fleet("acme");
        let mut receiver = auth_for(&ours, &member(&ours));
        let now = unix_ms();
        // Another fleet, and a different root that happens to use the same fleet id.
        for other in [fleet("globex"), fleet("acme")] {
            let sender = auth_for(&other, &member(&other));
            let sealed = sender.seal(b"payload", now).unwrap();
            let err = receiver.open(&sealed, now).unwrap_err();
            assert!(
                matches!(err, DropReason::UntrustedCertificate(_)),
                "fleet {}: {err:?}",
                other.id
            );
            assert_eq!(err.label(), "untrusted_certificate");
            // And the rejected certificate was not cached: a certificate-less datagram from the
            // same sender is still unknown.
            let bare = seal_without_cert(&sender, b"payload", now);
            assert_eq!(
                receiver.open(&bare, now).unwrap_err(),
                DropReason::UnknownSender(sender.node_id)
            );
        }
    }

    #[test]
    fn timestamps_outside_the_skew_window_are_stale() {
        let f = fleet("acme");
        let sender = auth_for(&f, &member(&f));
        let (key, mic) = member(&f);
        let config = GossipAuthConfig {
            max_skew: Duration::from_secs(5),
        };
        let mut receiver = GossipAuth::new(key, mic, f.trust.clone(), config);
        let sent = unix_ms();
        let sealed = sender.seal(b"payload", sent).unwrap();
        // Too old, from too far in the future.
        assert_eq!(
            receiver.open(&sealed, sent + 5_001).unwrap_err(),
            DropReason::Stale(-5_001)
        );
        assert_eq!(
            receiver.open(&sealed, sent - 5_001).unwrap_err(),
            DropReason::Stale(5_001)
        );
        // The edges of the window are accepted.
        assert!(receiver.open(&sealed, sent + 5_000).is_ok());
        assert!(receiver.open(&sealed, sent - 5_000).is_ok());
        // Absurd timestamps are stale, not an arithmetic overflow.
        for ts in [0, u64::MAX, 1 << 63, (1 << 63) + sent, i64::MAX as u64] {
            let mut forged = sealed.clone();
            forged[21..29].copy_from_slice(&u64::to_be_bytes(ts));
            assert!(
                matches!(receiver.open(&forged, sent), Err(DropReason::Stale(_))),
                "timestamp {ts}"
            );
        }
    }

    #[test]
    fn denied_senders_are_dropped_and_others_are_not() {
        let f = fleet("acme");
        let sender = auth_for(&f, &member(&f));
        let other = auth_for(&f, &member(&f));
        let mut receiver = auth_for(&f, &member(&f));
        let now = unix_ms();
        let sealed = sender.seal(b"payload", now).unwrap();
        receiver.open(&sealed, now).unwrap();

        receiver.deny(sender.node_id);
        let err = receiver.open(&sealed, now).unwrap_err();
        assert_eq!(err, DropReason::Denied(sender.node_id));
        assert_eq!(err.label(), "denied");
        // Certificate-less datagrams too (the cached certificate must not let them through).
        let bare = seal_without_cert(&sender, b"payload", now);
        assert_eq!(
            receiver.open(&bare, now).unwrap_err(),
            DropReason::Denied(sender.node_id)
        );
        // Others are unaffected.
        let from_other = other.seal(b"payload", now).unwrap();
        assert_eq!(
            receiver.open(&from_other, now).unwrap().sender,
            other.node_id
        );
    }

    #[test]
    fn revoked_senders_are_dropped_from_the_next_datagram_and_renewed_ones_are_let_back() {
        let f = fleet("acme");
        let sender_member = member(&f);
        let mut sender = auth_for(&f, &sender_member);
        let mut receiver = auth_for(&f, &member(&f));
        let live = nexus_ca::FleetTrust::new(f.trust.clone());
        receiver.enforce_revocations(live.clone());
        let now = unix_ms();
        let sealed = sender.seal(b"payload", now).unwrap();
        receiver.open(&sealed, now).unwrap();

        let serial = nexus_ca::read_mic(&sender_member.1).unwrap().serial_hex;
        let crl = f
            .intermediate
            .issue_crl(
                1,
                &[nexus_ca::Revoked {
                    serial_hex: serial,
                    revoked_at_unix: 0,
                    reason: nexus_ca::RevokeReason::KeyCompromise,
                }],
                Duration::from_secs(60),
            )
            .unwrap();
        live.install_crl(&crl).unwrap();
        let err = receiver.open(&sealed, now).unwrap_err();
        assert_eq!(err, DropReason::Revoked(sender.node_id));
        assert_eq!(err.label(), "revoked");
        // Certificate-less datagrams too: the cached certificate is the revoked one.
        let bare = seal_without_cert(&sender, b"payload", now);
        assert_eq!(
            receiver.open(&bare, now).unwrap_err(),
            DropReason::Revoked(sender.node_id)
        );
        // A decommissioned node is denied first, so it still hears why (eviction notice).
        receiver.deny(sender.node_id);
        assert_eq!(
            receiver.open(&sealed, now).unwrap_err(),
            DropReason::Denied(sender.node_id)
        );

        // A new certificate for the same key (not revoked) is accepted again by a receiver that
        // does not deny the node.
        let mut fresh = auth_for(&f, &member(&f));
        fresh.enforce_revocations(live.clone());
        let renewed = f
            .intermediate
            .issue_mic(
                &sender_member.0.public_key(),
                &MicProfile {
                    fleet_id: f.id.clone(),
                    node_id: sender_member.0.node_id(),
                    tenant: String::new(),
                    site: "lab-1".to_string(),
                    role: Role::Node,
                    validity: Duration::from_secs(3600),
                },
            )
            .unwrap();
        sender.set_certificate(renewed);
        let sealed = sender.seal(b"payload", now).unwrap();
        assert_eq!(fresh.open(&sealed, now).unwrap().sender, sender.node_id);
    }

    #[tokio::test]
    async fn plain_chitchat_and_junk_are_not_nexus() {
        use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
        let (_, sender, mut receiver) = pair();
        let now = unix_ms();
        let mut codec = crate::codec::ChitchatCodec::new().await.unwrap();
        for version in [ProtocolVersion::V0, ProtocolVersion::V1] {
            let plain = codec
                .encode(ChitchatEnvelope {
                    version,
                    message: ChitchatMessage::Syn {
                        cluster_id: "acme".to_string(),
                        digest: Default::default(),
                    },
                })
                .await
                .unwrap();
            assert_eq!(
                receiver.open(&plain, now).unwrap_err(),
                DropReason::NotNexus
            );
        }
        // A sealed datagram's payload alone (stripped of the envelope) is not Nexus either.
        let sealed = sender.seal(b"chitchat bytes", now).unwrap();
        let inner = &sealed[FIXED_HEADER + 2 + sender.mic_der.len()..];
        assert_eq!(receiver.open(inner, now).unwrap_err(), DropReason::NotNexus);

        // Deterministic junk, with and without the magic in front: dropped, never a panic.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let len = (next() % 400) as usize;
            let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if junk.starts_with(MAGIC) {
                continue;
            }
            assert_eq!(receiver.open(&junk, now).unwrap_err(), DropReason::NotNexus);
            junk.splice(0..junk.len().min(4), MAGIC.iter().copied());
            assert!(receiver.open(&junk, now).is_err());
            // Junk that carries a believable timestamp gets as far as the sender lookup.
            if junk.len() >= FIXED_HEADER + SIGNATURE_LEN {
                junk[21..29].copy_from_slice(&now.to_be_bytes());
                assert!(receiver.open(&junk, now).is_err());
            }
        }
        assert_eq!(receiver.open(&[], now).unwrap_err(), DropReason::NotNexus);
        assert_eq!(
            receiver.open(b"NXG", now).unwrap_err(),
            DropReason::NotNexus
        );
    }

    #[test]
    fn every_truncation_is_dropped_without_panicking() {
        let (_, sender, mut receiver) = pair();
        let now = unix_ms();
        let with_cert = sender.seal(b"a payload of some length", now).unwrap();
        let without_cert = seal_without_cert(&sender, b"a payload of some length", now);
        for datagram in [&with_cert, &without_cert] {
            for len in 0..datagram.len() {
                let result = receiver.open(&datagram[..len], now);
                assert!(
                    result.is_err(),
                    "prefix of {len} bytes accepted: {result:?}"
                );
                if len < 4 {
                    assert_eq!(result.unwrap_err(), DropReason::NotNexus);
                } else if len < FIXED_HEADER + SIGNATURE_LEN {
                    assert!(
                        matches!(result, Err(DropReason::Malformed(_))),
                        "{len}: {result:?}"
                    );
                }
            }
            // Also with bytes cut from the front, which shifts every field.
            for start in 1..datagram.len() {
                assert!(receiver.open(&datagram[start..], now).is_err());
            }
        }
        // The full datagrams still open.
        assert!(receiver.open(&with_cert, now).is_ok());
        assert!(receiver.open(&without_cert, now).is_ok());
    }

    #[test]
    fn the_certificate_is_left_out_only_for_peers_that_hold_it() {
        let (f, mut sender, mut receiver) = pair();
        let peer: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let now = unix_ms();
        let has_cert = |d: &[u8]| d[4] & FLAG_CERT != 0;

        // Unconfirmed peer: the certificate travels.
        let first = sender.seal_to(b"syn", now, peer).unwrap();
        assert!(has_cert(&first));
        receiver.open(&first, now).unwrap();
        // The peer answered: from now on the certificate stays home, and the peer still opens it.
        sender.confirm(peer, now);
        let bare = sender.seal_to(b"syn", now + 1, peer).unwrap();
        assert!(!has_cert(&bare));
        assert_eq!(receiver.open(&bare, now + 1).unwrap().payload, b"syn");
        // Other peers still get it.
        let other: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        assert!(has_cert(&sender.seal_to(b"syn", now + 1, other).unwrap()));
        // Refreshed once a minute.
        assert!(has_cert(
            &sender.seal_to(b"syn", now + CERT_REFRESH_MS, peer).unwrap()
        ));

        // A receiver that lost it asks; the request is not gossip, and the next datagram carries
        // the certificate again.
        let mut forgetful = auth_for(&f, &member(&f));
        let err = forgetful.open_from(&bare, now + 1, peer).unwrap_err();
        assert_eq!(err, DropReason::UnknownSender(sender.node_id));
        let request = receiver.certificate_request(now + 2);
        assert_eq!(
            sender.open_from(&request, now + 2, peer).unwrap_err(),
            DropReason::CertificateRequested
        );
        assert!(has_cert(&sender.seal_to(b"syn", now + 3, peer).unwrap()));
        // A request is never mistaken for gossip by `open` either, whatever its length.
        for len in 0..=request.len() {
            assert!(receiver.open(&request[..len], now + 2).is_err());
        }
    }

    #[test]
    fn certificate_less_datagrams_need_a_previously_learned_certificate() {
        let (_, sender, mut receiver) = pair();
        let now = unix_ms();
        // Too big to carry the MIC, small enough without it: `seal` leaves the MIC out.
        let big = vec![0x5a; MAX_DATAGRAM - FIXED_HEADER - SIGNATURE_LEN];
        let sealed_big = sender.seal(&big, now).unwrap();
        assert_eq!(sealed_big.len(), MAX_DATAGRAM);
        assert_eq!(sealed_big[4] & FLAG_CERT, 0, "no room for the certificate");
        // One byte more does not fit at all.
        assert!(
            sender
                .seal(&[0; MAX_DATAGRAM - FIXED_HEADER - SIGNATURE_LEN + 1], now)
                .is_none()
        );
        let small_bare = seal_without_cert(&sender, b"small", now);

        let err = receiver.open(&sealed_big, now).unwrap_err();
        assert_eq!(err, DropReason::UnknownSender(sender.node_id));
        assert_eq!(err.label(), "unknown_sender");
        assert_eq!(
            receiver.open(&small_bare, now).unwrap_err(),
            DropReason::UnknownSender(sender.node_id)
        );

        // Learn the certificate from an ordinary datagram: both are accepted from then on.
        receiver
            .open(&sender.seal(b"hello", now).unwrap(), now)
            .unwrap();
        let opened = receiver.open(&sealed_big, now).unwrap();
        assert_eq!(opened.sender, sender.node_id);
        assert_eq!(opened.payload, &big[..]);
        assert_eq!(receiver.open(&small_bare, now).unwrap().payload, b"small");
    }

    #[test]
    fn a_denied_node_gets_an_authentic_eviction_notice_at_most_once_a_second() {
        let f = fleet("acme");
        let mut fleet_node = auth_for(&f, &member(&f));
        let denied_member = member(&f);
        let mut denied = auth_for(&f, &denied_member);
        let third = member(&f);
        let mut bystander = auth_for(&f, &third);
        let denied_addr: SocketAddr = "127.0.0.1:7003".parse().unwrap();
        let now = unix_ms();

        let notice = fleet_node
            .eviction_notice(denied.node_id, denied_addr, now, usize::MAX)
            .unwrap();
        assert!(
            fleet_node
                .eviction_notice(denied.node_id, denied_addr, now + 10, usize::MAX)
                .is_none(),
            "rate limited"
        );
        assert!(
            fleet_node
                .eviction_notice(
                    denied.node_id,
                    denied_addr,
                    now + EVICTION_NOTICE_INTERVAL_MS,
                    usize::MAX
                )
                .is_some()
        );
        // Provoked by a small datagram (say, a replay from a forged address), the notice is no
        // larger than the datagram was: it leaves the certificate out.
        let small = fleet_node
            .eviction_notice(denied.node_id, "127.0.0.1:7004".parse().unwrap(), now, 120)
            .unwrap();
        assert_eq!(small[4] & FLAG_CERT, 0);
        assert!(small.len() <= 120, "{} bytes", small.len());

        assert_eq!(denied.evicted_by(), None);
        assert_eq!(
            denied.open(&notice, now).unwrap_err(),
            DropReason::EvictionNotice(fleet_node.node_id)
        );
        assert_eq!(denied.evicted_by(), Some(fleet_node.node_id));

        // Addressed to someone else: ignored, and nobody else believes it is evicted.
        assert!(matches!(
            bystander.open(&notice, now).unwrap_err(),
            DropReason::Malformed(_)
        ));
        assert_eq!(bystander.evicted_by(), None);

        // A forged notice (any byte changed) is not believed.
        let mut forged = notice.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let mut denied_again = auth_for(&f, &denied_member);
        assert_eq!(
            denied_again.open(&forged, now).unwrap_err(),
            DropReason::BadSignature
        );
        assert_eq!(denied_again.evicted_by(), None);
    }
}
