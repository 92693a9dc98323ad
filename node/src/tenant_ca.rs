//! Tenant CAs on the node: anchors make and keep their CA for each tenant; every node trusts the
//! tenant CAs the fleet document lists, once they chain to an anchor CA it trusts.
//!
//! - **Making one** ([`TenantCas::ensure_tenant_ca`], called when a tenant is onboarded and
//!   before a node of that tenant is admitted): the anchor loads `ca/tenants/<tenant>.pem` with
//!   its key (same backend as the anchor CA key, see `cakeys.rs`), or makes a new key and has
//!   its anchor CA certify it (CN `<tenant>`, pathlen 0, never past the anchor CA's notAfter).
//!   The certificate is written to the data directory first, then to the fleet document
//!   (`tenant_cas["<tenant>/<anchor node id>"]`, as the anchor itself), which every node holds.
//!   The key never leaves the anchor.
//! - **Which CA issues**: node MICs of tenant T come from this anchor's CA for T. The `default`
//!   tenant's nodes and anchors' own MICs come from the anchor CA, as before tenant CAs. An
//!   anchor CA certified before tenant CAs (pathlen 0) cannot certify a CA; such an anchor keeps
//!   issuing every tenant's MICs itself, says so once in its log, and switches when its anchor
//!   CA is re-certified (pathlen 1).
//! - **A new CA waits [`SETTLE`]** before its first MIC, so the fleet document change carrying
//!   it reaches the members first (it is pushed to every live member at once, and each adds it
//!   to its trust within a moment of receiving it). A member that did not know the CA yet when
//!   it first heard from a node the CA certified refuses that node's gossip (and caches the
//!   refusal) until it restarts; its TLS connections are fine meanwhile, because nodes present
//!   their tenant CA in their chain. Anchors make their CA for every tenant the fleet document
//!   lists as soon as they see it, so a tenant's first join normally finds it long settled.
//! - **Trusting them** ([`TenantCas::run`], every node): each tenant CA in the fleet document
//!   that is signed by a trusted anchor CA of the anchor it names is added to the node's
//!   [`FleetTrust`] (gossip, TLS and API checks use it) and to `trust/tenant-cas.pem`, which the
//!   next start loads before it checks its own MIC. One that does not verify yet (its anchor CA
//!   is not known yet) is tried again at the next change.
//! - **Renewal**: a tenant CA with less than a third of its life left is re-certified (same key,
//!   so the MICs it issued stay valid) once the anchor CA outlives it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use nexus_ca::{
    CertDer, CertificateAuthority, FleetTrust, NodeId, TrustStore, der_to_pem, pem_to_der,
};
use nexus_crdt::{Caller, CallerRole, DocId, TENANT_CAS, TenantCa};

use crate::cakeys::{self, KeysFile};
use crate::datadir::{self, DataDir};
use crate::replication::Replication;
use crate::{DEFAULT_TENANT, now_ms};

/// How long a newly made tenant CA waits before it issues its first MIC (see the module docs).
pub const SETTLE: Duration = Duration::from_secs(3);
/// How often the trust loop looks at the fleet document without a change to wake it.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// How soon a tenant CA that could not be trusted yet is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Least time between two checks that an anchor holds a CA for every tenant.
const MAINTAIN_GAP: Duration = Duration::from_secs(1);

/// `trust/tenant-cas.pem`: the tenant CAs this node trusts.
pub fn trusted_file(dir: &DataDir) -> PathBuf {
    dir.root().join("trust").join("tenant-cas.pem")
}

/// Adds the tenant CAs of `trust/tenant-cas.pem` (if any) to `store`: before a node checks its
/// own MIC at start, which its tenant CA may have issued. One that no longer verifies is
/// skipped with a warning (the fleet document brings it back once its anchor CA is trusted).
pub fn load_trusted(dir: &DataDir, store: &mut TrustStore) -> anyhow::Result<()> {
    let path = trusted_file(dir);
    if !path.exists() {
        return Ok(());
    }
    let text = datadir::read(&path)?;
    if text.trim().is_empty() {
        return Ok(());
    }
    for der in pem_to_der(&text).with_context(|| format!("reading {}", path.display()))? {
        if let Err(err) = store.add_tenant_ca(der) {
            tracing::warn!(file = %path.display(), error = %err, "skipping a stored tenant CA");
        }
    }
    Ok(())
}

