//! The materialized configuration a node serves reads from, and how it is kept on disk.
//!
//! Hydrating a large automerge document is slow (about 20 s for 100,000 route policies), and
//! so is loading it (seconds). So every document a node holds has a *view*: its typed model,
//! one SQLite row per object (`config_objects`, JSON), written in the same transaction as the
//! change that produced it, with the heads digest and version it corresponds to
//! (`config_views`). A start reads the view, not the document; reads never need the automerge
//! document, which is loaded in the background ([`Held::load_doc`]) and only waited for by a
//! write or a sync that needs it. When the view is missing (a first start after an upgrade) or
//! does not match the document (checked when the document loads), it is rebuilt from the
//! document.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use nexus_crdt::{ConfigDoc, DocId, FleetDoc, ObjectRef, Problem, TenantDoc};

use crate::store::{ConfigJob, ObjectRow, Store};

/// A document's typed model, with the objects whose stored form does not match the schema.
#[derive(Debug, Clone, Default)]
pub(crate) struct Materialized<M> {
    pub(crate) model: M,
    /// Objects left out of `model`, by object (`routes.r1`).
    pub(crate) malformed: BTreeMap<String, Problem>,
}

impl<M> Materialized<M> {
    pub(crate) fn malformed(&self) -> Vec<Problem> {
        self.malformed.values().cloned().collect()
    }
}

pub(crate) enum View {
    Fleet(Materialized<FleetDoc>),
    Tenant(Materialized<TenantDoc>),
}

/// Runs `$body` with `$c` bound to the typed collection and `$map` to the model's map for
/// collection name `$name` of `$view`; `$other` when the view has no such collection.
macro_rules! with_collection {
    ($view:expr, $name:expr, |$c:ident, $map:ident, $bad:ident| $body:expr, else $other:expr) => {
        match ($view, $name) {
            (View::Fleet(m), "tenants") => {
                let ($c, $map, $bad) =
                    (nexus_crdt::TENANTS, &mut m.model.tenants, &mut m.malformed);
                $body
            }
            (View::Fleet(m), "anchors") => {
                let ($c, $map, $bad) =
                    (nexus_crdt::ANCHORS, &mut m.model.anchors, &mut m.malformed);
                $body
            }
            (View::Fleet(m), "revocations") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::REVOCATIONS,
                    &mut m.model.revocations,
                    &mut m.malformed,
                );
                $body
            }
            (View::Fleet(m), "policies") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::POLICIES,
                    &mut m.model.policies,
                    &mut m.malformed,
                );
                $body
            }
            (View::Fleet(m), "snapshots") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::FLEET_SNAPSHOTS,
                    &mut m.model.snapshots,
                    &mut m.malformed,
                );
                $body
            }
            (View::Fleet(m), "members") => {
                let ($c, $map, $bad) =
                    (nexus_crdt::MEMBERS, &mut m.model.members, &mut m.malformed);
                $body
            }
            (View::Fleet(m), "api_keys") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::FLEET_API_KEYS,
                    &mut m.model.api_keys,
                    &mut m.malformed,
                );
                $body
            }
            (View::Fleet(m), "tenant_cas") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::TENANT_CAS,
                    &mut m.model.tenant_cas,
                    &mut m.malformed,
                );
                $body
            }
            (View::Fleet(m), "duties") => {
                let ($c, $map, $bad) = (nexus_crdt::DUTIES, &mut m.model.duties, &mut m.malformed);
                $body
            }
            (View::Tenant(m), "api_keys") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::TENANT_API_KEYS,
                    &mut m.model.api_keys,
                    &mut m.malformed,
                );
                $body
            }
            (View::Tenant(m), "oidc") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::OIDC_PROVIDERS,
                    &mut m.model.oidc,
                    &mut m.malformed,
                );
                $body
            }
            (View::Tenant(m), "routes") => {
                let ($c, $map, $bad) = (nexus_crdt::ROUTES, &mut m.model.routes, &mut m.malformed);
                $body
            }
            (View::Tenant(m), "firmware_targets") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::FIRMWARE_TARGETS,
                    &mut m.model.firmware_targets,
                    &mut m.malformed,
                );
                $body
            }
            (View::Tenant(m), "node_overrides") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::NODE_OVERRIDES,
                    &mut m.model.node_overrides,
                    &mut m.malformed,
                );
                $body
            }
            (View::Tenant(m), "site_routes") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::SITE_ROUTES,
                    &mut m.model.site_routes,
                    &mut m.malformed,
                );
                $body
            }
            (View::Tenant(m), "site_node_overrides") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::SITE_NODE_OVERRIDES,
                    &mut m.model.site_node_overrides,
                    &mut m.malformed,
                );
                $body
            }
            (View::Tenant(m), "snapshots") => {
                let ($c, $map, $bad) = (
                    nexus_crdt::TENANT_SNAPSHOTS,
                    &mut m.model.snapshots,
                    &mut m.malformed,
                );
                $body
            }
            _ => $other,
        }
    };
}

