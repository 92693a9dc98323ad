//! The node's event journal: what `GET /v1/watch` streams (NCC-API-009).
//!
//! - [`Journal`]: the newest [`CAPACITY`] events in a ring, numbered `<epoch>-<seq>` (the epoch
//!   is drawn at random when the process starts), and a broadcast channel to live subscribers.
//!   It is the API's [`EventSource`]: a subscriber resumes after any id the ring still covers,
//!   and gets a `resync` when it does not (see `nexus_api::watch`).
//! - [`Producer`]: turns what this node sees into events. Membership: a node appears (once its
//!   info is known), its status changes, what it publishes changes, it is forgotten. Configuration:
//!   after each commit ([`Replication::changes`]) the effective objects of every document this
//!   node holds are compared with the previous view, per kind, and each difference becomes an
//!   upsert or a delete carrying the object.
//!
//! **Architecture invariant**: the hand-off from backlog to live events is atomic. Publishing
//! numbers, stores and broadcasts an event under one lock, and a subscriber takes its receiver
//! and its backlog under the same lock, so every event is in exactly one of the two; the
//! subscriber still drops anything at or below the last sequence it delivered, and refills from
//! the ring whenever the live channel skipped ahead. A gap it cannot fill is a `resync`, never
//! silence.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_api::watch::{EventId, EventSource, EventStream, Op, WatchEvent, WatchItem, WatchKind};
use nexus_ca::FleetTrust;
use nexus_crdt::DocId;
use nexus_mesh::Mesh;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::replication::{Kind, Replication, WriteError};
use crate::store::Store;

/// Events a node keeps for resuming watchers. At a few hundred bytes to a few KiB each, this
/// bounds the journal to tens of MiB at most.
pub const CAPACITY: usize = 10_000;
/// Events a live subscriber may be behind before it refills from the ring.
const LIVE_BUFFER: usize = 1024;
/// How often membership is compared outside status changes (a node's info or health arrives
/// without one), and stale configuration views are read again.
const RECHECK: Duration = Duration::from_secs(1);
/// Page size when reading a collection.
const PAGE: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A change to record.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// What kind of object.
    pub kind: WatchKind,
    /// What happened to it.
    pub op: Op,
    /// Its id.
    pub object_id: String,
    /// Its tenant (`None`: fleet-wide).
    pub tenant: Option<String>,
    /// Its site, for a site-scoped route.
    pub site: Option<String>,
    /// The object (for a delete, as it last was).
    pub object: Value,
}

/// The newest events and the live channel; see the module docs.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

struct Shared {
    capacity: usize,
    ring: Mutex<Ring>,
}

struct Ring {
    /// Drawn at random when the process starts (and again if continuity is ever lost).
    epoch: u64,
    /// Consecutive events, oldest first, ending with `last`.
    events: VecDeque<Arc<WatchEvent>>,
    /// The newest sequence number issued (0: none yet).
    last: u64,
    /// `None` once the node stops: streams end.
    live: Option<broadcast::Sender<Arc<WatchEvent>>>,
}

impl Ring {
    /// Sequence numbers up to this one are no longer held.
    fn evicted(&self) -> u64 {
        self.last - self.events.len() as u64
    }

    /// The events after `seq`, when the ring still holds all of them.
    fn after(&self, seq: u64) -> Option<VecDeque<Arc<WatchEvent>>> {
        if seq < self.evicted() || seq > self.last {
            return None;
        }
        let skip = (seq - self.evicted()) as usize;
        Some(self.events.iter().skip(skip).cloned().collect())
    }
}

impl Journal {
    /// An empty journal of epoch `epoch` keeping [`CAPACITY`] events.
    pub fn new(epoch: u64) -> Journal {
        Journal::with_capacity(epoch, CAPACITY, LIVE_BUFFER)
    }

    fn with_capacity(epoch: u64, capacity: usize, live: usize) -> Journal {
        Journal {
            shared: Arc::new(Shared {
                capacity: capacity.max(1),
                ring: Mutex::new(Ring {
                    epoch,
                    events: VecDeque::new(),
                    last: 0,
                    live: Some(broadcast::channel(live.max(1)).0),
                }),
            }),
        }
    }