/// Whether `der` is a tenant CA (and not an anchor CA): how a joining node sorts the CAs an
/// anchor sent between `trust/intermediates.pem` and `trust/tenant-cas.pem`.
pub fn is_tenant_ca(der: &[u8]) -> bool {
    CertificateAuthority::describe_tenant_ca(der).is_ok()
}

/// The caller anchors write their own records as.
fn system_caller() -> Caller {
    Caller {
        identity: "system:anchor".into(),
        role: CallerRole::FleetAdmin,
    }
}

/// What only an anchor has: its CA and the tenant CAs it made.
struct AnchorSide {
    node_id: NodeId,
    /// This anchor's intermediate CA, which certifies its tenant CAs.
    ca: Arc<CertificateAuthority>,
    /// Where its keys live (tenant CA keys go to the same backend).
    keys: KeysFile,
    /// Lifetime asked for tenant CAs (capped at the anchor CA's notAfter).
    lifetime: Duration,
    /// Loaded tenant CAs by tenant.
    held: Mutex<HashMap<String, Arc<CertificateAuthority>>>,
    /// One tenant CA made or renewed at a time.
    creating: tokio::sync::Mutex<()>,
    /// The pathlen-0 warning was logged.
    warned_legacy: AtomicBool,
}

/// The node's tenant CAs: on anchors the ones it makes and issues with, on every node the ones
/// it trusts.
pub struct TenantCas {
    dir: DataDir,
    fleet: Arc<FleetTrust>,
    replication: Arc<Replication>,
    anchor: Option<AnchorSide>,
    /// Fleet document entries already handled (key → PEM), so a change re-checks only what
    /// changed.
    seen: Mutex<HashMap<String, String>>,
    /// Fingerprints of refused entries already warned about.
    refused: Mutex<HashSet<[u8; 32]>>,
    /// What `trust/tenant-cas.pem` holds.
    persisted: Mutex<Vec<CertDer>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TenantCas {
    /// Wires the tenant CAs of a node. `anchor` is this anchor's intermediate CA and the
    /// lifetime to ask for tenant CAs (anchors only); its key backend is read from
    /// `ca/keys.toml`.
    pub fn new(
        dir: DataDir,
        fleet: Arc<FleetTrust>,
        replication: Arc<Replication>,
        anchor: Option<(NodeId, Arc<CertificateAuthority>, Duration)>,
    ) -> anyhow::Result<Arc<TenantCas>> {
        let anchor = match anchor {
            Some((node_id, ca, lifetime)) => Some(AnchorSide {
                node_id,
                ca,
                keys: cakeys::read(&dir)?,
                lifetime,
                held: Mutex::new(HashMap::new()),
                creating: tokio::sync::Mutex::new(()),
                warned_legacy: AtomicBool::new(false),
            }),
            None => None,
        };
        let persisted = fleet.store().tenant_cas().to_vec();
        Ok(Arc::new(TenantCas {
            dir,
            fleet,
            replication,
            anchor,
            seen: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashSet::new()),
            persisted: Mutex::new(persisted),
        }))
    }