const FLEET_COLLECTIONS: &[&str] = &[
    "tenants",
    "anchors",
    "revocations",
    "policies",
    "snapshots",
    "members",
    "api_keys",
    "tenant_cas",
    "duties",
];
const TENANT_COLLECTIONS: &[&str] = &[
    "routes",
    "firmware_targets",
    "node_overrides",
    "site_routes",
    "site_node_overrides",
    "snapshots",
    "api_keys",
    "oidc",
];

impl View {
    fn empty(id: &DocId) -> View {
        match id {
            DocId::Fleet => View::Fleet(Materialized::default()),
            DocId::Tenant(t) => View::Tenant(Materialized {
                model: TenantDoc {
                    tenant_id: t.clone(),
                    ..Default::default()
                },
                malformed: BTreeMap::new(),
            }),
        }
    }

    fn hydrate(doc: &ConfigDoc) -> anyhow::Result<View> {
        fn keyed(problems: Vec<Problem>) -> BTreeMap<String, Problem> {
            problems
                .into_iter()
                .map(|p| (p.object.clone(), p))
                .collect()
        }
        Ok(match doc.id() {
            DocId::Fleet => {
                let h = doc.hydrate::<FleetDoc>()?;
                View::Fleet(Materialized {
                    model: h.model,
                    malformed: keyed(h.malformed),
                })
            }
            DocId::Tenant(_) => {
                let h = doc.hydrate::<TenantDoc>()?;
                View::Tenant(Materialized {
                    model: h.model,
                    malformed: keyed(h.malformed),
                })
            }
        })
    }