    /// Numbers `change`, keeps it, and hands it to live subscribers.
    pub fn publish(&self, change: Change) -> EventId {
        let mut ring = lock(&self.shared.ring);
        ring.last += 1;
        let id = EventId {
            epoch: ring.epoch,
            seq: ring.last,
        };
        metrics::counter!("nexus_watch_events_total", "kind" => change.kind.as_str()).increment(1);
        let event = Arc::new(WatchEvent {
            id,
            kind: change.kind,
            op: change.op,
            object_id: change.object_id,
            tenant: change.tenant,
            site: change.site,
            object: change.object,
        });
        ring.events.push_back(event.clone());
        if ring.events.len() > self.shared.capacity {
            ring.events.pop_front();
        }
        if let Some(live) = &ring.live {
            // No subscriber is not an error: the ring keeps the event for those who resume.
            let _ = live.send(event);
        }
        id
    }

    /// Ends every stream (after what it has buffered): the node is stopping.
    pub fn close(&self) {
        lock(&self.shared.ring).live = None;
    }

    /// Starts over under a new epoch, forgetting every event: for when the journal can no
    /// longer vouch for continuity. Open streams end; their watchers reconnect with an id of
    /// the old epoch and get a resync.
    pub fn restart(&self, epoch: u64) {
        let mut ring = lock(&self.shared.ring);
        ring.epoch = epoch;
        ring.events.clear();
        ring.last = 0;
        if ring.live.is_some() {
            ring.live = Some(broadcast::channel(LIVE_BUFFER).0);
        }
    }
}

impl EventSource for Journal {
    fn subscribe(&self, last_event_id: Option<&str>) -> EventStream {
        let subscriber = Subscriber::start(self.shared.clone(), last_event_id);
        Box::pin(futures::stream::unfold(
            subscriber,
            |mut subscriber| async move {
                let item = subscriber.next().await?;
                Some((item, subscriber))
            },
        ))
    }
}

/// One watcher's position in the journal.
struct Subscriber {
    shared: Arc<Shared>,
    epoch: u64,
    live: Option<broadcast::Receiver<Arc<WatchEvent>>>,
    backlog: VecDeque<Arc<WatchEvent>>,
    /// The last sequence number delivered (or skipped by a resync).
    last: u64,
    resync: Option<(&'static str, String)>,
}

fn resync(reason: &'static str) {
    metrics::counter!("nexus_watch_resyncs_total", "reason" => reason).increment(1);
}

impl Subscriber {
    fn start(shared: Arc<Shared>, last_event_id: Option<&str>) -> Subscriber {
        let ring = lock(&shared.ring);
        let live = ring.live.as_ref().map(|l| l.subscribe());
        let (epoch, head) = (ring.epoch, ring.last);
        let newest = EventId { epoch, seq: head };
        let again = "re-list, then resume from this event's id";
        let (last, backlog, why) = match last_event_id {
            None => (head, VecDeque::new(), None),
            Some(raw) => match raw.parse::<EventId>() {
                Err(err) => (
                    head,
                    VecDeque::new(),
                    Some((
                        "bogus",
                        format!("Last-Event-ID is not an event id: {err}; {again}"),
                    )),
                ),
                Ok(id) if id.epoch != epoch => (
                    head,
                    VecDeque::new(),
                    Some((
                        "epoch",
                        format!(
                            "Last-Event-ID {raw} was issued by another node or an earlier run of \
                             this one, so the events after it are not held here; {again}"
                        ),
                    )),
                ),
                Ok(id) if id.seq > head => (
                    head,
                    VecDeque::new(),
                    Some((
                        "ahead",
                        format!(
                            "Last-Event-ID {raw} is ahead of this node's newest event \
                             ({newest}); {again}"
                        ),
                    )),
                ),
                Ok(id) => match ring.after(id.seq) {
                    Some(backlog) => (id.seq, backlog, None),
                    None => (
                        head,
                        VecDeque::new(),
                        Some((
                            "too_old",
                            format!(
                                "the events after Last-Event-ID {raw} are no longer held (this \
                                 node keeps the newest {}, from {}); {again}",
                                shared.capacity,
                                EventId {
                                    epoch,
                                    seq: ring.evicted() + 1
                                }
                            ),
                        )),
                    ),
                },
            },
        };
        drop(ring);
        Subscriber {
            shared,
            epoch,
            live,
            backlog,
            last,
            resync: why,
        }
    }

