//! [`ConfigDoc`]: one replicated configuration document and every way into it.

use std::collections::BTreeMap;

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{ActorId, Automerge, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, Value};
use autosurgeon::{Hydrate, Reconcile, hydrate_prop, reconcile_prop};
use nexus_ca::NodeKey;
use sha2::{Digest, Sha256};

use crate::error::{DocError, LocalError, RemoteError, Unauthorized};
use crate::model::{FleetDoc, FleetSettings, TenantDoc, split_site_key};
use crate::scope::{ScopeChecker, ScopeFailure};
use crate::signed::{
    AuthorDirectory, AuthorFacts, Caller, CallerRole, DocId, SignedChange, authorize, digest_heads,
};
use crate::validate::{
    Effective, KnownNodes, Problem, effective_fleet_with, effective_tenant_with,
};

/// The node this process writes as: its key, what its MIC says, and its automerge actor.
#[derive(Clone, Debug)]
pub struct LocalAuthor {
    key: NodeKey,
    facts: AuthorFacts,
    mic_serial: String,
    actor: ActorId,
}

impl LocalAuthor {
    /// The author `key` with the facts and serial of its current MIC.
    ///
    /// `incarnation` must never repeat for this node (a counter kept in the node's database and
    /// bumped at every start, or the start time in nanoseconds): the automerge actor is
    /// `node id (16 bytes) || incarnation (8 bytes, big-endian)`, and an actor that lost its
    /// last changes in a crash and reused their sequence numbers would create two different
    /// changes with one (actor, seq), which automerge refuses everywhere the first one arrived.
    ///
    /// Returns `None` if `facts.node_id` is not `key`'s node id.
    pub fn new(
        key: NodeKey,
        facts: AuthorFacts,
        mic_serial: &str,
        incarnation: u64,
    ) -> Option<LocalAuthor> {
        if facts.node_id != key.node_id() {
            return None;
        }
        let mut actor = facts.node_id.as_bytes().to_vec();
        actor.extend_from_slice(&incarnation.to_be_bytes());
        Some(LocalAuthor {
            key,
            facts,
            mic_serial: mic_serial.to_string(),
            actor: ActorId::from(actor),
        })
    }

    /// What this author's MIC says.
    pub fn facts(&self) -> &AuthorFacts {
        &self.facts
    }

    /// The automerge actor this author writes with.
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    pub(crate) fn key(&self) -> &NodeKey {
        &self.key
    }

    pub(crate) fn mic_serial(&self) -> &str {
        &self.mic_serial
    }
}

/// What [`ConfigDoc::apply_remote`] did with a verified change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied now: persist it and relay it.
    New,
    /// Already here: nothing to do, do not relay.
    Duplicate,
}

/// A model read from a document, with the objects that could not be read as the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Hydrated<M> {
    /// Everything that hydrated.
    pub model: M,
    /// Objects left out because their stored form does not match the schema (written by a
    /// buggy or newer node); they are quarantined by [`ConfigDoc::effective_tenant`] and
    /// [`ConfigDoc::effective_fleet`].
    pub malformed: Vec<Problem>,
}

/// A typed model stored in a [`ConfigDoc`]: [`FleetDoc`] or [`TenantDoc`].
pub trait Model: Clone + Default + PartialEq + std::fmt::Debug + sealed::Sealed {
    /// For messages.
    const NAME: &'static str;
    /// Whether documents with this id hold this model.
    fn fits(id: &DocId) -> bool;
    /// Reads the model, leaving out (and reporting) objects that do not match the schema.
    #[doc(hidden)]
    fn hydrate_lenient(doc: &Automerge) -> Hydrated<Self>;
    /// Writes the difference between `old` and `new` (both hydrated from the current state).
    #[doc(hidden)]
    fn reconcile_diff(tx: &mut Transaction<'_>, old: &Self, new: &Self) -> Result<(), String>;
    /// The first object a site-scoped writer for `site` changed outside its site, if any.
    #[doc(hidden)]
    fn outside_site(old: &Self, new: &Self, site: &str) -> Option<String>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::model::FleetDoc {}
    impl Sealed for crate::model::TenantDoc {}
}

/// One replicated configuration document: the fleet document or a tenant's.
///
/// Wraps an [`automerge::Automerge`]. Every document starts from a deterministic *genesis*
/// change (fixed actor derived from the document id, time 0, the empty collections), identical
/// on every node, so nodes that create the document independently share its root objects
/// instead of creating conflicting ones. Genesis is the only unsigned change a document holds.
#[derive(Debug)]
pub struct ConfigDoc {
    id: DocId,
    doc: Automerge,
    /// The heads last written by [`ConfigDoc::save`] / [`ConfigDoc::save_incremental`] (or
    /// loaded from storage): `save_incremental` returns the changes after these.
    persisted: Vec<ChangeHash>,
}

impl ConfigDoc {
    /// A new document holding only its genesis change (nothing persisted yet).
    pub fn new(id: DocId) -> ConfigDoc {
        let mut doc = genesis(&id);
        doc.apply_changes(derived_changes(&id))
            .expect("derived changes apply to genesis");
        ConfigDoc {
            doc,
            id,
            persisted: Vec::new(),
        }
    }