    fn collections(&self) -> &'static [&'static str] {
        match self {
            View::Fleet(_) => FLEET_COLLECTIONS,
            View::Tenant(_) => TENANT_COLLECTIONS,
        }
    }

    /// Re-reads one object from the document; `false` if `collection` is not one this view
    /// keeps per object (re-read everything then).
    fn refresh_entry(&mut self, doc: &ConfigDoc, collection: &str, key: &str) -> bool {
        with_collection!(&mut *self, collection, |c, map, bad| {
            let object = format!("{collection}.{key}");
            bad.remove(&object);
            match doc.entry(c, key) {
                Ok(Some(v)) => {
                    map.insert(key.to_string(), v);
                }
                Ok(None) => {
                    map.remove(key);
                }
                Err(problem) => {
                    map.remove(key);
                    bad.insert(object, problem);
                }
            }
            true
        }, else false)
    }

    /// The stored row of one object (`None`: absent, delete its row).
    fn row(&mut self, collection: &str, key: &str) -> Option<ObjectRow> {
        if collection == "settings" {
            let View::Fleet(m) = self else { return None };
            return Some(ObjectRow {
                collection: "settings".into(),
                key: String::new(),
                value: serde_json::to_string(&m.model.settings).ok(),
                malformed: m.malformed.get("settings").map(|p| p.to_string()),
            });
        }
        let object = format!("{collection}.{key}");
        with_collection!(&mut *self, collection, |_c, map, bad| {
            let value = map.get(key).and_then(|v| serde_json::to_string(v).ok());
            let malformed = bad.get(&object).map(|p| p.to_string());
            (value.is_some() || malformed.is_some()).then(|| ObjectRow {
                collection: collection.to_string(),
                key: key.to_string(),
                value,
                malformed,
            })
        }, else None)
    }

    /// Every row of the view.
    fn all_rows(&mut self) -> Vec<ObjectRow> {
        let mut rows = Vec::new();
        if let Some(row) = self.row("settings", "") {
            rows.push(row);
        }
        for collection in self.collections() {
            let keys: BTreeSet<String> = with_collection!(&mut *self, *collection, |_c, map, bad| {
                let prefix = format!("{collection}.");
                map.keys()
                    .cloned()
                    .chain(bad.keys().filter_map(|o| o.strip_prefix(&prefix).map(str::to_string)))
                    .collect()
            }, else BTreeSet::new());
            rows.extend(keys.iter().filter_map(|k| self.row(collection, k)));
        }
        rows
    }

    /// Rebuilds a view from its stored rows.
    fn from_rows(id: &DocId, rows: Vec<ObjectRow>) -> anyhow::Result<View> {
        let mut view = View::empty(id);
        for row in rows {
            let object = if row.key.is_empty() {
                row.collection.clone()
            } else {
                format!("{}.{}", row.collection, row.key)
            };
            if let Some(message) = row.malformed {
                let bad = match &mut view {
                    View::Fleet(m) => &mut m.malformed,
                    View::Tenant(m) => &mut m.malformed,
                };
                bad.insert(
                    object.clone(),
                    Problem {
                        object: object.clone(),
                        path: object.clone(),
                        message: message
                            .split_once(": ")
                            .map_or(message.clone(), |(_, m)| m.to_string()),
                    },
                );
            }
            let Some(value) = row.value else { continue };
            let bad_row = |e: serde_json::Error| {
                anyhow::anyhow!("stored view of {id}: row {object} does not parse: {e}")
            };
            if row.collection == "settings" {
                if let View::Fleet(m) = &mut view {
                    m.model.settings = serde_json::from_str(&value).map_err(bad_row)?;
                }
                continue;
            }
            let key = row.key.clone();
            let known = with_collection!(&mut view, row.collection.as_str(), |_c, map, _bad| {
                map.insert(key, serde_json::from_str(&value).map_err(bad_row)?);
                true
            }, else false);
            anyhow::ensure!(
                known,
                "stored view of {id}: unknown collection {}",
                row.collection
            );
        }
        Ok(view)
    }
}

/// One document this node holds: its materialized view and, once loaded, the document.
pub(crate) struct Held {
    pub(crate) id: DocId,
    /// The automerge document; `None` until loaded (reads do not need it).
    doc: Option<ConfigDoc>,
    pub(crate) view: View,
    version: u64,
    digest: [u8; 32],
    /// Changes received by sync that automerge holds back until their dependencies arrive.
    pub(crate) queued: Vec<nexus_crdt::SignedChange>,
}

impl Held {
    /// Opens a document from storage: from its stored view when there is one (fast; the
    /// document itself is loaded later), else by loading the document and building the view.
    pub(crate) fn open(store: &Store, id: &DocId) -> anyhow::Result<Held> {
        let key = id.to_string();
        if let Some((digest, version)) = store.config_view(&key)? {
            let view = View::from_rows(id, store.config_objects(&key)?)?;
            return Ok(Held {
                id: id.clone(),
                doc: None,
                view,
                version,
                digest,
                queued: Vec::new(),
            });
        }
        let doc = Held::load_doc(store, id)?;
        let mut held = Held {
            id: id.clone(),
            view: View::hydrate(&doc)?,
            version: doc.version(),
            digest: doc.heads_digest(),
            doc: Some(doc),
            queued: Vec::new(),
        };
        let rows = held.view.all_rows();
        store.save_config_view(&key, &rows, &held.digest, held.version)?;
        Ok(held)
    }

