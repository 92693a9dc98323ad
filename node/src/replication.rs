//! Replicated configuration on the node: the fleet document and this node's tenant document
//! (anchors: every tenant's), kept in SQLite, written through the API, pushed to peers and
//! caught up by anti-entropy. The documents, signatures and authorization rules are
//! `nexus-crdt`'s; this module moves and stores their bytes.
//!
//! - **Write**: the API validates, the document takes the change (signed by this node for the
//!   caller), the new incremental chunk and the signed envelope are stored in one transaction,
//!   and only then is the write acknowledged. Then the change is pushed down a broadcast tree
//!   (see [`Replication::push`]) to every live member that may hold the document.
//! - **Receive**: every envelope travels with its author's MIC; the MIC is checked against the
//!   fleet trust as of the change's time (so changes made under a since-renewed MIC still
//!   verify) and must not be revoked; `ConfigDoc::apply_remote` checks the signature and who
//!   may write what. Refused changes are counted, dropped and never relayed.
//! - **Anti-entropy**: each node publishes `cfg/<doc>` = `<version>:<heads digest>` in gossip;
//!   when a peer's digest differs, the node runs an automerge sync session with it over
//!   `nexus-peer/1` (one round trip per stream on the kept connection), carrying signed
//!   envelopes instead of raw changes, bounded in rounds, packet size and time, and resuming
//!   from the sync state saved for that peer after the last session that ended well.
//! - **Reads** come from a materialized copy of each document's typed model, refreshed per
//!   object from the changes that touched it, so a read never hydrates a whole document.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use autosurgeon::Hydrate;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nexus_ca::{FleetTrust, NodeId, Role};
use nexus_crdt::{
    Applied, AuthorDirectory, AuthorFacts, Caller, CallerRole, ChangeHash, Collection, ConfigDoc,
    DocId, EnvelopeSource, FleetDoc, KnownAuthor, KnownNodes, LocalAuthor, ObjectRef, PeerSync,
    SignedChange, Snapshot, SyncLimits, SyncPacket, TenantDoc,
};
use nexus_mesh::{Mesh, NodeStatus};
use serde::{Deserialize, Serialize};

use crate::config_view::{Held, Persister, View};
use crate::peer::{PeerRequest, PeerResponse, PeerService};
use crate::store::Store;

/// Gossip key prefix: `cfg/<doc id>` = `<version>:<heads digest hex>`.
pub const GOSSIP_PREFIX_CONFIG: &str = "cfg/";
/// Peers a node pushes a change to directly; each relays to its share of the rest.
pub const DEFAULT_PUSH_FANOUT: usize = 6;
/// Most relay targets one pushed message may name (a tree over the largest site pool).
pub const MAX_RELAY: usize = 4096;
/// Round trips one sync session may take before it is cut (the next session resumes).
const MAX_SYNC_ROUNDS: usize = 64;
/// Wall time one sync session may take.
const SYNC_SESSION_LIMIT: Duration = Duration::from_secs(20);
/// Changes (and bytes) per sync packet: a backlog larger than this is streamed over rounds.
const SYNC_PACKET_CHANGES: usize = 500;
const SYNC_PACKET_BYTES: usize = 1024 * 1024;
/// Compact a document's stored chunks into one once there are this many.
const COMPACT_AFTER_CHUNKS: u64 = 512;

/// A signed change as it travels: the envelope and its author's MIC (both base64).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireChange {
    /// `SignedChange::encode()`.
    pub envelope: String,
    /// The author's MIC, DER.
    pub author_mic: String,
}

/// One message of a sync session on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireSync {
    /// `SyncPacket::encode()`, base64; absent when this side has nothing to say.
    #[serde(default)]
    pub packet: Option<String>,
    /// The MICs (DER, base64) of the authors of the packet's changes.
    #[serde(default)]
    pub mics: Vec<String>,
}

/// Why a write was refused.
#[derive(Debug)]
pub enum WriteError {
    /// The body does not parse as the object (a missing or mistyped field).
    Malformed(String),
    /// The caller's input is invalid: every problem with its field path.
    Invalid(Vec<String>),
    /// This node does not hold the document (another tenant's), or cannot write it (the fleet
    /// document on a node that is not an anchor).
    NotHere(String),
    /// The object does not exist.
    NotFound(String),
    /// This node has not received the configuration the write depends on yet (a node that
    /// just joined, before the fleet document arrived): retry in a moment.
    NotReady(String),
    /// Storage or internal failure.
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> WriteError {
    WriteError::Internal(e.to_string())
}

/// Resolves an author from the MIC that came with its change, as of the change's time.
struct MicDirectory<'a> {
    fleet: &'a FleetTrust,
    mic: &'a [u8],
    at_unix: i64,
}

impl AuthorDirectory for MicDirectory<'_> {
    fn resolve(&self, node: &NodeId, mic_serial: &str) -> Option<KnownAuthor> {
        resolve_mic(self.fleet, self.mic, self.at_unix, node, mic_serial)
    }
}

fn resolve_mic(
    fleet: &FleetTrust,
    mic: &[u8],
    at_unix: i64,
    node: &NodeId,
    mic_serial: &str,
) -> Option<KnownAuthor> {
    let mic = fleet.verify_peer_unlogged(mic, &[], at_unix).ok()?;
    (mic.node_id == *node && mic.serial_hex == mic_serial).then_some(KnownAuthor {
        facts: AuthorFacts {
            node_id: mic.node_id,
            role: mic.role,
            tenant: mic.tenant,
            site: mic.site,
        },
        public_key: mic.public_key,
    })
}

/// An author resolved from one of a packet's MICs (its index), or refused.
type Resolved = Option<(KnownAuthor, usize)>;

/// Resolves the authors of a sync packet from the MICs sent with it, each checked as of the
/// earliest change it signed in the packet; verdicts are cached for the packet.
struct PacketDirectory<'a> {
    fleet: &'a FleetTrust,
    mics: Vec<Vec<u8>>,
    at_unix: HashMap<String, i64>,
    cache: RefCell<HashMap<(NodeId, String), Resolved>>,
}

/// What a write checks before committing: the problems of the new object, given the model.
type Validator<'a, V> = &'a (dyn Fn(&mut View, Option<V>) -> Vec<String> + Sync);

impl PacketDirectory<'_> {
    /// The MIC that certified `serial`, once [`AuthorDirectory::resolve`] accepted it.
    fn mic_for(&self, node: &NodeId, serial: &str) -> Option<&[u8]> {
        let cache = self.cache.borrow();
        let (_, index) = cache.get(&(*node, serial.to_string()))?.as_ref()?;
        self.mics.get(*index).map(Vec::as_slice)
    }
}

impl AuthorDirectory for PacketDirectory<'_> {
    fn resolve(&self, node: &NodeId, mic_serial: &str) -> Option<KnownAuthor> {
        let key = (*node, mic_serial.to_string());
        if let Some(known) = self.cache.borrow().get(&key) {
            return known.as_ref().map(|(k, _)| k.clone());
        }
        let at = self
            .at_unix
            .get(mic_serial)
            .copied()
            .unwrap_or_else(|| (crate::now_ms() / 1000) as i64);
        let known = self.mics.iter().enumerate().find_map(|(i, mic)| {
            resolve_mic(self.fleet, mic, at, node, mic_serial).map(|k| (k, i))
        });
        self.cache.borrow_mut().insert(key, known.clone());
        known.map(|(k, _)| k)
    }
}

/// Envelopes for a sync packet, from the change table; remembers each author's MIC.
struct StoredEnvelopes<'a> {
    store: &'a Store,
    persister: &'a Persister,
    mics: RefCell<BTreeMap<String, Vec<u8>>>,
}

impl EnvelopeSource for StoredEnvelopes<'_> {
    fn envelope(&self, hash: &ChangeHash) -> Option<SignedChange> {
        let hash = hex::encode(hash.0);
        let (envelope, mic) = match self.persister.pending(&hash) {
            Some(found) => found,
            None => self.store.config_change(&hash).ok()??,
        };
        let change = SignedChange::decode(&envelope).ok()?;
        self.mics
            .borrow_mut()
            .entry(change.mic_serial.clone())
            .or_insert(mic);
        Some(change)
    }
}

/// The kinds of object the API writes, and where each lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Route policies of a tenant (`routes`).
    Route,
    /// Route policies scoped to one site of a tenant (`site_routes`, keyed `<site>/<id>`).
    SiteRoute(String),
    /// Firmware targets of a tenant.
    FirmwareTarget,
    /// Tenants (fleet document).
    Tenant,
    /// Fleet-wide route policies (fleet document).
    FleetPolicy,
}

impl Kind {
    /// The word for one object in messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Kind::Route | Kind::SiteRoute(_) => "route policy",
            Kind::FirmwareTarget => "firmware target",
            Kind::Tenant => "tenant",
            Kind::FleetPolicy => "fleet policy",
        }
    }

    fn in_fleet_doc(&self) -> bool {
        matches!(self, Kind::Tenant | Kind::FleetPolicy)
    }

    fn map_key(&self, id: &str) -> String {
        match self {
            Kind::SiteRoute(site) => nexus_crdt::site_key(site, id),
            _ => id.to_string(),
        }
    }

    fn collection_name(&self) -> &'static str {
        match self {
            Kind::Route => "routes",
            Kind::SiteRoute(_) => "site_routes",
            Kind::FirmwareTarget => "firmware_targets",
            Kind::Tenant => "tenants",
            Kind::FleetPolicy => "policies",
        }
    }
}

/// The effective configuration a data plane is compiled from
/// ([`Replication::policy_sources`]).
#[derive(Debug, Default, Clone)]
pub struct PolicySources {
    /// Fleet-wide policies.
    pub fleet_policies: Vec<nexus_crdt::RoutePolicy>,
    /// The node's tenant's routes.
    pub routes: Vec<nexus_crdt::RoutePolicy>,
    /// Routes of the node's site.
    pub site_routes: Vec<nexus_crdt::RoutePolicy>,
    /// Route ids the node's overrides switch off.
    pub disabled: Vec<String>,
    /// Fleet members not decommissioned.
    pub members: Vec<NodeId>,
    /// Those of them in the node's tenant (`source_tenant: own`).
    pub tenant_members: Vec<NodeId>,
    /// Versions of the documents read, `fleet:12,tenant/acme:40`.
    pub version: String,
    /// The node's tenant.
    pub tenant: String,
    /// Its quotas (fleet document, `tenants.<id>.quotas`); the data plane enforces the
    /// connection and bandwidth ones.
    pub quotas: nexus_crdt::TenantQuotas,
}

/// What [`Replication::access_records`] reads.
#[derive(Debug, Default, Clone)]
pub struct AccessRecords {
    /// `(tenant, key id, record)`; tenant `None` for fleet-admin keys.
    pub keys: Vec<(Option<String>, String, nexus_crdt::ApiKeyRecord)>,
    /// `(tenant, provider id, provider)`.
    pub oidc: Vec<(String, String, nexus_crdt::OidcProvider)>,
    /// Quotas by tenant.
    pub quotas: BTreeMap<String, nexus_crdt::TenantQuotas>,
}

/// A page of a configuration list.
pub struct ObjectPage {
    /// `(id, object)` in id order.
    pub items: Vec<(String, serde_json::Value)>,
    /// Whether more follow the last item.
    pub more: bool,
    /// The document's config version.
    pub version: u64,
}

/// The locked documents of a node.
type Docs<'a> = std::sync::MutexGuard<'a, BTreeMap<String, Held>>;
/// Quarantined objects of a document: object (`routes.r1`) → reasons.
type Verdicts = Arc<BTreeMap<String, Vec<String>>>;