    /// Anchors: this anchor's CA for `tenant`, loaded, or made, certified by the anchor CA,
    /// stored in the data directory and recorded in the fleet document (`tenant_cas`), and
    /// trusted here. Idempotent: call it when a tenant is onboarded and before issuing a MIC of
    /// that tenant.
    ///
    /// `Ok(None)` means this tenant's nodes are certified by the anchor CA itself: the
    /// `default` tenant, or an anchor CA certified before tenant CAs (pathlen 0), which cannot
    /// certify a CA (logged once).
    pub async fn ensure_tenant_ca(
        &self,
        tenant: &str,
    ) -> anyhow::Result<Option<Arc<CertificateAuthority>>> {
        let anchor = self.anchor.as_ref().context(
            "only anchors hold tenant CAs: send this request to an anchor (GET /v1/anchors)",
        )?;
        crate::check_name("tenant", tenant)?;
        if tenant == DEFAULT_TENANT {
            return Ok(None);
        }
        if !anchor.ca.can_certify_tenant_cas() {
            if !anchor.warned_legacy.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "this anchor's CA was certified with pathlen 0, before tenant CAs: it cannot \
                     certify a CA below it, so it keeps issuing the MICs of every tenant itself; \
                     tenant CAs start once it is re-certified (at its renewal, when a third of \
                     its life is left)"
                );
            }
            return Ok(None);
        }
        let cached = lock(&anchor.held).get(tenant).cloned();
        let ca = match cached {
            Some(ca) if !self.renewal_due(anchor, &ca) => ca,
            _ => {
                let _one = anchor.creating.lock().await;
                let cached = lock(&anchor.held).get(tenant).cloned();
                match cached {
                    Some(ca) if !self.renewal_due(anchor, &ca) => ca,
                    _ => self.load_or_make(anchor, tenant).await?,
                }
            }
        };
        self.publish(anchor, &ca).await?;
        Ok(Some(ca))
    }

    /// Anchors: the CA that issues the MICs of `tenant`'s nodes: its tenant CA (waiting until
    /// a new one has [`SETTLE`]d), or the anchor CA (see [`TenantCas::ensure_tenant_ca`]).
    pub async fn issuer_for(&self, tenant: &str) -> anyhow::Result<Arc<CertificateAuthority>> {
        let anchor = self
            .anchor
            .as_ref()
            .context("only anchors issue certificates")?;
        let Some(ca) = self.ensure_tenant_ca(tenant).await? else {
            return Ok(anchor.ca.clone());
        };
        let info = CertificateAuthority::describe_tenant_ca(ca.cert_der())?;
        let created_ms = ((info.not_before_unix + nexus_ca::BACKDATE_SECS).max(0) as u64) * 1000;
        let usable_ms = created_ms + SETTLE.as_millis() as u64;
        let now = now_ms();
        if usable_ms > now {
            tracing::info!(
                tenant,
                wait_ms = usable_ms - now,
                "new tenant CA: waiting for the fleet to learn it before its first certificate"
            );
            tokio::time::sleep(Duration::from_millis(usable_ms - now)).await;
        }
        Ok(ca)
    }

    /// The tenant CAs this node trusts, PEM: those of `first` (a tenant) first, then the
    /// others, at most `max_bytes` of them (for the admission answer; the node learns any
    /// others from the fleet document).
    pub fn trusted_pems(&self, first: &str, max_bytes: usize) -> Vec<String> {
        let store = self.fleet.store();
        let mut own = Vec::new();
        let mut others = Vec::new();
        for der in store.tenant_cas() {
            let Ok(info) = CertificateAuthority::describe_tenant_ca(der) else {
                continue;
            };
            if info.tenant == first {
                own.push(der_to_pem(der));
            } else {
                others.push(der_to_pem(der));
            }
        }
        let mut total = 0;
        own.into_iter()
            .chain(others)
            .take_while(|pem| {
                total += pem.len();
                total <= max_bytes
            })
            .collect()
    }

    fn renewal_due(&self, anchor: &AnchorSide, ca: &CertificateAuthority) -> bool {
        let Ok(info) = CertificateAuthority::describe_tenant_ca(ca.cert_der()) else {
            return true;
        };
        let life = (info.not_after_unix - info.not_before_unix - nexus_ca::BACKDATE_SECS).max(0);
        let left = info.not_after_unix - (now_ms() / 1000) as i64;
        left < life / 3 && anchor.ca.not_after_unix() > info.not_after_unix
    }

    /// Loads this anchor's CA for `tenant` from the data directory (re-certifying it when due)
    /// or makes it; then trusts it here.
    async fn load_or_make(
        &self,
        anchor: &AnchorSide,
        tenant: &str,
    ) -> anyhow::Result<Arc<CertificateAuthority>> {
        let (dir, keys, node, ca, lifetime) = (
            self.dir.clone(),
            anchor.keys.clone(),
            anchor.node_id,
            anchor.ca.clone(),
            anchor.lifetime,
        );
        let t = tenant.to_string();
        let tenant_ca = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let path = cakeys::tenant_ca_cert(&dir, &t);
            if let Some(held) = cakeys::load_tenant_ca(&dir, &keys, node, &t)? {
                let info = CertificateAuthority::describe_tenant_ca(held.cert_der())?;
                let life = info.not_after_unix - info.not_before_unix - nexus_ca::BACKDATE_SECS;
                let left = info.not_after_unix - (now_ms() / 1000) as i64;
                if left >= life.max(0) / 3 || ca.not_after_unix() <= info.not_after_unix {
                    return Ok(held);
                }
                let renewed = ca.certify_tenant_ca(&t, &held.public_key(), lifetime)?;
                datadir::write_public(&path, &der_to_pem(&renewed))?;
                tracing::info!(tenant = %t, "tenant CA re-certified by this anchor's CA");
                return cakeys::load_tenant_ca(&dir, &keys, node, &t)?
                    .context("the re-certified tenant CA vanished from the data directory");
            }
            let key = cakeys::create_tenant_ca_key(&dir, &keys, node, &t)?;
            let made = ca.new_tenant_ca_with(&t, key, lifetime)?;
            datadir::write_public(&path, &made.cert_pem())?;
            tracing::info!(
                tenant = %t,
                key = %made.key_description(),
                "made this anchor's CA for a tenant"
            );
            Ok(made)
        })
        .await
        .context("the tenant CA task failed")?
        .with_context(|| format!("this anchor's CA for tenant {tenant}"))?;
        let tenant_ca = Arc::new(tenant_ca);
        if self.fleet.add_tenant_ca(tenant_ca.cert_der().to_vec())? {
            self.persist().await;
        }
        lock(&anchor.held).insert(tenant.to_string(), tenant_ca.clone());
        Ok(tenant_ca)
    }

    /// Records `ca` in the fleet document unless it is there already.
    async fn publish(&self, anchor: &AnchorSide, ca: &CertificateAuthority) -> anyhow::Result<()> {
        let tenant = ca.tenant().context("not a tenant CA")?.to_string();
        let key = format!("{tenant}/{}", anchor.node_id.to_hex());
        let pem = ca.cert_pem();
        let current = self
            .replication
            .read_fleet(|f, _| f.tenant_cas.get(&key).cloned())
            .map_err(|e| anyhow::anyhow!("reading the fleet configuration: {e:?}"))?
            .flatten();
        if current.as_ref().is_some_and(|c| c.cert_pem == pem) {
            return Ok(());
        }
        let record = TenantCa {
            tenant: tenant.clone(),
            anchor: anchor.node_id.to_hex(),
            cert_pem: pem,
            created_at: current.map_or(now_ms() as i64, |c| c.created_at),
        };
        self.replication
            .put_record(
                &system_caller(),
                &DocId::Fleet,
                TENANT_CAS,
                &key,
                Some(record),
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!("recording tenant {tenant}'s CA in the fleet configuration: {e:?}")
            })?;
        tracing::info!(tenant, "tenant CA recorded in the fleet configuration");
        Ok(())
    }

    /// Trusts the tenant CAs the fleet document lists that chain to a trusted anchor CA;
    /// `true` when some could not be trusted yet (to be tried again soon).
    async fn learn(&self) -> bool {
        let entries = match self.replication.read_fleet(|f, quarantined| {
            f.tenant_cas
                .iter()
                .filter(|(key, _)| !quarantined.contains_key(&format!("tenant_cas.{key}")))
                .map(|(key, record)| (key.clone(), record.clone()))
                .collect::<Vec<_>>()
        }) {
            Ok(Some(entries)) => entries,
            Ok(None) => return false,
            Err(err) => {
                tracing::debug!(error = ?err, "cannot read the fleet configuration");
                return true;
            }
        };
        let mut learned = false;
        let mut pending = false;
        for (key, record) in entries {
            if lock(&self.seen).get(&key) == Some(&record.cert_pem) {
                continue;
            }
            match self.trust_record(&record) {
                Ok(new) => {
                    learned |= new;
                    lock(&self.seen).insert(key, record.cert_pem);
                }
                Err(err) => {
                    // Tried again soon: its anchor CA may not be known yet (a newly promoted
                    // anchor's CA spreads by gossip).
                    pending = true;
                    let fingerprint = nexus_ca::sha256_fingerprint(record.cert_pem.as_bytes());
                    if lock(&self.refused).insert(fingerprint) {
                        tracing::warn!(
                            tenant = %record.tenant,
                            anchor = %record.anchor,
                            error = %format!("{err:#}"),
                            "not trusting a tenant CA of the fleet configuration (yet)"
                        );
                    }
                }
            }
        }
        if learned {
            self.persist().await;
        }
        pending
    }

    /// Checks one fleet document record and trusts its CA; `Ok(true)` when it was new here.
    fn trust_record(&self, record: &TenantCa) -> anyhow::Result<bool> {
        let der = pem_to_der(&record.cert_pem)?
            .into_iter()
            .next()
            .context("no certificate in the record")?;
        let info = self.fleet.store().check_tenant_ca(&der)?;
        if info.tenant != record.tenant || info.anchor.to_hex() != record.anchor {
            anyhow::bail!(
                "the record says tenant {} of anchor {}, the certificate tenant {} of anchor {}",
                record.tenant,
                record.anchor,
                info.tenant,
                info.anchor
            );
        }
        let new = self.fleet.add_tenant_ca(der)?;
        if new {
            tracing::info!(tenant = %info.tenant, anchor = %info.anchor, "trusting a tenant CA");
        }
        Ok(new)
    }

    /// Writes `trust/tenant-cas.pem` when the trusted tenant CAs changed.
    async fn persist(&self) {
        let now = self.fleet.store().tenant_cas().to_vec();
        if *lock(&self.persisted) == now {
            return;
        }
        let pem: String = now.iter().map(|d| der_to_pem(d)).collect();
        let path = trusted_file(&self.dir);
        let written = tokio::task::spawn_blocking(move || datadir::write_public(&path, &pem)).await;
        match written {
            Ok(Ok(())) => *lock(&self.persisted) = now,
            Ok(Err(err)) => {
                tracing::error!(error = %format!("{err:#}"), "cannot persist the trusted tenant CAs")
            }
            Err(err) => tracing::error!(error = %err, "cannot persist the trusted tenant CAs"),
        }
    }

    /// Anchors: makes sure this anchor holds a CA for every tenant the fleet document lists.
    async fn maintain(&self) {
        let tenants = match self.replication.read_fleet(|f, quarantined| {
            f.tenants
                .keys()
                .filter(|t| !quarantined.contains_key(&format!("tenants.{t}")))
                .cloned()
                .collect::<Vec<_>>()
        }) {
            Ok(Some(tenants)) => tenants,
            _ => return,
        };
        for tenant in tenants.iter().filter(|t| *t != DEFAULT_TENANT) {
            if let Err(err) = self.ensure_tenant_ca(tenant).await {
                tracing::warn!(tenant, error = %format!("{err:#}"), "cannot make this anchor's CA for a tenant; retrying");
            }
        }
    }

    /// Keeps trust in step with the fleet document (every node) and this anchor's tenant CAs
    /// with its tenants (anchors), until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        use tokio::time::Instant;
        let mut changes = self.replication.changes();
        let mut maintain_at = Instant::now();
        // A change this anchor has not checked its tenants against yet.
        let mut dirty = true;
        loop {
            let mut pending = self.learn().await;
            if self.anchor.is_some() && dirty && Instant::now() >= maintain_at {
                self.maintain().await;
                // What it made is in the fleet document now: trust follows from there too.
                pending = self.learn().await;
                dirty = false;
                maintain_at = Instant::now() + MAINTAIN_GAP;
            }
            let wake = if self.anchor.is_some() && dirty {
                maintain_at
            } else if pending {
                Instant::now() + RETRY_EVERY
            } else {
                Instant::now() + POLL_EVERY
            };
            tokio::select! {
                _ = stop.changed() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    dirty = true;
                }
                _ = tokio::time::sleep_until(wake) => dirty = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_ca::NodeKey;

    #[test]
    fn stored_tenant_cas_load_into_the_trust_store_and_strangers_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let root = CertificateAuthority::new_fleet_root("f1").unwrap();
        let anchor = root
            .new_intermediate("f1", NodeKey::generate().node_id())
            .unwrap();
        let ours = anchor
            .new_tenant_ca_with(
                "acme",
                Arc::new(NodeKey::generate()),
                Duration::from_secs(3600),
            )
            .unwrap();
        // Same fleet name, another root: not signed by an anchor CA this node trusts.
        let stranger = {
            let root = CertificateAuthority::new_fleet_root("f1").unwrap();
            root.new_intermediate("f1", NodeKey::generate().node_id())
                .unwrap()
                .new_tenant_ca_with(
                    "acme",
                    Arc::new(NodeKey::generate()),
                    Duration::from_secs(3600),
                )
                .unwrap()
        };
        assert!(is_tenant_ca(ours.cert_der()));
        assert!(!is_tenant_ca(anchor.cert_der()));
        let mut store =
            TrustStore::new(root.cert_der().to_vec(), vec![anchor.cert_der().to_vec()]).unwrap();
        // No file yet: nothing to add.
        load_trusted(&data, &mut store).unwrap();
        assert!(store.tenant_cas().is_empty());
        datadir::write_public(
            &trusted_file(&data),
            &format!("{}{}", stranger.cert_pem(), ours.cert_pem()),
        )
        .unwrap();
        load_trusted(&data, &mut store).unwrap();
        assert_eq!(store.tenant_cas(), [ours.cert_der().to_vec()]);
    }
}