    async fn next(&mut self) -> Option<WatchItem> {
        loop {
            if let Some((label, reason)) = self.resync.take() {
                resync(label);
                let id = EventId {
                    epoch: self.epoch,
                    seq: self.last,
                };
                return Some(WatchItem::Resync { id, reason });
            }
            if let Some(event) = self.backlog.pop_front() {
                if event.id.seq > self.last {
                    self.last = event.id.seq;
                    return Some(WatchItem::Event(event));
                }
                continue;
            }
            let live = self.live.as_mut()?;
            match live.recv().await {
                Ok(event) if event.id.seq <= self.last => continue,
                Ok(event) if event.id.seq == self.last + 1 => {
                    self.last = event.id.seq;
                    return Some(WatchItem::Event(event));
                }
                // Something between was not received: take it from the ring.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up(),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Refills the backlog from the ring after falling behind the live channel; a `resync`
    /// (continuing from the newest event) when the ring no longer reaches back far enough.
    fn catch_up(&mut self) {
        let ring = lock(&self.shared.ring);
        if ring.epoch != self.epoch {
            // The journal started over: end, so the watcher reconnects and resyncs.
            self.live = None;
            self.backlog.clear();
            return;
        }
        match ring.after(self.last) {
            Some(backlog) => self.backlog = backlog,
            None => {
                self.backlog.clear();
                self.last = ring.last;
                self.resync = Some((
                    "lagged",
                    format!(
                        "this watcher fell behind by more than the {} events this node keeps; \
                         re-list, then resume from this event's id",
                        self.shared.capacity
                    ),
                ));
            }
        }
    }
}

/// What the producer reads.
pub struct Sources {
    /// The replicated configuration.
    pub replication: Arc<Replication>,
    /// Membership.
    pub mesh: Arc<Mesh>,
    /// The node's store: which sites a tenant document has routes for.
    pub store: Arc<Store>,
    /// Revocations (a node's `certificate_revoked`).
    pub fleet: Arc<FleetTrust>,
}

/// Turns membership and configuration changes into events; see the module docs. Dropping it
/// closes the journal.
pub struct Producer {
    journal: Journal,
    sources: Sources,
    members: BTreeMap<String, MemberState>,
    config: ConfigView,
    config_changes: watch::Receiver<u64>,
    member_changes: watch::Receiver<u64>,
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.journal.close();
    }
}

/// Opens the journal with a new epoch and reads the current membership and configuration as
/// the baseline (not journaled: a watcher lists first). Call it before the API serves, so no
/// change falls between a watcher's start and the baseline.
pub async fn open(sources: Sources) -> anyhow::Result<(Journal, Producer)> {
    let journal = Journal::new(rand::random());
    // Before the baseline is read, so a change made meanwhile is not missed.
    let config_changes = sources.replication.changes();
    let member_changes = sources.mesh.changes();
    let members = read_members(&sources.mesh, &sources.fleet);
    let (replication, store) = (sources.replication.clone(), sources.store.clone());
    let config = tokio::task::spawn_blocking(move || {
        let mut view = ConfigView::default();
        view.refresh(&replication, &store);
        view
    })
    .await?;
    let producer = Producer {
        journal: journal.clone(),
        sources,
        members,
        config,
        config_changes,
        member_changes,
    };
    Ok((journal, producer))
}

impl Producer {
    /// Journals changes until `stop`, then closes the journal.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty = false;
        let mut next_pass = tokio::time::Instant::now();
        loop {
            let pass_due = async {
                if dirty {
                    tokio::time::sleep_until(next_pass).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                changed = self.config_changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    dirty = true;
                }
                changed = self.member_changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.members_pass();
                }
                _ = recheck.tick() => {
                    self.members_pass();
                    dirty |= self.config.stale();
                }
                _ = pass_due => {
                    dirty = false;
                    let started = Instant::now();
                    self.config_pass().await;
                    // At most half of one core on diffing, however large the configuration:
                    // changes arriving meanwhile are coalesced into the next pass.
                    next_pass = tokio::time::Instant::now() + started.elapsed();
                }
            }
        }
    }

    fn members_pass(&mut self) {
        let now = read_members(&self.sources.mesh, &self.sources.fleet);
        for change in diff_members(&self.members, &now) {
            self.journal.publish(change);
        }
        self.members = now;
    }