/// Cached quarantine verdicts for a document: valid while the inputs are the same.
struct QuarantineCache {
    inputs: (u64, [u8; 32], [u8; 32]),
    quarantined: Arc<BTreeMap<String, Vec<String>>>,
}

/// The node's replicated configuration.
pub struct Replication {
    docs: Mutex<BTreeMap<String, Held>>,
    tenant: String,
    role: Role,
    author: LocalAuthor,
    store: Arc<Store>,
    fleet: Arc<FleetTrust>,
    mesh: Arc<Mesh>,
    peer: Arc<PeerService>,
    /// Responder-side sync states of sessions in progress, by (peer, document).
    responding: Mutex<HashMap<(NodeId, String), (PeerSync, Instant)>>,
    quarantine: Mutex<HashMap<String, QuarantineCache>>,
    /// Stores commits in order, group-committed.
    persister: Persister,
    /// Commits made here (compaction is considered every 64).
    commits: std::sync::atomic::AtomicU64,
    /// The anti-entropy rule (whose digest differs from ours since when, whom we synced with).
    anti_entropy: Mutex<nexus_mesh::AntiEntropy>,
    /// Origin of the monotonic readings given to the anti-entropy rule.
    started: Instant,
    /// What `record_members` last reconciled: (certificate rows, decommissioned nodes).
    members_seen: Mutex<Option<(usize, usize)>>,
    /// Pushed changes that arrived before changes they depend on (pushes race each other
    /// down different branches of the broadcast tree), by document: applied as soon as what
    /// they wait for arrives, by push or by sync. At most [`PENDING_PUSHES`] per document, for
    /// at most [`PENDING_FOR`] each; a change still waiting then is refused.
    pending: Mutex<HashMap<String, Vec<(WireChange, Instant)>>>,
}

/// Pushed changes held per document while their dependencies are missing; beyond, the
/// oldest are dropped (anti-entropy brings them again if they are real).
const PENDING_PUSHES: usize = 1024;
/// How long a held push may wait: what it depends on comes by push or anti-entropy well
/// within this, unless it never existed (a change filed under the wrong document).
const PENDING_FOR: Duration = Duration::from_secs(60);

/// What became of one pushed change.
enum Received {
    /// New here, applied.
    Applied,
    /// Already here, or for a document this node does not hold.
    Known,
    /// Waits for changes it depends on.
    Waiting(DocId),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A member's offline flag, unless the node is removed.
fn offline_mark(m: &nexus_crdt::Member) -> Option<i64> {
    m.offline_since.filter(|_| m.removed_at.is_none())
}

/// Drops held pushes that waited longer than [`PENDING_FOR`], as refused changes.
fn expire_pending(held: &mut Vec<(WireChange, Instant)>) {
    let before = held.len();
    held.retain(|(_, since)| since.elapsed() < PENDING_FOR);
    for _ in held.len()..before {
        refuse_held("what it depends on did not arrive within 60 s");
    }
}

fn refuse_held(why: &str) {
    metrics::counter!("nexus_config_changes_refused_total").increment(1);
    tracing::warn!(reason = why, "refused a held configuration change");
}

/// Parses `fleet` / `tenant/<id>`.
pub fn parse_doc_id(raw: &str) -> Option<DocId> {
    match raw {
        "fleet" => Some(DocId::Fleet),
        other => other
            .strip_prefix("tenant/")
            .and_then(|t| DocId::tenant(t).ok()),
    }
}

impl Replication {
    /// Loads the documents this node holds. `incarnation` must never repeat for this node.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        store: Arc<Store>,
        fleet: Arc<FleetTrust>,
        mesh: Arc<Mesh>,
        peer: Arc<PeerService>,
        key: nexus_ca::NodeKey,
        own: &nexus_ca::VerifiedMic,
        incarnation: u64,
    ) -> anyhow::Result<Replication> {
        let facts = AuthorFacts {
            node_id: own.node_id,
            role: own.role,
            tenant: own.tenant.clone(),
            site: own.site.clone(),
        };
        let author = LocalAuthor::new(key, facts, &own.serial_hex, incarnation)
            .context("the node key does not match its MIC")?;
        let mut docs = BTreeMap::new();
        for id in [DocId::Fleet, DocId::tenant(&own.tenant)?] {
            docs.insert(id.to_string(), Held::open(&store, &id)?);
        }
        Ok(Replication {
            persister: Persister::start(store.clone()),
            commits: std::sync::atomic::AtomicU64::new(0),
            docs: Mutex::new(docs),
            tenant: own.tenant.clone(),
            role: own.role,
            author,
            store,
            fleet,
            mesh,
            peer,
            responding: Mutex::new(HashMap::new()),
            quarantine: Mutex::new(HashMap::new()),
            members_seen: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            anti_entropy: Mutex::new(nexus_mesh::AntiEntropy::new()),
            started: Instant::now(),
        })
    }

    /// Whether this node holds (or, being an anchor, may hold) the document.
    fn holds(&self, id: &DocId) -> bool {
        match id {
            DocId::Fleet => true,
            DocId::Tenant(t) => *t == self.tenant || self.role == Role::Anchor,
        }
    }

    fn with_held<T>(&self, id: &DocId, f: impl FnOnce(&mut Held) -> T) -> anyhow::Result<T> {
        let mut docs = lock(&self.docs);
        let key = id.to_string();
        if !docs.contains_key(&key) {
            docs.insert(key.clone(), Held::open(&self.store, id)?);
        }
        Ok(f(docs.get_mut(&key).expect("just inserted")))
    }

    fn with_doc<T>(&self, id: &DocId, f: impl FnOnce(&mut ConfigDoc) -> T) -> anyhow::Result<T> {
        self.with_held(id, |h| h.doc(&self.store).map(f))?
    }

