//! Replicated configuration on the node: the fleet document and this node's tenant document
//! (anchors: every tenant's), kept in SQLite, written through the API, pushed to peers and
//! caught up by anti-entropy. The documents, signatures and authorization rules are
//! `nexus-crdt`'s; this module moves and stores their bytes.
//!
//! - **Write**: the API validates, the document takes the change (signed by this node for the
//!   caller), the new incremental chunk and the signed envelope are stored in one transaction,
//!   and only then is the write acknowledged. Then the change is pushed to every live member
//!   that may hold the document.
//! - **Receive**: every envelope travels with its author's MIC; the MIC is checked against the
//!   fleet trust as of the change's time (so changes made under a since-renewed MIC still
//!   verify) and must not be revoked; `ConfigDoc::apply_remote` checks the signature and who
//!   may write what. Refused changes are counted and dropped.
//! - **Anti-entropy**: each node publishes `cfg/<doc>` = `<version>:<heads digest>` in gossip;
//!   when a peer's digest differs, the node asks it for its envelopes (`ConfigAll`, bounded)
//!   and applies what it lacks. Both sides do so, so they converge.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nexus_ca::{FleetTrust, NodeId, Role};
use nexus_crdt::{
    Applied, AuthorDirectory, AuthorFacts, Caller, CallerRole, ConfigDoc, DocId, FleetDoc,
    KnownAuthor, KnownNode, KnownNodes, LocalAuthor, RoutePolicy, SignedChange, TenantDoc,
};
use nexus_mesh::{Mesh, NodeStatus};
use serde::{Deserialize, Serialize};

use crate::peer::{PeerRequest, PeerResponse, PeerService};
use crate::store::Store;

/// Gossip key prefix: `cfg/<doc id>` = `<version>:<heads digest hex>`.
pub const GOSSIP_PREFIX_CONFIG: &str = "cfg/";
/// Most envelopes one anti-entropy answer carries.
pub const MAX_PULL: usize = 10_000;

/// A signed change as it travels: the envelope and its author's MIC (both base64).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireChange {
    /// `SignedChange::encode()`.
    pub envelope: String,
    /// The author's MIC, DER.
    pub author_mic: String,
}

/// Why a write was refused.
#[derive(Debug)]
pub enum WriteError {
    /// The caller's input is invalid: every problem with its field path.
    Invalid(Vec<String>),
    /// This node does not hold the document (another tenant's).
    NotHere(String),
    /// Storage or internal failure.
    Internal(String),
}

/// Resolves an author from the MIC that came with its change, as of the change's time.
struct MicDirectory<'a> {
    fleet: &'a FleetTrust,
    mic: &'a [u8],
    at_unix: i64,
}

impl AuthorDirectory for MicDirectory<'_> {
    fn resolve(&self, node: &NodeId, mic_serial: &str) -> Option<KnownAuthor> {
        let mic = self
            .fleet
            .verify_peer_unlogged(self.mic, &[], self.at_unix)
            .ok()?;
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
}

