//! Object-level access for large documents: read, write and track single objects without
//! hydrating the whole model.
//!
//! [`ConfigDoc::apply_local`] hydrates and compares the whole model on every write, which costs
//! about 110 µs per route policy with automerge 0.12 (11 s for 100,000). A node holding large
//! documents keeps a materialized copy of the model (its SQLite tables) and uses these instead:
//! [`ConfigDoc::apply_local_entry`] to write one object, [`ConfigDoc::touched_objects`] to learn
//! which objects applied changes affected, and [`ConfigDoc::entry`] to re-read just those.

use std::collections::BTreeSet;
use std::marker::PhantomData;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ObjType, ROOT, ReadDoc, Value};
use autosurgeon::{Hydrate, Reconcile, hydrate_prop, reconcile_prop};

use crate::doc::{Batch, ConfigDoc, LocalAuthor};
use crate::error::{LocalError, Unauthorized};
use crate::model::{
    Anchor, ApiKeyRecord, DutyLease, FirmwareTarget, Member, NodeOverride, OidcProvider,
    Revocation, RoutePolicy, Snapshot, Tenant, TenantCa, split_site_key,
};
use crate::signed::{Caller, CallerRole, DocId, SignedChange, authorize};
use crate::validate::Problem;

/// A typed collection (a top-level map keyed by object id) of one kind of document.
#[derive(Debug)]
pub struct Collection<V> {
    name: &'static str,
    tenant_doc: bool,
    site_scoped: bool,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for Collection<V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for Collection<V> {}

impl<V> Collection<V> {
    const fn new(name: &'static str, tenant_doc: bool, site_scoped: bool) -> Collection<V> {
        Collection {
            name,
            tenant_doc,
            site_scoped,
            _value: PhantomData,
        }
    }

    /// The collection's key in the document (`routes`, `tenants`, …).
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn fits(&self, id: &DocId) -> bool {
        self.tenant_doc == matches!(id, DocId::Tenant(_))
    }
}

/// Fleet document: tenants by id.
pub const TENANTS: Collection<Tenant> = Collection::new("tenants", false, false);
/// Fleet document: anchors by node id.
pub const ANCHORS: Collection<Anchor> = Collection::new("anchors", false, false);
/// Fleet document: revocations by MIC serial.
pub const REVOCATIONS: Collection<Revocation> = Collection::new("revocations", false, false);
/// Fleet document: fleet-wide route policies by id.
pub const POLICIES: Collection<RoutePolicy> = Collection::new("policies", false, false);
/// Tenant document: route policies by id.
pub const ROUTES: Collection<RoutePolicy> = Collection::new("routes", true, false);
/// Tenant document: firmware targets by id.
pub const FIRMWARE_TARGETS: Collection<FirmwareTarget> =
    Collection::new("firmware_targets", true, false);
/// Tenant document: node overrides by node id.
pub const NODE_OVERRIDES: Collection<NodeOverride> = Collection::new("node_overrides", true, false);
/// Tenant document: site-scoped route policies by `<site>/<id>`.
pub const SITE_ROUTES: Collection<RoutePolicy> = Collection::new("site_routes", true, true);
/// Tenant document: site-scoped node overrides by `<site>/<node id>`.
pub const SITE_NODE_OVERRIDES: Collection<NodeOverride> =
    Collection::new("site_node_overrides", true, true);

/// Fleet document: snapshots of the fleet document by id.
pub const FLEET_SNAPSHOTS: Collection<Snapshot> = Collection::new("snapshots", false, false);
/// Tenant document: snapshots of the tenant document by id.
pub const TENANT_SNAPSHOTS: Collection<Snapshot> = Collection::new("snapshots", true, false);

/// Fleet document: fleet-admin API keys by key id.
pub const FLEET_API_KEYS: Collection<ApiKeyRecord> = Collection::new("api_keys", false, false);
/// Tenant document: the tenant's API keys by key id.
pub const TENANT_API_KEYS: Collection<ApiKeyRecord> = Collection::new("api_keys", true, false);
/// Tenant document: OpenID Connect providers by id.
pub const OIDC_PROVIDERS: Collection<OidcProvider> = Collection::new("oidc", true, false);

/// Fleet document: the fleet's members by node id.
pub const MEMBERS: Collection<Member> = Collection::new("members", false, false);

/// Fleet document: tenant CAs by `<tenant>/<anchor node id>`.
pub const TENANT_CAS: Collection<TenantCa> = Collection::new("tenant_cas", false, false);
/// Fleet document: fleet duty leases by duty name.
pub const DUTIES: Collection<DutyLease> = Collection::new("duties", false, false);

/// Every collection's name.
const COLLECTION_NAMES: &[&str] = &[
    MEMBERS.name,
    TENANT_CAS.name,
    DUTIES.name,
    FLEET_SNAPSHOTS.name,
    TENANTS.name,
    ANCHORS.name,
    REVOCATIONS.name,
    POLICIES.name,
    ROUTES.name,
    FIRMWARE_TARGETS.name,
    NODE_OVERRIDES.name,
    SITE_ROUTES.name,
    SITE_NODE_OVERRIDES.name,
    FLEET_API_KEYS.name,
    OIDC_PROVIDERS.name,
];

/// An object (or top-level field) that applied changes touched.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// The top-level key: a collection (`routes`) or a field (`settings`, `tenant_id`).
    pub collection: String,
    /// The object's key in the collection; empty for a top-level field (`settings`), or when
    /// a whole collection map was replaced (re-read all of it).
    pub key: String,
}