    async fn config_pass(&mut self) {
        let mut view = std::mem::take(&mut self.config);
        let (replication, store) = (self.sources.replication.clone(), self.sources.store.clone());
        let result = tokio::task::spawn_blocking(move || {
            let changes = view.refresh(&replication, &store);
            (view, changes)
        })
        .await;
        match result {
            Ok((view, changes)) => {
                self.config = view;
                for change in changes {
                    self.journal.publish(change);
                }
            }
            // The view went with the task, and with it what the next pass would compare
            // against: start the journal over (watchers resync) from a new baseline.
            Err(err) => {
                tracing::error!(error = %err, "reading the configuration for the event journal failed; starting the journal over");
                self.journal.restart(rand::random());
                let (replication, store) =
                    (self.sources.replication.clone(), self.sources.store.clone());
                let rebuilt = tokio::task::spawn_blocking(move || {
                    let mut view = ConfigView::default();
                    view.refresh(&replication, &store);
                    view
                })
                .await;
                self.config = rebuilt.unwrap_or_default();
            }
        }
    }
}

/// What the journal remembers of one member.
#[derive(Clone, Debug, PartialEq)]
struct MemberState {
    status: String,
    tenant: String,
    /// The node as `GET /v1/nodes` shows it.
    object: Value,
    /// `object` without what changes all the time (heartbeat, data-plane counters).
    stable: Value,
}

fn read_members(mesh: &Mesh, fleet: &FleetTrust) -> BTreeMap<String, MemberState> {
    let mut out = BTreeMap::new();
    for member in mesh.members() {
        // Until its info arrives a node is only an id, and of no known tenant.
        if member.info.is_none() {
            continue;
        }
        let mut node = crate::backend::to_wire(&member);
        node.certificate_revoked = node
            .certificate_serial
            .as_deref()
            .is_some_and(|s| fleet.revocations().is_revoked(s));
        let Ok(object) = serde_json::to_value(&node) else {
            continue;
        };
        let mut stable = object.clone();
        if let Some(map) = stable.as_object_mut() {
            map.remove("last_heartbeat");
            map.remove("dataplane");
        }
        out.insert(
            node.node_id.clone(),
            MemberState {
                status: node.status.clone(),
                tenant: node.tenant_id.clone(),
                object,
                stable,
            },
        );
    }
    out
}

fn diff_members(
    old: &BTreeMap<String, MemberState>,
    new: &BTreeMap<String, MemberState>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let change = |op, id: &String, m: &MemberState| Change {
        kind: WatchKind::Nodes,
        op,
        object_id: id.clone(),
        tenant: Some(m.tenant.clone()),
        site: None,
        object: m.object.clone(),
    };
    for (id, now) in new {
        match old.get(id) {
            None => changes.push(change(Op::Upsert, id, now)),
            Some(was) if was.status != now.status => changes.push(change(Op::Status, id, now)),
            Some(was) if was.stable != now.stable => changes.push(change(Op::Upsert, id, now)),
            Some(_) => {}
        }
    }
    for (id, was) in old {
        if !new.contains_key(id) {
            changes.push(change(Op::Delete, id, was));
        }
    }
    changes
}

/// An object's place in a document's view.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    kind: WatchKind,
    site: Option<String>,
    id: String,
}

/// The effective objects of one document, as last read.
#[derive(Debug, Default)]
struct DocView {
    /// (document version, fleet document version) it was read at: a tenant document's
    /// quarantine verdicts depend on the fleet document too.
    inputs: (u64, u64),
    /// False when the read may have missed something (the document was not loaded yet, or the
    /// stored view that names its sites lagged the document): read again on the next recheck.
    current: bool,
    objects: BTreeMap<ObjectKey, Value>,
}

/// The effective configuration of every document this node holds, by document id.
#[derive(Debug, Default)]
struct ConfigView {
    docs: BTreeMap<String, DocView>,
}

fn list_all(
    replication: &Replication,
    kind: &Kind,
    tenant: Option<&str>,
) -> Result<Vec<(String, Value)>, WriteError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = replication.list(kind, tenant, after.as_deref(), PAGE)?;
        after = page.items.last().map(|(id, _)| id.clone());
        out.extend(page.items);
        if !page.more || after.is_none() {
            return Ok(out);
        }
    }
}

impl ConfigView {
    fn stale(&self) -> bool {
        self.docs.values().any(|d| !d.current)
    }