    /// Loads the automerge document from its stored chunks (one `load` of them all: automerge
    /// takes a saved document followed by incremental chunks).
    pub(crate) fn load_doc(store: &Store, id: &DocId) -> anyhow::Result<ConfigDoc> {
        let chunks = store.config_chunks(&id.to_string())?;
        if chunks.is_empty() {
            return Ok(ConfigDoc::new(id.clone()));
        }
        let bytes: Vec<u8> = chunks.concat();
        ConfigDoc::load(id.clone(), &bytes)
            .with_context(|| format!("loading configuration document {id}"))
    }

    /// The document's version (no load needed).
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The document's heads digest (no load needed).
    pub(crate) fn digest(&self) -> [u8; 32] {
        self.digest
    }

    pub(crate) fn is_loaded(&self) -> bool {
        self.doc.is_some()
    }

    /// Installs a document loaded elsewhere (off the lock). If the stored view does not match
    /// it, the view is rebuilt from the document and stored.
    pub(crate) fn install(&mut self, store: &Store, doc: ConfigDoc) -> anyhow::Result<()> {
        if self.doc.is_some() {
            return Ok(());
        }
        if doc.heads_digest() != self.digest {
            tracing::warn!(doc = %self.id, "the stored view did not match the document; rebuilding it");
            self.view = View::hydrate(&doc)?;
            self.version = doc.version();
            self.digest = doc.heads_digest();
            let rows = self.view.all_rows();
            store.save_config_view(&self.id.to_string(), &rows, &self.digest, self.version)?;
        }
        self.doc = Some(doc);
        Ok(())
    }

    /// The document, loading it now if the background load has not finished.
    pub(crate) fn doc(&mut self, store: &Store) -> anyhow::Result<&mut ConfigDoc> {
        if self.doc.is_none() {
            let doc = Held::load_doc(store, &self.id)?;
            self.install(store, doc)?;
        }
        Ok(self.doc.as_mut().expect("installed above"))
    }

    /// After changes were applied to the document: refreshes the touched objects (reads see
    /// them from now on) and returns what must be stored, in one transaction: the document's
    /// new chunk, the envelopes `(hash, envelope, author MIC)`, the touched rows and the view's
    /// new digest and version. Hand it to the [`Persister`] before releasing the lock that
    /// serialises commits, so jobs are stored in commit order.
    pub(crate) fn commit(
        &mut self,
        changes: Vec<(String, Vec<u8>, Vec<u8>)>,
        touched: &BTreeSet<ObjectRef>,
    ) -> anyhow::Result<ConfigJob> {
        let doc = self.doc.as_mut().context("document not loaded")?;
        let chunk = doc.save_incremental();
        let (version, digest) = (doc.version(), doc.heads_digest());
        let mut whole = false;
        for o in touched {
            if o.key.is_empty() || !self.view.refresh_entry(doc, &o.collection, &o.key) {
                whole = true;
            }
        }
        let (rows, all) = if whole {
            // A whole collection (or a top-level field such as settings) changed.
            self.view = View::hydrate(doc)?;
            (Vec::new(), Some(self.view.all_rows()))
        } else {
            let rows = touched
                .iter()
                .map(|o| {
                    (
                        o.collection.clone(),
                        o.key.clone(),
                        self.view.row(&o.collection, &o.key),
                    )
                })
                .collect();
            (rows, None)
        };
        self.version = version;
        self.digest = digest;
        Ok(ConfigJob {
            doc_id: self.id.to_string(),
            chunk,
            changes,
            rows,
            all,
            digest,
            version,
        })
    }

    pub(crate) fn fleet(&self) -> Option<&Materialized<FleetDoc>> {
        match &self.view {
            View::Fleet(m) => Some(m),
            View::Tenant(_) => None,
        }
    }