/// The node's replicated configuration.
pub struct Replication {
    docs: Mutex<BTreeMap<String, ConfigDoc>>,
    tenant: String,
    role: Role,
    author: LocalAuthor,
    store: Arc<Store>,
    fleet: Arc<FleetTrust>,
    mesh: Arc<Mesh>,
    peer: Arc<PeerService>,
    pulled: Mutex<HashMap<(NodeId, String), Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn load_doc(store: &Store, id: &DocId) -> anyhow::Result<ConfigDoc> {
    let mut doc = ConfigDoc::new(id.clone());
    for chunk in store.config_chunks(&id.to_string())? {
        doc.load_incremental(&chunk)
            .with_context(|| format!("loading configuration document {id}"))?;
    }
    Ok(doc)
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
            docs.insert(id.to_string(), load_doc(&store, &id)?);
        }
        Ok(Replication {
            docs: Mutex::new(docs),
            tenant: own.tenant.clone(),
            role: own.role,
            author,
            store,
            fleet,
            mesh,
            peer,
            pulled: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this node holds (or, being an anchor, may hold) the document.
    fn holds(&self, id: &DocId) -> bool {
        match id {
            DocId::Fleet => true,
            DocId::Tenant(t) => *t == self.tenant || self.role == Role::Anchor,
        }
    }

    fn with_doc<T>(&self, id: &DocId, f: impl FnOnce(&mut ConfigDoc) -> T) -> anyhow::Result<T> {
        let mut docs = lock(&self.docs);
        let key = id.to_string();
        if !docs.contains_key(&key) {
            docs.insert(key.clone(), load_doc(&self.store, id)?);
        }
        Ok(f(docs.get_mut(&key).expect("just inserted")))
    }

    /// The nodes configuration may refer to, from the membership view.
    fn known_nodes(&self) -> KnownNodes {
        self.mesh
            .members()
            .into_iter()
            .filter(|m| m.status != NodeStatus::Decommissioned)
            .filter_map(|m| {
                let info = m.info?;
                Some((
                    m.node_id,
                    KnownNode {
                        tenant: info.tenant,
                        site: info.site,
                    },
                ))
            })
            .collect()
    }

    fn caller(identity: &str) -> Caller {
        Caller {
            identity: identity.to_string(),
            role: CallerRole::FleetAdmin,
        }
    }

    /// Anchors: makes sure `tenant` exists in the fleet document (a tenant's routes need it).
    pub async fn ensure_tenant(self: &Arc<Self>, tenant: &str) -> anyhow::Result<()> {
        if self.role != Role::Anchor {
            return Ok(());
        }
        let present = self.with_doc(&DocId::Fleet, |doc| {
            doc.entry(nexus_crdt::TENANTS, tenant)
                .ok()
                .flatten()
                .is_some()
        })?;
        if present {
            return Ok(());
        }
        let tenant_record = nexus_crdt::Tenant {
            name: tenant.to_string(),
            created_at: crate::now_ms() as i64,
            quotas: Default::default(),
        };
        let change = self.with_doc(&DocId::Fleet, |doc| {
            doc.apply_local_entry(
                &self.author,
                &Self::caller("system:anchor"),
                crate::now_ms() as i64,
                nexus_crdt::TENANTS,
                tenant,
                |v| {
                    *v = Some(tenant_record);
                    Ok::<_, std::convert::Infallible>(())
                },
            )
        })?;
        if let Some(change) = change.map_err(|e| anyhow::anyhow!("{e}"))? {
            self.commit(&DocId::Fleet, &change)?;
            self.publish_versions().await;
            let me = self.clone();
            tokio::spawn(async move { me.push(vec![change]).await });
        }
        Ok(())
    }

    /// Stores a change this node made: the document's new chunk and the envelope, one
    /// transaction.
    fn commit(&self, id: &DocId, change: &SignedChange) -> anyhow::Result<()> {
        let chunk = self.with_doc(id, |doc| doc.save_incremental())?;
        let mic = self.peer.credentials.mic_der();
        self.store.save_config_change(
            &id.to_string(),
            &chunk,
            &hex::encode(change.change_hash.0),
            &change.encode(),
            &mic,
        )?;
        Ok(())
    }

    /// The effective routes of this node's tenant (quarantined ones left out), and the
    /// document's version.
    pub fn routes(&self) -> anyhow::Result<(Vec<RoutePolicy>, u64)> {
        let fleet = self.with_doc(&DocId::Fleet, |d| d.hydrate::<FleetDoc>())??;
        let id = DocId::tenant(&self.tenant)?;
        let (tenant, version) = self.with_doc(&id, |d| (d.hydrate::<TenantDoc>(), d.version()))?;
        let effective =
            nexus_crdt::effective_tenant(&fleet.model, &tenant?.model, &self.known_nodes());
        Ok((effective.config.routes.into_values().collect(), version))
    }

    /// Creates or replaces a route of this node's tenant for `caller`; durable before it
    /// returns.
    pub async fn put_route(
        self: &Arc<Self>,
        caller: &str,
        mut route: RoutePolicy,
    ) -> Result<(RoutePolicy, u64), WriteError> {
        if route.tenant_id.is_empty() {
            route.tenant_id = self.tenant.clone();
        }
        if route.tenant_id != self.tenant {
            return Err(WriteError::NotHere(format!(
                "this node holds tenant {:?}; write tenant {:?}'s routes on one of its nodes",
                self.tenant, route.tenant_id
            )));
        }
        if route.created_at == 0 {
            route.created_at = crate::now_ms() as i64;
        }
        let id =
            DocId::tenant(&self.tenant).map_err(|e| WriteError::Invalid(vec![e.to_string()]))?;
        let internal = |e: anyhow::Error| WriteError::Internal(format!("{e:#}"));
        let fleet = self
            .with_doc(&DocId::Fleet, |d| d.hydrate::<FleetDoc>())
            .map_err(internal)?
            .map_err(|e| WriteError::Internal(e.to_string()))?;
        let mut tenant = self
            .with_doc(&id, |d| d.hydrate::<TenantDoc>())
            .map_err(internal)?
            .map_err(|e| WriteError::Internal(e.to_string()))?
            .model;
        tenant.routes.insert(route.id.clone(), route.clone());
        if let Err(invalid) =
            nexus_crdt::validate_tenant(&fleet.model, &tenant, &self.known_nodes())
        {
            let object = format!("routes.{}", route.id);
            let mine: Vec<String> = invalid
                .0
                .iter()
                .filter(|p| p.object == object || p.object.is_empty())
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect();
            if !mine.is_empty() {
                return Err(WriteError::Invalid(mine));
            }
        }
        let written = route.clone();
        let change = self
            .with_doc(&id, |doc| {
                doc.apply_local_entry(
                    &self.author,
                    &Self::caller(caller),
                    crate::now_ms() as i64,
                    nexus_crdt::ROUTES,
                    &written.id,
                    |v| {
                        *v = Some(written.clone());
                        Ok::<_, std::convert::Infallible>(())
                    },
                )
            })
            .map_err(internal)?
            .map_err(|e| WriteError::Invalid(vec![e.to_string()]))?;
        if let Some(change) = change {
            self.commit(&id, &change).map_err(internal)?;
            metrics::counter!("nexus_config_changes_total", "origin" => "local").increment(1);
            self.publish_versions().await;
            let me = self.clone();
            tokio::spawn(async move { me.push(vec![change]).await });
        }
        let version = self.with_doc(&id, |d| d.version()).map_err(internal)?;
        Ok((route, version))
    }

    /// Deletes a route of this node's tenant for `caller`; `Ok(None)` when there is none.
    /// Durable before it returns.
    pub async fn delete_route(
        self: &Arc<Self>,
        caller: &str,
        route_id: &str,
    ) -> Result<Option<u64>, WriteError> {
        let id =
            DocId::tenant(&self.tenant).map_err(|e| WriteError::Invalid(vec![e.to_string()]))?;
        let internal = |e: anyhow::Error| WriteError::Internal(format!("{e:#}"));
        let exists = self
            .with_doc(&id, |doc| {
                doc.entry(nexus_crdt::ROUTES, route_id)
                    .ok()
                    .flatten()
                    .is_some()
            })
            .map_err(internal)?;
        if !exists {
            return Ok(None);
        }
        let change = self
            .with_doc(&id, |doc| {
                doc.apply_local_entry(
                    &self.author,
                    &Self::caller(caller),
                    crate::now_ms() as i64,
                    nexus_crdt::ROUTES,
                    route_id,
                    |v: &mut Option<RoutePolicy>| {
                        *v = None;
                        Ok::<_, std::convert::Infallible>(())
                    },
                )
            })
            .map_err(internal)?
            .map_err(|e| WriteError::Invalid(vec![e.to_string()]))?;
        if let Some(change) = change {
            self.commit(&id, &change).map_err(internal)?;
            metrics::counter!("nexus_config_changes_total", "origin" => "local").increment(1);
            self.publish_versions().await;
            let me = self.clone();
            tokio::spawn(async move { me.push(vec![change]).await });
        }
        let version = self.with_doc(&id, |d| d.version()).map_err(internal)?;
        Ok(Some(version))
    }

    /// Applies changes pushed or pulled from peers; returns how many were new.
    pub fn receive(&self, changes: &[WireChange]) -> usize {
        let mut new = 0;
        for wire in changes {
            let outcome = (|| -> anyhow::Result<bool> {
                let envelope = STANDARD.decode(&wire.envelope)?;
                let mic = STANDARD.decode(&wire.author_mic)?;
                let change = SignedChange::decode(&envelope)?;
                if !self.holds(&change.doc_id) {
                    return Ok(false);
                }
                let at_unix = (change.timestamp_ms / 1000).min((crate::now_ms() / 1000) as i64);
                let directory = MicDirectory {
                    fleet: &self.fleet,
                    mic: &mic,
                    at_unix,
                };
                let applied = self.with_doc(&change.doc_id, |doc| {
                    doc.apply_remote(&change, &directory).map(|applied| {
                        let chunk = match applied {
                            Applied::Duplicate => Vec::new(),
                            _ => doc.save_incremental(),
                        };
                        (applied, chunk)
                    })
                })?;
                let (applied, chunk) = applied?;
                if applied == Applied::Duplicate {
                    return Ok(false);
                }
                self.store.save_config_change(
                    &change.doc_id.to_string(),
                    &chunk,
                    &hex::encode(change.change_hash.0),
                    &envelope,
                    &mic,
                )?;
                Ok(true)
            })();
            match outcome {
                Ok(true) => {
                    new += 1;
                    metrics::counter!("nexus_config_changes_total", "origin" => "remote")
                        .increment(1);
                }
                Ok(false) => {}
                Err(err) => {
                    metrics::counter!("nexus_config_changes_refused_total").increment(1);
                    tracing::warn!(error = %format!("{err:#}"), "refused a configuration change");
                }
            }
        }
        new
    }

    /// Every stored envelope of a document (for a peer catching up), bounded.
    pub fn all_changes(&self, id: &DocId) -> anyhow::Result<Vec<WireChange>> {
        Ok(self
            .store
            .config_changes(&id.to_string(), MAX_PULL)?
            .into_iter()
            .map(|(envelope, mic)| WireChange {
                envelope: STANDARD.encode(envelope),
                author_mic: STANDARD.encode(mic),
            })
            .collect())
    }

    fn peers_for(&self, id: &DocId) -> Vec<(NodeId, SocketAddr)> {
        self.mesh
            .members()
            .into_iter()
            .filter(|m| m.node_id != self.author.facts().node_id)
            .filter(|m| {
                matches!(
                    m.status,
                    NodeStatus::Online | NodeStatus::Degraded | NodeStatus::Draining
                )
            })
            .filter_map(|m| {
                let info = m.info?;
                let facts = AuthorFacts {
                    node_id: m.node_id,
                    role: info.role,
                    tenant: info.tenant.clone(),
                    site: info.site.clone(),
                };
                nexus_crdt::may_replicate(id, &facts).then_some((m.node_id, info.quic_addr))
            })
            .collect()
    }

    /// Pushes changes this node made to every live member that may hold their document.
    async fn push(self: Arc<Self>, changes: Vec<SignedChange>) {
        let mic = STANDARD.encode(self.peer.credentials.mic_der());
        for change in changes {
            let request = PeerRequest::ConfigChanges {
                changes: vec![WireChange {
                    envelope: STANDARD.encode(change.encode()),
                    author_mic: mic.clone(),
                }],
            };
            let mut tasks = tokio::task::JoinSet::new();
            for (node, addr) in self.peers_for(&change.doc_id) {
                let (me, request) = (self.clone(), request.clone());
                tasks.spawn(async move { (node, me.peer.request(node, addr, &request).await) });
            }
            while let Some(done) = tasks.join_next().await {
                if let Ok((node, Err(err))) = done {
                    tracing::debug!(node = %node, error = %format!("{err:#}"), "config push failed; anti-entropy will catch up");
                }
            }
        }
    }

    /// Publishes this node's document versions and digests in gossip.
    pub async fn publish_versions(&self) {
        let versions: Vec<(String, String)> = lock(&self.docs)
            .iter()
            .map(|(id, doc)| {
                (
                    format!("{GOSSIP_PREFIX_CONFIG}{id}"),
                    format!("{}:{}", doc.version(), hex::encode(doc.heads_digest())),
                )
            })
            .collect();
        for (key, value) in versions {
            self.mesh.publish(&key, &value).await;
        }
        let applied = DocId::tenant(&self.tenant).ok().and_then(|id| {
            lock(&self.docs)
                .get(&id.to_string())
                .map(ConfigDoc::version)
        });
        if let Some(version) = applied {
            self.peer.set_config_version(version).await;
        }
    }

    /// Anti-entropy: pulls from peers whose published digest of a document differs from ours.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            self.publish_versions().await;
            let ours: HashMap<String, String> = lock(&self.docs)
                .iter()
                .map(|(id, doc)| (id.clone(), hex::encode(doc.heads_digest())))
                .collect();
            let me = self.author.facts().node_id;
            for (node, key, value) in self.mesh.published_prefix(GOSSIP_PREFIX_CONFIG).await {
                if node == me {
                    continue;
                }
                let Some(doc) = key.strip_prefix(GOSSIP_PREFIX_CONFIG) else {
                    continue;
                };
                let Some(digest) = value.split(':').nth(1) else {
                    continue;
                };
                if ours.get(doc).is_none_or(|d| d == digest) {
                    continue;
                }
                let recently = lock(&self.pulled)
                    .get(&(node, doc.to_string()))
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(3));
                if recently {
                    continue;
                }
                lock(&self.pulled).insert((node, doc.to_string()), Instant::now());
                let Some(addr) = self
                    .mesh
                    .member(&node)
                    .and_then(|m| m.info.map(|i| i.quic_addr))
                else {
                    continue;
                };
                let request = PeerRequest::ConfigAll {
                    doc_id: doc.to_string(),
                };
                match self.peer.request(node, addr, &request).await {
                    Ok(PeerResponse::ConfigChanges { changes }) => {
                        let me = self.clone();
                        let new = tokio::task::spawn_blocking(move || me.receive(&changes))
                            .await
                            .unwrap_or(0);
                        if new > 0 {
                            tracing::info!(peer = %node, doc, new, "caught up configuration");
                            self.publish_versions().await;
                        }
                    }
                    Ok(other) => tracing::debug!(answer = ?other, "no configuration answer"),
                    Err(err) => {
                        tracing::debug!(peer = %node, error = %format!("{err:#}"), "cannot pull configuration")
                    }
                }
            }
        }
    }
}