    /// The hashes of the changes every replica derives itself and never sends: genesis and the
    /// collections added after it (see [`derived_changes`]).
    pub fn derived_hashes(id: &DocId) -> Vec<ChangeHash> {
        let mut hashes = vec![ConfigDoc::genesis_hash(id)];
        hashes.extend(derived_changes(id).iter_mut().map(|c| c.hash()));
        hashes
    }

    /// The hash of `id`'s genesis change, the same on every node.
    pub fn genesis_hash(id: &DocId) -> ChangeHash {
        genesis(id).get_heads()[0]
    }

    /// Loads a document saved by [`ConfigDoc::save`] (optionally followed by
    /// [`ConfigDoc::save_incremental`] chunks), from this node's own storage.
    ///
    /// Storage is inside the node's trust boundary: nothing is re-verified. Never load bytes
    /// received from another node; those arrive as [`SignedChange`]s or sync packets.
    pub fn load(id: DocId, bytes: &[u8]) -> Result<ConfigDoc, DocError> {
        let doc = Automerge::load(bytes).map_err(|e| DocError::Load {
            doc: id.to_string(),
            reason: e.to_string(),
        })?;
        let genesis = ConfigDoc::genesis_hash(&id);
        if doc.get_change_meta_by_hash(&genesis).is_none() {
            return Err(DocError::WrongGenesis {
                doc: id.to_string(),
                genesis,
            });
        }
        let persisted = doc.get_heads();
        let mut doc = ConfigDoc { id, doc, persisted };
        doc.add_derived()?;
        Ok(doc)
    }