    pub(crate) fn tenant(&self) -> Option<&Materialized<TenantDoc>> {
        match &self.view {
            View::Tenant(m) => Some(m),
            View::Fleet(_) => None,
        }
    }
}

/// Stores configuration commits in order, on one thread, several per transaction when they
/// queue up (group commit: under load, one fsync covers many changes).
///
/// Local writes wait for their job ([`Persister::submit`] with a receiver) before they are
/// acknowledged. Changes received from peers do not: the author already stored them, so a
/// receiver applies and serves them at once and stores them a moment later; if it crashes in
/// between, anti-entropy brings them back.
pub(crate) struct Persister {
    jobs: std::sync::mpsc::Sender<(ConfigJob, Option<Durable>)>,
    /// Envelopes `(envelope, author MIC)` by change hash, from submission until stored: a
    /// sync session may have to send a change that is applied but not on disk yet.
    pending: Pending,
    /// Bumped whenever a job with changes is submitted (the in-memory view already holds them):
    /// what the data plane watches to recompile.
    changed: tokio::sync::watch::Sender<u64>,
}

/// Envelopes `(envelope, author MIC)` by change hash, submitted but not stored yet.
type Pending =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (Vec<u8>, Vec<u8>)>>>;

/// Told whether a job reached the disk.
type Durable = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Most jobs stored in one transaction.
const GROUP_COMMIT: usize = 256;

impl Persister {
    pub(crate) fn start(store: std::sync::Arc<Store>) -> Persister {
        let (jobs, queue) = std::sync::mpsc::channel::<(ConfigJob, Option<Durable>)>();
        let pending: Pending = Default::default();
        let stored = pending.clone();
        std::thread::Builder::new()
            .name("nexus-config-store".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    while batch.len() < GROUP_COMMIT {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let (jobs, mut waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    // A batch that cannot be stored is retried, never dropped: later chunks
                    // build on it. Its writers are told at once (their writes are not
                    // acknowledged); everything queued behind it waits.
                    let mut delay = std::time::Duration::from_millis(100);
                    loop {
                        let result = store.save_config_jobs(&jobs).map_err(|e| e.to_string());
                        metrics::counter!("nexus_config_store_transactions_total").increment(1);
                        for waiter in waiters.drain(..).flatten() {
                            let _ = waiter.send(result.clone());
                        }
                        match result {
                            Ok(()) => break,
                            Err(err) => {
                                metrics::counter!("nexus_config_store_errors_total").increment(1);
                                tracing::error!(error = %err, jobs = jobs.len(), retry_in = ?delay, "cannot store configuration changes; retrying");
                                std::thread::sleep(delay);
                                delay = (delay * 2).min(std::time::Duration::from_secs(5));
                            }
                        }
                    }
                    let mut pending = stored.lock().unwrap_or_else(|p| p.into_inner());
                    for job in &jobs {
                        for (hash, _, _) in &job.changes {
                            pending.remove(hash);
                        }
                    }
                }
            })
            .expect("spawning the configuration store thread");
        Persister {
            jobs,
            pending,
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Queues a job; with `wait`, the receiver says when it is durable (or why not).
    pub(crate) fn submit(
        &self,
        job: ConfigJob,
        wait: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), String>>> {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (hash, envelope, mic) in &job.changes {
                pending.insert(hash.clone(), (envelope.clone(), mic.clone()));
            }
        }
        if !job.changes.is_empty() {
            self.changed.send_modify(|n| *n += 1);
        }
        let (tx, rx) = if wait {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if self.jobs.send((job, tx)).is_err() {
            tracing::error!("the configuration store thread is gone");
        }
        rx
    }

    /// Tells when configuration changed (a counter, bumped per submitted job with changes).
    pub(crate) fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolves once everything submitted before is on disk.
    pub(crate) fn flush(&self) -> Option<tokio::sync::oneshot::Receiver<Result<(), String>>> {
        self.submit(ConfigJob::barrier(), true)
    }

    /// The envelope and author MIC of a change submitted but not stored yet.
    pub(crate) fn pending(&self, hash: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()
    }
}