    /// Reads every document whose inputs changed since the last read, and returns the
    /// differences as changes.
    fn refresh(&mut self, replication: &Replication, store: &Store) -> Vec<Change> {
        let mut changes = Vec::new();
        // Versions are read before the objects: a change landing in between makes the next
        // pass read again rather than be missed.
        let fleet_version = replication.version_of(&DocId::Fleet);
        let fv = fleet_version.unwrap_or(0);
        // Keys of every held document, read once for the whole pass.
        let keys = replication.access_records().map(|r| r.keys);
        if self
            .docs
            .get("fleet")
            .is_none_or(|d| d.inputs != (fv, fv) || !d.current)
        {
            let mut objects = BTreeMap::new();
            let mut failed = false;
            for (kind, node_kind) in [
                (WatchKind::Tenants, Kind::Tenant),
                (WatchKind::FleetPolicies, Kind::FleetPolicy),
            ] {
                match list_all(replication, &node_kind, None) {
                    Ok(items) => objects.extend(items.into_iter().map(|(id, object)| {
                        (
                            ObjectKey {
                                kind,
                                site: None,
                                id,
                            },
                            object,
                        )
                    })),
                    Err(err) => {
                        tracing::warn!(error = ?err, "event journal: cannot read the fleet document");
                        failed = true;
                    }
                }
            }
            match &keys {
                Ok(keys) => objects.extend(key_objects(keys, None)),
                Err(err) => {
                    tracing::warn!(error = ?err, "event journal: cannot read the fleet's API keys");
                    failed = true;
                }
            }
            if !failed {
                let view = DocView {
                    inputs: (fv, fv),
                    current: fleet_version.is_some(),
                    objects,
                };
                self.replace("fleet".into(), None, view, &mut changes);
            }
        }
        let mut tenants: BTreeSet<String> = self
            .docs
            .get("fleet")
            .map(|d| {
                d.objects
                    .keys()
                    .filter(|k| k.kind == WatchKind::Tenants)
                    .map(|k| k.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        tenants.extend(
            self.docs
                .keys()
                .filter_map(|k| k.strip_prefix("tenant/"))
                .map(str::to_string),
        );
        for tenant in tenants {
            let Ok(doc) = DocId::tenant(&tenant) else {
                continue;
            };
            let key = doc.to_string();
            let version = replication.version_of(&doc);
            let inputs = (version.unwrap_or(0), fv);
            if self
                .docs
                .get(&key)
                .is_some_and(|d| d.inputs == inputs && d.current)
            {
                continue;
            }
            let tenant_keys = keys.as_deref().map_err(|e| format!("{e:?}"));
            match read_tenant(
                replication,
                store,
                tenant_keys,
                &tenant,
                &key,
                version,
                self.docs.get(&key),
            ) {
                Ok(None) => {}
                Ok(Some((objects, sites_current))) => {
                    let view = DocView {
                        inputs,
                        current: version.is_some() && fleet_version.is_some() && sites_current,
                        objects,
                    };
                    self.replace(key, Some(tenant), view, &mut changes);
                }
                Err(err) => {
                    tracing::warn!(error = %err, document = %key, "event journal: cannot read a tenant document");
                }
            }
        }
        changes
    }

    /// Puts `view` in place of document `key`'s, pushing the differences. `tenant` is the
    /// document's tenant (`None`: the fleet document).
    fn replace(
        &mut self,
        key: String,
        tenant: Option<String>,
        view: DocView,
        changes: &mut Vec<Change>,
    ) {
        let empty = BTreeMap::new();
        let old = self.docs.get(&key).map_or(&empty, |d| &d.objects);
        changes.extend(diff_objects(old, &view.objects, tenant.as_deref()));
        self.docs.insert(key, view);
    }
}

/// A tenant document's effective objects, and whether its site list was current; `None` when
/// this node does not hold the document.
#[allow(clippy::type_complexity)]
fn read_tenant(
    replication: &Replication,
    store: &Store,
    keys: Result<&[(Option<String>, String, nexus_crdt::ApiKeyRecord)], String>,
    tenant: &str,
    key: &str,
    version: Option<u64>,
    previous: Option<&DocView>,
) -> Result<Option<(BTreeMap<ObjectKey, Value>, bool)>, String> {
    let mut objects = BTreeMap::new();
    let mut add = |kind, site: Option<&str>, items: Vec<(String, Value)>| {
        for (id, object) in items {
            let site = site.map(str::to_string);
            objects.insert(ObjectKey { kind, site, id }, object);
        }
    };
    let routes = match list_all(replication, &Kind::Route, Some(tenant)) {
        Err(WriteError::NotHere(_)) => return Ok(None),
        other => other.map_err(|e| format!("{e:?}"))?,
    };
    add(WatchKind::Routes, None, routes);
    let firmware =
        list_all(replication, &Kind::FirmwareTarget, Some(tenant)).map_err(|e| format!("{e:?}"))?;
    add(WatchKind::Firmware, None, firmware);
    let keys = key_objects(keys?, Some(tenant))
        .into_iter()
        .map(|(k, v)| (k.id, v))
        .collect();
    add(WatchKind::Keys, None, keys);
    // Site routes are listed one site at a time, and the document does not name its sites:
    // they come from the keys of its stored view (written just after the commit, so it may
    // lag; then the document is read again on the next recheck), and from the previous read,
    // so a site's last route going away is seen.
    let rows = store.config_objects(key).map_err(|e| e.to_string())?;
    let mut sites: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.collection == "site_routes")
        .filter_map(|r| nexus_crdt::split_site_key(&r.key).map(|(site, _)| site.to_string()))
        .collect();
    let stored = store
        .config_view(key)
        .map_err(|e| e.to_string())?
        .map(|(_, v)| v);
    let sites_current = match (stored, version) {
        (Some(stored), Some(held)) => stored >= held,
        (None, Some(0)) => true,
        _ => false,
    };
    if let Some(previous) = previous {
        sites.extend(previous.objects.keys().filter_map(|k| k.site.clone()));
    }
    for site in sites {
        let items = list_all(replication, &Kind::SiteRoute(site.clone()), Some(tenant))
            .map_err(|e| format!("{e:?}"))?;
        add(WatchKind::SiteRoutes, Some(&site), items);
    }
    Ok(Some((objects, sites_current)))
}

/// The API keys of `tenant` (`None`: fleet-wide) as watch objects: what `GET /v1/keys` shows,
/// never the hash.
fn key_objects(
    keys: &[(Option<String>, String, nexus_crdt::ApiKeyRecord)],
    tenant: Option<&str>,
) -> Vec<(ObjectKey, Value)> {
    keys.iter()
        .filter(|(t, _, _)| t.as_deref() == tenant)
        .filter_map(|(t, id, k)| {
            let wire = crate::access::Access::wire_key(t.clone(), id.clone(), k.clone());
            let object = serde_json::to_value(wire).ok()?;
            Some((
                ObjectKey {
                    kind: WatchKind::Keys,
                    site: None,
                    id: id.clone(),
                },
                object,
            ))
        })
        .collect()
}

/// Upserts for new and changed objects, deletes (with the last state) for vanished ones.
fn diff_objects(
    old: &BTreeMap<ObjectKey, Value>,
    new: &BTreeMap<ObjectKey, Value>,
    doc_tenant: Option<&str>,
) -> Vec<Change> {
    let change = |op, key: &ObjectKey, object: &Value| Change {
        kind: key.kind,
        op,
        object_id: key.id.clone(),
        // A tenant record belongs to that tenant; fleet policies to no tenant.
        tenant: match key.kind {
            WatchKind::Tenants => Some(key.id.clone()),
            _ => doc_tenant.map(str::to_string),
        },
        site: key.site.clone(),
        object: object.clone(),
    };
    let mut changes = Vec::new();
    for (key, object) in new {
        if old.get(key) != Some(object) {
            changes.push(change(Op::Upsert, key, object));
        }
    }
    for (key, object) in old {
        if !new.contains_key(key) {
            changes.push(change(Op::Delete, key, object));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    fn route(id: &str) -> Change {
        Change {
            kind: WatchKind::Routes,
            op: Op::Upsert,
            object_id: id.into(),
            tenant: Some("acme".into()),
            site: None,
            object: json!({ "id": id }),
        }
    }

    fn id(journal: &Journal, seq: u64) -> String {
        EventId {
            epoch: lock(&journal.shared.ring).epoch,
            seq,
        }
        .to_string()
    }

    async fn next(stream: &mut EventStream) -> WatchItem {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an item within 5 s")
            .expect("the stream goes on")
    }

    fn seq(item: &WatchItem) -> u64 {
        match item {
            WatchItem::Event(e) => e.id.seq,
            WatchItem::Resync { reason, .. } => panic!("unexpected resync: {reason}"),
        }
    }

    fn resync_reason(item: &WatchItem) -> &str {
        match item {
            WatchItem::Resync { reason, .. } => reason,
            WatchItem::Event(e) => panic!("expected a resync, got event {}", e.id),
        }
    }

    #[tokio::test]
    async fn resumes_after_an_id_with_exactly_the_missed_events_then_live_ones() {
        let journal = Journal::with_capacity(0xabc, 100, 16);
        for i in 1..=5 {
            journal.publish(route(&format!("r{i}")));
        }
        let mut stream = journal.subscribe(Some(&id(&journal, 2)));
        for want in 3..=5 {
            assert_eq!(seq(&next(&mut stream).await), want);
        }
        journal.publish(route("r6"));
        let item = next(&mut stream).await;
        assert_eq!(seq(&item), 6);
        let WatchItem::Event(event) = item else {
            unreachable!()
        };
        assert_eq!(event.object_id, "r6");
        assert_eq!(event.id.to_string(), id(&journal, 6));
        // Resuming from "before the first event" replays everything held.
        let mut all = journal.subscribe(Some(&id(&journal, 0)));
        assert_eq!(seq(&next(&mut all).await), 1);
        // Without an id: live events only.
        let mut live = journal.subscribe(None);
        journal.publish(route("r7"));
        assert_eq!(seq(&next(&mut live).await), 7);
    }

    #[tokio::test]
    async fn an_id_the_ring_no_longer_covers_gets_a_resync_then_live_events() {
        let journal = Journal::with_capacity(0xabc, 3, 16);
        for i in 1..=10 {
            journal.publish(route(&format!("r{i}")));
        }
        // Ring holds 8..=10: resuming after 7 is still complete, after 6 is not.
        let mut ok = journal.subscribe(Some(&id(&journal, 7)));
        assert_eq!(seq(&next(&mut ok).await), 8);
        let mut old = journal.subscribe(Some(&id(&journal, 6)));
        let item = next(&mut old).await;
        assert!(resync_reason(&item).contains("no longer held"), "{item:?}");
        // The resync says where the stream continues: the newest event, then live ones.
        let WatchItem::Resync { id: at, .. } = item else {
            unreachable!()
        };
        assert_eq!(at.seq, 10);
        journal.publish(route("r11"));
        assert_eq!(seq(&next(&mut old).await), 11);
        // Resuming from a resync's id misses nothing.
        let mut again = journal.subscribe(Some(&at.to_string()));
        assert_eq!(seq(&next(&mut again).await), 11);
    }

    #[tokio::test]
    async fn bogus_foreign_and_future_ids_get_a_resync() {
        let journal = Journal::with_capacity(0xabc, 100, 16);
        journal.publish(route("r1"));
        let foreign = EventId {
            epoch: 0xdef,
            seq: 1,
        }
        .to_string();
        let future = id(&journal, 99);
        for (raw, says) in [
            ("garbage", "not an event id"),
            (foreign.as_str(), "another node or an earlier run"),
            (future.as_str(), "ahead"),
        ] {
            let mut stream = journal.subscribe(Some(raw));
            let item = next(&mut stream).await;
            assert!(resync_reason(&item).contains(says), "{raw}: {item:?}");
            journal.publish(route("later"));
            assert!(matches!(next(&mut stream).await, WatchItem::Event(_)));
        }
    }

    #[tokio::test]
    async fn a_lagging_subscriber_refills_from_the_ring_or_gets_a_resync() {
        // Live buffer of 2, ring of 50: falling 10 behind is refilled from the ring.
        let journal = Journal::with_capacity(0xabc, 50, 2);
        let mut slow = journal.subscribe(None);
        for i in 1..=10 {
            journal.publish(route(&format!("r{i}")));
        }
        for want in 1..=10 {
            assert_eq!(seq(&next(&mut slow).await), want, "no gap, no duplicate");
        }
        // Falling 60 behind (more than the ring holds) is a resync, then live events.
        for i in 11..=70 {
            journal.publish(route(&format!("r{i}")));
        }
        let item = next(&mut slow).await;
        assert!(resync_reason(&item).contains("fell behind"), "{item:?}");
        journal.publish(route("r71"));
        assert_eq!(seq(&next(&mut slow).await), 71);
    }

    #[tokio::test]
    async fn backlog_and_live_events_hand_off_without_gap_or_duplicate() {
        let journal = Journal::with_capacity(0xabc, 100_000, 64);
        let writer = {
            let journal = journal.clone();
            std::thread::spawn(move || {
                for i in 1..=20_000 {
                    journal.publish(route(&format!("r{i}")));
                }
            })
        };
        // Subscribe while events pour in, each time from the newest one seen.
        let mut seen = 0u64;
        while seen < 20_000 {
            let mut stream = journal.subscribe(Some(&id(&journal, seen)));
            for _ in 0..500 {
                if seen == 20_000 {
                    break;
                }
                let s = seq(&next(&mut stream).await);
                assert_eq!(s, seen + 1);
                seen = s;
            }
        }
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn closing_ends_the_streams() {
        let journal = Journal::with_capacity(0xabc, 10, 4);
        let mut stream = journal.subscribe(None);
        journal.publish(route("r1"));
        journal.close();
        assert_eq!(seq(&next(&mut stream).await), 1);
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        assert!(matches!(end, Ok(None)));
    }

    #[tokio::test]
    async fn starting_over_ends_the_streams_and_old_ids_resync() {
        let journal = Journal::with_capacity(0xabc, 10, 4);
        journal.publish(route("r1"));
        let old = id(&journal, 1);
        let mut stream = journal.subscribe(Some(&id(&journal, 0)));
        assert_eq!(seq(&next(&mut stream).await), 1);
        journal.restart(0xdef);
        journal.publish(route("r2"));
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
        let mut again = journal.subscribe(Some(&old));
        let item = next(&mut again).await;
        assert!(resync_reason(&item).contains("earlier run"), "{item:?}");
    }

    #[test]
    fn object_differences_become_upserts_and_deletes() {
        let key = |kind, id: &str| ObjectKey {
            kind,
            site: None,
            id: id.into(),
        };
        let old = BTreeMap::from([
            (key(WatchKind::Routes, "a"), json!({"v": 1})),
            (key(WatchKind::Routes, "b"), json!({"v": 1})),
            (key(WatchKind::Tenants, "acme"), json!({"name": "Acme"})),
        ]);
        let new = BTreeMap::from([
            (key(WatchKind::Routes, "a"), json!({"v": 2})),
            (key(WatchKind::Routes, "c"), json!({"v": 1})),
            (key(WatchKind::Tenants, "acme"), json!({"name": "Acme"})),
        ]);
        let changes = diff_objects(&old, &new, Some("acme"));
        let summary: Vec<(Op, &str)> = changes
            .iter()
            .map(|c| (c.op, c.object_id.as_str()))
            .collect();
        assert_eq!(
            summary,
            [(Op::Upsert, "a"), (Op::Upsert, "c"), (Op::Delete, "b")]
        );
        assert_eq!(
            changes[2].object,
            json!({"v": 1}),
            "a delete carries the last state"
        );
        // Fleet document: a tenant record belongs to its tenant, a fleet policy to none.
        let fleet = diff_objects(
            &BTreeMap::new(),
            &BTreeMap::from([
                (key(WatchKind::Tenants, "acme"), json!({})),
                (key(WatchKind::FleetPolicies, "p"), json!({})),
            ]),
            None,
        );
        assert_eq!(fleet[0].tenant.as_deref(), Some("acme"));
        assert_eq!(fleet[1].tenant, None);
    }

    #[test]
    fn member_differences_ignore_heartbeats() {
        let member = |status: &str, heartbeat: &str, labels: Value| {
            let object = json!({"status": status, "last_heartbeat": heartbeat, "labels": labels});
            let mut stable = object.clone();
            stable.as_object_mut().unwrap().remove("last_heartbeat");
            MemberState {
                status: status.into(),
                tenant: "acme".into(),
                object,
                stable,
            }
        };
        let old = BTreeMap::from([
            ("n1".to_string(), member("online", "t1", json!({}))),
            ("n2".to_string(), member("online", "t1", json!({}))),
            ("n3".to_string(), member("online", "t1", json!({}))),
        ]);
        let new = BTreeMap::from([
            ("n1".to_string(), member("online", "t2", json!({}))),
            ("n2".to_string(), member("offline", "t1", json!({}))),
            (
                "n3".to_string(),
                member("online", "t1", json!({"rack": "4"})),
            ),
            ("n4".to_string(), member("online", "t1", json!({}))),
        ]);
        let changes = diff_members(&old, &new);
        let summary: Vec<(Op, &str)> = changes
            .iter()
            .map(|c| (c.op, c.object_id.as_str()))
            .collect();
        assert_eq!(
            summary,
            [(Op::Status, "n2"), (Op::Upsert, "n3"), (Op::Upsert, "n4")]
        );
        let gone = diff_members(&new, &BTreeMap::new());
        assert!(gone.iter().all(|c| c.op == Op::Delete) && gone.len() == 4);
        assert_eq!(gone[0].tenant.as_deref(), Some("acme"));
    }
}