impl ConfigDoc {
    /// Reads one object. `Ok(None)` if absent; `Err` (the quarantine reason) if its stored form
    /// does not match the schema.
    pub fn entry<V: Hydrate>(
        &self,
        collection: Collection<V>,
        key: &str,
    ) -> Result<Option<V>, Problem> {
        let doc = self.automerge();
        let object = format!("{}.{key}", collection.name);
        let problem = |message: String| Problem {
            object: object.clone(),
            path: object.clone(),
            message,
        };
        if !collection.fits(self.id()) {
            return Err(problem(format!(
                "is not a collection of document {}",
                self.id()
            )));
        }
        let Some(map) = map_at(doc, collection.name) else {
            return Ok(None);
        };
        if doc.get(&map, key).ok().flatten().is_none() {
            return Ok(None);
        }
        hydrate_prop(doc, &map, key)
            .map(Some)
            .map_err(|e| problem(format!("does not match the schema: {e}")))
    }

    /// Writes one object: `edit` gets the current value (`None` if absent or malformed) and
    /// leaves the new one (`None` deletes). Validate inside `edit` and return `Err` to refuse.
    ///
    /// Same checks and result as [`ConfigDoc::apply_local`]; a site-scoped writer may only
    /// write site-scoped collections under keys of its site. Costs O(size of the object).
    pub fn apply_local_entry<V, E>(
        &mut self,
        author: &LocalAuthor,
        caller: &Caller,
        timestamp_ms: i64,
        collection: Collection<V>,
        key: &str,
        edit: impl FnOnce(&mut Option<V>) -> Result<(), E>,
    ) -> Result<Option<SignedChange>, LocalError<E>>
    where
        V: Hydrate + Reconcile + Clone + PartialEq,
    {
        authorize(self.id(), author.facts(), &caller.role)?;
        if let CallerRole::SiteWriter { site, .. } = &caller.role
            && !(collection.site_scoped && split_site_key(key).is_some_and(|(s, _)| s == site))
        {
            return Err(Unauthorized::OutsideSiteScope {
                site: site.clone(),
                path: format!("{}.{key}", collection.name),
            }
            .into());
        }
        if !collection.fits(self.id()) {
            return Err(LocalError::Reconcile(format!(
                "{} is not a collection of document {}",
                collection.name,
                self.id()
            )));
        }
        let present = map_at(self.automerge(), collection.name)
            .is_some_and(|m| self.automerge().get(&m, key).ok().flatten().is_some());
        let old = self.entry(collection, key).ok().flatten();
        let mut new = old.clone();
        edit(&mut new).map_err(LocalError::Rejected)?;
        if new == old && (new.is_some() || !present) {
            return Ok(None);
        }
        self.commit_local(author, caller, timestamp_ms, |tx| {
            let map = match map_at(tx, collection.name) {
                Some(m) => m,
                None => tx
                    .put_object(ROOT, collection.name, ObjType::Map)
                    .map_err(|e| e.to_string())?,
            };
            match &new {
                Some(v) => reconcile_prop(tx, &map, key, v).map_err(|e| e.to_string()),
                None => tx.delete(&map, key).map_err(|e| e.to_string()),
            }
        })
    }

    /// The objects `changes` (already applied to this document) touched, for refreshing a
    /// materialized copy: re-read each with [`ConfigDoc::entry`]. Changes not (yet) in the
    /// document, such as queued ones, are skipped.
    pub fn touched_objects<'c>(
        &self,
        changes: impl IntoIterator<Item = &'c SignedChange>,
    ) -> BTreeSet<ObjectRef> {
        let mut touched = BTreeSet::new();
        let mut batch = Batch::new(self.automerge());
        for c in changes {
            if !self.has_change(&c.change_hash) {
                continue;
            }
            // A change whose targets cannot be resolved touched something: report the whole
            // document (an empty collection), so a materialized copy is re-read whole.
            let targets = crate::signed::decode_change(&c.change)
                .ok()
                .and_then(|decoded| batch.op_targets(&decoded).ok());
            let Some(targets) = targets else {
                touched.insert(ObjectRef {
                    collection: String::new(),
                    key: String::new(),
                });
                continue;
            };
            for path in targets {
                let mut steps = path.into_iter();
                let collection = steps.next().unwrap_or_default();
                // Inside a collection the second step is the object's key; inside a field
                // (`settings`) it is a sub-field, and the field is the unit.
                let key = if COLLECTION_NAMES.contains(&collection.as_str()) {
                    steps.next().unwrap_or_default()
                } else {
                    String::new()
                };
                touched.insert(ObjectRef { collection, key });
            }
        }
        touched
    }

    pub(crate) fn commit_local<E>(
        &mut self,
        author: &LocalAuthor,
        caller: &Caller,
        timestamp_ms: i64,
        write: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), String>,
    ) -> Result<Option<SignedChange>, LocalError<E>> {
        let id = self.id().clone();
        let doc = self.doc_mut();
        doc.set_actor(author.actor().clone());
        let mut tx = doc.transaction();
        if let Err(e) = write(&mut tx) {
            tx.rollback();
            return Err(LocalError::Reconcile(e));
        }
        let (hash, _) =
            tx.commit_with(CommitOptions::default().with_time(timestamp_ms.div_euclid(1000)));
        let Some(hash) = hash else {
            return Ok(None);
        };
        let mut change = doc
            .get_change_by_hash(&hash)
            .expect("a change just committed is in the document");
        let signed = SignedChange::sign(
            id,
            change.bytes().into_owned(),
            author.key(),
            caller.clone(),
            author.mic_serial(),
            timestamp_ms,
        )?;
        Ok(Some(signed))
    }
}

/// The map at `ROOT[key]`, if that is a map.
fn map_at<D: ReadDoc>(doc: &D, key: &str) -> Option<automerge::ObjId> {
    match doc.get(ROOT, key) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    }
}