    /// Loads the automerge documents whose view was read from storage, off the lock, so a
    /// start serves reads at once and the first write or sync finds its document ready.
    fn preload(self: &Arc<Self>) {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let pending: Vec<DocId> = lock(&me.docs)
                .values()
                .filter(|h| !h.is_loaded())
                .map(|h| h.id.clone())
                .collect();
            for id in pending {
                let started = Instant::now();
                match Held::load_doc(&me.store, &id) {
                    Ok(doc) => {
                        let mut docs = lock(&me.docs);
                        if let Some(held) = docs.get_mut(&id.to_string())
                            && let Err(err) = held.install(&me.store, doc)
                        {
                            tracing::error!(doc = %id, error = %format!("{err:#}"), "cannot install configuration document");
                        }
                        tracing::info!(doc = %id, took = ?started.elapsed(), "configuration document loaded");
                    }
                    Err(err) => {
                        tracing::error!(doc = %id, error = %format!("{err:#}"), "cannot load configuration document")
                    }
                }
            }
        });
    }

    /// What may be sent to each of `nodes`, from what the anchors certified (the fleet
    /// document's members), never from what a node says of itself in gossip. A fleet member
    /// not recorded yet (it just joined) is given the fleet document only.
    fn trusted_facts(&self, nodes: &[NodeId]) -> HashMap<NodeId, AuthorFacts> {
        let docs = lock(&self.docs);
        let fleet = docs.get("fleet").and_then(Held::fleet);
        nodes
            .iter()
            .map(|node| {
                let facts = fleet
                    .and_then(|f| f.model.member_facts(node))
                    .unwrap_or(AuthorFacts {
                        node_id: *node,
                        role: Role::Node,
                        tenant: String::new(),
                        site: String::new(),
                    });
                (*node, facts)
            })
            .collect()
    }

    /// Anchors: records in the fleet document every node this anchor issued a MIC to, and
    /// marks the ones an operator decommissioned. Idempotent (only differences are written), so
    /// several anchors doing it at once converge on the same records.
    async fn record_members(self: &Arc<Self>) {
        if self.role != Role::Anchor {
            return;
        }
        let decommissioned: BTreeSet<NodeId> = self
            .mesh
            .members()
            .into_iter()
            .filter(|m| m.status == NodeStatus::Decommissioned)
            .map(|m| m.node_id)
            .collect();
        let Ok(count) = self.store.certificate_count() else {
            return;
        };
        let fingerprint = (count as usize, decommissioned.len());
        if *lock(&self.members_seen) == Some(fingerprint) {
            return;
        }
        let store = self.store.clone();
        let Ok(Ok(rows)) = tokio::task::spawn_blocking(move || store.certificates(None)).await
        else {
            return;
        };
        // The newest certificate of each node says what it is now (a promotion makes a node an
        // anchor); the earliest says when it joined.
        let mut issued: BTreeMap<String, (nexus_crdt::Member, u64)> = BTreeMap::new();
        for row in rows.iter() {
            let Some(mic) = nexus_ca::pem_to_der(&row.cert_pem)
                .ok()
                .and_then(|der| der.first().and_then(|d| nexus_ca::read_mic(d).ok()))
            else {
                continue;
            };
            let record = issued.entry(row.node_id.clone()).or_insert_with(|| {
                (
                    nexus_crdt::Member {
                        enrolled_at: row.issued_at_ms as i64,
                        ..Default::default()
                    },
                    0,
                )
            });
            record.0.enrolled_at = record.0.enrolled_at.min(row.issued_at_ms as i64);
            if row.issued_at_ms >= record.1 {
                record.1 = row.issued_at_ms;
                record.0.role = mic.role.as_str().to_string();
                record.0.tenant = mic.tenant;
                record.0.site = mic.site;
            }
        }
        let issued: BTreeMap<String, nexus_crdt::Member> =
            issued.into_iter().map(|(k, (m, _))| (k, m)).collect();
        let current: BTreeMap<String, nexus_crdt::Member> = lock(&self.docs)
            .get("fleet")
            .and_then(Held::fleet)
            .map(|f| f.model.members.clone())
            .unwrap_or_default();
        let now = crate::now_ms() as i64;
        let mut all_done = true;
        for (node, mut record) in issued {
            let gone = node
                .parse::<NodeId>()
                .is_ok_and(|id| decommissioned.contains(&id));
            let write = match current.get(&node) {
                None => true,
                Some(have) => {
                    have.role != record.role
                        || have.tenant != record.tenant
                        || have.site != record.site
                        || have.decommissioned_at.is_some() != gone
                }
            };
            if !write {
                continue;
            }
            // Read again now: the lifecycle duty may have marked it since `current` was read,
            // and its marks are not this anchor's to change.
            let fresh = self.with_fleet(|f| f.members.get(&node).cloned()).flatten();
            if let Some(have) = fresh.as_ref().or(current.get(&node)) {
                record.enrolled_at = have.enrolled_at;
                record.decommissioned_at = have.decommissioned_at;
                record.offline_since = have.offline_since;
                record.removed_at = have.removed_at;
            }
            if gone && record.decommissioned_at.is_none() {
                record.decommissioned_at = Some(now);
            }
            let result = self
                .write(
                    &DocId::Fleet,
                    &Self::system_caller(),
                    nexus_crdt::MEMBERS,
                    &node,
                    Some(record),
                    None,
                )
                .await;
            if let Err(err) = result {
                all_done = false;
                tracing::warn!(node, error = ?err, "cannot record a fleet member");
            }
        }
        if all_done {
            *lock(&self.members_seen) = Some(fingerprint);
        }
    }

    /// Since when the lifecycle duty has flagged `node` (hex id) as offline past its grace.
    pub fn offline_since(&self, node: &str) -> Option<i64> {
        self.with_fleet(|f| f.members.get(node).and_then(offline_mark))
            .flatten()
    }

    /// Every node the lifecycle duty has flagged offline past its grace, with since when (lists
    /// read them once).
    pub fn offline_flags(&self) -> HashMap<String, i64> {
        self.with_fleet(|f| {
            f.members
                .iter()
                .filter_map(|(id, m)| Some((id.clone(), offline_mark(m)?)))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Reads the fleet document's model in place (before quarantine), without copying it.
    pub fn with_fleet<T>(&self, read: impl FnOnce(&nexus_crdt::FleetDoc) -> T) -> Option<T> {
        self.with_held(&DocId::Fleet, |h| h.fleet().map(|f| read(&f.model)))
            .ok()
            .flatten()
    }

    /// Reads a tenant document's model in place, if this node holds it.
    pub fn with_tenant<T>(
        &self,
        tenant: &str,
        read: impl FnOnce(&nexus_crdt::TenantDoc) -> T,
    ) -> Option<T> {
        let id = DocId::tenant(tenant).ok()?;
        if !self.holds(&id) {
            return None;
        }
        self.with_held(&id, |h| h.tenant().map(|t| read(&t.model)))
            .ok()
            .flatten()
    }

    /// The fleet document as this node holds it (before quarantine), if it holds one.
    pub fn fleet_model(&self) -> Option<nexus_crdt::FleetDoc> {
        self.with_fleet(Clone::clone)
    }

    /// A tenant's document as this node holds it, if it holds it (anchors hold every tenant's).
    pub fn tenant_model(&self, tenant: &str) -> Option<nexus_crdt::TenantDoc> {
        self.with_tenant(tenant, Clone::clone)
    }

    /// Anchors: writes (`Some`) or deletes (`None`) one object as the fleet's own machinery
    /// (fleet duties, member records), durable before it returns; the document's new version,
    /// `None` when nothing changed.
    pub async fn write_as_system<V>(
        self: &Arc<Self>,
        doc: &DocId,
        collection: nexus_crdt::Collection<V>,
        key: &str,
        value: Option<V>,
    ) -> Result<Option<u64>, WriteError>
    where
        V: Hydrate + autosurgeon::Reconcile + Clone + PartialEq + Send,
    {
        if self.role != Role::Anchor {
            return Err(WriteError::NotHere(
                "only anchors write on the fleet's behalf".into(),
            ));
        }
        self.write(doc, &Self::system_caller(), collection, key, value, None)
            .await
    }

    fn system_caller() -> Caller {
        Caller {
            identity: "system:anchor".into(),
            role: CallerRole::FleetAdmin,
        }
    }

    /// The document a kind of object lives in, for `tenant` (or this node's).
    fn doc_for(&self, kind: &Kind, tenant: Option<&str>) -> Result<DocId, WriteError> {
        if kind.in_fleet_doc() {
            return Ok(DocId::Fleet);
        }
        let tenant = tenant.filter(|t| !t.is_empty()).unwrap_or(&self.tenant);
        let id = DocId::tenant(tenant).map_err(|e| WriteError::Invalid(vec![e.to_string()]))?;
        if !self.holds(&id) {
            return Err(WriteError::NotHere(format!(
                "this node holds tenant {:?}'s configuration only; send requests for tenant \
                 {tenant:?} to one of its nodes or to an anchor",
                self.tenant
            )));
        }
        Ok(id)
    }

    /// Quarantined objects of a document (`routes.r1` → reasons), cached while it and the
    /// fleet document are unchanged (a tenant's known nodes come from the fleet document).
    fn quarantine(
        &self,
        docs: &BTreeMap<String, Held>,
        id: &DocId,
    ) -> Arc<BTreeMap<String, Vec<String>>> {
        let (Some(fleet), Some(held)) = (docs.get("fleet"), docs.get(&id.to_string())) else {
            return Arc::default();
        };
        let inputs = (held.version(), held.digest(), fleet.digest());
        let key = id.to_string();
        if let Some(c) = lock(&self.quarantine).get(&key)
            && c.inputs == inputs
        {
            return c.quarantined.clone();
        }
        let Some(f) = fleet.fleet() else {
            return Arc::default();
        };
        let list = match held.tenant() {
            None => nexus_crdt::effective_fleet_with(&f.model, f.malformed()).quarantined,
            Some(t) => {
                let known = f.model.known_nodes();
                nexus_crdt::effective_tenant_with(&f.model, &t.model, &known, t.malformed())
                    .quarantined
            }
        };
        let quarantined: Arc<BTreeMap<String, Vec<String>>> =
            Arc::new(list.into_iter().map(|q| (q.id, q.reasons)).collect());
        metrics::gauge!("nexus_config_quarantined_objects", "document" => key.clone())
            .set(quarantined.len() as f64);
        lock(&self.quarantine).insert(
            key,
            QuarantineCache {
                inputs,
                quarantined: quarantined.clone(),
            },
        );
        quarantined
    }

    /// The documents, with `id` opened if it was not yet, and its quarantine verdicts.
    fn open_judged(&self, id: &DocId) -> Result<(Docs<'_>, Verdicts), WriteError> {
        let mut docs = lock(&self.docs);
        if let std::collections::btree_map::Entry::Vacant(slot) = docs.entry(id.to_string()) {
            slot.insert(Held::open(&self.store, id).map_err(internal)?);
        }
        let quarantined = self.quarantine(&docs, id);
        Ok((docs, quarantined))
    }

    /// One page of the *effective* objects of a kind (quarantined ones left out), in id order,
    /// after `after`.
    pub fn list(
        &self,
        kind: &Kind,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ObjectPage, WriteError> {
        let id = self.doc_for(kind, tenant)?;
        let (docs, quarantined) = self.open_judged(&id)?;
        let held = &docs[&id.to_string()];
        let version = held.version();
        let prefix = kind.collection_name();
        let mut items = Vec::new();
        let mut more = false;
        // Site routes are keyed `<site>/<id>`: walk that site's key range only.
        let site_prefix = match kind {
            Kind::SiteRoute(site) => Some(format!("{site}/")),
            _ => None,
        };
        let lower = match (after, &site_prefix) {
            (Some(a), _) => std::ops::Bound::Excluded(kind.map_key(a)),
            (None, Some(prefix)) => std::ops::Bound::Included(prefix.clone()),
            (None, None) => std::ops::Bound::Unbounded,
        };
        macro_rules! page {
            ($map:expr) => {{
                for (key, value) in $map.range::<String, _>((lower, std::ops::Bound::Unbounded)) {
                    let id = match &site_prefix {
                        Some(prefix) => match key.strip_prefix(prefix.as_str()) {
                            Some(id) => id.to_string(),
                            None => break,
                        },
                        None => key.clone(),
                    };
                    if quarantined.contains_key(&format!("{prefix}.{key}")) {
                        continue;
                    }
                    if items.len() == limit {
                        more = true;
                        break;
                    }
                    let mut json = serde_json::to_value(value).map_err(internal)?;
                    if *kind == Kind::Tenant
                        && let Some(map) = json.as_object_mut()
                    {
                        map.insert("id".into(), serde_json::Value::String(id.clone()));
                    }
                    items.push((id, json));
                }
            }};
        }
        match (&held.view, kind) {
            (View::Tenant(m), Kind::Route) => page!(m.model.routes),
            (View::Tenant(m), Kind::SiteRoute(_)) => page!(m.model.site_routes),
            (View::Tenant(m), Kind::FirmwareTarget) => page!(m.model.firmware_targets),
            (View::Fleet(m), Kind::Tenant) => page!(m.model.tenants),
            (View::Fleet(m), Kind::FleetPolicy) => page!(m.model.policies),
            _ => return Err(WriteError::Internal("document and kind disagree".into())),
        }
        Ok(ObjectPage {
            items,
            more,
            version,
        })
    }

    /// One object as stored (quarantined or not) with the quarantine reasons, if any.
    pub fn get(
        &self,
        kind: &Kind,
        tenant: Option<&str>,
        object_id: &str,
    ) -> Result<(serde_json::Value, u64, Option<Vec<String>>), WriteError> {
        let id = self.doc_for(kind, tenant)?;
        let (docs, quarantined) = self.open_judged(&id)?;
        let held = &docs[&id.to_string()];
        let key = kind.map_key(object_id);
        let value = match (&held.view, kind) {
            (View::Tenant(m), Kind::Route) => m.model.routes.get(&key).map(serde_json::to_value),
            (View::Tenant(m), Kind::SiteRoute(_)) => {
                m.model.site_routes.get(&key).map(serde_json::to_value)
            }
            (View::Tenant(m), Kind::FirmwareTarget) => {
                m.model.firmware_targets.get(&key).map(serde_json::to_value)
            }
            (View::Fleet(m), Kind::Tenant) => m.model.tenants.get(&key).map(serde_json::to_value),
            (View::Fleet(m), Kind::FleetPolicy) => {
                m.model.policies.get(&key).map(serde_json::to_value)
            }
            _ => None,
        };
        let mut value = value
            .ok_or_else(|| WriteError::NotFound(format!("no {} {object_id:?} here", kind.noun())))?
            .map_err(internal)?;
        if *kind == Kind::Tenant
            && let Some(map) = value.as_object_mut()
        {
            map.insert(
                "id".into(),
                serde_json::Value::String(object_id.to_string()),
            );
        }
        let reasons = quarantined
            .get(&format!("{}.{key}", kind.collection_name()))
            .cloned();
        Ok((value, held.version(), reasons))
    }

    /// Tells when the configuration this node holds changed (a local write or a received change).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.persister.changed()
    }

    /// What this node's data plane enforces, read from the effective configuration (quarantined
    /// objects left out): fleet policies, its tenant's routes, its site's routes, the routes its
    /// overrides switch off, and the fleet's members.
    pub fn policy_sources(&self, node: &NodeId, site: &str) -> Result<PolicySources, WriteError> {
        let tenant_id = DocId::tenant(&self.tenant).ok();
        // One lock for the verdicts and the objects, so they are of the same versions (the
        // version string is what the data plane uses to skip a recompile).
        let mut docs = lock(&self.docs);
        for id in std::iter::once(DocId::Fleet).chain(tenant_id.clone()) {
            if let std::collections::btree_map::Entry::Vacant(slot) = docs.entry(id.to_string()) {
                slot.insert(Held::open(&self.store, &id).map_err(internal)?);
            }
        }
        let fleet_q = self.quarantine(&docs, &DocId::Fleet);
        let tenant_q = tenant_id.as_ref().map(|id| self.quarantine(&docs, id));
        let mut out = PolicySources::default();
        let mut versions = Vec::new();
        if let Some(fleet) = docs.get("fleet").and_then(|h| h.fleet()) {
            versions.push(format!("fleet:{}", docs["fleet"].version()));
            out.fleet_policies = fleet
                .model
                .policies
                .iter()
                .filter(|(k, _)| !fleet_q.contains_key(&format!("policies.{k}")))
                .map(|(_, p)| p.clone())
                .collect();
            out.members = fleet
                .model
                .members
                .iter()
                .filter(|(_, m)| m.decommissioned_at.is_none())
                .filter_map(|(id, _)| id.parse().ok())
                .collect();
            out.tenant_members = fleet
                .model
                .members
                .iter()
                .filter(|(_, m)| m.decommissioned_at.is_none() && m.tenant == self.tenant)
                .filter_map(|(id, _)| id.parse().ok())
                .collect();
            if !fleet_q.contains_key(&format!("tenants.{}", self.tenant))
                && let Some(t) = fleet.model.tenants.get(&self.tenant)
            {
                out.quotas = t.quotas.clone();
            }
        }
        out.tenant = self.tenant.clone();
        if let (Some(id), Some(q)) = (&tenant_id, &tenant_q)
            && let Some(held) = docs.get(&id.to_string())
            && let Some(t) = held.tenant()
        {
            versions.push(format!("{id}:{}", held.version()));
            out.routes = t
                .model
                .routes
                .iter()
                .filter(|(k, _)| !q.contains_key(&format!("routes.{k}")))
                .map(|(_, p)| p.clone())
                .collect();
            if !site.is_empty() {
                let prefix = format!("{site}/");
                out.site_routes = t
                    .model
                    .site_routes
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(k, _)| !q.contains_key(&format!("site_routes.{k}")))
                    .map(|(_, p)| p.clone())
                    .collect();
            }
            // Quarantined overrides switch nothing off.
            let hex = node.to_hex();
            let site_key = nexus_crdt::site_key(site, &hex);
            let overrides =
                t.model
                    .node_overrides
                    .get(&hex)
                    .filter(|_| !q.contains_key(&format!("node_overrides.{hex}")))
                    .into_iter()
                    .chain(
                        t.model.site_node_overrides.get(&site_key).filter(|_| {
                            !q.contains_key(&format!("site_node_overrides.{site_key}"))
                        }),
                    );
            for o in overrides {
                out.disabled.extend(o.disabled_routes.iter().cloned());
            }
        }
        out.version = versions.join(",");
        Ok(out)
    }

    /// The access configuration of the documents this node holds, quarantined objects left
    /// out: API keys (fleet-wide ones with tenant `None`), OIDC providers, tenants' quotas.
    pub fn access_records(&self) -> Result<AccessRecords, WriteError> {
        let mut docs = lock(&self.docs);
        if let std::collections::btree_map::Entry::Vacant(slot) = docs.entry("fleet".into()) {
            slot.insert(Held::open(&self.store, &DocId::Fleet).map_err(internal)?);
        }
        let mut out = AccessRecords::default();
        let fleet_q = self.quarantine(&docs, &DocId::Fleet);
        let mut tenants: Vec<String> = vec![self.tenant.clone()];
        if let Some(fleet) = docs.get("fleet").and_then(|h| h.fleet()) {
            for (id, t) in &fleet.model.tenants {
                if !fleet_q.contains_key(&format!("tenants.{id}")) {
                    out.quotas.insert(id.clone(), t.quotas.clone());
                }
                tenants.push(id.clone());
            }
            for (id, k) in &fleet.model.api_keys {
                if !fleet_q.contains_key(&format!("api_keys.{id}")) {
                    out.keys.push((None, id.clone(), k.clone()));
                }
            }
        }
        tenants.sort();
        tenants.dedup();
        for tenant in tenants {
            let Ok(id) = DocId::tenant(&tenant) else {
                continue;
            };
            if !self.holds(&id) {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = docs.entry(id.to_string()) {
                slot.insert(Held::open(&self.store, &id).map_err(internal)?);
            }
            let q = self.quarantine(&docs, &id);
            let Some(t) = docs.get(&id.to_string()).and_then(|h| h.tenant()) else {
                continue;
            };
            for (key, k) in &t.model.api_keys {
                if !q.contains_key(&format!("api_keys.{key}")) {
                    out.keys
                        .push((Some(tenant.clone()), key.clone(), k.clone()));
                }
            }
            for (key, p) in &t.model.oidc {
                if !q.contains_key(&format!("oidc.{key}")) {
                    out.oidc.push((tenant.clone(), key.clone(), p.clone()));
                }
            }
        }
        Ok(out)
    }

    /// Labels operators set on nodes (`node_overrides.<node>.labels` of the tenant documents
    /// this node holds), by node id; quarantined overrides left out.
    pub fn node_labels(&self) -> HashMap<String, BTreeMap<String, String>> {
        let docs = lock(&self.docs);
        let mut out = HashMap::new();
        for (key, held) in docs.iter() {
            let Some(t) = held.tenant() else { continue };
            let Some(id) = parse_doc_id(key) else {
                continue;
            };
            let q = self.quarantine(&docs, &id);
            for (node, o) in &t.model.node_overrides {
                if !o.labels.is_empty() && !q.contains_key(&format!("node_overrides.{node}")) {
                    out.insert(node.clone(), o.labels.clone());
                }
            }
        }
        out
    }

    /// The override of `node` in `tenant`'s document, as stored.
    pub fn node_override(
        &self,
        tenant: &str,
        node: &NodeId,
    ) -> Result<Option<nexus_crdt::NodeOverride>, WriteError> {
        let id = DocId::tenant(tenant).map_err(|e| WriteError::Invalid(vec![e.to_string()]))?;
        if !self.holds(&id) {
            return Err(WriteError::NotHere(format!(
                "this node does not hold tenant {tenant:?}'s configuration: send this request to \
                 one of its nodes or to an anchor"
            )));
        }
        self.with_held(&id, |h| {
            h.tenant()
                .and_then(|t| t.model.node_overrides.get(&node.to_hex()).cloned())
        })
        .map_err(internal)
    }

    /// Writes (`Some`) or deletes (`None`) one object of `doc` without a candidate check (API
    /// keys, OIDC providers, node labels: built and checked by the caller) for `caller`,
    /// durable before it returns; the document's new version.
    pub async fn put_record<V>(
        self: &Arc<Self>,
        caller: &Caller,
        doc: &DocId,
        collection: nexus_crdt::Collection<V>,
        key: &str,
        value: Option<V>,
    ) -> Result<Option<u64>, WriteError>
    where
        V: Hydrate + autosurgeon::Reconcile + Clone + PartialEq + Send,
    {
        if !self.holds(doc) {
            return Err(WriteError::NotHere(format!(
                "this node holds tenant {:?}'s configuration only; send this request to one of \
                 that tenant's nodes or to an anchor",
                self.tenant
            )));
        }
        self.write(doc, caller, collection, key, value, None).await
    }

    /// Reads the fleet document as this node holds it, with the quarantined objects
    /// (`tenants.acme` → reasons); `None` while it is not loaded.
    pub fn read_fleet<T>(
        &self,
        read: impl FnOnce(&FleetDoc, &BTreeMap<String, Vec<String>>) -> T,
    ) -> Result<Option<T>, WriteError> {
        let (docs, quarantined) = self.open_judged(&DocId::Fleet)?;
        Ok(docs
            .get("fleet")
            .and_then(Held::fleet)
            .map(|f| read(&f.model, &quarantined)))
    }

    /// Anchors: makes sure `tenant` exists in the fleet document (a tenant's routes need it).
    pub async fn ensure_tenant(self: &Arc<Self>, tenant: &str) -> anyhow::Result<()> {
        if self.role != Role::Anchor {
            return Ok(());
        }
        let present = self.with_held(&DocId::Fleet, |h| {
            h.fleet()
                .is_some_and(|f| f.model.tenants.contains_key(tenant))
        })?;
        if present {
            return Ok(());
        }
        let record = nexus_crdt::Tenant {
            name: tenant.to_string(),
            created_at: crate::now_ms() as i64,
            quotas: Default::default(),
        };
        self.write(
            &DocId::Fleet,
            &Self::system_caller(),
            nexus_crdt::TENANTS,
            tenant,
            Some(record),
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(())
    }

    /// Creates, replaces or (with `value: None`) deletes one object for `caller`: validated
    /// against the merged state (only problems of this object refuse it), committed as a
    /// change this node signs, stored with its envelope in one transaction, and only then
    /// acknowledged; then pushed. Returns the document's version, or `None` when there was
    /// nothing to delete.
    async fn write<V>(
        self: &Arc<Self>,
        id: &DocId,
        caller: &Caller,
        collection: Collection<V>,
        key: &str,
        value: Option<V>,
        validate: Option<Validator<'_, V>>,
    ) -> Result<Option<u64>, WriteError>
    where
        V: Hydrate + autosurgeon::Reconcile + Clone + PartialEq + Send,
    {
        if *id == DocId::Fleet && self.role != Role::Anchor {
            return Err(WriteError::NotHere(
                "fleet-wide configuration is written through an anchor: send this request to \
                 one (GET /v1/anchors lists them)"
                    .into(),
            ));
        }
        let change = {
            let mut docs = lock(&self.docs);
            let held = match docs.entry(id.to_string()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(Held::open(&self.store, id).map_err(internal)?)
                }
            };
            if let (Some(check), Some(new)) = (validate, value.clone()) {
                let problems = check(&mut held.view, Some(new));
                if !problems.is_empty() {
                    return Err(WriteError::Invalid(problems));
                }
            }
            let doc = held.doc(&self.store).map_err(internal)?;
            // A malformed object is present too (and may be deleted).
            let present = !matches!(doc.entry(collection, key), Ok(None));
            if value.is_none() && !present {
                return Ok(None);
            }
            let written = value.clone();
            let change = doc
                .apply_local_entry(
                    &self.author,
                    caller,
                    crate::now_ms() as i64,
                    collection,
                    key,
                    |v| {
                        *v = written;
                        Ok::<_, std::convert::Infallible>(())
                    },
                )
                .map_err(|e| WriteError::Invalid(vec![e.to_string()]))?;
            let mut durable = None;
            if let Some(change) = &change {
                let touched = BTreeSet::from([ObjectRef {
                    collection: collection.name().to_string(),
                    key: key.to_string(),
                }]);
                let job = held
                    .commit(vec![self.own_row(change)], &touched)
                    .map_err(internal)?;
                durable = self.persister.submit(job, true);
            }
            (change, durable, held.version())
        };
        let (change, durable, version) = change;
        wait_durable(durable).await?;
        if let Some(change) = change {
            metrics::counter!("nexus_config_changes_total", "origin" => "local").increment(1);
            self.after_commit(vec![change]).await;
        }
        Ok(Some(version))
    }

    /// The stored form of a change this node made: hash, envelope, its own MIC.
    fn own_row(&self, change: &SignedChange) -> (String, Vec<u8>, Vec<u8>) {
        (
            hex::encode(change.change_hash.0),
            change.encode(),
            self.peer.credentials.mic_der(),
        )
    }

    async fn after_commit(self: &Arc<Self>, changes: Vec<SignedChange>) {
        self.publish_versions().await;
        let me = self.clone();
        tokio::spawn(async move {
            let mic = STANDARD.encode(me.peer.credentials.mic_der());
            for change in changes {
                let wire = WireChange {
                    envelope: STANDARD.encode(change.encode()),
                    author_mic: mic.clone(),
                };
                let peers = me.peers_for(&change.doc_id);
                me.clone().push(wire, peers).await;
            }
            // Compaction saves a whole document: off the runtime, and only now and then.
            if me
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                % 64
                == 63
            {
                let _ = tokio::task::spawn_blocking(move || me.compact_if_needed()).await;
            }
        });
    }

    /// Creates or replaces one object — a route, site route or firmware target of a tenant, or
    /// (anchors) a tenant record or fleet-wide policy: parsed from `value`, checked as a
    /// candidate in the merged state, written (see [`Replication::write`]). Returns the object as
    /// stored, the document's version, and whether it was created.
    pub async fn put_object(
        self: &Arc<Self>,
        caller: &Caller,
        kind: &Kind,
        tenant: Option<&str>,
        object_id: &str,
        value: serde_json::Value,
    ) -> Result<(serde_json::Value, u64, bool), WriteError> {
        let id = self.doc_for(kind, tenant)?;
        let key = kind.map_key(object_id);
        let object = format!("{}.{key}", kind.collection_name());
        let previous = match self.get(kind, tenant, object_id) {
            Ok((v, _, _)) => Some(v),
            Err(WriteError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        // A replacement keeps the creation time unless the body sets one.
        let stamp = |created_at: &mut i64| {
            if *created_at == 0 {
                *created_at = previous
                    .as_ref()
                    .and_then(|v| v["created_at"].as_i64())
                    .unwrap_or_else(|| crate::now_ms() as i64);
            }
        };
        let bad = |e: serde_json::Error| {
            WriteError::Malformed(format!("the body is not a valid {}: {e}", kind.noun()))
        };
        // What a tenant-document candidate is checked against.
        let tenant_inputs = || -> Result<(FleetDoc, KnownNodes), WriteError> {
            let fleet = self
                .with_held(&DocId::Fleet, |h| {
                    h.fleet().map(|f| f.model.clone()).unwrap_or_default()
                })
                .map_err(internal)?;
            // A node always belongs to a tenant the fleet document records; when it does not
            // show here yet, the document has not arrived (a node that just joined).
            if self.role != Role::Anchor
                && id.tenant_id() == Some(self.tenant.as_str())
                && !fleet.tenants.contains_key(&self.tenant)
            {
                return Err(WriteError::NotReady(format!(
                    "this node has not received the fleet configuration yet (tenant {:?} is not \
                     in its copy): retry in a few seconds, or write through an anchor",
                    self.tenant
                )));
            }
            let known = fleet.known_nodes();
            Ok((fleet, known))
        };
        let version = match kind {
            Kind::Route | Kind::SiteRoute(_) => {
                let mut route: nexus_crdt::RoutePolicy =
                    serde_json::from_value(value).map_err(bad)?;
                route.id = object_id.to_string();
                if route.tenant_id.is_empty() {
                    route.tenant_id = id.tenant_id().unwrap_or_default().to_string();
                }
                stamp(&mut route.created_at);
                type Routes = BTreeMap<String, nexus_crdt::RoutePolicy>;
                let (collection, field): (_, fn(&mut TenantDoc) -> &mut Routes) =
                    if matches!(kind, Kind::SiteRoute(_)) {
                        (nexus_crdt::SITE_ROUTES, |t| &mut t.site_routes)
                    } else {
                        (nexus_crdt::ROUTES, |t| &mut t.routes)
                    };
                let (fleet, known) = tenant_inputs()?;
                let check = candidate_check(object, key.clone(), tenant_model, field, move |t| {
                    nexus_crdt::validate_tenant(&fleet, t, &known)
                });
                self.write(&id, caller, collection, &key, Some(route), Some(&check))
                    .await?
            }
            Kind::FirmwareTarget => {
                let mut target: nexus_crdt::FirmwareTarget =
                    serde_json::from_value(value).map_err(bad)?;
                target.id = object_id.to_string();
                stamp(&mut target.created_at);
                let (fleet, known) = tenant_inputs()?;
                let check = candidate_check(
                    object,
                    key.clone(),
                    tenant_model,
                    |t| &mut t.firmware_targets,
                    move |t| nexus_crdt::validate_tenant(&fleet, t, &known),
                );
                let collection = nexus_crdt::FIRMWARE_TARGETS;
                self.write(&id, caller, collection, &key, Some(target), Some(&check))
                    .await?
            }
            Kind::Tenant => {
                let mut record: nexus_crdt::Tenant = serde_json::from_value(value).map_err(bad)?;
                stamp(&mut record.created_at);
                let check = candidate_check(
                    object,
                    key.clone(),
                    fleet_model,
                    |f| &mut f.tenants,
                    nexus_crdt::validate,
                );
                let collection = nexus_crdt::TENANTS;
                self.write(&id, caller, collection, &key, Some(record), Some(&check))
                    .await?
            }
            Kind::FleetPolicy => {
                let mut policy: nexus_crdt::RoutePolicy =
                    serde_json::from_value(value).map_err(bad)?;
                policy.id = object_id.to_string();
                stamp(&mut policy.created_at);
                let check = candidate_check(
                    object,
                    key.clone(),
                    fleet_model,
                    |f| &mut f.policies,
                    nexus_crdt::validate,
                );
                let collection = nexus_crdt::POLICIES;
                self.write(&id, caller, collection, &key, Some(policy), Some(&check))
                    .await?
            }
        }
        .unwrap_or_default();
        let (value, _, _) = self.get(kind, tenant, object_id)?;
        Ok((value, version, previous.is_none()))
    }

    /// Deletes one object; `Ok(None)` when there is none.
    pub async fn delete(
        self: &Arc<Self>,
        caller: &Caller,
        kind: &Kind,
        tenant: Option<&str>,
        object_id: &str,
    ) -> Result<Option<u64>, WriteError> {
        let id = self.doc_for(kind, tenant)?;
        let key = kind.map_key(object_id);
        match kind {
            Kind::Route => {
                self.write::<nexus_crdt::RoutePolicy>(
                    &id,
                    caller,
                    nexus_crdt::ROUTES,
                    &key,
                    None,
                    None,
                )
                .await
            }
            Kind::SiteRoute(_) => {
                self.write::<nexus_crdt::RoutePolicy>(
                    &id,
                    caller,
                    nexus_crdt::SITE_ROUTES,
                    &key,
                    None,
                    None,
                )
                .await
            }
            Kind::FirmwareTarget => {
                self.write::<nexus_crdt::FirmwareTarget>(
                    &id,
                    caller,
                    nexus_crdt::FIRMWARE_TARGETS,
                    &key,
                    None,
                    None,
                )
                .await
            }
            Kind::Tenant => {
                if tenant_has_objects(self, object_id)? {
                    return Err(WriteError::Invalid(vec![format!(
                        "tenant {object_id:?} still has configuration (routes, firmware \
                         targets, overrides): delete those first"
                    )]));
                }
                // The default policies onboarding wrote go with the tenant.
                if let Ok(doc) = DocId::tenant(object_id)
                    && self.holds(&doc)
                {
                    for policy in nexus_api::tenants::DEFAULT_POLICIES {
                        let present = self
                            .with_tenant(object_id, |t| t.routes.contains_key(policy))
                            .unwrap_or(false);
                        if present {
                            self.write::<nexus_crdt::RoutePolicy>(
                                &doc,
                                caller,
                                nexus_crdt::ROUTES,
                                policy,
                                None,
                                None,
                            )
                            .await?;
                        }
                    }
                }
                self.write::<nexus_crdt::Tenant>(&id, caller, nexus_crdt::TENANTS, &key, None, None)
                    .await
            }
            Kind::FleetPolicy => {
                self.write::<nexus_crdt::RoutePolicy>(
                    &id,
                    caller,
                    nexus_crdt::POLICIES,
                    &key,
                    None,
                    None,
                )
                .await
            }
        }
    }

    // --- fleet settings -------------------------------------------------------------------

    /// The fleet settings as stored, and the fleet document's version.
    pub fn settings(&self) -> (serde_json::Value, u64) {
        let docs = lock(&self.docs);
        let held = docs.get("fleet");
        let settings = held
            .and_then(Held::fleet)
            .map(|f| f.model.settings.clone())
            .unwrap_or_default();
        (
            serde_json::to_value(settings).unwrap_or_default(),
            held.map(|h| h.version()).unwrap_or_default(),
        )
    }

    /// Replaces the fleet settings (anchors; validated; durable before it returns).
    pub async fn put_settings(
        self: &Arc<Self>,
        caller: &Caller,
        value: serde_json::Value,
    ) -> Result<(serde_json::Value, u64), WriteError> {
        if self.role != Role::Anchor {
            return Err(WriteError::NotHere(
                "fleet settings are written through an anchor: send this request to one (GET \
                 /v1/anchors lists them)"
                    .into(),
            ));
        }
        let settings: nexus_crdt::FleetSettings = serde_json::from_value(value).map_err(|e| {
            WriteError::Malformed(format!("the body is not valid fleet settings: {e}"))
        })?;
        let change = {
            let mut docs = lock(&self.docs);
            let held = docs
                .get_mut("fleet")
                .ok_or_else(|| WriteError::Internal("the fleet document is not loaded".into()))?;
            let Some(fleet) = held.fleet() else {
                return Err(WriteError::Internal("not the fleet document".into()));
            };
            let mut candidate = fleet.model.clone();
            candidate.settings = settings.clone();
            if let Err(invalid) = nexus_crdt::validate(&candidate) {
                let mine: Vec<String> = invalid
                    .0
                    .iter()
                    .filter(|p| p.object == "settings" || p.object.is_empty())
                    .map(|p| p.to_string())
                    .collect();
                if !mine.is_empty() {
                    return Err(WriteError::Invalid(mine));
                }
            }
            let change = held
                .doc(&self.store)
                .map_err(internal)?
                .apply_local::<FleetDoc, std::convert::Infallible>(
                    &self.author,
                    caller,
                    crate::now_ms() as i64,
                    |m| {
                        m.settings = settings;
                        Ok(())
                    },
                )
                .map_err(|e| WriteError::Invalid(vec![e.to_string()]))?;
            let mut durable = None;
            if let Some(change) = &change {
                let touched = BTreeSet::from([ObjectRef {
                    collection: "settings".into(),
                    key: String::new(),
                }]);
                let job = held
                    .commit(vec![self.own_row(change)], &touched)
                    .map_err(internal)?;
                durable = self.persister.submit(job, true);
            }
            (change, durable)
        };
        let (change, durable) = change;
        wait_durable(durable).await?;
        if let Some(change) = change {
            metrics::counter!("nexus_config_changes_total", "origin" => "local").increment(1);
            self.after_commit(vec![change]).await;
        }
        Ok(self.settings())
    }

    // --- snapshots and rollback -----------------------------------------------------------

    /// Names the current state of a document (default: this node's tenant document).
    pub async fn create_snapshot(
        self: &Arc<Self>,
        caller: &Caller,
        doc: Option<&str>,
        name: &str,
    ) -> Result<serde_json::Value, WriteError> {
        let id = self.snapshot_doc(doc)?;
        let n = name.chars().count();
        if n == 0 || n > nexus_crdt::NAME_MAX || name.chars().any(char::is_control) {
            return Err(WriteError::Invalid(vec![format!(
                "name: must be 1..={} characters without control characters",
                nexus_crdt::NAME_MAX
            )]));
        }
        let (heads, version) = self
            .with_doc(&id, |d| {
                let mut heads: Vec<String> = d.heads().iter().map(|h| h.to_string()).collect();
                heads.sort();
                (heads, d.version())
            })
            .map_err(internal)?;
        let now = crate::now_ms();
        let snapshot_id = format!("{now:013x}{:06x}", rand::random::<u32>() & 0xff_ffff);
        let record = Snapshot {
            name: name.to_string(),
            heads,
            version,
            created_by: caller.identity.clone(),
            created_at: now as i64,
        };
        let collection = match id {
            DocId::Fleet => nexus_crdt::FLEET_SNAPSHOTS,
            DocId::Tenant(_) => nexus_crdt::TENANT_SNAPSHOTS,
        };
        self.write(
            &id,
            caller,
            collection,
            &snapshot_id,
            Some(record.clone()),
            None,
        )
        .await?;
        Ok(snapshot_json(&id, &snapshot_id, &record))
    }

    fn snapshot_doc(&self, doc: Option<&str>) -> Result<DocId, WriteError> {
        let id = match doc {
            None | Some("") => DocId::tenant(&self.tenant).map_err(internal)?,
            Some(raw) => parse_doc_id(raw).ok_or_else(|| {
                WriteError::Invalid(vec![format!(
                    "document: {raw:?} is not a document; use \"fleet\" or \"tenant/<id>\""
                )])
            })?,
        };
        if !self.holds(&id) {
            return Err(WriteError::NotHere(format!(
                "this node does not hold document {id}; ask one of its tenant's nodes or an anchor"
            )));
        }
        Ok(id)
    }

    /// Every snapshot of the documents this node holds (or of `doc`), oldest first.
    pub fn snapshots(&self, doc: Option<&str>) -> Result<Vec<serde_json::Value>, WriteError> {
        let only = match doc {
            None | Some("") => None,
            Some(_) => Some(self.snapshot_doc(doc)?),
        };
        let docs = lock(&self.docs);
        let mut out = Vec::new();
        for held in docs.values() {
            if only.as_ref().is_some_and(|o| o != &held.id) {
                continue;
            }
            let snapshots = match &held.view {
                View::Fleet(m) => &m.model.snapshots,
                View::Tenant(m) => &m.model.snapshots,
            };
            for (sid, s) in snapshots {
                out.push((sid.clone(), snapshot_json(&held.id, sid, s)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out.into_iter().map(|(_, v)| v).collect())
    }

    /// Restores the state a snapshot names, as one new signed change (it replicates like any
    /// other and can itself be rolled back). The fleet document's anchors and revocations are
    /// never rolled back: they are security state, not configuration.
    pub async fn rollback(
        self: &Arc<Self>,
        caller: &Caller,
        snapshot_id: &str,
    ) -> Result<serde_json::Value, WriteError> {
        let found = {
            let docs = lock(&self.docs);
            docs.values().find_map(|held| {
                let s = match &held.view {
                    View::Fleet(m) => m.model.snapshots.get(snapshot_id),
                    View::Tenant(m) => m.model.snapshots.get(snapshot_id),
                };
                s.map(|s| (held.id.clone(), s.clone()))
            })
        };
        let (id, snapshot) = found
            .ok_or_else(|| WriteError::NotFound(format!("no snapshot {snapshot_id:?} here")))?;
        if id == DocId::Fleet && self.role != Role::Anchor {
            return Err(WriteError::NotHere(
                "the fleet document is rolled back through an anchor: send this request to one"
                    .into(),
            ));
        }
        let heads: Vec<ChangeHash> = snapshot
            .heads
            .iter()
            .map(|h| h.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| WriteError::Internal(format!("snapshot {snapshot_id} has bad heads")))?;
        let me = self.clone();
        let caller2 = caller.clone();
        let id2 = id.clone();
        // Reading the past and writing the difference costs O(document): off the runtime.
        let change = tokio::task::spawn_blocking(move || -> Result<_, WriteError> {
            let mut docs = lock(&me.docs);
            let held = docs
                .get_mut(&id2.to_string())
                .ok_or_else(|| WriteError::Internal("document not loaded".into()))?;
            let now = crate::now_ms() as i64;
            let doc = held.doc(&me.store).map_err(internal)?;
            let change = match &id2 {
                DocId::Tenant(_) => {
                    let past = doc.hydrate_at::<TenantDoc>(&heads).map_err(internal)?.model;
                    doc.apply_local::<TenantDoc, std::convert::Infallible>(
                        &me.author,
                        &caller2,
                        now,
                        |m| {
                            m.routes = past.routes;
                            m.firmware_targets = past.firmware_targets;
                            m.node_overrides = past.node_overrides;
                            m.site_routes = past.site_routes;
                            m.site_node_overrides = past.site_node_overrides;
                            Ok(())
                        },
                    )
                    .map_err(|e| WriteError::Invalid(vec![e.to_string()]))?
                }
                DocId::Fleet => {
                    let past = doc.hydrate_at::<FleetDoc>(&heads).map_err(internal)?.model;
                    doc.apply_local::<FleetDoc, std::convert::Infallible>(
                        &me.author,
                        &caller2,
                        now,
                        |m| {
                            m.settings = past.settings;
                            m.tenants = past.tenants;
                            m.policies = past.policies;
                            Ok(())
                        },
                    )
                    .map_err(|e| WriteError::Invalid(vec![e.to_string()]))?
                }
            };
            let mut durable = None;
            if let Some(change) = &change {
                // Every collection may have changed: the view is rebuilt and stored whole.
                let touched = BTreeSet::from([ObjectRef {
                    collection: String::new(),
                    key: String::new(),
                }]);
                let job = held
                    .commit(vec![me.own_row(change)], &touched)
                    .map_err(internal)?;
                durable = me.persister.submit(job, true);
            }
            Ok((change, durable))
        })
        .await
        .map_err(internal)??;
        let (change, durable) = change;
        wait_durable(durable).await?;
        let changed = change.is_some();
        if let Some(change) = change {
            metrics::counter!("nexus_config_changes_total", "origin" => "local").increment(1);
            self.after_commit(vec![change]).await;
        }
        let version = self.with_doc(&id, |d| d.version()).map_err(internal)?;
        Ok(serde_json::json!({
            "snapshot": snapshot_id,
            "document": id.to_string(),
            "changed": changed,
            "version": version,
        }))
    }

    // --- receiving ------------------------------------------------------------------------

    /// Applies changes pushed from peers; returns the ones that were new. `verified` is told
    /// of each new change as soon as it is verified and applied, before it is written to disk,
    /// so relaying does not wait for this node's fsync (the author stored it before pushing).
    pub fn receive(
        &self,
        changes: &[WireChange],
        verified: &(dyn Fn(&WireChange) + Sync),
    ) -> Vec<WireChange> {
        let mut new = Vec::new();
        for wire in changes {
            match self.receive_one(wire, verified, Instant::now()) {
                Ok(Received::Applied) => {
                    new.push(wire.clone());
                    metrics::counter!("nexus_config_changes_total", "origin" => "remote")
                        .increment(1);
                    if let Ok(change) = STANDARD
                        .decode(&wire.envelope)
                        .map_err(anyhow::Error::from)
                        .and_then(|e| Ok(SignedChange::decode(&e)?))
                    {
                        new.extend(self.apply_pending(&change.doc_id));
                    }
                }
                Ok(Received::Known) => {}
                Ok(Received::Waiting(doc)) => {
                    metrics::counter!("nexus_config_changes_pending_total").increment(1);
                    tracing::debug!(doc = %doc, "holding a pushed change until what it depends on arrives");
                }
                Err(err) => {
                    metrics::counter!("nexus_config_changes_refused_total").increment(1);
                    tracing::warn!(error = %format!("{err:#}"), "refused a configuration change");
                }
            }
        }
        new
    }

    /// Applies the held pushes of `doc` whose dependencies are here now (repeatedly: one may
    /// unblock the next); returns them. They were relayed when they arrived.
    fn apply_pending(&self, doc: &DocId) -> Vec<WireChange> {
        let mut applied = Vec::new();
        loop {
            let waiting = lock(&self.pending)
                .remove(&doc.to_string())
                .unwrap_or_default();
            if waiting.is_empty() {
                return applied;
            }
            let mut progress = false;
            for (wire, since) in waiting {
                if since.elapsed() >= PENDING_FOR {
                    refuse_held("what it depends on did not arrive within 60 s");
                    continue;
                }
                // A change still waiting is held again by `receive_one`, with its first time.
                match self.receive_one(&wire, &|_| {}, since) {
                    Ok(Received::Applied) => {
                        progress = true;
                        metrics::counter!("nexus_config_changes_total", "origin" => "remote")
                            .increment(1);
                        applied.push(wire);
                    }
                    Ok(Received::Waiting(_)) | Ok(Received::Known) => {}
                    Err(err) => {
                        metrics::counter!("nexus_config_changes_refused_total").increment(1);
                        tracing::warn!(error = %format!("{err:#}"), "refused a configuration change");
                    }
                }
            }
            if !progress {
                return applied;
            }
        }
    }

    /// Applies one pushed change; one whose dependencies are missing is relayed and held
    /// (since `since`).
    fn receive_one(
        &self,
        wire: &WireChange,
        verified: &(dyn Fn(&WireChange) + Sync),
        since: Instant,
    ) -> anyhow::Result<Received> {
        let envelope = STANDARD.decode(&wire.envelope)?;
        let mic = STANDARD.decode(&wire.author_mic)?;
        let change = SignedChange::decode(&envelope)?;
        if !self.holds(&change.doc_id) {
            return Ok(Received::Known);
        }
        let at_unix = (change.timestamp_ms / 1000).min((crate::now_ms() / 1000) as i64);
        let directory = MicDirectory {
            fleet: &self.fleet,
            mic: &mic,
            at_unix,
        };
        self.with_held(&change.doc_id, |held| {
            let doc = held.doc(&self.store)?;
            let applied = match doc.apply_remote(&change, &directory) {
                Ok(applied) => applied,
                Err(nexus_crdt::RemoteError::MissingDependencies { .. }) => {
                    // Checked already (author, signature, authorization come before the
                    // dependencies): relay it down its tree now, and hold it — under the
                    // document's lock, so a dependency applied meanwhile cannot miss it.
                    verified(wire);
                    let mut pending = lock(&self.pending);
                    let held = pending.entry(change.doc_id.to_string()).or_default();
                    expire_pending(held);
                    if !held.iter().any(|(w, _)| w.envelope == wire.envelope) {
                        if held.len() >= PENDING_PUSHES {
                            held.remove(0);
                            refuse_held("more changes are waiting than are held");
                        }
                        held.push((wire.clone(), since));
                    }
                    return Ok(Received::Waiting(change.doc_id.clone()));
                }
                Err(err) => return Err(err.into()),
            };
            if applied == Applied::Duplicate {
                return Ok::<_, anyhow::Error>(Received::Known);
            }
            verified(wire);
            let touched = doc.touched_objects([&change]);
            let row = (
                hex::encode(change.change_hash.0),
                envelope.clone(),
                mic.clone(),
            );
            let job = held.commit(vec![row], &touched)?;
            self.persister.submit(job, false);
            record_lag("push", &change, &touched);
            Ok(Received::Applied)
        })?
    }

    /// Handles a pushed batch: applies it and relays what was new down the broadcast tree.
    pub async fn receive_push(
        self: &Arc<Self>,
        changes: Vec<WireChange>,
        relay: Vec<String>,
    ) -> usize {
        let relay = self.relay_targets(&relay);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<WireChange>();
        let relayer = (!relay.is_empty()).then(|| {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(wire) = rx.recv().await {
                    // Members of the subtree that may not hold this document are skipped.
                    let doc = STANDARD
                        .decode(&wire.envelope)
                        .ok()
                        .and_then(|e| SignedChange::decode(&e).ok())
                        .map(|c| c.doc_id);
                    let Some(doc) = doc else { continue };
                    let targets: Vec<(NodeId, SocketAddr)> = relay
                        .iter()
                        .filter(|(facts, _)| nexus_crdt::may_replicate(&doc, facts))
                        .map(|(facts, addr)| (facts.node_id, *addr))
                        .collect();
                    me.clone().push(wire, targets).await;
                }
            })
        });
        let me = self.clone();
        let new = tokio::task::spawn_blocking(move || {
            me.receive(&changes, &|wire| {
                let _ = tx.send(wire.clone());
            })
        })
        .await
        .unwrap_or_default();
        if !new.is_empty() {
            self.publish_versions().await;
        }
        // The relayer finishes on its own; the pusher need not wait for this node's subtree.
        drop(relayer);
        new.len()
    }

    /// The members named in a push's relay list, with what gossip says of them.
    fn relay_targets(&self, relay: &[String]) -> Vec<(AuthorFacts, SocketAddr)> {
        let me = self.author.facts().node_id;
        let nodes: Vec<NodeId> = relay
            .iter()
            .filter_map(|id| id.parse::<NodeId>().ok())
            .filter(|id| *id != me)
            .collect();
        let mut facts = self.trusted_facts(&nodes);
        nodes
            .into_iter()
            .filter_map(|id| {
                let addr = self.mesh.member(&id)?.info?.quic_addr;
                Some((facts.remove(&id)?, addr))
            })
            .collect()
    }

    /// Pushes one change to `peers` as a tree: the peers are split into up to `fanout` groups;
    /// the first member of each group gets the change directly with the rest of its group to
    /// relay to, and does the same. Every member is reached once, in about
    /// log_fanout(peers) hops, and no node sends more than `fanout` messages per change. A
    /// member that misses it (down, or its relay failed) catches up by anti-entropy; a failed
    /// group head's group is sent to directly.
    async fn push(self: Arc<Self>, wire: WireChange, mut peers: Vec<(NodeId, SocketAddr)>) {
        if peers.is_empty() {
            return;
        }
        // A different tree for every change, so one slow node does not slow every push.
        use rand::seq::SliceRandom;
        peers.shuffle(&mut rand::thread_rng());
        let fanout = self.push_fanout();
        let groups = nexus_mesh::split_groups(peers, fanout);
        let mut tasks = tokio::task::JoinSet::new();
        for group in groups {
            let me = self.clone();
            let wire = wire.clone();
            tasks.spawn(async move {
                let (head, head_addr) = group[0];
                let rest: Vec<(NodeId, SocketAddr)> = group[1..].to_vec();
                let request = PeerRequest::ConfigChanges {
                    changes: vec![wire.clone()],
                    relay: rest.iter().map(|(n, _)| n.to_string()).collect(),
                };
                count_push_bytes(&request);
                if let Err(err) = me.peer.request(head, head_addr, &request).await {
                    tracing::debug!(node = %head, error = %format!("{err:#}"), "config push failed; sending to its group directly");
                    for (node, addr) in rest {
                        let request = PeerRequest::ConfigChanges {
                            changes: vec![wire.clone()],
                            relay: Vec::new(),
                        };
                        count_push_bytes(&request);
                        if let Err(err) = me.peer.request(node, addr, &request).await {
                            tracing::debug!(node = %node, error = %format!("{err:#}"), "config push failed; anti-entropy will catch up");
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    fn push_fanout(&self) -> usize {
        let configured = lock(&self.docs)
            .get("fleet")
            .and_then(Held::fleet)
            .and_then(|f| f.model.settings.push_fanout);
        configured
            .map(|f| f.clamp(1, 64) as usize)
            .unwrap_or(DEFAULT_PUSH_FANOUT)
    }

    fn peers_for(&self, id: &DocId) -> Vec<(NodeId, SocketAddr)> {
        let live: Vec<(NodeId, SocketAddr)> = self
            .mesh
            .members()
            .into_iter()
            .filter(|m| m.node_id != self.author.facts().node_id)
            .filter(|m| {
                matches!(
                    m.status,
                    NodeStatus::Online | NodeStatus::Degraded | NodeStatus::Draining
                )
            })
            .filter_map(|m| Some((m.node_id, m.info?.quic_addr)))
            .collect();
        let nodes: Vec<NodeId> = live.iter().map(|(n, _)| *n).collect();
        let facts = self.trusted_facts(&nodes);
        live.into_iter()
            .filter(|(n, _)| {
                facts
                    .get(n)
                    .is_some_and(|f| nexus_crdt::may_replicate(id, f))
            })
            .collect()
    }

    // --- sync sessions --------------------------------------------------------------------

    fn sync_limits() -> SyncLimits {
        SyncLimits {
            max_changes: std::num::NonZeroUsize::new(SYNC_PACKET_CHANGES).expect("non-zero"),
            max_bytes: std::num::NonZeroUsize::new(SYNC_PACKET_BYTES).expect("non-zero"),
        }
    }

    fn load_sync_state(&self, peer: &NodeId, doc: &DocId, side: &str) -> PeerSync {
        self.store
            .config_sync_state(&peer.to_string(), &doc.to_string(), side)
            .ok()
            .flatten()
            .and_then(|bytes| PeerSync::decode(&bytes).ok())
            .unwrap_or_default()
    }

    fn save_sync_state(&self, peer: &NodeId, doc: &DocId, side: &str, state: &PeerSync) {
        if let Err(err) = self.store.save_config_sync_state(
            &peer.to_string(),
            &doc.to_string(),
            side,
            &state.encode(),
        ) {
            tracing::warn!(error = %err, "cannot save sync state");
        }
    }

    /// This side's next message, with the MICs of its changes' authors.
    fn generate(&self, id: &DocId, state: &mut PeerSync) -> anyhow::Result<WireSync> {
        let source = StoredEnvelopes {
            store: &self.store,
            persister: &self.persister,
            mics: RefCell::new(BTreeMap::new()),
        };
        let packet = self.with_doc(id, |d| {
            d.generate_sync_message(state, &source, &Self::sync_limits())
        })??;
        let bytes: usize = packet
            .as_ref()
            .map(|p| p.changes.iter().map(|c| c.change.len()).sum())
            .unwrap_or(0);
        metrics::counter!("nexus_config_sync_bytes_sent_total").increment(bytes as u64);
        Ok(WireSync {
            packet: packet.map(|p| STANDARD.encode(p.encode())),
            mics: source
                .mics
                .into_inner()
                .into_values()
                .map(|m| STANDARD.encode(m))
                .collect(),
        })
    }

    /// Takes the peer's message: verifies every envelope, applies, stores (one transaction)
    /// and refreshes the materialized model. Returns how many changes were new.
    fn absorb(&self, id: &DocId, state: &mut PeerSync, wire: &WireSync) -> anyhow::Result<usize> {
        let new = self.absorb_packet(id, state, wire)?;
        if new > 0 {
            // What sync brought may be what held pushes were waiting for.
            self.apply_pending(id);
        }
        Ok(new)
    }

    fn absorb_packet(
        &self,
        id: &DocId,
        state: &mut PeerSync,
        wire: &WireSync,
    ) -> anyhow::Result<usize> {
        let Some(packet) = &wire.packet else {
            return Ok(0);
        };
        let packet = SyncPacket::decode(&STANDARD.decode(packet)?, SYNC_PACKET_CHANGES)?;
        let mics: Vec<Vec<u8>> = wire
            .mics
            .iter()
            .take(SYNC_PACKET_CHANGES)
            .map(|m| STANDARD.decode(m))
            .collect::<Result<_, _>>()?;
        let now = (crate::now_ms() / 1000) as i64;
        let mut at_unix: HashMap<String, i64> = HashMap::new();
        for c in &packet.changes {
            let t = (c.timestamp_ms / 1000).min(now);
            at_unix
                .entry(c.mic_serial.clone())
                .and_modify(|v| *v = (*v).min(t))
                .or_insert(t);
        }
        let directory = PacketDirectory {
            fleet: &self.fleet,
            mics,
            at_unix,
            cache: RefCell::new(HashMap::new()),
        };
        self.with_held(id, |held| {
            let doc = held.doc(&self.store)?;
            let accepted = doc.receive_sync_message(state, &packet, &directory)?;
            if accepted.is_empty() {
                return Ok(0);
            }
            // Changes automerge held back for missing dependencies apply when those arrive,
            // maybe in this packet: look at every held-back change again, and keep the ones
            // still waiting, so the view is refreshed for whatever applied.
            let mut candidates = std::mem::take(&mut held.queued);
            candidates.extend(accepted.iter().cloned());
            let doc = held.doc(&self.store)?;
            let (applied, waiting): (Vec<SignedChange>, Vec<SignedChange>) = candidates
                .into_iter()
                .partition(|c| doc.has_change(&c.change_hash));
            let touched = doc.touched_objects(applied.iter());
            held.queued = waiting;
            let rows: Vec<(String, Vec<u8>, Vec<u8>)> = accepted
                .iter()
                .map(|c| {
                    let mic = directory
                        .mic_for(&c.author, &c.mic_serial)
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default();
                    (hex::encode(c.change_hash.0), c.encode(), mic)
                })
                .collect();
            let job = held.commit(rows, &touched)?;
            self.persister.submit(job, false);
            for c in &applied {
                record_lag("sync", c, &touched);
            }
            metrics::counter!("nexus_config_changes_total", "origin" => "sync")
                .increment(accepted.len() as u64);
            Ok::<_, anyhow::Error>(accepted.len())
        })?
    }

    /// Answers one round of a session a peer runs with this node.
    pub fn respond(
        &self,
        peer: &NodeId,
        doc: &DocId,
        start: bool,
        wire: WireSync,
    ) -> anyhow::Result<WireSync> {
        anyhow::ensure!(self.holds(doc), "this node does not hold document {doc}");
        let key = (*peer, doc.to_string());
        let mut state = {
            let mut responding = lock(&self.responding);
            responding.retain(|_, (_, at)| at.elapsed() < SYNC_SESSION_LIMIT * 2);
            match responding.remove(&key) {
                Some((state, _)) if !start => state,
                _ => self.load_sync_state(peer, doc, "responder"),
            }
        };
        let result = (|| {
            let new = self.absorb(doc, &mut state, &wire)?;
            let reply = self.generate(doc, &mut state)?;
            Ok::<_, anyhow::Error>((new, reply))
        })();
        match result {
            Ok((new, reply)) => {
                if reply.packet.is_none() {
                    // The shared heads must not claim changes that are not on disk yet.
                    if let Some(done) = self.persister.flush() {
                        let _ = done.blocking_recv();
                    }
                    self.save_sync_state(peer, doc, "responder", &state);
                }
                lock(&self.responding).insert(key, (state, Instant::now()));
                if new > 0 {
                    tracing::info!(peer = %peer, doc = %doc, new, "configuration caught up by sync");
                }
                Ok(reply)
            }
            Err(err) => {
                // A peer whose packet fails verification may be compromised: say who.
                metrics::counter!("nexus_config_sync_sessions_total", "outcome" => "refused")
                    .increment(1);
                metrics::counter!("nexus_config_changes_refused_total").increment(1);
                tracing::warn!(peer = %peer, doc = %doc, error = %format!("{err:#}"), "refused a sync packet");
                Err(err)
            }
        }
    }

    /// Runs one sync session with `peer` for `doc`, as the side that started it. Returns how
    /// many changes this node received.
    pub async fn sync_with(
        self: &Arc<Self>,
        peer: NodeId,
        addr: SocketAddr,
        doc: &DocId,
    ) -> anyhow::Result<usize> {
        let started = Instant::now();
        let mut state = self.load_sync_state(&peer, doc, "initiator");
        let mut received = 0;
        for round in 0..MAX_SYNC_ROUNDS {
            if started.elapsed() > SYNC_SESSION_LIMIT {
                anyhow::bail!(
                    "sync session with {peer} for {doc} took over {SYNC_SESSION_LIMIT:?}; cut (the next one resumes)"
                );
            }
            let me = self.clone();
            let (id, st) = (doc.clone(), std::mem::take(&mut state));
            let (ours, st) = tokio::task::spawn_blocking(move || {
                let mut st = st;
                me.generate(&id, &mut st).map(|w| (w, st))
            })
            .await??;
            state = st;
            if ours.packet.is_none() && round > 0 {
                break;
            }
            let request = PeerRequest::ConfigSync {
                doc_id: doc.to_string(),
                start: round == 0,
                message: ours,
            };
            let theirs = match self.peer.request(peer, addr, &request).await? {
                PeerResponse::ConfigSync { message } => message,
                PeerResponse::Refused { code, message } => {
                    anyhow::bail!("{peer} refused the sync session ({code}): {message}")
                }
                other => anyhow::bail!("unexpected answer to a sync message: {other:?}"),
            };
            let done = theirs.packet.is_none();
            let me = self.clone();
            let (id, st) = (doc.clone(), std::mem::take(&mut state));
            let (new, st) = tokio::task::spawn_blocking(move || {
                let mut st = st;
                me.absorb(&id, &mut st, &theirs).map(|n| (n, st))
            })
            .await??;
            state = st;
            received += new;
            if done && round > 0 {
                break;
            }
        }
        // The shared heads must not claim changes that are not on disk yet.
        if let Some(done) = self.persister.flush() {
            let _ = done.await;
        }
        self.save_sync_state(&peer, doc, "initiator", &state);
        metrics::counter!("nexus_config_sync_sessions_total", "outcome" => "ok").increment(1);
        Ok(received)
    }

    // --- storage upkeep -------------------------------------------------------------------

    /// Compacts documents stored as many chunks into one (background; a crash leaves either
    /// the old chunks or the new one).
    fn compact_if_needed(&self) {
        let ids: Vec<DocId> = lock(&self.docs).values().map(|h| h.id.clone()).collect();
        for id in ids {
            let count = self.store.config_chunk_count(&id.to_string()).unwrap_or(0);
            if count < COMPACT_AFTER_CHUNKS {
                continue;
            }
            let result = self.with_doc(&id, |doc| -> anyhow::Result<()> {
                // Commits are submitted under the document lock, which this holds: once the
                // store thread has written what is queued, every change of `doc` is in a
                // chunk up to `upto`, and nothing new can be queued until this is done.
                if let Some(done) = self.persister.flush() {
                    done.blocking_recv()
                        .map_err(|_| anyhow::anyhow!("the store thread stopped"))?
                        .map_err(|e| anyhow::anyhow!(e))?;
                }
                let upto = self.store.config_last_chunk(&id.to_string())?;
                let bytes = doc.save();
                self.store.compact_config(&id.to_string(), upto, &bytes)?;
                Ok(())
            });
            match result {
                Ok(Ok(())) => {
                    metrics::counter!("nexus_config_compactions_total").increment(1);
                    tracing::info!(doc = %id, chunks = count, "compacted configuration storage");
                }
                Ok(Err(err)) | Err(err) => {
                    tracing::warn!(doc = %id, error = %format!("{err:#}"), "compaction failed")
                }
            }
        }
    }

    // --- status ---------------------------------------------------------------------------

    /// What this node holds: per document its version, heads digest and quarantined objects.
    pub fn local_status(&self) -> Vec<serde_json::Value> {
        let docs = lock(&self.docs);
        docs.values()
            .map(|held| {
                let id = &held.id;
                let quarantined = (*self.quarantine(&docs, id)).clone();
                serde_json::json!({
                    "document": id.to_string(),
                    "version": held.version(),
                    "heads_digest": hex::encode(held.digest()),
                    "quarantined": quarantined
                        .into_iter()
                        .map(|(object, reasons)| serde_json::json!({"object": object, "reasons": reasons}))
                        .collect::<Vec<_>>(),
                })
            })
            .collect()
    }

    /// The version of a document this node holds.
    pub fn version_of(&self, id: &DocId) -> Option<u64> {
        lock(&self.docs).get(&id.to_string()).map(|h| h.version())
    }

    /// Publishes this node's document versions and digests in gossip.
    pub async fn publish_versions(&self) {
        let versions: Vec<(String, String)> = lock(&self.docs)
            .iter()
            .map(|(id, held)| {
                (
                    format!("{GOSSIP_PREFIX_CONFIG}{id}"),
                    format!("{}:{}", held.version(), hex::encode(held.digest())),
                )
            })
            .collect();
        for (key, value) in versions {
            self.mesh.publish(&key, &value).await;
        }
        let applied = DocId::tenant(&self.tenant)
            .ok()
            .and_then(|id| self.version_of(&id));
        if let Some(version) = applied {
            self.peer.set_config_version(version).await;
        }
    }

    /// Anti-entropy: runs a sync session with peers whose published digest of a document
    /// differs from ours.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        self.preload();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            self.record_members().await;
            self.publish_versions().await;
            for (peer, addr, id) in self.sync_candidates().await {
                let doc = id.to_string();
                lock(&self.anti_entropy).synced(peer, &doc, self.started.elapsed());
                match self.sync_with(peer, addr, &id).await {
                    Ok(new) if new > 0 => {
                        tracing::info!(peer = %peer, doc, new, "caught up configuration");
                        self.publish_versions().await;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        metrics::counter!("nexus_config_sync_sessions_total", "outcome" => "failed")
                            .increment(1);
                        tracing::debug!(peer = %peer, error = %format!("{err:#}"), "sync session failed")
                    }
                }
            }
        }
    }

    /// At most one peer per document to run a sync session with now, chosen at random among
    /// those [`nexus_mesh::AntiEntropy`] qualifies and that may hold the document.
    async fn sync_candidates(&self) -> Vec<(NodeId, SocketAddr, DocId)> {
        let ours: HashMap<String, (u64, String)> = lock(&self.docs)
            .iter()
            .map(|(id, held)| (id.clone(), (held.version(), hex::encode(held.digest()))))
            .collect();
        let me = self.author.facts().node_id;
        let published = self.mesh.published_prefix(GOSSIP_PREFIX_CONFIG).await;
        let advertised: Vec<nexus_mesh::Advertised> = published
            .into_iter()
            .filter_map(|(node, key, value)| {
                let doc = key.strip_prefix(GOSSIP_PREFIX_CONFIG)?;
                let (version, digest) = value.split_once(':')?;
                Some(nexus_mesh::Advertised {
                    node,
                    doc: doc.to_string(),
                    version: version.parse().unwrap_or(0),
                    digest: digest.to_string(),
                })
            })
            .collect();
        let by_doc =
            lock(&self.anti_entropy).candidates(me, self.started.elapsed(), &ours, advertised);
        let nodes: Vec<NodeId> = by_doc.values().flatten().copied().collect();
        let facts_of = self.trusted_facts(&nodes);
        use rand::seq::SliceRandom;
        let mut rng = rand::thread_rng();
        by_doc
            .into_iter()
            .filter_map(|(doc, peers)| {
                let id = parse_doc_id(&doc)?;
                let eligible: Vec<(NodeId, SocketAddr, DocId)> = peers
                    .into_iter()
                    .filter_map(|node| {
                        let info = self.mesh.member(&node).and_then(|m| m.info)?;
                        let facts = facts_of.get(&node).cloned().unwrap_or(AuthorFacts {
                            node_id: node,
                            role: Role::Node,
                            tenant: String::new(),
                            site: String::new(),
                        });
                        nexus_crdt::may_replicate(&id, &facts)
                            .then(|| (node, info.quic_addr, id.clone()))
                    })
                    .collect();
                eligible.choose(&mut rng).cloned()
            })
            .collect()
    }
}

/// The tenant model of a view, if it is one.
fn tenant_model(view: &mut View) -> Option<&mut TenantDoc> {
    match view {
        View::Tenant(m) => Some(&mut m.model),
        View::Fleet(_) => None,
    }
}

/// The fleet model of a view, if it is one.
fn fleet_model(view: &mut View) -> Option<&mut FleetDoc> {
    match view {
        View::Fleet(m) => Some(&mut m.model),
        View::Tenant(_) => None,
    }
}

/// A write's check: the problems of `object` (`routes.r1`) once the candidate is under `key`
/// in the model's `field`, validated whole (references need the rest of the document; a
/// problem with the document as a whole counts too); the model is put back afterwards.
fn candidate_check<M, V>(
    object: String,
    key: String,
    model: fn(&mut View) -> Option<&mut M>,
    field: fn(&mut M) -> &mut BTreeMap<String, V>,
    validate: impl Fn(&M) -> Result<(), nexus_crdt::Invalid> + Sync,
) -> impl Fn(&mut View, Option<V>) -> Vec<String> + Sync {
    move |view, new| {
        let (Some(m), Some(new)) = (model(view), new) else {
            return Vec::new();
        };
        let old = field(m).insert(key.clone(), new);
        let result = validate(m);
        match old {
            Some(o) => field(m).insert(key.clone(), o),
            None => field(m).remove(&key),
        };
        match result {
            Ok(()) => Vec::new(),
            Err(invalid) => invalid
                .0
                .iter()
                .filter(|p| p.object == object || p.object.is_empty())
                .map(|p| p.to_string())
                .collect(),
        }
    }
}

/// Waits until a local commit is on disk: a write is acknowledged only then.
async fn wait_durable(
    durable: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
) -> Result<(), WriteError> {
    let Some(durable) = durable else {
        return Ok(());
    };
    match tokio::time::timeout(Duration::from_secs(10), durable)
        .await
        .unwrap_or(Ok(Err("the disk did not take it within 10 s".into())))
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(WriteError::Internal(format!(
            "the change could not be stored on this node's disk, so it is not acknowledged: {err}"
        ))),
        Err(_) => Err(WriteError::Internal(
            "the configuration store stopped before the change was stored".into(),
        )),
    }
}

/// Payload bytes of configuration pushes sent (the request body; QUIC and TLS framing add
/// a few dozen bytes a message).
fn count_push_bytes(request: &PeerRequest) {
    let bytes = serde_json::to_vec(request).map(|b| b.len()).unwrap_or(0);
    metrics::counter!("nexus_config_push_bytes_total").increment(bytes as u64);
    metrics::counter!("nexus_config_push_messages_total").increment(1);
}

/// Time from a change's creation (its author's clock) to its being applied and stored here.
/// Clocks of different machines differ, so across machines this is only as good as their
/// synchronisation; negative lags (the author's clock ahead) are counted as zero.
/// Each applied change is also logged at debug level under the target `nexus_config_applied`
/// (`NEXUS_LOG=info,nexus_config_applied=debug`), which is how `nexus-config-bench` reads
/// per-node figures without loading the nodes with polls.
fn record_lag(path: &'static str, change: &SignedChange, touched: &BTreeSet<ObjectRef>) {
    let lag_ms = (crate::now_ms() as i64 - change.timestamp_ms).max(0);
    metrics::histogram!("nexus_config_change_apply_lag_seconds", "path" => path)
        .record(lag_ms as f64 / 1000.0);
    if tracing::enabled!(target: "nexus_config_applied", tracing::Level::DEBUG) {
        let objects: Vec<String> = touched
            .iter()
            .map(|o| format!("{}.{}", o.collection, o.key))
            .collect();
        tracing::debug!(
            target: "nexus_config_applied",
            doc = %change.doc_id,
            path,
            lag_ms,
            objects = %objects.join(","),
            "applied"
        );
    }
}

fn tenant_has_objects(r: &Replication, tenant: &str) -> Result<bool, WriteError> {
    let Ok(id) = DocId::tenant(tenant) else {
        return Ok(false);
    };
    if !r.holds(&id) {
        return Ok(false);
    }
    r.with_held(&id, |h| {
        h.tenant().is_some_and(|t| {
            // The default policies onboarding wrote do not count: they go with the tenant.
            let own_routes = t
                .model
                .routes
                .keys()
                .any(|k| !nexus_api::tenants::DEFAULT_POLICIES.contains(&k.as_str()));
            !(!own_routes
                && t.model.firmware_targets.is_empty()
                && t.model.node_overrides.is_empty()
                && t.model.site_routes.is_empty()
                && t.model.site_node_overrides.is_empty())
        })
    })
    .map_err(internal)
}

fn snapshot_json(doc: &DocId, id: &str, s: &Snapshot) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "document": doc.to_string(),
        "name": s.name,
        "heads": s.heads,
        "version": s.version,
        "created_by": s.created_by,
        "created_at": s.created_at,
    })
}