    /// Adds the derived changes a document stored by an older node lacks (they become part of
    /// the next incremental save).
    fn add_derived(&mut self) -> Result<(), DocError> {
        let missing: Vec<Change> = derived_changes(&self.id)
            .into_iter()
            .filter(|c| !self.has_change(&c.hash()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.doc.apply_changes(missing).map_err(|e| DocError::Load {
            doc: self.id.to_string(),
            reason: e.to_string(),
        })
    }

    /// Adds changes from storage (chunks written by [`ConfigDoc::save_incremental`]); returns
    /// how many operations were added. Trusted like [`ConfigDoc::load`]. If the document had
    /// no unsaved changes before, the loaded ones count as persisted.
    pub fn load_incremental(&mut self, bytes: &[u8]) -> Result<usize, DocError> {
        let clean = self.persisted == self.doc.get_heads();
        let ops = self
            .doc
            .load_incremental(bytes)
            .map_err(|e| DocError::Load {
                doc: self.id.to_string(),
                reason: e.to_string(),
            })?;
        if clean {
            self.persisted = self.doc.get_heads();
        }
        Ok(ops)
    }

    /// The whole document, compacted (for snapshots and background compaction).
    pub fn save(&mut self) -> Vec<u8> {
        self.persisted = self.doc.get_heads();
        self.doc.save()
    }

    /// The changes since the last [`ConfigDoc::save`] / `save_incremental` (or load), to
    /// append to storage. Empty when nothing changed.
    ///
    /// Tracks the persisted heads itself: automerge's own `save_incremental` returns the whole
    /// history after a `load` (measured: 16–25 MB for 100,000 routes).
    pub fn save_incremental(&mut self) -> Vec<u8> {
        let heads = self.doc.get_heads();
        if heads == self.persisted {
            return Vec::new();
        }
        let bytes = self.doc.save_after(&self.persisted);
        self.persisted = heads;
        bytes
    }

    /// This document's id.
    pub fn id(&self) -> &DocId {
        &self.id
    }

    /// The current heads (hashes of the changes nothing else depends on yet).
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// SHA-256 of the sorted heads, for gossip: two nodes with equal digests hold the same
    /// changes; a difference starts a sync session.
    pub fn heads_digest(&self) -> [u8; 32] {
        digest_heads(&self.doc.get_heads())
    }

    /// The config version: the number of changes in the document's history, genesis included.
    ///
    /// The same set of changes gives the same number on every node, whatever order they
    /// arrived in, and every new change (local or merged) raises it, so it is monotonic on each
    /// node. It is **not** an identity: two replicas with different concurrent changes can
    /// have the same count. Equal versions *and* equal [`ConfigDoc::heads_digest`]s mean equal
    /// state; a higher version only means more changes. Changes held back for missing
    /// dependencies are not counted.
    pub fn version(&self) -> u64 {
        // Derived changes other than genesis are structure, not configuration: not counted,
        // so a version means the same whether a replica added them at load or at creation.
        self.doc
            .stats()
            .num_changes
            .saturating_sub(derived_collections(&self.id).len() as u64)
    }

    /// Whether the change `hash` is part of this document.
    pub fn has_change(&self, hash: &ChangeHash) -> bool {
        self.doc.get_change_meta_by_hash(hash).is_some()
    }

    /// The raw automerge document, for read-only queries.
    pub fn automerge(&self) -> &Automerge {
        &self.doc
    }

    /// Reads the typed model; objects that do not match the schema are left out and reported.
    pub fn hydrate<M: Model>(&self) -> Result<Hydrated<M>, DocError> {
        if !M::fits(&self.id) {
            return Err(DocError::WrongModel {
                doc: self.id.to_string(),
                model: M::NAME,
            });
        }
        let mut hydrated = M::hydrate_lenient(&self.doc);
        hydrated.malformed.sort();
        Ok(hydrated)
    }

    /// Reads the typed model as it was at `heads` (a snapshot's), leaving out objects that do
    /// not match the schema. Costs a copy of the document's history up to `heads`.
    pub fn hydrate_at<M: Model>(&self, heads: &[ChangeHash]) -> Result<Hydrated<M>, DocError> {
        if !M::fits(&self.id) {
            return Err(DocError::WrongModel {
                doc: self.id.to_string(),
                model: M::NAME,
            });
        }
        if let Some(missing) = heads.iter().find(|h| !self.has_change(h)) {
            return Err(DocError::UnknownHeads {
                doc: self.id.to_string(),
                reason: format!("change {missing} has not reached this node"),
            });
        }
        let past = self
            .doc
            .fork_at(heads)
            .map_err(|e| DocError::UnknownHeads {
                doc: self.id.to_string(),
                reason: e.to_string(),
            })?;
        let mut hydrated = M::hydrate_lenient(&past);
        hydrated.malformed.sort();
        Ok(hydrated)
    }

    /// The fleet configuration to apply, with the quarantined objects (see [`mod@crate::validate`]).
    pub fn effective_fleet(&self) -> Result<Effective<FleetDoc>, DocError> {
        let Hydrated { model, malformed } = self.hydrate::<FleetDoc>()?;
        Ok(effective_fleet_with(&model, malformed))
    }

    /// This tenant's configuration to apply, with the quarantined objects.
    pub fn effective_tenant(
        &self,
        fleet: &FleetDoc,
        known_nodes: &KnownNodes,
    ) -> Result<Effective<TenantDoc>, DocError> {
        let Hydrated {
            model,
            mut malformed,
        } = self.hydrate::<TenantDoc>()?;
        if Some(model.tenant_id.as_str()) != self.id.tenant_id() {
            malformed.push(Problem {
                object: String::new(),
                path: "tenant_id".into(),
                message: format!("is {:?} but this is document {}", model.tenant_id, self.id),
            });
        }
        Ok(effective_tenant_with(fleet, &model, known_nodes, malformed))
    }

    /// Makes a local change: hydrates the model, lets `edit` change it (validate inside `edit`
    /// and return `Err` to refuse), writes the difference as one automerge change, and signs it.
    ///
    /// Checks first that `author` may act for `caller` on this document ([`authorize`]), and
    /// for a site-scoped writer that only its site's objects changed. Returns `Ok(None)` when
    /// the edit changed nothing. On `Ok(Some(change))` the change is in the document: persist
    /// (and store the envelope) before acknowledging, then push the envelope to peers.
    ///
    /// Cost: hydrating and comparing the whole model, O(objects) per write (about 110 µs per
    /// route policy); for large documents use [`ConfigDoc::apply_local_entry`].
    pub fn apply_local<M: Model, E>(
        &mut self,
        author: &LocalAuthor,
        caller: &Caller,
        timestamp_ms: i64,
        edit: impl FnOnce(&mut M) -> Result<(), E>,
    ) -> Result<Option<SignedChange>, LocalError<E>> {
        authorize(&self.id, &author.facts, &caller.role)?;
        let old = self.hydrate::<M>()?.model;
        let mut new = old.clone();
        edit(&mut new).map_err(LocalError::Rejected)?;
        if let CallerRole::SiteWriter { site, .. } = &caller.role
            && let Some(path) = M::outside_site(&old, &new, site)
        {
            return Err(Unauthorized::OutsideSiteScope {
                site: site.clone(),
                path,
            }
            .into());
        }
        if new == old {
            return Ok(None);
        }
        self.commit_local(author, caller, timestamp_ms, |tx| {
            M::reconcile_diff(tx, &old, &new)
        })
    }

    /// Applies a change pushed by another node, after checking it: right document, known
    /// author, valid signature, author's actor, [`authorize`], and for site-scoped writers the
    /// objects it touches. On error nothing was applied: drop it, count it, do not relay it.
    pub fn apply_remote(
        &mut self,
        change: &SignedChange,
        directory: &impl AuthorDirectory,
    ) -> Result<Applied, RemoteError> {
        if change.doc_id != self.id {
            return Err(self.wrong_doc(change));
        }
        if self.has_change(&change.change_hash) {
            return Ok(Applied::Duplicate);
        }
        let decoded = {
            let mut batch = Batch::new(&self.doc);
            batch.check(&self.id, change, directory)?
        };
        // automerge would hold a change with missing dependencies in memory, invisibly and
        // for ever if they never come (a change of another document filed under this one).
        // Refuse it instead: a sync session brings it with its dependencies, in order.
        if let Some(missing) = decoded.deps().iter().find(|d| !self.has_change(d)) {
            return Err(RemoteError::MissingDependencies {
                hash: change.change_hash,
                detail: format!("it depends on change {missing}"),
            });
        }
        self.doc
            .apply_changes([decoded])
            .map_err(|source| RemoteError::Automerge {
                hash: change.change_hash,
                source: Box::new(source),
            })?;
        Ok(Applied::New)
    }

    pub(crate) fn wrong_doc(&self, change: &SignedChange) -> RemoteError {
        RemoteError::WrongDocument {
            expected: self.id.to_string(),
            found: change.doc_id.to_string(),
        }
    }

    pub(crate) fn doc_mut(&mut self) -> &mut Automerge {
        &mut self.doc
    }
}

/// Checks a sequence of changes against one document, in order, without applying them; later
/// changes may refer to objects made by earlier ones.
pub(crate) struct Batch<'a> {
    scope: ScopeChecker<'a>,
    /// Changes checked but not yet registered with the scope checker (registration decodes
    /// every operation, so it is deferred until a site-scoped change needs it).
    unregistered: Vec<Change>,
}

impl<'a> Batch<'a> {
    pub(crate) fn new(doc: &'a Automerge) -> Batch<'a> {
        Batch {
            scope: ScopeChecker::new(doc),
            unregistered: Vec::new(),
        }
    }

    /// The targets of `change`'s operations (see [`ScopeChecker::op_targets`]).
    pub(crate) fn op_targets(&mut self, change: &Change) -> Result<Vec<Vec<String>>, ScopeFailure> {
        for earlier in self.unregistered.drain(..) {
            self.scope.register(&earlier);
        }
        self.scope.op_targets(change)
    }

    pub(crate) fn check(
        &mut self,
        doc_id: &DocId,
        change: &SignedChange,
        directory: &impl AuthorDirectory,
    ) -> Result<Change, RemoteError> {
        let known = directory
            .resolve(&change.author, &change.mic_serial)
            .ok_or_else(|| RemoteError::UnknownAuthor {
                author: change.author,
                serial: change.mic_serial.clone(),
            })?;
        let decoded = change.verify(&known.public_key)?;
        let unauthorized = |reason| RemoteError::Unauthorized {
            hash: change.change_hash,
            reason,
        };
        if known.facts.node_id != change.author {
            // A directory answering for another node is a directory bug; refuse rather than
            // trust facts about the wrong node.
            return Err(RemoteError::UnknownAuthor {
                author: change.author,
                serial: change.mic_serial.clone(),
            });
        }
        authorize(doc_id, &known.facts, &change.caller.role).map_err(unauthorized)?;
        if let CallerRole::SiteWriter { site, .. } = &change.caller.role {
            for earlier in self.unregistered.drain(..) {
                self.scope.register(&earlier);
            }
            match self.scope.check_site(&decoded, site) {
                Ok(()) => {}
                Err(ScopeFailure::Outside(path)) => {
                    return Err(unauthorized(Unauthorized::OutsideSiteScope {
                        site: site.clone(),
                        path,
                    }));
                }
                Err(ScopeFailure::Unresolved(detail)) => {
                    return Err(RemoteError::MissingDependencies {
                        hash: change.change_hash,
                        detail,
                    });
                }
            }
        } else {
            self.unregistered.push(decoded.clone());
        }
        Ok(decoded)
    }
}

/// The actor of `id`'s genesis change: derived from the id, so every node derives the same.
fn genesis_actor(id: &DocId) -> ActorId {
    let mut h = Sha256::new();
    h.update(b"nexus-genesis-v1\0");
    h.update(id.to_string().as_bytes());
    ActorId::from(&h.finalize()[..16])
}

/// The genesis document of `id`: the empty collections (and a tenant document's tenant id),
/// committed by the genesis actor at time 0, so the change is byte-identical everywhere.
fn genesis(id: &DocId) -> Automerge {
    let mut doc = Automerge::new().with_actor(genesis_actor(id));
    let mut tx = doc.transaction();
    let maps: &[&str] = match id {
        DocId::Fleet => &["settings", "tenants", "anchors", "revocations", "policies"],
        DocId::Tenant(t) => {
            tx.put(ROOT, "tenant_id", t.as_str())
                .expect("writing to a fresh document cannot fail");
            &[
                "routes",
                "firmware_targets",
                "node_overrides",
                "site_routes",
                "site_node_overrides",
            ]
        }
    };
    for key in maps {
        tx.put_object(ROOT, *key, ObjType::Map)
            .expect("writing to a fresh document cannot fail");
    }
    tx.commit_with(CommitOptions::default().with_time(0));
    // Local changes use the author's actor (set in apply_local), never the genesis actor.
    doc.set_actor(ActorId::from([0u8; 16]));
    doc
}

/// Top-level collections added after genesis was fixed. Genesis cannot change (its hash is
/// every document's root), so each later collection is created by a *derived* change: built
/// on top of genesis alone by an actor derived from the document id and the collection name,
/// at time 0, so it is byte-identical on every node like genesis. Every replica adds it itself
/// ([`ConfigDoc::new`], [`ConfigDoc::load`]); it is never sent and never signed, and no other
/// change creates these maps, so they never conflict.
fn derived_collections(id: &DocId) -> &'static [&'static str] {
    match id {
        DocId::Fleet => &["snapshots", "members", "tenant_cas", "duties"],
        DocId::Tenant(_) => &["snapshots"],
    }
}

/// The derived changes of `id`, in order (each depends on genesis only).
fn derived_changes(id: &DocId) -> Vec<Change> {
    let base = genesis(id);
    derived_collections(id)
        .iter()
        .map(|name| {
            let mut h = Sha256::new();
            h.update(b"nexus-derived-v1\0");
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(id.to_string().as_bytes());
            let mut doc = base.fork().with_actor(ActorId::from(&h.finalize()[..16]));
            let mut tx = doc.transaction();
            tx.put_object(ROOT, *name, ObjType::Map)
                .expect("writing to a fresh document cannot fail");
            let (hash, _) = tx.commit_with(CommitOptions::default().with_time(0));
            doc.get_change_by_hash(&hash.expect("the change has an operation"))
                .expect("just committed")
        })
        .collect()
}

// --- hydration and reconciliation helpers -------------------------------------------------

/// The map object at `parent[key]`, if that is a map.
fn map_at<D: ReadDoc>(doc: &D, parent: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(parent, key) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    }
}

/// Hydrates the map `ROOT[key]` entry by entry; entries that do not hydrate are reported.
fn lenient_map<V: Hydrate>(
    doc: &Automerge,
    key: &str,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, V> {
    let mut out = BTreeMap::new();
    let Some(obj) = map_at(doc, &ROOT, key) else {
        if doc.get(&ROOT, key).ok().flatten().is_some() {
            problems.push(Problem {
                object: key.to_string(),
                path: key.to_string(),
                message: "is not a map; its objects are ignored".into(),
            });
        }
        return out;
    };
    for k in doc.keys(&obj) {
        match hydrate_prop::<_, V, _, _>(doc, &obj, k.as_str()) {
            Ok(v) => {
                out.insert(k, v);
            }
            Err(e) => problems.push(Problem {
                object: format!("{key}.{k}"),
                path: format!("{key}.{k}"),
                message: format!("does not match the schema: {e}"),
            }),
        }
    }
    out
}

/// Hydrates `ROOT[key]`; a missing value is the default, a malformed one is reported.
fn lenient_value<V: Hydrate + Default>(
    doc: &Automerge,
    key: &str,
    object: &str,
    problems: &mut Vec<Problem>,
) -> V {
    if doc.get(&ROOT, key).ok().flatten().is_none() {
        return V::default();
    }
    hydrate_prop(doc, &ROOT, key).unwrap_or_else(|e| {
        problems.push(Problem {
            object: object.to_string(),
            path: key.to_string(),
            message: format!("does not match the schema: {e}"),
        });
        V::default()
    })
}

/// Writes the entries of `new` that differ from `old` into the map `ROOT[key]` and deletes the
/// ones `new` dropped. Entries that did not hydrate (absent from `old`) are left alone unless
/// `new` sets them.
fn reconcile_map_diff<V: Reconcile + PartialEq>(
    tx: &mut Transaction<'_>,
    key: &str,
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
) -> Result<(), String> {
    if old == new {
        return Ok(());
    }
    let obj = match map_at(tx, &ROOT, key) {
        Some(obj) => obj,
        None => tx
            .put_object(ROOT, key, ObjType::Map)
            .map_err(|e| e.to_string())?,
    };
    for (k, v) in new {
        if old.get(k) != Some(v) {
            reconcile_prop(tx, &obj, k.as_str(), v).map_err(|e| format!("{key}.{k}: {e}"))?;
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        tx.delete(&obj, k.as_str())
            .map_err(|e| format!("{key}.{k}: {e}"))?;
    }
    Ok(())
}

/// The first key of a site-scoped map that changed and is not `site`'s.
fn changed_outside<V: PartialEq>(
    name: &str,
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    site: &str,
) -> Option<String> {
    old.keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .find(|k| split_site_key(k).is_none_or(|(s, _)| s != site))
        .map(|k| format!("{name}.{k}"))
}

impl Model for FleetDoc {
    const NAME: &'static str = "fleet document";

    fn fits(id: &DocId) -> bool {
        *id == DocId::Fleet
    }

    fn hydrate_lenient(doc: &Automerge) -> Hydrated<FleetDoc> {
        let mut malformed = Vec::new();
        let model = FleetDoc {
            settings: lenient_value::<FleetSettings>(doc, "settings", "settings", &mut malformed),
            tenants: lenient_map(doc, "tenants", &mut malformed),
            anchors: lenient_map(doc, "anchors", &mut malformed),
            revocations: lenient_map(doc, "revocations", &mut malformed),
            policies: lenient_map(doc, "policies", &mut malformed),
            snapshots: lenient_map(doc, "snapshots", &mut malformed),
            members: lenient_map(doc, "members", &mut malformed),
            api_keys: lenient_map(doc, "api_keys", &mut malformed),
            tenant_cas: lenient_map(doc, "tenant_cas", &mut malformed),
            duties: lenient_map(doc, "duties", &mut malformed),
        };
        Hydrated { model, malformed }
    }

    fn reconcile_diff(tx: &mut Transaction<'_>, old: &Self, new: &Self) -> Result<(), String> {
        if old.settings != new.settings {
            reconcile_prop(tx, ROOT, "settings", &new.settings)
                .map_err(|e| format!("settings: {e}"))?;
        }
        reconcile_map_diff(tx, "tenants", &old.tenants, &new.tenants)?;
        reconcile_map_diff(tx, "anchors", &old.anchors, &new.anchors)?;
        reconcile_map_diff(tx, "revocations", &old.revocations, &new.revocations)?;
        reconcile_map_diff(tx, "policies", &old.policies, &new.policies)?;
        reconcile_map_diff(tx, "snapshots", &old.snapshots, &new.snapshots)?;
        reconcile_map_diff(tx, "members", &old.members, &new.members)?;
        reconcile_map_diff(tx, "api_keys", &old.api_keys, &new.api_keys)?;
        reconcile_map_diff(tx, "tenant_cas", &old.tenant_cas, &new.tenant_cas)?;
        reconcile_map_diff(tx, "duties", &old.duties, &new.duties)
    }

    fn outside_site(_old: &Self, _new: &Self, _site: &str) -> Option<String> {
        Some("the fleet document".into())
    }
}

impl Model for TenantDoc {
    const NAME: &'static str = "tenant document";

    fn fits(id: &DocId) -> bool {
        matches!(id, DocId::Tenant(_))
    }

    fn hydrate_lenient(doc: &Automerge) -> Hydrated<TenantDoc> {
        let mut malformed = Vec::new();
        let model = TenantDoc {
            tenant_id: lenient_value::<String>(doc, "tenant_id", "", &mut malformed),
            routes: lenient_map(doc, "routes", &mut malformed),
            firmware_targets: lenient_map(doc, "firmware_targets", &mut malformed),
            node_overrides: lenient_map(doc, "node_overrides", &mut malformed),
            site_routes: lenient_map(doc, "site_routes", &mut malformed),
            site_node_overrides: lenient_map(doc, "site_node_overrides", &mut malformed),
            snapshots: lenient_map(doc, "snapshots", &mut malformed),
            api_keys: lenient_map(doc, "api_keys", &mut malformed),
            oidc: lenient_map(doc, "oidc", &mut malformed),
        };
        Hydrated { model, malformed }
    }

    fn reconcile_diff(tx: &mut Transaction<'_>, old: &Self, new: &Self) -> Result<(), String> {
        if old.tenant_id != new.tenant_id {
            return Err(format!(
                "tenant_id is fixed when the document is created (is {:?})",
                old.tenant_id
            ));
        }
        reconcile_map_diff(tx, "routes", &old.routes, &new.routes)?;
        reconcile_map_diff(
            tx,
            "firmware_targets",
            &old.firmware_targets,
            &new.firmware_targets,
        )?;
        reconcile_map_diff(
            tx,
            "node_overrides",
            &old.node_overrides,
            &new.node_overrides,
        )?;
        reconcile_map_diff(tx, "site_routes", &old.site_routes, &new.site_routes)?;
        reconcile_map_diff(
            tx,
            "site_node_overrides",
            &old.site_node_overrides,
            &new.site_node_overrides,
        )?;
        reconcile_map_diff(tx, "snapshots", &old.snapshots, &new.snapshots)?;
        reconcile_map_diff(tx, "api_keys", &old.api_keys, &new.api_keys)?;
        reconcile_map_diff(tx, "oidc", &old.oidc, &new.oidc)
    }

    fn outside_site(old: &Self, new: &Self, site: &str) -> Option<String> {
        if old.tenant_id != new.tenant_id {
            return Some("tenant_id".into());
        }
        let whole = |name: &str, same: bool| (!same).then(|| name.to_string());
        whole("routes", old.routes == new.routes)
            .or_else(|| {
                whole(
                    "firmware_targets",
                    old.firmware_targets == new.firmware_targets,
                )
            })
            .or_else(|| whole("node_overrides", old.node_overrides == new.node_overrides))
            .or_else(|| whole("snapshots", old.snapshots == new.snapshots))
            .or_else(|| whole("api_keys", old.api_keys == new.api_keys))
            .or_else(|| whole("oidc", old.oidc == new.oidc))
            .or_else(|| changed_outside("site_routes", &old.site_routes, &new.site_routes, site))
            .or_else(|| {
                changed_outside(
                    "site_node_overrides",
                    &old.site_node_overrides,
                    &new.site_node_overrides,
                    site,
                )
            })
    }
}
